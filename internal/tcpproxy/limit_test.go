package tcpproxy

import (
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/loop"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// serviceOnLoop starts a service of its own, in front of an echo backend,
// with one proxy on a loop of its own that accepts on a listening socket of
// its own, under the process-wide limiter lim. It returns the proxy and
// the address clients connect to.
func serviceOnLoop(t *testing.T, name string, lim *Limiter) (*Proxy, string) {
	t.Helper()
	be := testsrv.StartTB(t, testsrv.Echo, "tcp")
	svc, err := balancer.NewService(balancer.ServiceConfig{Name: name, Loops: 1},
		[]balancer.Spec{{Addr: be.Addr(), Weight: 1}}, balancer.Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	l, err := loop.New()
	if err != nil {
		t.Fatal(err)
	}
	p := New(l, 0, DefaultConfig(), svc, lim, zap.NewNop())
	fd, addr, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 128)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(fd); err != nil {
		t.Fatal(err)
	}
	runLoop(t, l, p)
	return p, addr.String()
}

// TestCloseInOtherServiceResumesAccepting: --max-conns is one limit for the
// whole process, so a connection that closes in one service frees the slot
// a listener of another service paused for. With the pause made an hour
// long, the client waiting on the second service is served only if that
// close wakes its listener.
func TestCloseInOtherServiceResumesAccepting(t *testing.T) {
	was := limitPause
	t.Cleanup(func() { limitPause = was }) // after the loops' cleanups: they read it
	limitPause = time.Hour
	lim := NewLimiter(1)
	_, addrA := serviceOnLoop(t, "a", lim)
	pb, addrB := serviceOnLoop(t, "b", lim)

	cs := openEchoed(t, addrA, 1) // the one slot
	c, err := net.DialTimeout("tcp", addrB, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	servedOnceFreed(t, pb, c, func() { cs[0].Close() })
}

// servedOnceFreed waits for p to pause accepting at the limit, with c in its
// accept queue, then frees a slot with free and checks that c is served
// (an echo round trip) without waiting out the pause.
func servedOnceFreed(t *testing.T, p *Proxy, c net.Conn, free func()) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().AcceptPauses.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("accepting did not pause at the limit")
		}
		time.Sleep(time.Millisecond)
	}
	free()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("the client waiting at the limit was not served once a slot was free: %v", err)
	}
}

// TestParkListsOnce: a proxy that pauses again and again while nothing
// closes is queued once, so that a limit held for hours does not grow the
// queue.
func TestParkListsOnce(t *testing.T) {
	lim := NewLimiter(1)
	p, q := &Proxy{}, &Proxy{}
	for range 1000 {
		lim.park(p)
		lim.park(q)
	}
	if n := lim.nparked.Load(); n != 2 || len(lim.parked) != 2 {
		t.Fatalf("parked %d (count %d) after 1000 pauses of 2 proxies, want 2", len(lim.parked), n)
	}
	lim.wake(p) // neither is paused: both leave the queue, nothing is woken
	if n := lim.nparked.Load(); n != 0 || len(lim.parked) != 0 || p.parked || q.parked {
		t.Fatalf("after a wake: parked %d (count %d), flags %v %v", len(lim.parked), n, p.parked, q.parked)
	}
}

// TestWakeOnePerClose: a close frees one slot, so it wakes one paused
// proxy, the one that has waited longest, never the closing proxy itself
// (which resumes itself); the others stay queued for the next closes.
func TestWakeOnePerClose(t *testing.T) {
	l, err := loop.New() // not run: a wake only queues the proxy's resume on it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	woken := map[*Proxy]int{}
	ps := make([]*Proxy, 4)
	lim := NewLimiter(1)
	for i := range ps {
		p := &Proxy{loop: l}
		p.resumeFn = func() { woken[p]++ }
		p.paused.Store(true)
		lim.park(p)
		ps[i] = p
	}
	// ps[0] closed a connection and resumed itself, but its listener
	// could not be registered again: it is still paused, and stays queued.
	lim.wake(ps[0])
	if !ps[0].paused.Load() || ps[1].paused.Load() || !ps[2].paused.Load() {
		t.Fatalf("first close: paused %v %v %v, want ps[1] alone woken", ps[0].paused.Load(), ps[1].paused.Load(), ps[2].paused.Load())
	}
	if got := lim.nparked.Load(); got != 3 {
		t.Fatalf("%d left queued, want ps[0], ps[2] and ps[3]", got)
	}
	ps[3].paused.Store(false) // its own timer resumed it meanwhile
	ps[0].paused.Store(false) // and ps[0] closed another and resumed
	lim.wake(ps[0])
	if ps[2].paused.Load() || lim.nparked.Load() != 0 {
		t.Fatalf("second close: ps[2] paused %v, %d left queued; want it woken and none left", ps[2].paused.Load(), lim.nparked.Load())
	}

	// The resumes were queued on the loop; run them as its goroutine would.
	l.Stop()
	if err := l.Run(); err != loop.ErrStopped {
		t.Fatalf("run: %v", err)
	}
	if len(woken) != 2 || woken[ps[1]] != 1 || woken[ps[2]] != 1 {
		t.Fatalf("resumes run: %v, want ps[1] and ps[2] once each", woken)
	}
}

