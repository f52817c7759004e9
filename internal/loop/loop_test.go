package loop

import (
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runLoop starts l on its own goroutine and stops it at the end of the test.
func runLoop(tb testing.TB) *Loop {
	tb.Helper()
	l, err := New()
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Run() }()
	tb.Cleanup(func() {
		l.Stop()
		if err := <-done; err != ErrStopped {
			tb.Errorf("Run = %v, want ErrStopped", err)
		}
		l.Close()
	})
	return l
}

// onLoop runs fn on the loop and waits for it.
func onLoop(tb testing.TB, l *Loop, fn func()) {
	tb.Helper()
	done := make(chan struct{})
	if !l.Submit(func() { fn(); close(done) }) {
		tb.Fatal("submit refused")
	}
	<-done
}

func TestSubmitOrderAndConcurrency(t *testing.T) {
	l := runLoop(t)
	const goroutines, each = 8, 1000
	var mu sync.Mutex
	seen := make(map[int][]int)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				l.Submit(func() {
					// Runs on the loop goroutine: no lock needed for the
					// loop, but the test reads seen from outside.
					mu.Lock()
					seen[g] = append(seen[g], i)
					mu.Unlock()
				})
			}
		}()
	}
	wg.Wait()
	onLoop(t, l, func() {})
	mu.Lock()
	defer mu.Unlock()
	for g := 0; g < goroutines; g++ {
		if len(seen[g]) != each {
			t.Fatalf("goroutine %d: %d of %d funcs ran", g, len(seen[g]), each)
		}
		if !sort.IntsAreSorted(seen[g]) {
			t.Fatalf("goroutine %d: funcs ran out of submission order", g)
		}
	}
}

func TestSubmitAfterStop(t *testing.T) {
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ran := false
	l.Submit(func() { ran = true })
	l.Stop()
	if err := l.Run(); err != ErrStopped {
		t.Fatalf("Run = %v", err)
	}
	if !ran {
		t.Fatal("func submitted before Stop did not run")
	}
	if l.Submit(func() {}) {
		t.Fatal("Submit accepted a func after the loop stopped")
	}
}

// TestTimersFireInOrder schedules, reschedules and cancels many timers and
// checks that exactly the live ones fire, in deadline order, never early.
func TestTimersFireInOrder(t *testing.T) {
	l := runLoop(t)
	const n = 200
	type rec struct {
		id   int
		when int64
		at   int64
	}
	fired := make(chan rec, n)
	timers := make([]*Timer, n)
	cancelled := map[int]bool{}
	onLoop(t, l, func() {
		rng := rand.New(rand.NewPCG(1, 2))
		base := l.Now()
		for i := range timers {
			tm := &Timer{}
			tm.F = func() { fired <- rec{id: i, when: tm.When(), at: l.Now()} }
			timers[i] = tm
			l.Schedule(tm, base+int64(time.Duration(rng.IntN(200))*time.Millisecond))
		}
		// Move some, cancel some.
		for i := 0; i < n; i += 7 {
			l.Schedule(timers[i], base+int64(time.Duration(rng.IntN(200))*time.Millisecond))
		}
		for i := 3; i < n; i += 5 {
			l.Cancel(timers[i])
			cancelled[i] = true
		}
	})
	want := n - len(cancelled)
	var got []rec
	for len(got) < want {
		select {
		case r := <-fired:
			got = append(got, r)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d timers fired", len(got), want)
		}
	}
	for i, r := range got {
		if cancelled[r.id] {
			t.Fatalf("cancelled timer %d fired", r.id)
		}
		if r.at < r.when {
			t.Fatalf("timer %d fired %v early", r.id, time.Duration(r.when-r.at))
		}
		if i > 0 && r.when < got[i-1].when {
			t.Fatalf("timer %d (due %d) fired after timer %d (due %d)", r.id, r.when, got[i-1].id, got[i-1].when)
		}
	}
	onLoop(t, l, func() {
		if l.Timers() != 0 {
			t.Errorf("%d timers still scheduled", l.Timers())
		}
	})
}

