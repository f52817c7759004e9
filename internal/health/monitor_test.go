package health

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

// waitLimit bounds every wait of these tests for something the monitor
// must do promptly: reached only when the monitor is broken.
const waitLimit = 5 * time.Second

// monitorConfig is a valid config whose checks never time out on their
// own, so the fake checker's calls end only when the test answers them
// or the monitor cancels them.
func monitorConfig(rise, fall int, interval time.Duration) Config {
	return Config{Kind: "tcp", Interval: interval, Timeout: time.Hour, Rise: rise, Fall: fall}
}

func addrN(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(10000+i))
}

// call is one Check under way in a fakeChecker.
type call struct {
	addr   netip.AddrPort
	ctx    context.Context
	result chan error    // the test sends the result; buffered, 1
	done   chan struct{} // closed when Check has returned
}

// answer ends the call with err.
func (c call) answer(err error) { c.result <- err }

// fakeChecker hands every Check to the test on calls and returns what the
// test answers, or ctx's error when the monitor cancels it first. When
// hold is not nil, a cancelled Check also waits for hold to close before
// returning, like a check slow to notice its cancellation.
type fakeChecker struct {
	calls chan call
	hold  chan struct{}

	mu       sync.Mutex // guards inFlight and maxSeen
	inFlight map[netip.AddrPort]int
	maxSeen  map[netip.AddrPort]int
}

func newFakeChecker() *fakeChecker {
	return &fakeChecker{
		calls:    make(chan call),
		inFlight: make(map[netip.AddrPort]int),
		maxSeen:  make(map[netip.AddrPort]int),
	}
}

func (f *fakeChecker) Check(ctx context.Context, addr netip.AddrPort) error {
	f.mu.Lock()
	f.inFlight[addr]++
	f.maxSeen[addr] = max(f.maxSeen[addr], f.inFlight[addr])
	f.mu.Unlock()
	c := call{addr: addr, ctx: ctx, result: make(chan error, 1), done: make(chan struct{})}
	defer func() {
		f.mu.Lock()
		f.inFlight[addr]--
		f.mu.Unlock()
		close(c.done)
	}()
	select {
	case f.calls <- c:
	case <-ctx.Done():
		return f.cancelled(ctx)
	}
	select {
	case err := <-c.result:
		return err
	case <-ctx.Done():
		return f.cancelled(ctx)
	}
}

func (f *fakeChecker) cancelled(ctx context.Context) error {
	if f.hold != nil {
		<-f.hold
	}
	return ctx.Err()
}

// concurrency returns the checks of each address under way now and the
// most ever under way at once.
func (f *fakeChecker) concurrency() (now, most map[netip.AddrPort]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return nonZero(f.inFlight), nonZero(f.maxSeen)
}

// nonZero copies m without its zero entries.
func nonZero(m map[netip.AddrPort]int) map[netip.AddrPort]int {
	c := make(map[netip.AddrPort]int, len(m))
	for k, v := range m {
		if v != 0 {
			c[k] = v
		}
	}
	return c
}

// next returns the next Check the monitor starts.
func (f *fakeChecker) next(tb testing.TB) call {
	tb.Helper()
	select {
	case c := <-f.calls:
		return c
	case <-time.After(waitLimit):
		tb.Fatalf("no check started within %v", waitLimit)
		return call{}
	}
}

// nextN returns the next n Checks, one per address, keyed by address.
func (f *fakeChecker) nextN(tb testing.TB, n int) map[netip.AddrPort]call {
	tb.Helper()
	got := make(map[netip.AddrPort]call, n)
	for range n {
		c := f.next(tb)
		if _, dup := got[c.addr]; dup {
			tb.Fatalf("second check of %v while its first is under way", c.addr)
		}
		got[c.addr] = c
	}
	return got
}

// waitClosed waits for ch to close, failing the test after waitLimit.
func waitClosed(tb testing.TB, ch <-chan struct{}, what string) {
	tb.Helper()
	select {
	case <-ch:
	case <-time.After(waitLimit):
		tb.Fatalf("%s: not within %v", what, waitLimit)
	}
}

// report is one call of a Report.
type report struct {
	addr netip.AddrPort
	up   bool
	res  Result
}

