package tcpproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/loop"
	"github.com/sluice-lb/sluice/internal/rawsys"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// twoLoops returns the proxies of one service on two running loops, in
// front of an echo backend, and the address of the listening socket that
// only the first proxy accepts from: every connection lands on loop 0, the
// most uneven spread the kernel's SO_REUSEPORT hash could make. With
// group, the two proxies are siblings; maxConns is their --max-conns (0:
// none).
func twoLoops(t *testing.T, group bool, maxConns int) ([]*Proxy, []*loop.Loop, string) {
	t.Helper()
	be := testsrv.StartTB(t, testsrv.Echo, "tcp")
	svc, err := balancer.NewService(balancer.ServiceConfig{Name: "t", Loops: 2},
		[]balancer.Spec{{Addr: be.Addr(), Weight: 1}}, balancer.Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	lim := NewLimiter(maxConns)
	var ps []*Proxy
	var ls []*loop.Loop
	for i := range 2 {
		l, err := loop.New()
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ps = append(ps, New(l, i, DefaultConfig(), svc, lim, zap.NewNop()))
	}
	if group {
		Group(ps)
	}
	fd, addr, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 128)
	if err != nil {
		t.Fatal(err)
	}
	if err := ps[0].Listen(fd); err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		runLoop(t, l, ps[i])
	}
	return ps, ls, addr.String()
}

// runLoop runs l, p's loop, until the test ends, then drains p, resets
// what it still runs, and stops and closes l.
func runLoop(t *testing.T, l *loop.Loop, p *Proxy) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- l.Run() }()
	t.Cleanup(func() {
		onLoop(t, l, func() { p.Drain(); p.CloseAll() })
		l.Stop()
		<-done
		l.Close()
	})
}

// onLoop runs fn on l and waits for it.
func onLoop(t *testing.T, l *loop.Loop, fn func()) {
	t.Helper()
	done := make(chan struct{})
	if !l.Submit(func() { fn(); close(done) }) {
		t.Fatal("loop stopped")
	}
	<-done
}

// openEchoed opens n connections to addr, each with one echo round trip
// done, so each has been accepted and runs on some loop.
func openEchoed(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	t.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	buf := make([]byte, 4)
	for range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q, %v", buf, err)
		}
	}
	return cs
}

// conns returns the connections each proxy runs.
func conns(t *testing.T, ps []*Proxy, ls []*loop.Loop) []int {
	t.Helper()
	out := make([]int, len(ps))
	for i := range ps {
		onLoop(t, ls[i], func() { out[i] = ps[i].Conns() })
	}
	return out
}

// TestGroupSpreadsConnections: connections all accepted on one loop end up
// spread over the group, each handed over counted once; without a group
// they stay where they were accepted. A loop hands a connection over while
// it runs two more than its sibling, so the accepting loop keeps one more:
// it takes the 1st, 2nd, 4th, 6th, ... and hands over the 3rd, 5th, ...
func TestGroupSpreadsConnections(t *testing.T) {
	for _, c := range []struct {
		group bool
		want  []int
	}{
		{true, []int{11, 9}},
		{false, []int{20, 0}},
	} {
		ps, ls, addr := twoLoops(t, c.group, 0)
		openEchoed(t, addr, 20)
		got := conns(t, ps, ls)
		if got[0] != c.want[0] || got[1] != c.want[1] {
			t.Errorf("group %v: connections per loop %v, want %v", c.group, got, c.want)
		}
		if n := ps[0].Stats().HandedOver.Load(); int(n) != c.want[1] {
			t.Errorf("group %v: %d handed over, want %d", c.group, n, c.want[1])
		}
	}
}

// TestDrainingSiblingTakesNone: a sibling that drains takes no more
// connections (its drain may already have ended); the loop that accepts
// them runs them itself.
func TestDrainingSiblingTakesNone(t *testing.T) {
	ps, ls, addr := twoLoops(t, true, 0)
	var drained <-chan struct{}
	onLoop(t, ls[1], func() { drained = ps[1].Drain() })
	select {
	case <-drained:
	default:
		t.Fatal("an idle proxy's drain did not end at once")
	}
	openEchoed(t, addr, 6)
	if got := conns(t, ps, ls); got[0] != 6 || got[1] != 0 {
		t.Errorf("connections per loop %v, want [6 0]", got)
	}
}

// TestHandToStoppedLoop: connections handed at the same moment, by several
// siblings, to a proxy whose loop has stopped (a fatal epoll error, with
// three or more loops) all go back to the loops that accepted them. None
// may be reported taken: no take would ever run it, and its fd and
// --max-conns slot would be held until the process exits.
func TestHandToStoppedLoop(t *testing.T) {
	svc, err := balancer.NewService(balancer.ServiceConfig{Name: "t", Loops: 1},
		[]balancer.Spec{{Addr: netip.MustParseAddrPort("127.0.0.1:9"), Weight: 1}}, balancer.Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	const handers = 4
	for try := range 300 {
		l, err := loop.New()
		if err != nil {
			t.Fatal(err)
		}
		p := New(l, 0, DefaultConfig(), svc, NewLimiter(0), zap.NewNop())
		done := make(chan error, 1)
		go func() { done <- l.Run() }()
		l.Stop()
		<-done
		start := make(chan struct{})
		taken := make(chan int, handers)
		var wg sync.WaitGroup
		for i := range handers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				// hand does not touch the fd: a number stands for it.
				if p.hand(1000+i, netip.AddrPort{}) {
					taken <- 1000 + i
				}
			}()
		}
		close(start)
		wg.Wait()
		close(taken)
		l.Close()
		for fd := range taken {
			t.Errorf("try %d: fd %d reported taken by a proxy whose loop has stopped", try, fd)
		}
		if n := p.pending.Load(); n != 0 {
			t.Fatalf("try %d: %d connections pending in a stopped proxy's inbox", try, n)
		}
		if t.Failed() {
			return
		}
	}
}

