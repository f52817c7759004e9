package tcpproxy

import (
	"sync"
	"sync/atomic"
)

// Stats are one proxy's counters. The owning loop is the only writer; any
// goroutine may read them. Each Proxy has its own Stats, allocated
// separately, so two loops never write the same cache line; readers sum
// them over loops.
type Stats struct {
	Accepted        atomic.Uint64 // client connections accepted
	Closed          atomic.Uint64 // client connections finished, for any reason
	Established     atomic.Uint64 // backend connections established
	ConnectFailures atomic.Uint64 // connect attempts that failed (refused, unreachable, ...)
	ConnectTimeouts atomic.Uint64 // connect attempts that timed out
	NoBackend       atomic.Uint64 // connections closed because no backend was usable
	Resets          atomic.Uint64 // connections ended by a reset from either side
	IdleTimeouts    atomic.Uint64 // connections closed by the idle timeout
	AcceptErrors    atomic.Uint64 // accept(2) failures (EMFILE, ENFILE, ENOBUFS, ...)
	LocalErrors     atomic.Uint64 // backend connects this host could not make (out of fds, memory or ports)
	AcceptPauses    atomic.Uint64 // times accepting was paused (fd exhaustion or --max-conns)
	BytesUp         atomic.Uint64 // bytes client → backend
	BytesDown       atomic.Uint64 // bytes backend → client
	SplicedBytes    atomic.Uint64 // of those, bytes moved with splice(2)
	PipeFallbacks   atomic.Uint64 // reads that wanted a pipe, found none, and copied
	ProxyMalformed  atomic.Uint64 // PROXY headers that were malformed, missing or too long
	ProxyUntrusted  atomic.Uint64 // connections from a peer not trusted to send a PROXY header
	ProxyTimeouts   atomic.Uint64 // clients that sent no complete PROXY header in time
	ProxyDenied     atomic.Uint64 // clients whose PROXY-claimed address the deny/allow lists refuse
	HandedOver      atomic.Uint64 // connections accepted here and handed to a less busy loop (see Group)
	_               [64]byte      // keep the next allocation off the last line
}

// Active returns the connections open now (accepted and not closed).
func (s *Stats) Active() int64 {
	closed := s.Closed.Load() // first: see the gauge in server/metrics.go
	return int64(s.Accepted.Load()) - int64(closed)
}

// Limiter caps the connections open at once across all loops of a process
// (--max-conns). Safe for concurrent use.
type Limiter struct {
	max int64
	cur atomic.Int64

	// The proxies that paused a listener (at the limit, or after an accept
	// error) and wait for a close: a connection that closes in any service
	// frees a slot and a descriptor for one of them. A queue, oldest first.
	// mu guards parked and each Proxy's parked.
	mu      sync.Mutex
	parked  []*Proxy
	nparked atomic.Int32 // len(parked), read without mu on every close
}

// NewLimiter returns a limiter admitting max connections; max <= 0 means
// unlimited.
func NewLimiter(max int) *Limiter { return &Limiter{max: int64(max)} }

// Acquire takes a slot and reports whether one was free.
func (l *Limiter) Acquire() bool {
	if l.max <= 0 {
		l.cur.Add(1)
		return true
	}
	if l.cur.Add(1) > l.max {
		l.cur.Add(-1)
		return false
	}
	return true
}

// Release frees a slot taken with Acquire.
func (l *Limiter) Release() { l.cur.Add(-1) }

// Open returns the slots taken now.
func (l *Limiter) Open() int64 { return l.cur.Load() }

// park queues p, which paused a listener, for a wake. Each proxy is queued
// once, however often it pauses.
func (l *Limiter) park(p *Proxy) {
	l.mu.Lock()
	if !p.parked {
		p.parked = true
		l.parked = append(l.parked, p)
		l.nparked.Store(int32(len(l.parked)))
	}
	l.mu.Unlock()
}

// wake resumes, on its own loop, the proxy that has waited longest with a
// listener still paused, other than self, which the caller has resumed
// itself (and which stays queued if that failed, see listener.retry).
// One close frees one slot, so one proxy is woken: waking every parked
// proxy of every service and loop would have all but one find the limit
// again and pause, five syscalls each, on every close while the limit
// holds. A proxy that parks just after wake looked waits for the next close
// or its own pause timer, whichever comes first. Any goroutine.
func (l *Limiter) wake(self *Proxy) {
	if l.nparked.Load() == 0 {
		return
	}
	var next *Proxy
	l.mu.Lock()
	kept := l.parked[:0]
	for _, p := range l.parked {
		switch {
		case !p.paused.Load():
			p.parked = false // resumed: by itself, its timer or a wake
		case p != self && next == nil && p.paused.CompareAndSwap(true, false):
			p.parked = false
			next = p
		default:
			kept = append(kept, p) // self among them when its re-arm failed
		}
	}
	clear(l.parked[len(kept):])
	l.parked = kept
	l.nparked.Store(int32(len(kept)))
	l.mu.Unlock()
	if next != nil {
		next.loop.Submit(next.resumeFn)
	}
}
