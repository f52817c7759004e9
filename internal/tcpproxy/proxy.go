package tcpproxy

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/loop"
	"github.com/sluice-lb/sluice/internal/rawsys"
	"github.com/sluice-lb/sluice/internal/splice"
)

const (
	// copyBufSize is the loop-owned read/write buffer.
	copyBufSize = 64 << 10
	// autoSpliceAt is the read size at which SpliceAuto switches a
	// direction to splice: a read that fills this many bytes means a bulk
	// transfer. Smaller reads stay on read/write, which costs the same two
	// syscalls as two splices but less kernel work per message.
	autoSpliceAt = 16 << 10
	// acceptBatch bounds the accepts per readiness event so one busy
	// listener cannot starve the loop's connections.
	acceptBatch = 64
	// acceptPause is how long accepting stops after fd exhaustion.
	acceptPause = 100 * time.Millisecond
	// maxFreeBufs bounds the spare leftover buffers a proxy keeps.
	maxFreeBufs = 64
)

// limitPause is how long accepting stops when --max-conns is reached,
// unless a connection that closes, in any service, wakes it first (see
// Limiter.wake). A variable for tests.
var limitPause = 10 * time.Millisecond

// Proxy proxies the connections accepted on one loop for one service. All
// methods except Stats run on the loop goroutine.
type Proxy struct {
	loop    *loop.Loop
	id      int // the loop's number, indexing per-loop backend counters
	cfg     Config
	svc     *balancer.Service
	lb      *balancer.Pool
	limiter *Limiter
	log     *zap.Logger
	debug   bool

	pool     *splice.Pool
	buf      []byte   // loop-owned copy buffer; holds nothing between events
	freeBufs [][]byte // spare copyBufSize buffers for bytes a blocked writer left over
	pref     []int    // scratch for balancer preference lists

	lns         []*listener    // usually one; more after an upgrade to fewer loops
	local       netip.AddrPort // the listening address
	conns       []*conn        // open connections; conn.idx is the position
	stats       *Stats
	draining    bool
	drained     chan struct{}
	pauseLogged bool
	access      *zap.Logger // the access log; nil when off
	rng         *rand.Rand  // samples the access log

	// siblings are the service's proxies on every loop, p among them,
	// that spread accepted connections (see balance.go); nil alone.
	siblings []*Proxy
	inbox    inbox        // connections siblings accepted for p to run
	pending  atomic.Int64 // connections in inbox: counted in p's load
	takeFn   func()       // p.take, made once
	// paused is set when a listener of p stops accepting, so that a
	// connection closing elsewhere, in any service or on any loop, can
	// wake it (see Limiter.wake).
	paused   atomic.Bool
	parked   bool   // queued in limiter.parked; guarded by limiter.mu
	resumeFn func() // p.resume, made once
}

// New returns a proxy for one loop. It does not accept until Listen.
//
// id is the loop's number (0 to loops-1) for the per-loop counters of the
// service's backends.
func New(l *loop.Loop, id int, cfg Config, svc *balancer.Service, limiter *Limiter, log *zap.Logger) *Proxy {
	p := &Proxy{
		loop:    l,
		id:      id,
		cfg:     cfg,
		svc:     svc,
		lb:      svc.Pool(),
		limiter: limiter,
		log:     log,
		debug:   log.Core().Enabled(zap.DebugLevel),
		pool:    splice.NewPool(cfg.Pool),
		buf:     make([]byte, copyBufSize),
		stats:   new(Stats),
	}
	p.takeFn = p.take
	p.resumeFn = p.resume
	if cfg.AccessLog {
		p.access = log.Named("access")
		p.rng = rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	}
	return p
}

// logAccess writes c's access-log line, if sampled.
func (p *Proxy) logAccess(c *conn, reason closeReason) {
	if p.cfg.AccessLogSample < 1 && p.rng.Float64() >= p.cfg.AccessLogSample {
		return
	}
	backend := ""
	if c.lastBackend != nil {
		backend = c.lastBackend.Addr.String()
	}
	p.access.Info("connection",
		zap.Stringer("client", c.peer),
		zap.String("backend", backend),
		zap.Uint64("bytes_up", c.bytesUp),
		zap.Uint64("bytes_down", c.bytesDown),
		zap.Duration("duration", time.Duration(p.loop.Now()-c.start)),
		zap.Stringer("reason", reason))
}

// Stats returns the proxy's counters; safe for concurrent use.
func (p *Proxy) Stats() *Stats { return p.stats }

// PoolStats returns the pipe pool's counters. Loop goroutine only.
func (p *Proxy) PoolStats() splice.Stats { return p.pool.Stats() }

