package health

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// RiseFall turns check results into a verdict: a backend that is up goes
// down after Fall consecutive failures, one that is down comes up after
// Rise consecutive successes. The zero value is not useful; see
// NewRiseFall. Not safe for concurrent use.
type RiseFall struct {
	rise, fall int
	up         bool
	streak     int // consecutive results against the current verdict
}

// NewRiseFall returns a state machine starting in the given state.
func NewRiseFall(rise, fall int, up bool) RiseFall {
	return RiseFall{rise: rise, fall: fall, up: up}
}

// Observe records one result and returns the verdict and whether it
// changed.
func (r *RiseFall) Observe(ok bool) (up, changed bool) {
	if ok == r.up {
		r.streak = 0
		return r.up, false
	}
	r.streak++
	need := r.fall
	if !r.up {
		need = r.rise
	}
	if r.streak >= need {
		r.up = ok
		r.streak = 0
		return r.up, true
	}
	return r.up, false
}

// Up returns the verdict.
func (r *RiseFall) Up() bool { return r.up }

// ForceDown sets the verdict to down: Rise successes bring it back.
func (r *RiseFall) ForceDown() { r.up, r.streak = false, 0 }

// Result is one check's outcome.
type Result struct {
	Time     time.Time
	Err      error
	Duration time.Duration
}

// Report receives every check result of addr with the verdict after it.
// It is called from the backend's check goroutine, and must not call the
// Monitor's Sync, ForceDown or Close (they wait for reports under way).
type Report func(addr netip.AddrPort, up bool, r Result)

// Monitor runs one check loop per backend. Create it with NewMonitor, keep
// its backends in step with Sync, and stop it with Close. Safe for
// concurrent use.
type Monitor struct {
	cfg     Config
	checker Checker
	report  Report

	// mu guards workers and closed.
	mu      sync.Mutex
	workers map[netip.AddrPort]*worker
	closed  bool
	wg      sync.WaitGroup // the worker goroutines
}

type worker struct {
	addr      netip.AddrPort
	stopped   <-chan struct{} // closed by cancel
	cancel    context.CancelFunc
	forceDown atomic.Bool
	// reporting holds one token, which the loop takes for each report,
	// ForceDown for a moment, and retire for good: once retire has it,
	// the loop has no report under way and makes no more.
	reporting chan struct{}
}

func newWorker(ctx context.Context, cancel context.CancelFunc, addr netip.AddrPort) *worker {
	w := &worker{addr: addr, stopped: ctx.Done(), cancel: cancel, reporting: make(chan struct{}, 1)}
	w.reporting <- struct{}{}
	return w
}

// retire waits, after w.cancel, for the report w's loop has under way,
// if any, and keeps it from making another. A report of the loop that
// landed later would reach whatever the address is by then: a backend
// that left and returned, with a verdict this loop knows nothing of.
func (w *worker) retire() { <-w.reporting }

// NewMonitor returns a monitor with no backends. A nil checker ("none")
// makes a monitor that never checks.
func NewMonitor(cfg Config, checker Checker, report Report) *Monitor {
	return &Monitor{cfg: cfg, checker: checker, report: report, workers: make(map[netip.AddrPort]*worker)}
}

// Sync starts checking the addresses not yet checked and stops checking
// those no longer listed. The check loop of a new address starts from the
// verdict up, as a new backend does, unless down holds the address: then it
// starts down and needs Rise passing checks to be reported up (a backend
// that returns after health checks took it down). down may be nil; it
// does not change the loops already running.
//
// When Sync returns, the loops it stopped have no report under way and
// make no more, so a caller that orders its Sync calls knows that a
// backend it removes and adds back hears only from the new loop.
func (m *Monitor) Sync(addrs []netip.AddrPort, down map[netip.AddrPort]bool) {
	var stopped []*worker
	m.mu.Lock()
	if m.closed || m.checker == nil {
		m.mu.Unlock()
		return // closed, or "none": no checks to run
	}
	want := make(map[netip.AddrPort]bool, len(addrs))
	for _, a := range addrs {
		want[a] = true
		if m.workers[a] == nil {
			ctx, cancel := context.WithCancel(context.Background())
			w := newWorker(ctx, cancel, a)
			m.workers[a] = w
			m.wg.Add(1)
			go m.runWorker(ctx, w, !down[a])
		}
	}
	for a, w := range m.workers {
		if !want[a] {
			w.cancel()
			delete(m.workers, a)
			stopped = append(stopped, w)
		}
	}
	m.mu.Unlock()
	// Outside mu: a report under way may take its time (the balancer's
	// lock), and ForceDown must not wait for it.
	for _, w := range stopped {
		w.retire()
	}
}

// ForceDown marks addr down in its check loop, so that it must pass Rise
// checks started after the call before it is reported up again (after a
// passive ejection). It first waits for the report of addr under way, if
// any, to return; every later report says down until those Rise checks
// pass. So once ForceDown returns, no check that started before the call
// reports addr up, and a caller that then marks the backend down keeps it
// down. Unknown addresses are ignored.
//
// ForceDown must not be called from a Report, nor while holding a lock
// that a Report takes.
func (m *Monitor) ForceDown(addr netip.AddrPort) {
	m.mu.Lock()
	w := m.workers[addr]
	m.mu.Unlock()
	if w == nil {
		return
	}
	// Not under mu: the report under way may take its time (it waits
	// for the balancer's lock), and Sync must not wait for it.
	select {
	case <-w.reporting:
	case <-w.stopped:
		// Sync or Close stopped the loop: it is no longer addr's, and
		// Sync waits for its last report.
		return
	}
	w.forceDown.Store(true)
	w.reporting <- struct{}{}
}

// Close stops every check loop and waits for them.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	for a, w := range m.workers {
		w.cancel()
		delete(m.workers, a)
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// runWorker checks one backend every Interval until ctx ends, starting
// from the verdict up. The first check starts after a random fraction of
// the interval, and each interval is jittered by ±10%, so many backends
// are not probed in lockstep. An interval counts from a check's start, so
// Fall failing checks take about Fall intervals whether they fail at once
// or time out; a check that outlasts it is followed at once by the next.
func (m *Monitor) runWorker(ctx context.Context, w *worker, up bool) {
	defer m.wg.Done()
	rf := NewRiseFall(m.cfg.Rise, m.cfg.Fall, up)
	wait := time.Duration(rand.Int64N(int64(m.cfg.Interval)))
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// An ejection seen before the check starts: this check is the
		// first of the Rise that must pass.
		if w.forceDown.Swap(false) {
			rf.ForceDown()
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		err := m.checker.Check(cctx, w.addr)
		cancel()
		select {
		case <-w.reporting:
		case <-ctx.Done():
			return // stopped: the token is retire's
		}
		if ctx.Err() != nil {
			w.reporting <- struct{}{}
			return // stopped mid-check: the result means nothing
		}
		var up bool
		if w.forceDown.Swap(false) {
			// Ejected while the check was under way: its result
			// predates the ejection and does not count toward Rise,
			// so it cannot report the backend up again.
			rf.ForceDown()
		} else {
			up, _ = rf.Observe(err == nil)
		}
		m.report(w.addr, up, Result{Time: start, Err: err, Duration: time.Since(start)})
		w.reporting <- struct{}{}
		jitter := time.Duration(rand.Int64N(int64(m.cfg.Interval)/5+1)) - m.cfg.Interval/10
		t.Reset(max(0, m.cfg.Interval+jitter-time.Since(start)))
	}
}
