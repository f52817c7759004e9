// Package udpproxy proxies UDP datagrams on an event loop with a session per
// client address.
//
// Each loop has its own SO_REUSEPORT listening socket, so the kernel hashes
// a client's address to one loop and the client's session lives there. A
// session is a UDP socket connected to the backend that Maglev picked for the
// client (the same hash keys as TCP): the client's datagrams go out on it,
// and what the backend sends back on it goes to the client from the
// listening socket, so the client sees replies come from the address it sent
// to. Datagram boundaries are kept: each datagram is received whole (64 KiB
// buffers) and sent as one.
//
// Sessions end after Config.SessionTimeout with no datagram either way, or
// when the client's loop has reached its share of the process-wide cap of
// a SessionLimiter and a new client needs room: of the services on the
// loop, the one holding the most sessions there gives up its least
// recently active one (see victim), so a flood of new clients on one
// service recycles that service's sessions rather than taking every slot
// from the others. A session whose backend has left the backend set is
// moved to the key's new Maglev choice on its next client datagram; a
// session whose backend is still in the set keeps it, as a TCP connection
// does. Checking costs one pointer comparison per read, and a look at the
// session's target (see target) per datagram.
//
// Listening addresses must be specific: a socket bound to 0.0.0.0 or ::
// would need IP_PKTINFO on every datagram to reply from the right address,
// so Listen refuses them (ErrWildcard).
//
// Datagrams are read and written up to Config.Batch at a time with
// recvmmsg/sendmmsg: client datagrams from the listening socket (each then
// sent on its session's socket, one send each), and replies, read from
// every session socket that is ready in one wake-up of the loop and sent to
// their clients together in one sendmmsg on the listening socket.
// Gathering the replies, measured 2026-11-22 against the build before it
// (cmd/sluice-bench udp, 16 clients, closed loop, 5 s, alternating, two
// rounds): 52.1k and 48.9k against 65.4k and 57.0k round trips/s; strace
// over 20,000 round trips counted 3,927 reply sends instead of 20,000, and
// 55,000 syscalls in all instead of 73,000. Measured 2026-11-22 on a
// 2-vCPU Xeon VM (Linux 6.18, Firecracker) shared with other load, medians
// of five runs: BenchmarkRoundTrip (32 clients, 8 requests in flight each)
// costs the loop 5.4 µs of CPU per datagram unbatched and 4.3 µs at Batch
// 32 (35k against 42k round trips/s); with one request in flight, 5.7
// against 5.1 µs. BenchmarkBatchIO puts the syscall share at about 0.5 µs
// per call. cmd/sluice-bench udp at a fixed 20k and 40k requests/s (64
// clients) measured 10% and 4% less proxy CPU per request at Batch 32,
// with a median latency two to three times lower.
//
// Per-backend traffic is counted in the backends' own per-loop counters
// (balancer.Backend.Loops), as TCP's is: datagrams and payload bytes when
// sent on, so drops are not in them, and each session opened on a backend
// or moved to it as a connection. Those counters leave with the backend,
// so a churning backend set grows nothing here. The sessions to one
// backend share a target, so that when the backend leaves and comes back
// (a new Backend, with counters of its own) one update per backend makes
// them count there: at the next read of a client datagram, or at once
// when the proxy is told of the change (Refresh).
//
// A drain keeps the sessions open, so that their traffic still goes both
// ways, from and to the service's address, and ends each after
// Config.DrainIdle with no datagram either way (or SessionTimeout, when
// shorter); the drain is over when the last one has ended, and the caller
// bounds it (the server's --drain-timeout) with CloseAll. An upgrade's
// drain (Drain) takes the listening sockets out of the loop's epoll set
// but keeps them open: the successor holds the same sockets and reads the
// clients' datagrams from then on, opening sessions of its own, so all
// that a session can still carry is its backend's answers to what was
// sent on before. A stop's drain (DrainAlone) has no successor: it goes
// on reading the sockets, so the clients of the open sessions go on
// talking to their backends, and it opens no session for a new client
// (DropDraining), as a TCP listener that has closed takes no connection.
//
// Drops are counted by reason (see DropReason), including the datagrams
// the kernel drops when a socket's receive queue overflows, so that every
// datagram is accounted for. Nothing blocks the loop: a send that would
// block is a drop.
//
// A Proxy belongs to one loop.Loop; all its methods except Stats run on that
// loop's goroutine (reach them with Loop.Submit). Nothing is done per
// session or per datagram on another goroutine, and nothing is logged per
// datagram.
package udpproxy

import (
	"net/netip"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/loop"
)