// Conns returns the number of open connections. Loop goroutine only.
func (p *Proxy) Conns() int { return len(p.conns) }

// Listen takes ownership of the listening socket fd and starts accepting on
// it. A proxy may have several.
func (p *Proxy) Listen(fd int) error {
	if sa, err := unix.Getsockname(fd); err == nil {
		p.local = addrPortOf(sa)
	}
	ln := &listener{p: p, fd: fd}
	ln.resume.F = ln.rearmAfterPause
	if err := p.loop.Add(fd, loop.In, ln); err != nil {
		return err
	}
	ln.armed = true
	p.lns = append(p.lns, ln)
	return nil
}

// ListenerFDs returns the listening sockets, for an upgrade's handoff. The
// proxy keeps them open and accepting.
func (p *Proxy) ListenerFDs() []int {
	fds := make([]int, 0, len(p.lns))
	for _, ln := range p.lns {
		fds = append(fds, ln.fd)
	}
	return fds
}

// Drain stops accepting, closing the listening socket, and returns a channel
// closed once every connection of this proxy has ended. Open connections go
// on until they finish or CloseAll is called.
func (p *Proxy) Drain() <-chan struct{} {
	p.closeInbox()
	if p.drained == nil {
		p.drained = make(chan struct{})
	}
	p.draining = true
	for _, ln := range p.lns {
		ln.close()
	}
	p.lns = nil
	p.checkDrained()
	return p.drained
}

// Census counts the open connections by state, for the log line of a drain
// that timed out.
func (p *Proxy) Census() (connecting, established, halfClosed int) {
	for _, c := range p.conns {
		switch {
		case c.state == stateConnecting:
			connecting++
		case c.up.shut || c.down.shut:
			halfClosed++
		default:
			established++
		}
	}
	return
}

// CloseAll resets every open connection, for the end of a drain timeout,
// and returns how many it reset.
func (p *Proxy) CloseAll() int {
	p.closeInbox()
	n := len(p.conns)
	for len(p.conns) > 0 {
		p.conns[len(p.conns)-1].finish(reasonShutdown)
	}
	p.pool.Close()
	return n
}

func (p *Proxy) checkDrained() {
	if p.draining && len(p.conns) == 0 && p.drained != nil {
		select {
		case <-p.drained:
		default:
			close(p.drained)
		}
	}
}

func (p *Proxy) getBuf() []byte {
	if n := len(p.freeBufs); n > 0 {
		b := p.freeBufs[n-1]
		p.freeBufs[n-1] = nil
		p.freeBufs = p.freeBufs[:n-1]
		return b[:0]
	}
	return make([]byte, 0, copyBufSize)
}

func (p *Proxy) putBuf(b []byte) {
	if cap(b) == copyBufSize && len(p.freeBufs) < maxFreeBufs {
		p.freeBufs = append(p.freeBufs, b[:0])
	}
}

// listener accepts connections from the loop's own SO_REUSEPORT socket.
type listener struct {
	p      *Proxy
	fd     int
	armed  bool       // registered with the loop for readiness
	resume loop.Timer // re-arms accepting after a pause
}

func (ln *listener) HandleEvent(uint32) {
	p := ln.p
	for i := 0; i < acceptBatch; i++ {
		if !p.limiter.Acquire() {
			ln.pause(limitPause)
			return
		}
		nfd, peer, err := rawsys.Accept4(ln.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			p.limiter.Release()
			switch err {
			case unix.EAGAIN:
				return
			case unix.EINTR, unix.ECONNABORTED, unix.EPROTO:
				continue // that connection is gone; the next may be fine
			case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
				// Out of fds or memory: retrying at once would spin.
				p.stats.AcceptErrors.Add(1)
				if !p.pauseLogged {
					p.pauseLogged = true
					p.log.Warn("accept failing, pausing accepts", zap.Error(os.NewSyscallError("accept4", err)), zap.Duration("pause", acceptPause))
				}
				ln.pause(acceptPause)
				return
			default:
				p.stats.AcceptErrors.Add(1)
				ln.pause(acceptPause)
				return
			}
		}
		p.pauseLogged = false
		if s := p.lighter(); s != nil && s.hand(nfd, peer) {
			p.stats.HandedOver.Add(1)
			continue
		}
		p.accept(nfd, peer)
	}
}

// pause stops accepting for d; connections wait in the kernel's accept
// queue meanwhile.
func (ln *listener) pause(d time.Duration) {
	if !ln.armed {
		return
	}
	if err := ln.p.loop.Remove(ln.fd); err == nil {
		ln.armed = false
		ln.wait(d)
		ln.p.stats.AcceptPauses.Add(1) // last: a test that sees it sees p parked
	}
}

