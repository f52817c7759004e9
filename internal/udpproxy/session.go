package udpproxy

import (
	"net/netip"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/loop"
)

// session is one client address's mapping to a backend. It is owned by its
// proxy's loop; nothing else touches it. It has no timer of its own: the
// proxy's LRU ring orders sessions by last activity and one expiry timer
// serves them all.
type session struct {
	p          *Proxy
	fd         int                   // UDP socket connected to t's backend; -1 once ended
	prev, next *session              // LRU ring neighbours, most recent towards p.lru.next
	lastActive int64                 // loop clock of the last datagram either way
	hash       uint64                // key hash of the client address
	t          *target               // the backend, which counts this session once connected
	client     netip.AddrPort        // key in p.sessions
	name       unix.RawSockaddrInet6 // client address as the kernel gave it, for replies
	nameLen    uint32
	drops      uint32 // the kernel's drop count of fd as last counted
}

// HandleEvent reads replies from the backend.
func (s *session) HandleEvent(uint32) { s.p.relay(s) }

// target is a backend as the sessions of one proxy use it: the sessions to
// one backend address share a target, whose be their traffic and their
// count go to. A backend that leaves the service and comes back is a new
// Backend, with counters of its own (those /backends and the metrics
// read): follow moves the target to it, so that one update per backend,
// not per session, makes its sessions count there. Owned by the proxy's
// loop, like the sessions.
type target struct {
	// be is the member at the address in p.snap; once the address is no
	// member, the last one, until the sessions move to other backends.
	// be.Active counts the n sessions.
	be *balancer.Backend
	n  int
	// gone: the address is no member of p.snap, so each session moves
	// to another backend at its next client datagram (recheck).
	gone bool
}

// Refresh takes up the backend set lb holds now, as the next read of
// client datagrams would: the sessions to a backend that left the service
// and came back count there from now on, open and with their replies,
// rather than from their client's next datagram. The server calls it
// whenever the service's members change. Loop goroutine only.
func (p *Proxy) Refresh() {
	if snap := p.lb.Load(); snap != p.snap {
		p.follow(snap)
	}
}

// follow makes snap the backend set the proxy works from, and moves each
// target whose backend is a member of snap as another Backend to that
// one. A target whose backend is no member stays, marked gone: its
// sessions move to other backends at their next client datagram
// (recheck).
func (p *Proxy) follow(snap *balancer.Snapshot) {
	p.snap = snap
	for _, t := range p.targets {
		b := snap.Member(t.be.Addr)
		t.gone = b == nil
		if b == nil || b == t.be {
			continue
		}
		if b.Active != t.be.Active {
			// Not a new weight, whose Backend shares the old one's
			// counters: the backend left and came back.
			t.be.Active.Add(-int64(t.n))
			b.Active.Add(int64(t.n))
		}
		t.be = b
	}
}

// attach makes be the backend of s, counted there.
func (p *Proxy) attach(s *session, be *balancer.Backend) {
	t := p.targets[be.Addr]
	if t == nil {
		t = &target{be: be}
		p.targets[be.Addr] = t
	}
	t.n++
	t.be.Active.Add(1)
	s.t = t
}

// detach uncounts s at its backend. s keeps t, so that the replies it
// gathered before it ended still count there when they go out.
func (p *Proxy) detach(s *session) {
	t := s.t
	t.be.Active.Add(-1)
	if t.n--; t.n == 0 {
		delete(p.targets, t.be.Addr)
	}
}

// open creates the session of a new client: picks its backend in p.snap,
// connects a socket, and makes room at the loop's share of the session
// cap. It returns nil, with the datagram counted as dropped, when it
// cannot. Nothing is evicted for a session that cannot be made, except
// when the process is out of fds: then a session gives its socket up
// before the new one can try.
func (p *Proxy) open(client netip.AddrPort, name *unix.RawSockaddrInet6, nameLen uint32) *session {
	snap := p.snap
	hash := p.cfg.HashKey.Hash(client.Addr(), client.Port())
	idx := snap.Pick(hash)
	if idx < 0 {
		p.stats.drop(DropNoBackend, 1)
		return nil
	}
	// full: at the loop's share of the cap, so v, a session on this
	// loop, is to make room; its slot passes to the new session. v is ended only once the new
	// session's socket is connected.
	var v *session
	full := !p.slots.acquire()
	if full {
		if v = p.victim(); v == nil {
			p.stats.drop(DropSessionLimit, 1)
			return nil
		}
	}
	be := snap.Backends[idx]
	s := &session{p: p, fd: -1, hash: hash, client: client, name: *name, nameLen: nameLen}
	err := p.connect(s, be)
	if err == unix.EMFILE || err == unix.ENFILE {
		// Out of fds: a session on this loop gives its socket up, and
		// its slot, which the new session takes or, holding one of
		// its own, frees.
		if v == nil {
			v = p.victim()
		}
		if v != nil {
			v.p.evict(v)
			if !full {
				p.slots.release()
			}
			full, v = false, nil
			err = p.connect(s, be)
		}
	}
	if err != nil {
		if !full {
			p.slots.release()
		}
		p.stats.drop(DropSocketFailed, 1)
		return nil
	}
	if v != nil {
		v.p.evict(v)
	}
	p.sessions[client] = s
	p.attach(s, be)
	s.prev, s.next = &p.lru, p.lru.next
	s.prev.next, s.next.prev = s, s
	s.lastActive = p.loop.Now()
	p.stats.SessionsCreated.Add(1)
	if !p.expiry.Scheduled() {
		p.loop.Schedule(&p.expiry, s.lastActive+p.idle)
	}
	if p.debug {
		p.log.Debug("udp session opened", zap.Stringer("client", client), zap.Stringer("backend", be.Addr))
	}
	return s
}