// reporter is a Report that hands every report to the test on ch and,
// when ack is not nil, then waits for the test to send on ack, so the
// test can act between one check and the next. Closing stop releases it
// for good.
type reporter struct {
	ch   chan report
	ack  chan struct{}
	stop chan struct{}
}

func newReporter(withAck bool) *reporter {
	r := &reporter{ch: make(chan report), stop: make(chan struct{})}
	if withAck {
		r.ack = make(chan struct{})
	}
	return r
}

func (r *reporter) report(addr netip.AddrPort, up bool, res Result) {
	select {
	case r.ch <- report{addr, up, res}:
	case <-r.stop:
		return
	}
	if r.ack != nil {
		select {
		case <-r.ack:
		case <-r.stop:
		}
	}
}

// next returns the next report.
func (r *reporter) next(tb testing.TB) report {
	tb.Helper()
	select {
	case rep := <-r.ch:
		return rep
	case <-time.After(waitLimit):
		tb.Fatalf("no report within %v", waitLimit)
		return report{}
	}
}

// startMonitor returns a monitor that is closed at cleanup, after r is
// released.
func startMonitor(tb testing.TB, cfg Config, ch Checker, r *reporter) *Monitor {
	m := NewMonitor(cfg, ch, r.report)
	tb.Cleanup(func() { closeMonitor(tb, m) })
	tb.Cleanup(func() { close(r.stop) })
	return m
}

// closeMonitor closes m and fails the test, instead of hanging it, when
// Close does not return within waitLimit (a loop nobody cancelled).
func closeMonitor(tb testing.TB, m *Monitor) {
	tb.Helper()
	closed := make(chan struct{})
	go func() {
		m.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(waitLimit):
		tb.Errorf("Monitor.Close did not return within %v", waitLimit)
	}
}

func TestMonitorSync(t *testing.T) {
	t.Parallel()
	f := newFakeChecker()
	r := newReporter(false)
	m := startMonitor(t, monitorConfig(1, 1, 5*time.Millisecond), f, r)
	a, b, c := addrN(1), addrN(2), addrN(3)

	m.Sync([]netip.AddrPort{a, b, c, a}, nil)
	calls := f.nextN(t, 3)
	if now, _ := f.concurrency(); len(now) != 3 || now[a] != 1 || now[b] != 1 || now[c] != 1 {
		t.Fatalf("checks under way: %v, want one each of %v %v %v", now, a, b, c)
	}

	// Removing b cancels its check; a and c go on.
	m.Sync([]netip.AddrPort{a, c}, nil)
	waitClosed(t, calls[b].ctx.Done(), "check of removed backend cancelled")
	waitClosed(t, calls[b].done, "check of removed backend returned")
	if calls[a].ctx.Err() != nil || calls[c].ctx.Err() != nil {
		t.Fatal("Sync cancelled the check of a backend it kept")
	}

	// Answer a and c for a few rounds: each round each starts exactly one
	// new check, and b none.
	for round := range 4 {
		for _, ad := range []netip.AddrPort{a, c} {
			calls[ad].answer(nil)
			if rep := r.next(t); rep.addr != ad || !rep.up || rep.res.Err != nil {
				t.Fatalf("round %d: report %+v, want %v up", round, rep, ad)
			}
		}
		calls = f.nextN(t, 2)
		if _, ok := calls[b]; ok {
			t.Fatalf("round %d: removed backend %v checked again", round, b)
		}
	}

	// Adding b back starts a new loop for it; Sync with what is already
	// checked changes nothing.
	m.Sync([]netip.AddrPort{c, b, a}, nil)
	nb := f.next(t)
	if nb.addr != b {
		t.Fatalf("after re-adding %v the next check is of %v", b, nb.addr)
	}
	calls[b] = nb
	m.Sync([]netip.AddrPort{a, b, c}, nil)
	if now, most := f.concurrency(); len(now) != 3 || most[a] != 1 || most[b] != 1 || most[c] != 1 {
		t.Fatalf("checks under way %v, most at once %v: want one per backend", now, most)
	}

	// Sync to nothing stops every loop.
	m.Sync(nil, nil)
	for ad, cl := range calls {
		waitClosed(t, cl.done, fmt.Sprintf("check of %v returned after Sync(nil)", ad))
	}
	select {
	case cl := <-f.calls:
		t.Fatalf("check of %v started after Sync(nil)", cl.addr)
	default:
	}
}

