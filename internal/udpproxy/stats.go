package udpproxy

import (
	"sync"
	"sync/atomic"

	"github.com/sluice-lb/sluice/internal/loop"
)

// DropReason says why a datagram was not forwarded. Its String is the
// metrics label value.
type DropReason uint8

// The drop reasons.
const (
	// DropNoBackend: no backend has weight (client datagram).
	DropNoBackend DropReason = iota
	// DropSessionLimit: a new client found the session cap reached and no
	// session on its loop to evict, of any service (the cap is held by
	// sessions on other loops).
	DropSessionLimit
	// DropSocketFailed: the session socket toward the backend could not be
	// opened (EMFILE, ENOBUFS, ...).
	DropSocketFailed
	// DropSendBackendFailed: send to the backend failed or would block.
	DropSendBackendFailed
	// DropSendClientFailed: send to the client failed or would block.
	DropSendClientFailed
	// DropTruncated: a datagram did not fit the 64 KiB buffer (only
	// possible for IPv6 jumbograms).
	DropTruncated
	// DropBackendRefused: the backend host answered an earlier datagram
	// with ICMP port unreachable (reported on the session socket), so that
	// datagram was lost there.
	DropBackendRefused
	// DropListenQueue: the kernel dropped client datagrams because the
	// listening socket's receive queue was full (the loop fell behind).
	// Counted when a read finds a backlog and when the socket closes.
	DropListenQueue
	// DropSessionQueue: the kernel dropped backend datagrams because a
	// session socket's receive queue was full. Counted from the drop count
	// the kernel attaches to the datagrams that come after a drop
	// (SO_RXQ_OVFL), and when the session ends.
	DropSessionQueue
	// DropDraining: a new client's datagram read while the proxy drains
	// with no successor (Proxy.DrainAlone, a stop): like a TCP listener
	// that has closed, the proxy takes no new client, and the sessions
	// open go on.
	DropDraining

	numDropReasons
)

var dropNames = [numDropReasons]string{
	DropNoBackend:         "no_backend",
	DropSessionLimit:      "session_limit",
	DropSocketFailed:      "socket_failed",
	DropSendBackendFailed: "send_backend_failed",
	DropSendClientFailed:  "send_client_failed",
	DropTruncated:         "truncated",
	DropBackendRefused:    "backend_refused",
	DropListenQueue:       "listen_queue_full",
	DropSessionQueue:      "session_queue_full",
	DropDraining:          "draining",
}

// DropReasons lists every reason, in label order, for exporters that want
// every series present from the start.
var DropReasons = [numDropReasons]DropReason{
	DropNoBackend, DropSessionLimit, DropSocketFailed, DropSendBackendFailed,
	DropSendClientFailed, DropTruncated, DropBackendRefused, DropListenQueue,
	DropSessionQueue, DropDraining,
}

func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// Stats are one proxy's counters. The owning loop is the only writer; any
// goroutine may read them. Each Proxy has its own Stats, so two loops never
// write the same cache line; readers sum over loops.
type Stats struct {
	SessionsCreated atomic.Uint64 // sessions opened (a new client address on this loop)
	SessionsEnded   atomic.Uint64 // sessions ended, for any reason
	SessionsExpired atomic.Uint64 // of those, ended by the idle timeout
	SessionsEvicted atomic.Uint64 // of those, ended to make room at the session cap
	Remaps          atomic.Uint64 // sessions moved to another backend because theirs left the backend set

	drops [numDropReasons]atomic.Uint64

	_ [64]byte // keep the next allocation off the last line
}

// Drops returns the datagrams dropped for reason r.
func (s *Stats) Drops(r DropReason) uint64 {
	if r >= numDropReasons {
		return 0
	}
	return s.drops[r].Load()
}

// Active returns the sessions open now.
func (s *Stats) Active() int64 {
	// Ended first: a session opened and ended between the two loads is
	// then counted in neither, never in Ended alone.
	ended := s.SessionsEnded.Load()
	return int64(s.SessionsCreated.Load()) - int64(ended)
}

func (s *Stats) drop(r DropReason, n int) { s.drops[r].Add(uint64(n)) }

// SessionLimiter caps the sessions open at once across all loops of a
// process (--udp-max-sessions). It also knows the proxies of every service
// on each loop: at the cap, a new session takes the slot of a session on
// its own loop, of whichever service holds the most there (see
// Proxy.victim). Safe for concurrent use.
type SessionLimiter struct {
	max int64
	cur atomic.Int64

	mu sync.Mutex // guards the map loops, not the lists it points to
	// loops holds, per loop, the list of its proxies: copy-on-write, so
	// that the loop reads it without the lock.
	loops map[*loop.Loop]*atomic.Pointer[[]*Proxy]
}

// NewSessionLimiter returns a limiter admitting max sessions; max <= 0
// means unlimited.
func NewSessionLimiter(max int) *SessionLimiter {
	return &SessionLimiter{max: int64(max), loops: make(map[*loop.Loop]*atomic.Pointer[[]*Proxy])}
}

// join adds p to the proxies of its loop and returns that loop's list,
// which p keeps. A proxy stays in the list for the limiter's life; one that
// has been drained holds no session, so it is never picked to evict from.
func (l *SessionLimiter) join(p *Proxy) *atomic.Pointer[[]*Proxy] {
	l.mu.Lock()
	defer l.mu.Unlock()
	peers := l.loops[p.loop]
	if peers == nil {
		peers = new(atomic.Pointer[[]*Proxy])
		l.loops[p.loop] = peers
	}
	var list []*Proxy
	if old := peers.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, p)
	peers.Store(&list)
	return peers
}

// Acquire takes a slot and reports whether one was free.
func (l *SessionLimiter) Acquire() bool {
	if l.cur.Add(1) > l.max && l.max > 0 {
		l.cur.Add(-1)
		return false
	}
	return true
}

// Release frees a slot taken with Acquire.
func (l *SessionLimiter) Release() { l.cur.Add(-1) }

// Open returns the slots taken now.
func (l *SessionLimiter) Open() int64 { return l.cur.Load() }
