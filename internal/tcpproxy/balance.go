package tcpproxy

import (
	"net/netip"
	"sync"
)

// Spreading connections over the loops.
//
// Each loop accepts from its own SO_REUSEPORT socket, and the kernel picks
// the socket by a hash of the connection's addresses, blind to how busy
// each loop is. Over many short connections that evens out; over a few
// long ones it does not: 50 keep-alive clients split 32/18 between two
// loops in one of five tries (measured 2026-11-22 on the 2-core test VM),
// and a database pool's connections stay where they landed for hours. So
// a loop that accepts a connection while it runs at least two more than
// its least busy sibling hands the connection over to that sibling, as
// HAProxy hands accepted connections between its threads. One hand-over
// costs the sibling a wake-up; under an even spread there are none. The
// count is of the service's own connections: a loop busy with another
// service's, or with a few heavy streams, does not look busy here.
//
// The even spread has a cost of its own at a moderate rate: a loop with
// more connections more often finds several events at one wake-up. At
// 25,000 requests a second over 50 connections on two loops, the loops
// made 1.1-1.3 times the epoll waits and context switches they made with
// the kernel's spread alone (perf stat, three 3 s runs each, 2026-11-22,
// 2-core test VM). That is the price of not leaving one loop with most
// of the work when the rate rises, which for a few busy connections (a
// gRPC channel, a database pool) is the whole of the service's load.

// inbox holds the connections a sibling accepted for this proxy to run. Its
// mutex guards everything in it.
type inbox struct {
	mu     sync.Mutex
	conns  []handed
	spare  []handed // the other buffer, reused
	queued bool     // take is submitted to the loop and has not run yet
	closed bool     // the proxy drains or has closed: it takes no more
}

// handed is one accepted connection on its way to a sibling.
type handed struct {
	fd   int
	peer netip.AddrPort
}

// Group makes proxies, one per loop for the same service, siblings that
// spread the connections they accept over their loops (see above). Call
// it before the loops run. A single proxy needs none.
func Group(ps []*Proxy) {
	if len(ps) < 2 {
		return
	}
	for _, p := range ps {
		p.siblings = ps
	}
}

// load is the connections p runs or has been handed and not yet taken.
// Safe for concurrent use.
func (p *Proxy) load() int64 { return p.stats.Active() + p.pending.Load() }

// lighter returns the least busy sibling when it runs at least two
// connections fewer than p, or nil. Ties go to the first.
func (p *Proxy) lighter() *Proxy {
	var best *Proxy
	min := p.load() - 1
	for _, s := range p.siblings {
		if l := s.load(); l < min {
			best, min = s, l
		}
	}
	return best
}

// hand gives the accepted connection fd to p, from a sibling's loop. It
// reports false, keeping nothing, when p takes no more (it drains or its
// loop has stopped); the caller then runs the connection itself.
//
// The take is submitted under the inbox's lock, so that queued is set only
// once a take is in p's loop queue: every connection appended is then run
// by that take, even on a loop that stops (its finish runs what was
// queued), and a Submit that fails has nothing appended to give back.
// The loop never holds its own lock while it runs a func, so taking it
// under the inbox's cannot deadlock.
func (p *Proxy) hand(fd int, peer netip.AddrPort) bool {
	in := &p.inbox
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return false
	}
	if !in.queued {
		if !p.loop.Submit(p.takeFn) {
			// p's loop has stopped, which happens only on a fatal
			// error.
			in.closed = true
			return false
		}
		in.queued = true
	}
	in.conns = append(in.conns, handed{fd, peer})
	p.pending.Add(1)
	return true
}

// take runs the connections siblings handed to p. Loop goroutine only.
func (p *Proxy) take() {
	in := &p.inbox
	in.mu.Lock()
	batch := in.conns
	in.conns, in.spare = in.spare[:0], nil
	in.queued = false
	in.mu.Unlock()
	for i, h := range batch {
		p.pending.Add(-1)
		p.accept(h.fd, h.peer)
		batch[i] = handed{}
	}
	in.mu.Lock()
	in.spare = batch[:0]
	in.mu.Unlock()
}

// closeInbox takes no more connections from siblings and runs the ones
// already handed. Loop goroutine only.
func (p *Proxy) closeInbox() {
	p.inbox.mu.Lock()
	p.inbox.closed = true
	p.inbox.mu.Unlock()
	p.take()
}