// TestMonitorSyncDown: a backend Sync lists as down starts down: its
// first passing check reports it down still, and it takes Rise passing
// checks to bring it up. One not listed starts up, as a new backend does.
// down does not touch a loop already running.
func TestMonitorSyncDown(t *testing.T) {
	t.Parallel()
	f := newFakeChecker()
	r := newReporter(false)
	m := startMonitor(t, monitorConfig(2, 3, time.Millisecond), f, r)
	a, b := addrN(1), addrN(2)
	m.Sync([]netip.AddrPort{a, b}, map[netip.AddrPort]bool{a: true})
	wantUp := map[netip.AddrPort][]bool{a: {false, true, true}, b: {true, true, true}}
	for i := range 3 {
		calls := f.nextN(t, 2)
		for _, ad := range []netip.AddrPort{a, b} {
			calls[ad].answer(nil)
			if rep := r.next(t); rep.addr != ad || rep.up != wantUp[ad][i] {
				t.Fatalf("check %d of %v: report %v up=%v, want up=%v", i+1, ad, rep.addr, rep.up, wantUp[ad][i])
			}
		}
	}
	m.Sync([]netip.AddrPort{a, b}, map[netip.AddrPort]bool{a: true, b: true})
	calls := f.nextN(t, 2)
	for _, ad := range []netip.AddrPort{a, b} {
		calls[ad].answer(errors.New("refused"))
		if rep := r.next(t); rep.addr != ad || !rep.up {
			t.Fatalf("%v after a Sync listing it down: report %v up=%v, want up (one failure of Fall 3)", ad, rep.addr, rep.up)
		}
	}
}

// TestMonitorReports walks one backend through rise and fall: each report
// carries the check's error and the verdict after it.
func TestMonitorReports(t *testing.T) {
	t.Parallel()
	f := newFakeChecker()
	r := newReporter(false)
	m := startMonitor(t, monitorConfig(2, 3, time.Millisecond), f, r)
	a := addrN(1)
	m.Sync([]netip.AddrPort{a}, nil)
	errDown := errors.New("connection refused")
	for i, s := range parseSteps(t, "+U -U -U +U -U -U -D! -D +D -D +D +U! -U +U") {
		start := time.Now()
		var err error
		if !s.ok {
			err = fmt.Errorf("step %d: %w", i, errDown)
		}
		f.next(t).answer(err)
		rep := r.next(t)
		if rep.addr != a || rep.up != s.up || rep.res.Err != err {
			t.Fatalf("step %d: report addr=%v up=%v err=%v, want %v %v %v", i, rep.addr, rep.up, rep.res.Err, a, s.up, err)
		}
		if rep.res.Time.Before(start.Add(-time.Second)) || rep.res.Time.After(time.Now()) || rep.res.Duration < 0 ||
			rep.res.Time.Add(rep.res.Duration).After(time.Now()) {
			t.Fatalf("step %d: result time %v duration %v out of range", i, rep.res.Time, rep.res.Duration)
		}
	}
}

// TestMonitorForceDown ejects a backend between checks and during one:
// the next report says down, and Rise checks started after the ejection
// must pass before it is up again. A check under way at the ejection does
// not count toward Rise. In a bubble, so that an ejection after a report
// comes before the next check starts.
func TestMonitorForceDown(t *testing.T) {
	t.Parallel()
	for _, rise := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("rise%d", rise), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) { testMonitorForceDown(t, rise) })
		})
	}
}

func testMonitorForceDown(t *testing.T, rise int) {
	f := newFakeChecker()
	r := newReporter(true)
	m := startMonitor(t, monitorConfig(rise, 3, time.Millisecond), f, r)
	a := addrN(1)
	m.Sync([]netip.AddrPort{a}, nil)
	m.ForceDown(addrN(2)) // not checked: ignored

	// step answers the next check (passed when ok) and wants
	// the report to say wantUp. ejectDuring ejects while that
	// check is under way, ejectAfter after its report and
	// before the next check starts.
	step := func(what string, ok, ejectDuring, ejectAfter, wantUp bool) {
		t.Helper()
		c := f.next(t)
		if ejectDuring {
			m.ForceDown(a)
		}
		var err error
		if !ok {
			err = errors.New("refused")
		}
		c.answer(err)
		rep := r.next(t)
		if rep.up != wantUp || rep.res.Err != err {
			t.Fatalf("%s: report up=%v err=%v, want up=%v err=%v", what, rep.up, rep.res.Err, wantUp, err)
		}
		r.ack <- struct{}{}
		if ejectAfter {
			m.ForceDown(a) // before the next check starts
		}
	}
	// riseAgain passes rise checks: down until the last.
	riseAgain := func(what string) {
		t.Helper()
		for i := 1; i <= rise; i++ {
			step(fmt.Sprintf("%s, success %d", what, i), true, false, false, i == rise)
		}
	}

	step("first check", true, false, true, true)
	riseAgain("ejected between checks")

	step("ejected during a passing check", true, true, false, false)
	riseAgain("after ejection during a check")

	step("ejected during a failing check", false, true, false, false)
	riseAgain("after ejection during a failing check")
}

