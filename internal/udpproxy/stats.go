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
	// DropSessionLimit: a new client found its loop's share of the
	// session cap reached and no session on the loop to evict. Each loop
	// owns at least one slot and its sessions hold every slot it has
	// taken, so this is not expected; the series is kept for exporters.
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
// process (--udp-max-sessions). The cap is split between the loops, each
// owning a fixed share of it: max/loops slots, one more for the first
// max%loops loops, and at least one, so a cap below the loop count is
// raised to one slot per loop. A loop at its share makes room itself: a
// new session takes the slot of a session on its own loop, of whichever
// service holds the most there (see Proxy.victim). A new client is thus
// never refused because other loops hold the cap while its own holds
// nothing to evict, as it was when the loops shared one count; what the
// split costs is that the kernel's hash of clients to loops is not quite
// even, so a loop may recycle sessions while another has slots free.
// Safe for concurrent use.
type SessionLimiter struct {
	max   int64 // <= 0: unlimited
	loops int

	mu sync.Mutex // guards the map shares, not the shares it points to
	// shares holds each loop's share of the cap and its proxies.
	shares map[*loop.Loop]*share
}

// share is one loop's part of a SessionLimiter. The loop's goroutine is
// the only one that takes and frees its slots; any goroutine may read how
// many are taken.
type share struct {
	max int64 // <= 0: unlimited
	cur atomic.Int64
	// peers is the list of the loop's proxies, one per service:
	// copy-on-write, so that the loop reads it without the limiter's lock.
	peers atomic.Pointer[[]*Proxy]
	_     [64]byte // the loops' shares on lines of their own
}

// NewSessionLimiter returns a limiter admitting limit sessions, split
// between loops event loops (numbered 0 to loops-1: the id given to New);
// limit <= 0 means unlimited.
func NewSessionLimiter(limit, loops int) *SessionLimiter {
	return &SessionLimiter{max: int64(limit), loops: max(loops, 1), shares: make(map[*loop.Loop]*share)}
}

// join adds p to the proxies of its loop and returns that loop's share,
// which p keeps. A proxy stays in the list for the limiter's life; one that
// has been drained holds no session, so it is never picked to evict from.
func (l *SessionLimiter) join(p *Proxy) *share {
	l.mu.Lock()
	defer l.mu.Unlock()
	sh := l.shares[p.loop]
	if sh == nil {
		sh = &share{max: l.shareOf(p.id)}
		l.shares[p.loop] = sh
	}
	var list []*Proxy
	if old := sh.peers.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, p)
	sh.peers.Store(&list)
	return sh
}

// shareOf returns the slots of loop id: max/loops, one more for the first
// max%loops loops, at least one; 0 (unlimited) without a cap.
func (l *SessionLimiter) shareOf(id int) int64 {
	if l.max <= 0 {
		return 0
	}
	n := l.max / int64(l.loops)
	if int64(id) < l.max%int64(l.loops) {
		n++
	}
	return max(n, 1)
}

// Open returns the slots taken now, over all loops.
func (l *SessionLimiter) Open() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, sh := range l.shares {
		n += sh.cur.Load()
	}
	return n
}

// acquire takes a slot of the loop's share and reports whether one was
// free. The loop's goroutine only.
func (sh *share) acquire() bool {
	if sh.max > 0 && sh.cur.Load() >= sh.max {
		return false
	}
	sh.cur.Add(1)
	return true
}

// release frees a slot taken with acquire, or one that passed from an
// evicted session to its successor. The loop's goroutine only.
func (sh *share) release() { sh.cur.Add(-1) }
