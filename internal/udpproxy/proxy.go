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
// when the process-wide cap of a SessionLimiter is reached and a new client
// needs room (the loop's least recently active session goes first). A
// session whose backend has left the backend set is moved to the key's new
// Maglev choice on its next client datagram; a session whose backend is
// still in the set keeps it, as a TCP connection does.
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
	// listenBudget bounds the client datagrams read per readiness event of
	// the listening socket, so a flood of clients cannot starve replies.
	// The sockets are level-triggered: what is left is reported again.
	listenBudget = 64
	// expireBudget bounds the sessions ended per firing of the expiry
	// timer; the rest wait one loop iteration.
	expireBudget = 1024
)

// Proxy proxies the datagrams of one service on one loop. All methods except
// Stats run on the loop goroutine.
type Proxy struct {
	loop    *loop.Loop
	cfg     Config
	lb      *balancer.Pool
	limiter *SessionLimiter
	log     *zap.Logger
	debug   bool

	lnfd int // the listening socket; -1 before Listen and after Drain

	// in holds the client datagrams of one listener read; it is empty
	// between events.
	in *batch
	// out holds replies read from session sockets and not yet sent to the
	// clients: slots 0..pending-1, each with its client's address in its
	// Name and its backend's counters in outBC. They are sent together
	// when out is full or at the end of the loop iteration (flush timer),
	// so that the replies of many sessions cost one sendmmsg.
	out     *batch
	outBC   []*BackendCounters
	pending int
	flush   loop.Timer
	// eachReply sends every reply as it is read instead of at the end of
	// the iteration; for the benchmark that measures the difference.
	eachReply bool

	sessions map[netip.AddrPort]*session
	// lru is the sentinel of the ring of sessions ordered by last activity:
	// lru.next is the most recently active, lru.prev the least.
	lru session
	// expiry fires at the deadline of the least recently active session
	// (or later: it is re-armed lazily) and ends the sessions past theirs.
	expiry loop.Timer

	// members is the set of backend addresses of membersOf, built when a
	// session first meets a new snapshot.
	membersOf *balancer.Snapshot
	members   map[netip.AddrPort]struct{}

	counters map[netip.AddrPort]*BackendCounters // loop-side index of stats.backends
	stats    *Stats
	drained  chan struct{}
}

// New returns a proxy for one loop. It receives nothing until Listen.
// limiter is shared by the proxies of all loops of the process.
func New(l *loop.Loop, cfg Config, lb *balancer.Pool, limiter *SessionLimiter, log *zap.Logger) *Proxy {
	if cfg.Batch < 1 {
		cfg.Batch = 1
	}
	if cfg.Batch > MaxBatch {
		cfg.Batch = MaxBatch
	}
	p := &Proxy{
		loop:     l,
		cfg:      cfg,
		lb:       lb,
		limiter:  limiter,
		log:      log,
		debug:    log.Core().Enabled(zap.DebugLevel),
		lnfd:     -1,
		in:       newBatch(cfg.Batch),
		out:      newBatch(cfg.Batch),
		outBC:    make([]*BackendCounters, cfg.Batch),
		sessions: make(map[netip.AddrPort]*session),
		counters: make(map[netip.AddrPort]*BackendCounters),
		stats:    new(Stats),
	}
	p.lru.next, p.lru.prev = &p.lru, &p.lru
	p.expiry.F = p.expire
	p.flush.F = p.flushReplies
	return p
}

// Stats returns the proxy's counters; safe for concurrent use.
func (p *Proxy) Stats() *Stats { return p.stats }

// Sessions returns the number of open sessions. Loop goroutine only.
func (p *Proxy) Sessions() int { return len(p.sessions) }

// Listen takes ownership of the UDP socket fd (from Listen) and starts
// receiving on it. Loop goroutine, or before the loop runs.
func (p *Proxy) Listen(fd int) error {
	if err := p.loop.Add(fd, loop.In, (*listener)(p)); err != nil {
		return err
	}
	p.lnfd = fd
	return nil
}

// Drain closes the listening socket and ends every session at once, then
// returns a closed channel. UDP has no end-of-session signal to wait for,
// and the replies of a session leave through the listening socket, so a
// session cannot outlive it; closing the socket at once also lets the
// kernel give the service's datagrams to the other sockets of its
// SO_REUSEPORT group (a new process during an upgrade). Replies already
// read are sent first.
func (p *Proxy) Drain() <-chan struct{} {
	p.CloseAll()
	if p.drained == nil {
		p.drained = make(chan struct{})
		close(p.drained)
	}
	return p.drained
}