// TestDrainRacesHandOvers: a sibling drains while its group accepts many
// connections and hands it some. Every connection is served to the end,
// on one loop or the other; the drain ends only once the connections the
// draining proxy took are gone; and no --max-conns slot or inbox entry is
// left behind.
func TestDrainRacesHandOvers(t *testing.T) {
	const n = 200
	ps, ls, addr := twoLoops(t, true, 0)
	var wg sync.WaitGroup
	opened := make(chan net.Conn, n)
	errs := make(chan error, n)
	draining := false
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		opened <- c
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			msg := []byte{byte(i), 1, 2, 3}
			buf := make([]byte, len(msg))
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != string(msg) {
				errs <- fmt.Errorf("echo: %q, %v", buf, err)
			}
		}()
		// The drain starts once hand-overs have begun, while loop 0
		// accepts the rest.
		if !draining && ps[0].Stats().HandedOver.Load() >= 10 {
			draining = true
			ls[1].Submit(func() { ps[1].Drain() })
		}
	}
	if !draining {
		t.Fatal("no hand-over before the last connection")
	}
	wg.Wait()
	close(opened)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var cs []net.Conn
	for c := range opened {
		cs = append(cs, c)
	}
	var drained <-chan struct{}
	onLoop(t, ls[1], func() { drained = ps[1].Drain() }) // the same channel
	got := conns(t, ps, ls)
	if got[0]+got[1] != n {
		t.Errorf("connections per loop %v, want %d in all", got, n)
	}
	if got[1] > 0 {
		select {
		case <-drained:
			t.Errorf("drain ended with %d connections open on the draining loop", got[1])
		default:
		}
	}
	if open := ps[0].limiter.Open(); open != n {
		t.Errorf("%d --max-conns slots taken, want %d", open, n)
	}
	for _, c := range cs {
		c.Close()
	}
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatalf("drain did not end once the clients closed; connections per loop %v", conns(t, ps, ls))
	}
	deadline := time.Now().Add(5 * time.Second)
	for ps[0].limiter.Open() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if open := ps[0].limiter.Open(); open != 0 {
		t.Errorf("%d --max-conns slots taken after every client closed", open)
	}
	for i, p := range ps {
		if n := p.pending.Load(); n != 0 {
			t.Errorf("proxy %d: %d connections left in its inbox", i, n)
		}
	}
	t.Logf("connections per loop %v, %d handed over", got, ps[0].Stats().HandedOver.Load())
}

// TestCloseAllRunsHanded: a connection handed to a proxy whose CloseAll
// runs before the take its sibling queued is reset with the others and
// counted, rather than started after the proxy closed (the server stops
// the loops next: it would be cut without a count, or left open).
func TestCloseAllRunsHanded(t *testing.T) {
	ps, ls, _ := twoLoops(t, true, 0)
	lfd, laddr, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(lfd) })
	client, err := net.DialTimeout("tcp", laddr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	var fd int
	var peer netip.AddrPort
	for deadline := time.Now().Add(5 * time.Second); ; {
		if fd, peer, err = rawsys.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC); err == nil {
			break
		}
		if err != unix.EAGAIN || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	// Loop 1 is held so that the take queued by hand runs after CloseAll.
	release := make(chan struct{})
	reset := make(chan int, 1)
	ls[1].Submit(func() {
		<-release
		reset <- ps[1].CloseAll()
	})
	ps[0].limiter.Acquire() // as the accepting loop does
	if !ps[1].hand(fd, peer) {
		t.Fatal("hand refused by a running proxy")
	}
	close(release)
	if n := <-reset; n != 1 {
		t.Errorf("CloseAll reset %d connections, want the one handed", n)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client read after CloseAll: %v, want a reset", err)
	}
	got := conns(t, ps, ls)
	if got[1] != 0 {
		t.Errorf("proxy 1 runs %d connections after CloseAll", got[1])
	}
	if n := ps[1].pending.Load(); n != 0 {
		t.Errorf("%d connections left in the inbox", n)
	}
	if open := ps[0].limiter.Open(); open != 0 {
		t.Errorf("%d --max-conns slots taken after CloseAll", open)
	}
}

// TestSiblingCloseResumesAccepting: at --max-conns, a loop that handed its
// connections over may have none of its own to close; a sibling's close
// wakes its paused listener. The pause is made an hour long, so only that
// can bring the waiting client in.
func TestSiblingCloseResumesAccepting(t *testing.T) {
	was := limitPause
	t.Cleanup(func() { limitPause = was }) // after the loops' cleanups: they read it
	limitPause = time.Hour
	ps, ls, addr := twoLoops(t, true, 3)
	cs := openEchoed(t, addr, 3) // loop 0 takes two and hands the third over
	if got := conns(t, ps, ls); got[0] != 2 || got[1] != 1 {
		t.Fatalf("connections per loop %v, want [2 1]", got)
	}
	// The fourth waits in the accept queue: loop 0 pauses at the limit.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	servedOnceFreed(t, ps[0], c, func() { cs[2].Close() }) // the connection loop 1 runs
}
