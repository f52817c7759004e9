package tcpproxy

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/loop"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// twoLoops returns the proxies of one service on two running loops, in
// front of an echo backend, and the address of the listening socket that
// only the first proxy accepts from: every connection lands on loop 0, the
// most uneven spread the kernel's SO_REUSEPORT hash could make. With
// group, the two proxies are siblings.
func twoLoops(t *testing.T, group bool) ([]*Proxy, []*loop.Loop, string) {
	t.Helper()
	be := testsrv.StartTB(t, testsrv.Echo, "tcp")
	svc, err := balancer.NewService(balancer.ServiceConfig{Name: "t", Loops: 2},
		[]balancer.Spec{{Addr: be.Addr(), Weight: 1}}, balancer.Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	lim := NewLimiter(0)
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
		done := make(chan error, 1)
		go func() { done <- l.Run() }()
		t.Cleanup(func() {
			onLoop(t, l, func() { ps[i].Drain(); ps[i].CloseAll() })
			l.Stop()
			<-done
			l.Close()
		})
	}
	return ps, ls, addr.String()
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
		ps, ls, addr := twoLoops(t, c.group)
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
	ps, ls, addr := twoLoops(t, true)
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
