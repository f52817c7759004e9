package balancer

import (
	"net/netip"
	"sync/atomic"
)

// LoopCounters are one event loop's counters for one backend. Only that
// loop writes them; any goroutine may read them. Each is padded to its own
// cache lines, so loops never contend on a line.
type LoopCounters struct {
	Connections   atomic.Uint64 // connections established to the backend
	ConnectErrors atomic.Uint64 // connect attempts that failed or timed out
	BytesUp       atomic.Uint64 // bytes client → backend
	BytesDown     atomic.Uint64 // bytes backend → client
	DatagramsUp   atomic.Uint64 // UDP datagrams client → backend
	DatagramsDown atomic.Uint64 // UDP datagrams backend → client
	_             [128 - 6*8]byte
}

// Backend is a backend of a service as the data path sees it: its address
// and weight (fixed for the object's life) and its live counters. A change
// of weight makes a new Backend that shares the old one's counters, so
// connections opened before the change still count, and uncount, right.
// Safe for concurrent use.
type Backend struct {
	Addr   netip.AddrPort
	Weight int

	// Active is the connections (or UDP sessions) open to the backend on
	// all loops, counted from the moment it is chosen.
	Active *ActiveCount
	// failStreak is the consecutive connect failures seen by the data path
	// (passive health); reset by a success.
	failStreak *atomic.Int32

	// Loops holds one LoopCounters per event loop, indexed by loop number.
	Loops []LoopCounters
}

// ActiveCount is a counter on a cache line of its own: every loop updates
// it when a connection to its backend opens or closes.
type ActiveCount struct {
	atomic.Int64
	_ [56]byte
}

// NewBackend returns a backend with counters for loops event loops.
func NewBackend(s Spec, loops int) *Backend {
	return &Backend{Addr: s.Addr, Weight: s.Weight, Active: new(ActiveCount), failStreak: new(atomic.Int32), Loops: make([]LoopCounters, loops)}
}

// reweighted returns a backend like b with weight w, sharing b's counters.
func (b *Backend) reweighted(w int) *Backend {
	nb := *b
	nb.Weight = w
	return &nb
}

// Counts are a backend's counters summed over loops.
type Counts struct {
	Connections, ConnectErrors, BytesUp, BytesDown, DatagramsUp, DatagramsDown uint64
}

// Counts sums the per-loop counters.
func (b *Backend) Counts() Counts {
	var t Counts
	for i := range b.Loops {
		c := &b.Loops[i]
		t.Connections += c.Connections.Load()
		t.ConnectErrors += c.ConnectErrors.Load()
		t.BytesUp += c.BytesUp.Load()
		t.BytesDown += c.BytesDown.Load()
		t.DatagramsUp += c.DatagramsUp.Load()
		t.DatagramsDown += c.DatagramsDown.Load()
	}
	return t
}

// NewStatic builds a snapshot of fixed backends with counters for loops
// event loops: for tests and for callers without health checks.
func NewStatic(loops int, specs ...Spec) (*Snapshot, error) {
	bs := make([]*Backend, len(specs))
	for i, s := range specs {
		bs[i] = NewBackend(s, loops)
	}
	return NewSnapshot(bs, 0)
}