// TestTimerResumeLeavesTheQueue: a listener whose pause ends by its own
// timer, with no client waiting, leaves its proxy unpaused, so that the
// next close wakes a proxy that still waits rather than spend its one wake
// on this one.
func TestTimerResumeLeavesTheQueue(t *testing.T) {
	lim := NewLimiter(1)
	p, _ := serviceOnLoop(t, "a", lim)
	ln := p.lns[0]
	onLoop(t, p.loop, func() { ln.pause(time.Millisecond) })
	// q pauses after p, so p is the first in the queue.
	woken := make(chan struct{}, 1)
	q := &Proxy{loop: p.loop, resumeFn: func() { woken <- struct{}{} }}
	q.paused.Store(true)
	lim.park(q)
	deadline := time.Now().Add(5 * time.Second)
	for armed := false; !armed; {
		if time.Now().After(deadline) {
			t.Fatal("the pause timer did not re-arm the listener")
		}
		time.Sleep(time.Millisecond)
		onLoop(t, p.loop, func() { armed = ln.armed })
	}
	if p.paused.Load() {
		t.Fatal("accepting again after its pause timer, the proxy still counts as paused")
	}
	lim.wake(nil)
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("a close woke the proxy its timer had resumed, not the one still waiting")
	}
	if n := lim.nparked.Load(); n != 0 {
		t.Fatalf("%d still queued after a wake", n)
	}
}

// TestRearmFailureRetries: a listener whose re-registration fails, after
// its pause timer or when a close resumes its proxy, tries again, and its
// proxy stays paused and queued so that closes keep waking it, rather than
// stay out of the loop for good with the kernel queueing clients on its
// socket; once the registration works, it accepts.
func TestRearmFailureRetries(t *testing.T) {
	was := limitPause
	t.Cleanup(func() { limitPause = was }) // after the loop's cleanup: it reads it
	limitPause = time.Millisecond
	lim := NewLimiter(0)
	p, addr := serviceOnLoop(t, "a", lim)
	ln := p.lns[0]
	f, err := os.CreateTemp(t.TempDir(), "not-pollable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	listenFD := ln.fd
	t.Cleanup(func() { onLoop(t, p.loop, func() { ln.fd = listenFD }) }) // first: the loop's cleanup closes it
	var first int64
	onLoop(t, p.loop, func() {
		ln.pause(time.Millisecond)
		ln.fd = int(f.Fd()) // epoll refuses a regular file: each re-arm fails
		first = ln.resume.When()
	})
	deadline := time.Now().Add(5 * time.Second)
	for retried := false; !retried; {
		if time.Now().After(deadline) {
			t.Fatal("no retry was scheduled after the timer's re-arm failed")
		}
		time.Sleep(time.Millisecond)
		onLoop(t, p.loop, func() { retried = ln.resume.When() > first })
	}

	// A close resumes the proxy: the re-arm fails again.
	onLoop(t, p.loop, func() {
		p.resume()
		if ln.armed || !ln.resume.Scheduled() {
			t.Errorf("after a failed resume: armed %v, retry scheduled %v", ln.armed, ln.resume.Scheduled())
		}
	})
	if !p.paused.Load() || lim.nparked.Load() != 1 {
		t.Fatalf("after a failed resume: paused %v, %d queued; want paused and queued", p.paused.Load(), lim.nparked.Load())
	}

	onLoop(t, p.loop, func() { ln.fd = listenFD })
	openEchoed(t, addr, 1) // accepted once a retry registers the socket
}