const (
	// eventBudget bounds the datagrams read per readiness event of one
	// socket, so that a flood on one cannot starve the others. Sockets are
	// level-triggered: what is left is reported again.
	eventBudget = 64
	// expireBudget bounds the sessions ended per firing of the expiry
	// timer; the rest wait one loop iteration.
	expireBudget = 1024
)

// Proxy proxies the datagrams of one service on one loop. All methods except
// Stats run on the loop goroutine.
type Proxy struct {
	loop  *loop.Loop
	id    int // the loop's number, indexing the backends' per-loop counters
	cfg   Config
	lb    *balancer.Pool
	slots *share // this loop's share of the session cap, and its proxies (p among them)
	log   *zap.Logger
	debug bool

	// lns are the listening sockets, each read for client datagrams: one,
	// or more in the successor of an upgrade from a process with more
	// loops. They are bound to the same address, so a reply may leave
	// from any: it leaves from lnfd, the first; -1 before Listen and after
	// CloseAll. From Drain on (yielded) they are no longer read, only
	// written to; from DrainAlone on they are read, but a new client gets
	// no session.
	lns      []*listener
	lnfd     int
	draining bool // Drain or DrainAlone has been called
	yielded  bool // Drain has been called: the successor reads lns
	// idle is how long a session may go without a datagram, in loop-clock
	// nanoseconds: cfg.SessionTimeout, and from Drain or DrainAlone on
	// at most cfg.DrainIdle.
	idle int64

	// buf holds the datagrams of one read from the listening socket, or
	// the replies gathered from session sockets during one wake-up: slots
	// 0..pend-1 wait to go to their clients, slot i for session owner[i].
	// They go out in one sendmmsg when the wake-up's events are handled
	// (flushQueued: the loop will call flush), when the slots run out, or
	// before the listening socket is read into the same slots.
	buf         *batch
	pend        int
	owner       []*session
	flushQueued bool
	flush       func() // flushDeferred, bound once

	sessions map[netip.AddrPort]*session
	// targets are the backends the sessions use, by address (see target).
	targets map[netip.AddrPort]*target
	// lru is the sentinel of the ring of sessions ordered by last activity:
	// lru.next is the most recently active, lru.prev the least.
	lru session
	// expiry fires at the deadline of the least recently active session
	// (or later: it is re-armed lazily) and ends the sessions past theirs.
	expiry loop.Timer

	// snap is the backend set as of the last client datagrams read (or
	// Refresh). Only the proxy holds it: a session whose backend left it
	// is marked through its target (target.gone), so that an idle session
	// keeps no old snapshot (and its Maglev table) alive.
	snap *balancer.Snapshot

	stats   *Stats
	drained chan struct{}
}

// New returns a proxy for one loop. It receives nothing until Listen.
// id is the loop's number (0 to loops-1) for the per-loop counters of the
// backends in lb (balancer.Backend.Loops) and for its share of limiter's
// cap; limiter is shared by the proxies of all loops of the process.
func New(l *loop.Loop, id int, cfg Config, lb *balancer.Pool, limiter *SessionLimiter, log *zap.Logger) *Proxy {
	cfg.Batch = max(1, min(cfg.Batch, MaxBatch))
	p := &Proxy{
		loop:     l,
		id:       id,
		cfg:      cfg,
		lb:       lb,
		log:      log,
		debug:    log.Core().Enabled(zap.DebugLevel),
		lnfd:     -1,
		idle:     int64(cfg.SessionTimeout),
		buf:      newBatch(cfg.Batch),
		owner:    make([]*session, cfg.Batch),
		sessions: make(map[netip.AddrPort]*session),
		targets:  make(map[netip.AddrPort]*target),
		stats:    new(Stats),
	}
	p.slots = limiter.join(p)
	p.lru.next, p.lru.prev = &p.lru, &p.lru
	p.expiry.F = p.expire
	p.flush = p.flushDeferred
	return p
}

// Stats returns the proxy's counters; safe for concurrent use.
func (p *Proxy) Stats() *Stats { return p.stats }

// Sessions returns the number of open sessions. Loop goroutine only.
func (p *Proxy) Sessions() int { return len(p.sessions) }

// Listen takes ownership of the UDP socket fd (from Listen) and starts
// receiving on it. A proxy may have several sockets bound to the same
// address (sockets handed over by an upgrade beyond the loop count); each
// is read. Loop goroutine, or before the loop runs; not after Drain.
func (p *Proxy) Listen(fd int) error {
	countDropsInline(fd)
	ln := &listener{p: p, fd: fd, drops: socketDrops(fd)}
	if err := p.loop.Add(fd, loop.In, ln); err != nil {
		return err
	}
	p.lns = append(p.lns, ln)
	if p.lnfd < 0 {
		p.lnfd = fd
	}
	return nil
}