// CloseAll sends the replies already read, ends every session and closes
// the listening socket. The proxy holds no fd afterwards.
func (p *Proxy) CloseAll() {
	p.flushReplies()
	p.loop.Cancel(&p.flush)
	for p.lru.prev != &p.lru {
		p.end(p.lru.prev)
	}
	p.loop.Cancel(&p.expiry)
	if p.lnfd >= 0 {
		p.loop.Forget(p.lnfd)
		unix.Close(p.lnfd)
		p.lnfd = -1
	}
}

// listener is the Proxy seen as the handler of its listening socket.
type listener Proxy

// HandleEvent reads client datagrams and sends each on its session.
func (ln *listener) HandleEvent(uint32) {
	p := (*Proxy)(ln)
	b := p.in
	for read := 0; read < listenBudget && p.lnfd >= 0; {
		n, err := b.recv(p.lnfd, 0, p.cfg.Batch, true)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return // EAGAIN; nothing else is expected of an unconnected socket
		}
		snap := p.lb.Load()
		for i := range n {
			p.forward(i, snap)
		}
		read += n
		if n < p.cfg.Batch {
			return // the queue is empty, or nearly: a new arrival is reported again
		}
	}
}

// forward sends client datagram i of p.in to the client's session,
// opening or remapping the session as needed.
func (p *Proxy) forward(i int, snap *balancer.Snapshot) {
	b := p.in
	if b.msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
		p.stats.drop(DropTruncated, 1)
		return
	}
	client := addrOfRaw(&b.names[i])
	s := p.sessions[client]
	if s == nil {
		if s = p.open(client, &b.names[i], b.msgs[i].Hdr.Namelen, snap); s == nil {
			return
		}
	} else if s.snap != snap && !p.recheck(s, snap) {
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
	s.bc.DatagramsUp.Add(1)
	s.bc.BytesUp.Add(uint64(len(data)))
}

// queueReplies reads what the backend of s sent into free slots of p.out,
// addressed to the client of s, and schedules their sending.
func (p *Proxy) queueReplies(s *session) {
	b := p.out
	for read := 0; read < p.cfg.Batch && s.fd >= 0; {
		lo := p.pending
		hi := min(len(b.msgs), lo+p.cfg.Batch-read)
		n, err := b.recv(s.fd, lo, hi, false)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.ECONNREFUSED:
			p.stats.drop(DropBackendRefused, 1)
			continue
		default:
			n = 0 // EAGAIN; other errors are transient datagram errors
		}
		if n == 0 {
			break
		}
		for i := lo; i < lo+n; i++ {
			b.iovs[i].SetLen(int(b.msgs[i].Len))
			b.names[i] = s.name
			b.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			b.msgs[i].Hdr.Namelen = s.nameLen
			p.outBC[i] = s.bc
		}
		p.pending += n
		read += n
		p.touch(s)
		if p.pending == len(b.msgs) || p.eachReply {
			p.flushReplies()
		}
		if n < hi-lo {
			break // the socket's queue is empty, or nearly
		}
	}
	if p.pending > 0 && !p.flush.Scheduled() {
		// A timer due now runs after the events of this iteration: the
		// loop fires due timers once it has handled every fetched event.
		p.loop.Schedule(&p.flush, p.loop.Now())
	}
}

// flushReplies sends the queued replies to their clients. A reply the
// listening socket cannot take now is dropped, never waited for.
func (p *Proxy) flushReplies() {
	b := p.out
	for off := 0; off < p.pending; {
		if p.lnfd < 0 {
			p.stats.drop(DropSendClientFailed, p.pending-off)
			break
		}
		n, err := b.send(p.lnfd, off, p.pending)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			// The send buffer is full; the rest would fail alike.
			p.stats.drop(DropSendClientFailed, p.pending-off)
			off = p.pending
			continue
		default:
			// An error of this datagram's destination (EPERM from a
			// firewall, EHOSTUNREACH, ...): skip it, send the rest.
			p.stats.drop(DropSendClientFailed, 1)
			off++
			continue
		}
		for i := off; i < off+n; i++ {
			p.outBC[i].DatagramsDown.Add(1)
			p.outBC[i].BytesDown.Add(uint64(b.msgs[i].Hdr.Iov.Len))
		}
		off += n
	}
	p.pending = 0
}