type recorder struct{ events chan uint32 }

func (r *recorder) HandleEvent(ev uint32) { r.events <- ev }

// TestEventDispatchAndStaleRegistration: events reach the handler of the
// fd; after Forget and reuse of the fd number, the old handler gets
// nothing.
func TestEventDispatchAndStaleRegistration(t *testing.T) {
	l := runLoop(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	first := &recorder{events: make(chan uint32, 16)}
	onLoop(t, l, func() {
		if err := l.Add(fds[0], In|Edge, first); err != nil {
			t.Error(err)
		}
	})
	unix.Write(fds[1], []byte("x"))
	select {
	case ev := <-first.events:
		if ev&In == 0 {
			t.Fatalf("event %#x without EPOLLIN", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for a readable fd")
	}
	onLoop(t, l, func() {
		l.Forget(fds[0])
		unix.Close(fds[0])
	})
	// Reuse the fd number for a new registration.
	again, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(again[0])
	defer unix.Close(again[1])
	second := &recorder{events: make(chan uint32, 16)}
	onLoop(t, l, func() {
		if err := l.Add(again[0], In|Edge, second); err != nil {
			t.Error(err)
		}
	})
	unix.Write(again[1], []byte("y"))
	select {
	case <-second.events:
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the new registration")
	}
	select {
	case ev := <-first.events:
		t.Fatalf("forgotten handler got event %#x", ev)
	default:
	}
}

// TestDefer checks that deferred funcs run once each, in order, after the
// event that deferred them, including those deferred by a deferred func
// and by a timer, with no further event to wake the loop.
func TestDefer(t *testing.T) {
	l := runLoop(t)
	got := make(chan string, 16)
	onLoop(t, l, func() {
		l.Defer(func() {
			got <- "d1"
			l.Defer(func() { got <- "d3" })
		})
		l.Defer(func() { got <- "d2" })
		got <- "event"
	})
	want := []string{"event", "d1", "d2", "d3"}
	for i, w := range want {
		select {
		case g := <-got:
			if g != w {
				t.Fatalf("step %d: got %q, want %q (order %v)", i, g, w, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("step %d: %q never ran", i, w)
		}
	}

	// From a timer: the loop has nothing else to wake it, so the func
	// runs only if the loop flushes after its timers.
	var tm Timer
	tm.F = func() { l.Defer(func() { got <- "after timer" }) }
	onLoop(t, l, func() { l.Schedule(&tm, l.Now()+int64(time.Millisecond)) })
	select {
	case g := <-got:
		if g != "after timer" {
			t.Fatalf("got %q, want the timer's deferred func", g)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a func deferred by a timer never ran")
	}
	select {
	case g := <-got:
		t.Fatalf("%q ran twice", g)
	default:
	}
}

// An idle loop must stay asleep. A loop goroutine that keeps its P in a raw
// epoll_wait is preempted by the runtime every 10 ms, which ends the wait;
// once idle for QuietAfter, the loop waits in a regular system call, which
// the runtime leaves alone.
func TestIdleLoopSleeps(t *testing.T) {
	old := QuietAfter
	QuietAfter = 20 * time.Millisecond
	t.Cleanup(func() { QuietAfter = old }) // runs after the loop's cleanup has stopped it
	l := runLoop(t)
	wakeups := func() int {
		var n int
		onLoop(t, l, func() { n = l.wakeups })
		return n
	}
	before := wakeups()
	const window = 300 * time.Millisecond
	time.Sleep(window) // the interval measured, not a synchronisation
	// Reading the counter wakes the loop, whose waits are raw again for
	// QuietAfter (20 ms, about two preemptions): allow a few.
	got := wakeups() - before
	t.Logf("%d wake-ups in %v", got, window)
	if got > 6 {
		t.Errorf("idle loop woke %d times in %v, want at most 6 (a raw wait is preempted every 10 ms)", got, window)
	}
}