// ListenerFDs returns the listening sockets, for an upgrade's handoff; the
// proxy keeps them open. A draining proxy hands over none.
func (p *Proxy) ListenerFDs() []int {
	if p.draining {
		return nil
	}
	fds := make([]int, 0, len(p.lns))
	for _, ln := range p.lns {
		fds = append(fds, ln.fd)
	}
	return fds
}

// Drain begins the drain of an upgrade: it stops reading the listening
// sockets and returns a channel closed once every session has ended. The
// sockets stay open, for the replies: the successor holds the same
// sockets and reads them (so this proxy must stop reading them, and
// closing them would not take them out of the SO_REUSEPORT group). The
// sessions go on receiving from their backends, and each ends after
// Config.DrainIdle (or SessionTimeout, when shorter) with no datagram
// either way: its client's next datagram reaches the successor, so all
// that can still come is answers to what was sent on before. Those idle
// that long already end now. CloseAll ends the rest and closes the
// sockets. Drain after DrainAlone stops the reading.
func (p *Proxy) Drain() <-chan struct{} { return p.drain(true) }

// DrainAlone begins the drain of a stop, which no successor takes over:
// the proxy goes on reading the listening sockets, sends on the datagrams
// of the clients that have a session, and drops (DropDraining) those of
// new clients, for which it opens no session. It returns a channel closed
// once every session has ended: each ends after Config.DrainIdle (or
// SessionTimeout, when shorter) with no datagram either way, and those
// idle that long already end now. CloseAll ends the rest and closes the
// sockets. Never call it once a successor reads the sockets: it would
// take their datagrams.
func (p *Proxy) DrainAlone() <-chan struct{} { return p.drain(false) }

// drain is Drain (yield: the successor reads the listening sockets) and
// DrainAlone.
func (p *Proxy) drain(yield bool) <-chan struct{} {
	if p.drained == nil {
		p.drained = make(chan struct{})
	}
	if yield && !p.yielded {
		p.yielded = true
		// The drops from now on are the successor's to count.
		p.countListenDrops()
		for _, ln := range p.lns {
			// Remove, not Forget: the socket stays open (and is
			// the successor's too), so nothing else takes it out of
			// this loop's epoll set.
			p.loop.Remove(ln.fd)
		}
	}
	if !p.draining {
		p.draining = true
		p.idle = min(p.idle, int64(p.cfg.DrainIdle))
		p.loop.Cancel(&p.expiry)
		p.expire()
	}
	p.checkDrained()
	return p.drained
}

// checkDrained closes the drained channel once a drain has begun and the
// last session has ended.
func (p *Proxy) checkDrained() {
	if p.draining && len(p.sessions) == 0 && p.drained != nil {
		select {
		case <-p.drained:
		default:
			close(p.drained)
		}
	}
}

// CloseAll ends every session and closes the listening sockets, and
// returns how many sessions it ended. The proxy holds no fd afterwards.
func (p *Proxy) CloseAll() int {
	p.flushReplies()
	n := 0
	for p.lru.prev != &p.lru {
		p.end(p.lru.prev)
		n++
	}
	p.loop.Cancel(&p.expiry)
	if !p.yielded {
		p.countListenDrops()
	}
	for _, ln := range p.lns {
		if !p.yielded {
			// Remove, not Forget: after an upgrade the socket lives on
			// in the successor, and an fd closed while its file stays
			// open is not taken out of the epoll set.
			p.loop.Remove(ln.fd)
		}
		unix.Close(ln.fd)
	}
	p.lns = nil
	p.lnfd = -1
	return n
}

// listener is one listening socket of a Proxy.
type listener struct {
	p     *Proxy
	fd    int
	drops uint32 // the kernel's drop count of fd as last counted
}

// HandleEvent reads client datagrams and sends each on its session.
func (ln *listener) HandleEvent(uint32) {
	p := ln.p
	b := p.buf
	// The slots are about to be reused, and handling client datagrams can
	// end or remap sessions: the replies gathered so far go first.
	p.flushReplies()
	for read := 0; read < eventBudget; {
		n, err := b.recv(ln.fd, 0, p.cfg.Batch, true)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return // EAGAIN; nothing else is expected of an unconnected socket
		}
		if snap := p.lb.Load(); snap != p.snap {
			p.follow(snap)
		}
		for i := range n {
			if k := b.newDrops(i, &ln.drops); k > 0 {
				p.stats.drop(DropListenQueue, k)
			}
			p.forward(i)
		}
		read += n
		if n < p.cfg.Batch {
			return // the queue is empty, or nearly: a new arrival is reported again
		}
	}
}