// TestMonitorForceDownRiseStreak ejects a backend that is down and part
// way up: the successes so far are forgotten.
func TestMonitorForceDownRiseStreak(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testMonitorForceDownRiseStreak)
}

func testMonitorForceDownRiseStreak(t *testing.T) {
	f := newFakeChecker()
	r := newReporter(true)
	m := startMonitor(t, monitorConfig(3, 1, time.Millisecond), f, r)
	a := addrN(1)
	m.Sync([]netip.AddrPort{a}, nil)
	errDown := errors.New("refused")
	for i, s := range []struct {
		ok, eject, up bool
	}{
		{ok: false, up: false}, // fall 1: down
		{ok: true, up: false},  // rise 1 of 3
		{ok: true, up: false, eject: true},
		{ok: true, up: false}, // the streak starts again: 1 of 3
		{ok: true, up: false}, // 2 of 3
		{ok: true, up: true},  // 3 of 3
	} {
		var err error
		if !s.ok {
			err = errDown
		}
		f.next(t).answer(err)
		if rep := r.next(t); rep.up != s.up {
			t.Fatalf("step %d: up=%v, want %v", i, rep.up, s.up)
		}
		r.ack <- struct{}{}
		if s.eject {
			m.ForceDown(a) // before the next check starts
		}
	}
}

// TestMonitorForceDownWaitsForReport ejects a backend while the report of
// a passing check, which says up, is under way: ForceDown returns only
// once that report has returned, so a caller that marks the backend down
// after ForceDown cannot be overtaken by it. The next check, started after
// the ejection, is the first of Rise.
func TestMonitorForceDownWaitsForReport(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFakeChecker()
		r := newReporter(true)
		m := startMonitor(t, monitorConfig(2, 1, time.Second), f, r)
		a := addrN(1)
		m.Sync([]netip.AddrPort{a}, nil)
		f.next(t).answer(nil)
		if rep := r.next(t); !rep.up {
			t.Fatal("first passing check reported down")
		}
		// That report is under way.
		forced := make(chan struct{})
		go func() {
			m.ForceDown(a)
			close(forced)
		}()
		synctest.Wait()
		select {
		case <-forced:
			t.Fatal("ForceDown returned while a report that says up was under way")
		default:
		}
		r.ack <- struct{}{}
		<-forced
		for i, want := range []bool{false, true} {
			f.next(t).answer(nil)
			rep := r.next(t)
			if rep.up != want {
				t.Fatalf("passing check %d of Rise 2 after the ejection: up=%v, want %v", i+1, rep.up, want)
			}
			r.ack <- struct{}{}
		}
	})
}

// TestMonitorClose shows that Close cancels every check and returns only
// after every check and loop has returned: the checks here take their
// time to stop after cancellation, and Close waits for them.
func TestMonitorClose(t *testing.T) {
	// Not parallel: it counts goroutines.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const n = 20
	f := newFakeChecker()
	f.hold = make(chan struct{})
	r := newReporter(false)
	defer close(r.stop)
	m := NewMonitor(monitorConfig(1, 1, time.Millisecond), f, r.report)
	var addrs []netip.AddrPort
	for i := range n {
		addrs = append(addrs, addrN(i))
	}
	m.Sync(addrs, nil)
	calls := f.nextN(t, n)

	closed := make(chan struct{})
	go func() {
		m.Close()
		close(closed)
	}()
	for ad, c := range calls {
		waitClosed(t, c.ctx.Done(), fmt.Sprintf("Close cancelled the check of %v", ad))
	}
	// Every check is now cancelled and stuck on hold, so Close cannot
	// have returned yet.
	select {
	case <-closed:
		t.Fatal("Close returned while checks were still under way")
	default:
	}
	close(f.hold)
	waitClosed(t, closed, "Close returned")
	for ad, c := range calls {
		select {
		case <-c.done:
		default:
			t.Fatalf("Close returned before the check of %v did", ad)
		}
	}
	if now, _ := f.concurrency(); len(now) != 0 {
		t.Fatalf("checks under way after Close: %v", now)
	}

	// After Close, Sync starts nothing and Close is idempotent; goleak
	// then proves no loop goroutine is left.
	m.Sync(addrs, nil)
	m.ForceDown(addrs[0])
	closeMonitor(t, m)
}