// connect opens a socket connected to be, registers it, and makes it the
// socket of s, closing the one s had. A session connected counts as a
// connection to be, as a TCP connection established does (the admin
// API's connections_total); connect(2) failing (no route, ...) counts as
// a connect error. The caller moves s to be (attach).
func (p *Proxy) connect(s *session, be *balancer.Backend) error {
	sa, family := sockaddrOf(be.Addr)
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	countDropsInline(fd)
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		be.Loops[p.id].ConnectErrors.Add(1)
		return err
	}
	if err := p.loop.Add(fd, loop.In, s); err != nil {
		unix.Close(fd)
		return err
	}
	if s.fd >= 0 {
		p.countSessionDrops(s)
		p.loop.Forget(s.fd)
		unix.Close(s.fd)
	}
	s.fd = fd
	s.drops = 0
	be.Loops[p.id].Connections.Add(1)
	return nil
}

// recheck is called when the backend of s has left the backend set
// (s.t.gone): s moves to the key's choice in p.snap. A session whose
// backend is still a member of the service keeps it, even while it is
// drained or down (as a TCP connection does; --close-on-down ends such
// sessions), and is not rechecked. It reports whether s is still usable;
// when not, s has been ended and the datagram counted as dropped.
func (p *Proxy) recheck(s *session) bool {
	snap := p.snap
	idx := snap.Pick(s.hash)
	if idx < 0 {
		p.stats.drop(DropNoBackend, 1)
		p.end(s)
		return false
	}
	be := snap.Backends[idx]
	if err := p.connect(s, be); err != nil {
		p.stats.drop(DropSocketFailed, 1)
		p.end(s)
		return false
	}
	old := s.t.be.Addr
	p.detach(s)
	p.attach(s, be)
	p.stats.Remaps.Add(1)
	if p.debug {
		p.log.Debug("udp session remapped", zap.Stringer("client", s.client), zap.Stringer("from", old), zap.Stringer("to", be.Addr))
	}
	return true
}

// CloseBackend ends the sessions on backend b (--close-on-down): the next
// datagram of each client opens a session on a usable backend. Loop
// goroutine only.
func (p *Proxy) CloseBackend(b *balancer.Backend) {
	for s := p.lru.next; s != &p.lru; {
		next := s.next
		if s.t.be.Addr == b.Addr {
			if p.debug {
				p.log.Debug("udp session closed: backend down", zap.Stringer("client", s.client), zap.Stringer("backend", s.t.be.Addr))
			}
			p.end(s)
		}
		s = next
	}
}

// touch records activity on s: it becomes the most recently active.
func (p *Proxy) touch(s *session) {
	s.lastActive = p.loop.Now()
	if p.lru.next == s {
		return
	}
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = &p.lru, p.lru.next
	s.prev.next, s.next.prev = s, s
}

// victim returns the session that makes room for a new client of p: the
// least recently active session of whichever proxy on p's loop (p, or
// another service's) holds the most sessions, p's own on a tie; nil when
// the loop holds none. A service flooded with new clients thus recycles
// its own sessions once it holds the most, and a quiet service still gets
// room. The proxies of one loop share its goroutine, so reading and ending
// another's sessions is safe here.
func (p *Proxy) victim() *session {
	v := p
	for _, q := range *p.slots.peers.Load() {
		if len(q.sessions) > len(v.sessions) {
			v = q
		}
	}
	if s := v.lru.prev; s != &v.lru {
		return s
	}
	return nil
}

// evict ends s, a session of p, to make room for a new session, which
// takes its slot of the session cap: the slot is not released.
func (p *Proxy) evict(s *session) {
	p.stats.SessionsEvicted.Add(1)
	if p.debug {
		p.log.Debug("udp session evicted", zap.Stringer("client", s.client), zap.Stringer("backend", s.t.be.Addr))
	}
	p.endKeepSlot(s)
	p.checkDrained() // the slot is the new session's
}

// expire is the expiry timer: it ends the sessions idle for p.idle (the
// session timeout, or less while draining) and re-arms for the next
// deadline. Traffic costs it nothing: a session that was active since the
// timer was set is simply further from the tail of the ring when it fires.
func (p *Proxy) expire() {
	now := p.loop.Now()
	timeout := p.idle
	for n := 0; ; n++ {
		s := p.lru.prev
		if s == &p.lru {
			return // no session; the next one arms the timer
		}
		if deadline := s.lastActive + timeout; deadline > now {
			p.loop.Schedule(&p.expiry, deadline)
			return
		}
		if n == expireBudget {
			// After the loop's next events; a deadline of now would
			// fire again in this same round of timers.
			p.loop.Schedule(&p.expiry, now+1)
			return
		}
		p.stats.SessionsExpired.Add(1)
		if p.debug {
			p.log.Debug("udp session expired", zap.Stringer("client", s.client), zap.Stringer("backend", s.t.be.Addr))
		}
		p.end(s)
	}
}

// end closes the session's socket, forgets it, and frees its slot of the
// session cap.
func (p *Proxy) end(s *session) {
	p.endKeepSlot(s)
	p.slots.release()
	// After the release: whoever the drain wakes sees the slot free.
	p.checkDrained()
}

// endKeepSlot is end for a session whose slot passes to a new one.
func (p *Proxy) endKeepSlot(s *session) {
	p.countSessionDrops(s)
	p.loop.Forget(s.fd)
	unix.Close(s.fd)
	s.fd = -1
	delete(p.sessions, s.client)
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
	p.detach(s)
	p.stats.SessionsEnded.Add(1)
}