// forward sends client datagram i of p.buf to the client's session,
// opening or remapping the session as needed.
func (p *Proxy) forward(i int) {
	b := p.buf
	if b.msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
		p.stats.drop(DropTruncated, 1)
		return
	}
	client := addrOfRaw(&b.names[i])
	s := p.sessions[client]
	if s == nil {
		if p.draining {
			// Only a DrainAlone's proxy reads: its sessions go on,
			// but it takes no new client.
			p.stats.drop(DropDraining, 1)
			return
		}
		if s = p.open(client, &b.names[i], b.msgs[i].Hdr.Namelen); s == nil {
			return
		}
	} else if s.t.gone && !p.recheck(s) {
		return
	}
	p.touch(s)
	data := b.data(i)
	err := sendConnected(s.fd, data)
	if err == unix.ECONNREFUSED || err == unix.EINTR {
		// ECONNREFUSED reports an ICMP port unreachable for an earlier
		// datagram; reporting it cleared it, so this one can go.
		if err == unix.ECONNREFUSED {
			p.stats.drop(DropBackendRefused, 1)
		}
		err = sendConnected(s.fd, data)
	}
	if err != nil {
		p.stats.drop(DropSendBackendFailed, 1)
		return
	}
	lc := &s.t.be.Loops[p.id]
	lc.DatagramsUp.Add(1)
	lc.BytesUp.Add(uint64(len(data)))
}

// relay reads what the backend of s sent into the free slots of p.buf,
// to go to the client from the listening socket with the replies of other
// sessions ready in the same wake-up.
func (p *Proxy) relay(s *session) {
	b := p.buf
	for read := 0; read < eventBudget; {
		if p.pend == p.cfg.Batch {
			p.flushReplies()
		}
		lo := p.pend
		n, err := b.recv(s.fd, lo, p.cfg.Batch, false)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.ECONNREFUSED:
			p.stats.drop(DropBackendRefused, 1)
			continue
		default:
			return // EAGAIN; other errors are transient datagram errors
		}
		for i := lo; i < lo+n; i++ {
			if k := b.newDrops(i, &s.drops); k > 0 {
				p.stats.drop(DropSessionQueue, k)
			}
			h := &b.msgs[i].Hdr
			b.iovs[i].SetLen(int(b.msgs[i].Len))
			h.Name = (*byte)(unsafe.Pointer(&s.name))
			h.Namelen = s.nameLen
			h.Control = nil
			h.SetControllen(0)
			p.owner[i] = s
		}
		p.pend += n
		if !p.flushQueued {
			p.flushQueued = true
			p.loop.Defer(p.flush)
		}
		p.touch(s)
		read += n
		if lo+n < p.cfg.Batch {
			return // the queue is empty, or nearly
		}
	}
}

// flushDeferred is flushReplies run by the loop after a wake-up's events.
func (p *Proxy) flushDeferred() {
	p.flushQueued = false
	p.flushReplies()
}

// flushReplies sends the gathered replies, slots 0..pend-1 of p.buf, to
// their clients. One the listening socket cannot take now is dropped, never
// waited for.
func (p *Proxy) flushReplies() {
	b, n := p.buf, p.pend
	if n == 0 {
		return
	}
	p.pend = 0
	defer clear(p.owner[:n])
	for off := 0; off < n; {
		if p.lnfd < 0 {
			p.stats.drop(DropSendClientFailed, n-off)
			return
		}
		k, err := b.send(p.lnfd, off, n)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			// The send buffer is full; the rest would fail alike.
			p.stats.drop(DropSendClientFailed, n-off)
			return
		default:
			// An error of this datagram (EPERM from a firewall,
			// EMSGSIZE, ...): skip it, send the rest.
			p.stats.drop(DropSendClientFailed, 1)
			off++
			continue
		}
		for i := off; i < off+k; i++ {
			lc := &p.owner[i].t.be.Loops[p.id]
			lc.DatagramsDown.Add(1)
			lc.BytesDown.Add(uint64(b.msgs[i].Len))
		}
		off += k
	}
}

// countListenDrops counts the kernel's drops at every listening socket.
func (p *Proxy) countListenDrops() {
	for _, ln := range p.lns {
		ln.countDrops()
	}
}

// countDrops adds the datagrams the kernel dropped at the listening
// socket since the last look (its receive queue was full) to the stats.
func (ln *listener) countDrops() {
	d := socketDrops(ln.fd)
	ln.p.stats.drop(DropListenQueue, int(d-ln.drops))
	ln.drops = d
}

// countSessionDrops is countDrops for a session socket, for when it
// closes: while it is open, relay counts from the datagrams.
func (p *Proxy) countSessionDrops(s *session) {
	d := socketDrops(s.fd)
	p.stats.drop(DropSessionQueue, int(d-s.drops))
	s.drops = d
}