// TestMonitorFirstCheckJitter starts 50 backends with a 1 s interval: the
// first checks are spread over the interval, not fired together.
func TestMonitorFirstCheckJitter(t *testing.T) {
	t.Parallel()
	const (
		n        = 50
		interval = time.Second
	)
	first := make(chan time.Duration, n)
	var mu sync.Mutex // guards seen
	seen := make(map[netip.AddrPort]bool)
	start := time.Now()
	ch := checkFunc(func(ctx context.Context, addr netip.AddrPort) error {
		mu.Lock()
		defer mu.Unlock()
		if !seen[addr] {
			seen[addr] = true
			first <- time.Since(start)
		}
		return nil
	})
	m := NewMonitor(monitorConfig(1, 1, interval), ch, func(netip.AddrPort, bool, Result) {})
	defer closeMonitor(t, m)
	var addrs []netip.AddrPort
	for i := range n {
		addrs = append(addrs, addrN(i))
	}
	m.Sync(addrs, nil)
	var at []time.Duration
	limit := time.After(interval + waitLimit)
	for range n {
		select {
		case d := <-first:
			at = append(at, d)
		case <-limit:
			t.Fatalf("only %d of %d backends checked within %v", len(at), n, interval+waitLimit)
		}
	}
	slices.Sort(at)
	if at[n-1] > interval+time.Second/2 {
		t.Errorf("last first check at %v, want within about the interval %v", at[n-1], interval)
	}
	// 50 uniform draws over 1 s span about 960 ms; a quarter of the
	// interval is far below any real spread and far above lockstep.
	if spread := at[n-1] - at[0]; spread < interval/4 {
		t.Errorf("first checks span only %v (%v .. %v): not jittered", spread, at[0], at[n-1])
	}
	// No crowd: at most 20 of the 50 in any 50 ms (about 2.5 expected).
	for i := 0; i+20 < n; i++ {
		if at[i+20]-at[i] < 50*time.Millisecond {
			t.Errorf("21 first checks within %v (from %v): not jittered", at[i+20]-at[i], at[i])
			break
		}
	}
}

// checkFunc adapts a function to Checker.
type checkFunc func(ctx context.Context, addr netip.AddrPort) error

func (f checkFunc) Check(ctx context.Context, addr netip.AddrPort) error { return f(ctx, addr) }

// TestMonitorTCP runs the real tcp check in a monitor against a loopback
// listener: up while it listens, down after Fall failures once it is
// closed.
func TestMonitorTCP(t *testing.T) {
	t.Parallel()
	p := startPeer(t, "127.0.0.1", silent)
	r := newReporter(false)
	cfg := Config{Kind: "tcp", Interval: 5 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 2}
	m := startMonitor(t, cfg, newChecker(t, cfg), r)
	m.Sync([]netip.AddrPort{p.addr}, nil)
	if rep := r.next(t); !rep.up || rep.res.Err != nil {
		t.Fatalf("first report %+v, want up", rep)
	}
	p.close()
	// Reports already on their way may still say ok; then two failures
	// bring it down. Bounded: at most 100 reports.
	fails := 0
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("not down after 100 reports")
		}
		rep := r.next(t)
		if rep.res.Err == nil {
			if fails > 0 {
				t.Fatalf("check passed after the listener closed: %+v", rep)
			}
			continue
		}
		fails++
		if rep.up != (fails < 2) {
			t.Fatalf("failure %d: up=%v (err %v)", fails, rep.up, rep.res.Err)
		}
		if !rep.up {
			break
		}
	}
}