// resume accepts again on p's paused listeners, at once: a connection
// closed, so a --max-conns slot and file descriptors are free.
func (p *Proxy) resume() {
	p.paused.Store(false)
	for _, ln := range p.lns {
		if !ln.armed {
			ln.rearm()
			if ln.armed {
				p.loop.Cancel(&ln.resume)
			} else {
				ln.retry()
			}
		}
	}
}

// rearmAfterPause is the pause timer's func: it accepts again and, once
// every listener of the proxy accepts, the proxy is no longer paused, so
// that a close does not spend its one wake (Limiter.wake) on it.
func (ln *listener) rearmAfterPause() {
	ln.rearm()
	if !ln.armed {
		ln.retry()
		return
	}
	for _, l := range ln.p.lns {
		if !l.armed {
			return
		}
	}
	ln.p.paused.Store(false)
}

// retry follows a registration that failed (the host is short of memory or
// of epoll watches): the listener tries again after a pause, or sooner when
// a close wakes its proxy, so that the clients the kernel queues on its
// socket are not left there for good.
func (ln *listener) retry() {
	if ln.fd < 0 {
		return // closed
	}
	ln.wait(limitPause)
}

// wait leaves ln out of the loop for d, its proxy paused and queued for a
// close to wake it sooner (Limiter.wake).
func (ln *listener) wait(d time.Duration) {
	ln.p.loop.Schedule(&ln.resume, ln.p.loop.Now()+int64(d))
	ln.p.paused.Store(true)
	ln.p.limiter.park(ln.p)
}

func (ln *listener) rearm() {
	if ln.armed || ln.fd < 0 {
		return
	}
	if err := ln.p.loop.Add(ln.fd, loop.In, ln); err == nil {
		ln.armed = true
	}
}

func (ln *listener) close() {
	ln.p.loop.Cancel(&ln.resume)
	if ln.armed {
		// Remove, not Forget: after an upgrade the socket lives on in the
		// successor, so closing this fd would not take it out of the
		// epoll set, and its readiness would wake this loop forever.
		ln.p.loop.Remove(ln.fd)
	}
	unix.Close(ln.fd)
	ln.fd = -1
	ln.armed = false
}

// accept sets up a new client connection and starts its backend connect.
func (p *Proxy) accept(fd int, peer netip.AddrPort) {
	p.stats.Accepted.Add(1)
	// TCP_NODELAY comes from the listening socket (see Listen).
	c := &conn{p: p, idx: len(p.conns), peer: peer, start: p.loop.Now()}
	c.client = endpoint{c: c, fd: fd, isClient: true}
	c.backend = endpoint{c: c, fd: -1}
	c.timer.F = c.onTimer
	p.conns = append(p.conns, c)
	if err := p.loop.Add(fd, connEvents, &c.client); err != nil {
		c.finish(reasonInternal)
		return
	}
	if p.cfg.AcceptProxy {
		if !p.trusted(c.peer.Addr()) {
			p.stats.ProxyUntrusted.Add(1)
			c.finish(reasonProxyHeader)
			return
		}
		c.state = stateHeader
		// The header gets as long as a backend connect does.
		p.loop.Schedule(&c.timer, p.loop.Now()+int64(p.cfg.ConnectTimeout))
		return // readHeader runs when the client's bytes arrive
	}
	c.choose()
}

// choose picks the backend for c's client address and starts connecting.
func (c *conn) choose() {
	p := c.p
	c.hash = p.cfg.HashKey.Hash(c.peer.Addr(), c.peer.Port())
	c.snap = p.lb.Load()
	idx := c.snap.PickBounded(c.hash, p.cfg.BalanceFactor, p.lb.Open.Load(), &p.pref)
	if idx < 0 {
		// Every backend is down: refuse at once rather than hold the
		// client (the service logs the state change once).
		p.stats.NoBackend.Add(1)
		c.finish(reasonNoBackend)
		return
	}
	c.dial(idx)
}

// CloseBackend resets the connections to b, for --close-on-down.
func (p *Proxy) CloseBackend(b *balancer.Backend) {
	for i := 0; i < len(p.conns); {
		// By address: a weight change makes a new *Backend for the same
		// backend, and connections opened before it hold the old one.
		if c := p.conns[i]; c.be != nil && c.be.Addr == b.Addr {
			c.finish(reasonBackendDown) // moves the last conn into slot i
			continue
		}
		i++
	}
}

func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

func sockaddrOf(ap netip.AddrPort) (unix.Sockaddr, int) {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, unix.AF_INET6
}