// TestMonitorSyncWaitsForStoppedReport: a backend leaves while its loop
// is reporting a passing check that completes Rise, and returns with the
// down verdict the balancer remembers of it. The stopped loop's report
// must not land on the returned backend and bring it up without Rise
// passing checks of its new loop: Sync, which stops the loop, returns only
// once that report has landed, while the backend is gone.
func TestMonitorSyncWaitsForStoppedReport(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFakeChecker()
		r := newReporter(true)
		// The balancer: its members and their verdicts. A report lands
		// once the test has acked it, as SetHealth does once it has the
		// balancer's lock, and only on a member.
		var mu sync.Mutex // guards members
		members := make(map[netip.AddrPort]bool)
		m := NewMonitor(monitorConfig(2, 1, time.Second), f, func(a netip.AddrPort, up bool, res Result) {
			r.report(a, up, res)
			mu.Lock()
			defer mu.Unlock()
			if _, ok := members[a]; ok {
				members[a] = up
			}
		})
		t.Cleanup(func() { closeMonitor(t, m) })
		t.Cleanup(func() { close(r.stop) })
		a := addrN(1)
		// join makes a a member that is down, as the balancer does a
		// backend that returns while it remembers it down.
		join := func() {
			mu.Lock()
			members[a] = false
			mu.Unlock()
			m.Sync([]netip.AddrPort{a}, map[netip.AddrPort]bool{a: true})
		}
		// land lets the report under way land and returns a's verdict.
		land := func() bool {
			r.ack <- struct{}{}
			synctest.Wait()
			mu.Lock()
			defer mu.Unlock()
			return members[a]
		}

		join()
		f.next(t).answer(nil)
		if rep := r.next(t); rep.up {
			t.Fatal("first passing check of Rise 2 reported up")
		}
		r.ack <- struct{}{}
		f.next(t).answer(nil)
		if rep := r.next(t); !rep.up {
			t.Fatal("second passing check of Rise 2 reported down")
		}
		// That report is under way. The backend leaves.
		mu.Lock()
		delete(members, a)
		mu.Unlock()
		removed := make(chan struct{})
		go func() {
			m.Sync(nil, nil)
			close(removed)
		}()
		synctest.Wait()
		select {
		case <-removed:
			join() // before the report lands
			t.Fatalf("Sync returned with a report of the loop it stopped under way; the returned backend is up=%v, "+
				"want down until its new loop sees Rise passing checks", land())
		default:
		}
		r.ack <- struct{}{}
		<-removed
		join()
		f.next(t).answer(nil)
		if rep := r.next(t); rep.up {
			t.Fatal("returned backend: first passing check of its new loop reported up")
		}
		if land() {
			t.Fatal("returned backend up after one passing check of Rise 2")
		}
	})
}

// TestMonitorIntervalStartToStart: Interval is the time between the
// starts of two checks, however long a check takes (up to the interval),
// so Fall failing checks take a backend down in about Fall intervals
// whether they are refused at once or time out. A check that outlasts the
// interval is followed at once by the next.
func TestMonitorIntervalStartToStart(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const interval = time.Second
		// Each check takes its time from took, in turn.
		took := []time.Duration{0, 600 * time.Millisecond, 900 * time.Millisecond, 1500 * time.Millisecond, 0}
		var starts []time.Time // the check goroutine's alone until Close
		ch := checkFunc(func(ctx context.Context, addr netip.AddrPort) error {
			starts = append(starts, time.Now())
			if len(starts) <= len(took) {
				time.Sleep(took[len(starts)-1]) // the bubble's clock
			}
			return nil
		})
		m := NewMonitor(monitorConfig(1, 1, interval), ch, func(netip.AddrPort, bool, Result) {})
		m.Sync([]netip.AddrPort{addrN(1)}, nil)
		time.Sleep(time.Duration(len(took)+1) * interval * 2)
		m.Close()
		if len(starts) < len(took)+1 {
			t.Fatalf("%d checks started, want at least %d", len(starts), len(took)+1)
		}
		for i, d := range took {
			gap := starts[i+1].Sub(starts[i])
			want := interval
			if d > interval {
				want = d // at once after the check
			}
			if lo, hi := want-interval/10, max(want, interval+interval/10); gap < lo || gap > hi {
				t.Errorf("check %d took %v; the next started %v after its start, want %v to %v", i+1, d, gap, lo, hi)
			}
		}
	})
}
