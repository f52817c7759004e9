package loadgen

import (
	"context"
	"errors"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// config returns the defaults of mode m aimed at s, with a short duration.
func config(m Mode, s *testsrv.Server) Config {
	c := DefaultConfig(m)
	c.Target = s.Addr()
	c.Duration = 300 * time.Millisecond
	if m == RR || m == Idle {
		c.Conns = 8
	}
	return c
}

func runTB(tb testing.TB, cfg Config) Result {
	tb.Helper()
	res, err := Run(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("Run(%s): %v", cfg.Mode, err)
	}
	if res.Errors != 0 {
		tb.Fatalf("Run(%s): %d errors, first: %s", cfg.Mode, res.Errors, res.FirstError)
	}
	slack := 0.05
	if cfg.Mode == Idle {
		slack = 2 // the hold is timed by the clock, not by deadlines
	}
	if res.ElapsedS <= 0 || res.ElapsedS > cfg.Duration.Seconds()+slack {
		tb.Fatalf("Run(%s): measured %.3f s, want about %v", cfg.Mode, res.ElapsedS, cfg.Duration)
	}
	return res
}

func TestStream(t *testing.T) {
	for _, tc := range []struct {
		dir  Direction
		kind testsrv.Kind
	}{{Push, testsrv.Sink}, {Pull, testsrv.Source}, {Both, testsrv.Echo}} {
		t.Run(string(tc.dir), func(t *testing.T) {
			s := testsrv.StartTB(t, tc.kind, "tcp")
			cfg := config(Stream, s)
			cfg.Direction = tc.dir
			cfg.Conns = 2
			res := runTB(t, cfg)
			s.Close()
			st := s.Stats()
			switch tc.dir {
			case Push:
				// Up to the socket buffers may still be in flight
				// when the server is closed.
				if res.BytesSent == 0 || res.BytesReceived != 0 || st.BytesIn+64<<20 < res.BytesSent {
					t.Fatalf("push: sent %d received %d; sink got %d", res.BytesSent, res.BytesReceived, st.BytesIn)
				}
			case Pull:
				if res.BytesReceived == 0 || res.BytesSent != 0 || st.BytesOut < res.BytesReceived {
					t.Fatalf("pull: sent %d received %d; source wrote %d", res.BytesSent, res.BytesReceived, st.BytesOut)
				}
			case Both:
				if res.BytesSent == 0 || res.BytesReceived == 0 || res.BytesReceived > st.BytesOut {
					t.Fatalf("both: sent %d received %d; echo wrote %d", res.BytesSent, res.BytesReceived, st.BytesOut)
				}
			}
			want := float64(res.BytesSent+res.BytesReceived) * 8 / res.ElapsedS / 1e9
			if res.Gbps <= 0 || math.Abs(res.Gbps-want) > 1e-9*want+1e-12 {
				t.Fatalf("Gbps %v, want %v", res.Gbps, want)
			}
			if st.Accepted != uint64(cfg.Conns) {
				t.Fatalf("server accepted %d connections, want %d", st.Accepted, cfg.Conns)
			}
		})
	}
}

func TestRRClosedLoop(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := config(RR, s)
	cfg.Warmup = 100 * time.Millisecond
	res := runTB(t, cfg)
	if res.Ops == 0 || res.Latency == nil || res.Latency.Count != res.Ops {
		t.Fatalf("ops %d, latency %+v: want ops > 0 and equal to the histogram count", res.Ops, res.Latency)
	}
	if res.BytesSent != res.Ops*uint64(cfg.ReqSize) || res.BytesReceived != res.BytesSent {
		t.Fatalf("bytes %d/%d for %d requests of %d", res.BytesSent, res.BytesReceived, res.Ops, cfg.ReqSize)
	}
	l := res.Latency
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Fatalf("percentiles out of order: %+v", l)
	}
	if res.SendLag != nil || res.Missed != 0 {
		t.Fatalf("closed loop has send lag %+v, missed %d", res.SendLag, res.Missed)
	}
	// Warmup requests went to the server too, but are not counted.
	s.Close()
	if st := s.Stats(); st.BytesIn <= res.BytesSent {
		t.Fatalf("server got %d bytes, run counted %d: warmup was not excluded", st.BytesIn, res.BytesSent)
	}
}

func TestRROpenLoopRate(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := config(RR, s)
	// Many connections at a low rate each: after a stall of the machine
	// (tests of other packages share it) they catch up quickly.
	cfg.Conns = 20
	cfg.Rate = 1000
	cfg.Duration = 500 * time.Millisecond
	res := runTB(t, cfg)
	if got := res.OpsPerSec; got < 0.85*cfg.Rate || got > 1.1*cfg.Rate {
		t.Fatalf("open loop achieved %.0f req/s, want about %.0f", got, cfg.Rate)
	}
	if res.Latency.Count != res.Ops || res.SendLag == nil || res.SendLag.Count != res.Ops {
		t.Fatalf("ops %d, latency %+v, send lag %+v", res.Ops, res.Latency, res.SendLag)
	}
	// Every slot in the window is either done or missed.
	slots := uint64(math.Round(cfg.Rate * cfg.Duration.Seconds()))
	if d := int64(res.Ops+res.Missed) - int64(slots); d < -2 || d > 2 {
		t.Fatalf("done %d + missed %d, want %d slots", res.Ops, res.Missed, slots)
	}
}

// TestRROpenLoopNoCoordinatedOmission: a target that stalls makes open-loop
// latencies grow with the stall, from the intended send times.
func TestRROpenLoopStall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() { // an echo that sleeps 50 ms before answering the 10th request
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		for i := 0; ; i++ {
			if _, err := readFull(c, buf); err != nil {
				return
			}
			if i == 10 {
				time.Sleep(50 * time.Millisecond) // the stall under test, not synchronisation
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	cfg := DefaultConfig(RR)
	cfg.Target = netip.MustParseAddrPort(ln.Addr().String())
	cfg.Conns = 1
	cfg.Rate = 1000
	cfg.Duration = 200 * time.Millisecond
	res := runTB(t, cfg)
	<-done
	// ~50 requests were due during the stall; their latencies fall from
	// 50 ms down, so p90 is well above a millisecond. A closed-loop
	// measurement would show one slow request and a fast p90.
	if res.Latency.Max < 45_000 || res.Latency.P90 < 1_000 {
		t.Fatalf("latency %+v: the stall is hidden", res.Latency)
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func TestRRRequestsLimit(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := config(RR, s)
	cfg.Requests = 500
	cfg.Duration = 10 * time.Second
	start := time.Now()
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 500 || res.Latency.Count != 500 || res.Errors != 0 {
		t.Fatalf("ops %d, histogram %d, errors %d; want 500, 500, 0", res.Ops, res.Latency.Count, res.Errors)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("run did not stop at the request limit")
	}
}

func TestConnect(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := config(Connect, s)
	res := runTB(t, cfg)
	if res.Ops == 0 || res.Latency.Count != res.Ops {
		t.Fatalf("ops %d, latency %+v", res.Ops, res.Latency)
	}
	s.Close()
	if st := s.Stats(); st.Accepted < res.Ops {
		t.Fatalf("server accepted %d connections, run counted %d", st.Accepted, res.Ops)
	}
}

func TestUDP(t *testing.T) {
	for _, rate := range []float64{0, 3000} {
		name := "closed"
		if rate > 0 {
			name = "open"
		}
		t.Run(name, func(t *testing.T) {
			s := testsrv.StartTB(t, testsrv.Echo, "udp")
			cfg := config(UDP, s)
			cfg.Conns = 2
			cfg.Rate = rate
			cfg.Size = 100
			res := runTB(t, cfg)
			u := res.UDP
			if u == nil || u.Sent == 0 || res.Ops != u.Replies || res.Latency.Count != res.Ops || u.Lost != u.Sent-u.Replies {
				t.Fatalf("ops %d, udp %+v, latency %+v", res.Ops, u, res.Latency)
			}
			// Loopback without load beyond 3000/s: nothing should be lost.
			if u.Lost != 0 || u.Stray != 0 {
				t.Fatalf("udp %+v: losses on an idle loopback", u)
			}
			if rate > 0 && (res.OpsPerSec < 0.85*rate || res.OpsPerSec > 1.1*rate) {
				t.Fatalf("rate %.0f/s, want about %.0f", res.OpsPerSec, rate)
			}
		})
	}
}

// TestUDPLoss: requests to a port where nothing answers are lost (or fail
// with ECONNREFUSED), never counted as replies.
func TestUDPLoss(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // bound, never read
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cfg := DefaultConfig(UDP)
	cfg.Target = netip.MustParseAddrPort(pc.LocalAddr().String())
	cfg.Rate = 500
	cfg.Duration = 200 * time.Millisecond
	cfg.Timeout = 100 * time.Millisecond
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.UDP.Replies != 0 || res.UDP.Sent == 0 || res.UDP.Lost != res.UDP.Sent || res.UDP.LossPct != 100 {
		t.Fatalf("udp %+v: want everything lost", res.UDP)
	}
}

func TestIdle(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := config(Idle, s)
	cfg.Conns = 50
	cfg.Duration = 100 * time.Millisecond
	cfg.ProxyPIDs = []int{os.Getpid()} // this process holds the echo's end
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Idle == nil || res.Idle.Opened != 50 || res.Idle.Failed != 0 || res.Errors != 0 || res.Idle.Closed != 0 {
		t.Fatalf("idle %+v, errors %d (%s)", res.Idle, res.Errors, res.FirstError)
	}
	if st := s.Stats(); st.Accepted != 50 {
		t.Fatalf("server accepted %d", st.Accepted)
	}
	p := res.Proxy
	if p == nil || p.RSSBeforeKiB <= 0 || p.RSSAfterKiB <= 0 {
		t.Fatalf("proxy %+v: want RSS figures", p)
	}
	want := float64(p.RSSAfterKiB-p.RSSBeforeKiB) / 50
	if p.RSSPerConnKiB != want {
		t.Fatalf("rss per conn %v, want %v", p.RSSPerConnKiB, want)
	}
}

// TestIdleCancel: a done context ends the hold at once.
func TestIdleCancel(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := config(Idle, s)
	cfg.Duration = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second || res.Idle.Opened != uint64(cfg.Conns) || res.Idle.HeldS > 1 {
		t.Fatalf("idle %+v after %v", res.Idle, el)
	}
}

func TestSourceCIDR(t *testing.T) {
	for _, m := range []Mode{RR, Connect, UDP, Stream, Idle} {
		t.Run(string(m), func(t *testing.T) {
			network := "tcp"
			if m == UDP {
				network = "udp"
			}
			kind := testsrv.Echo
			if m == Stream {
				kind = testsrv.Sink
			}
			s := testsrv.StartTB(t, kind, network)
			cfg := config(m, s)
			cfg.Conns = 6
			cfg.Duration = 300 * time.Millisecond
			cfg.SourceCIDR = netip.MustParsePrefix("127.9.0.0/29") // .1 to .6
			res := runTB(t, cfg)
			s.Close()
			got := s.RemoteIPs()
			if len(got) != 6 || got[0] != netip.MustParseAddr("127.9.0.1") || got[5] != netip.MustParseAddr("127.9.0.6") {
				t.Fatalf("server saw %v, want 127.9.0.1 to .6", got)
			}
			if res.SourceAddrs != 6 {
				t.Fatalf("SourceAddrs %d, want 6", res.SourceAddrs)
			}
		})
	}
}

func TestProxyCPU(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := config(RR, s)
	cfg.ProxyPIDs = []int{os.Getpid(), os.Getpid()}
	res := runTB(t, cfg)
	p := res.Proxy
	// This process did the work of both ends: its CPU time must show.
	if p == nil || p.CPUSeconds <= 0 || p.CPUMicrosPerOp <= 0 {
		t.Fatalf("proxy %+v", p)
	}
	if d := p.CPUMicrosPerOp - p.CPUSeconds*1e6/float64(res.Ops); math.Abs(d) > 1e-6 {
		t.Fatalf("cpu per op %v does not match %v s / %d", p.CPUMicrosPerOp, p.CPUSeconds, res.Ops)
	}
}

func TestMachineCPU(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	res := runTB(t, config(RR, s))
	m := res.Machine
	// The generator and the echo run here, so the machine was busy.
	if m == nil || m.Error != "" || m.CPUSeconds <= 0 || m.CPUMicrosPerOp <= 0 {
		t.Fatalf("machine %+v", m)
	}
	if d := m.CPUMicrosPerOp - m.CPUSeconds*1e6/float64(res.Ops); math.Abs(d) > 1e-6 {
		t.Fatalf("cpu per op %v does not match %v s / %d", m.CPUMicrosPerOp, m.CPUSeconds, res.Ops)
	}
	// Of the order of the wall time of every CPU, not a unit off: the
	// samples are taken a little outside the measured time, so twice
	// that is allowed.
	if hi := 2 * (res.ElapsedS + 0.05) * float64(runtime.NumCPU()); m.CPUSeconds > hi {
		t.Fatalf("machine cpu %.2f s in %.2f s on %d cpus", m.CPUSeconds, res.ElapsedS, runtime.NumCPU())
	}
	if m.StealPct == nil || *m.StealPct < 0 || *m.StealPct > 100 {
		t.Fatalf("steal %v, want a share in percent", m.StealPct)
	}
}

func TestParseMachineCPU(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice:
	// busy is user+nice+system+irq+softirq = 1000+20+300+5+70 ticks, all
	// adds idle, iowait and steal (guest is part of user).
	const stat = "cpu  1000 20 300 90000 400 5 70 800 100 0\ncpu0 500 10 150 45000 200 3 35 400 50 0\nintr 1\n"
	got, err := parseMachineCPU([]byte(stat))
	if want := (cpuTicks{busy: 1395, steal: 800, all: 92595}); err != nil || got != want {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
	if s := got.busySeconds(); math.Abs(s-13.95) > 1e-9 {
		t.Fatalf("busy %v s, want 13.95", s)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n", "cpu 1 x 3 4 5 6 7 8\n", "cpu 1 2 3 4 5 6 7 x\n",
		"cpu 1 2 3 4 5 6 7\n"} { // no steal
		if _, err := parseMachineCPU([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestStealPct(t *testing.T) {
	t0 := cpuTicks{busy: 500, steal: 100, all: 1000}
	for _, tc := range []struct {
		t1   cpuTicks
		want float64
		ok   bool
	}{
		{cpuTicks{busy: 700, steal: 500, all: 2000}, 40, true},
		{cpuTicks{busy: 1500, steal: 100, all: 2000}, 0, true},
		{cpuTicks{busy: 500, steal: 1100, all: 2000}, 100, true},
		{t0, 0, false}, // no tick passed
		{cpuTicks{busy: 600, steal: 100, all: 900}, 0, false},  // idle or iowait went back
		{cpuTicks{busy: 500, steal: 50, all: 1100}, 0, false},  // steal went back
		{cpuTicks{busy: 500, steal: 300, all: 1100}, 0, false}, // more steal than time
	} {
		got, ok := stealPct(t0, tc.t1)
		if ok != tc.ok || math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("stealPct(%+v, %+v) = %v, %v; want %v, %v", t0, tc.t1, got, ok, tc.want, tc.ok)
		}
	}
}

func TestRunFailsToOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close() // now refused
	for _, m := range []Mode{Stream, RR} {
		cfg := DefaultConfig(m)
		cfg.Target = addr
		cfg.Duration = 100 * time.Millisecond
		if _, err := Run(context.Background(), cfg); !errors.Is(err, errOpen) {
			t.Errorf("%s against a closed port: %v", m, err)
		}
	}
	cfg := DefaultConfig(Connect)
	cfg.Target = addr
	cfg.Duration = 300 * time.Millisecond
	res, err := Run(context.Background(), cfg)
	if err != nil || res.Errors == 0 || res.Ops != 0 || !strings.Contains(res.FirstError, "refused") {
		t.Errorf("connect against a closed port: %v, %d errors (%s), %d ops", err, res.Errors, res.FirstError, res.Ops)
	}
}

func TestValidate(t *testing.T) {
	good := DefaultConfig(RR)
	good.Target = netip.MustParseAddrPort("127.0.0.1:9")
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"mode", func(c *Config) { c.Mode = "ping" }},
		{"target", func(c *Config) { c.Target = netip.AddrPort{} }},
		{"target", func(c *Config) { c.Target = netip.MustParseAddrPort("192.0.2.1:80") }},
		{"target", func(c *Config) { c.Target = netip.MustParseAddrPort("127.0.0.1:0") }},
		{"conns", func(c *Config) { c.Conns = 0 }},
		{"duration", func(c *Config) { c.Duration = -time.Second }},
		{"duration", func(c *Config) { c.Duration = 0 }},
		{"warmup", func(c *Config) { c.Warmup = -1 }},
		{"direction", func(c *Config) { c.Direction = "sideways" }},
		{"chunk", func(c *Config) { c.Chunk = 0 }},
		{"req-size", func(c *Config) { c.ReqSize = 0 }},
		{"size", func(c *Config) { c.Size = 8 }},
		{"size", func(c *Config) { c.Size = 65508 }},
		{"rate", func(c *Config) { c.Rate = -1 }},
		{"rate", func(c *Config) { c.Mode, c.Rate = Stream, 10 }},
		{"requests", func(c *Config) { c.Requests = -1 }},
		{"timeout", func(c *Config) { c.Timeout = 0 }},
		{"source-cidr", func(c *Config) { c.SourceCIDR = netip.MustParsePrefix("10.0.0.0/8") }},
		{"source-cidr", func(c *Config) { c.SourceCIDR = netip.MustParsePrefix("0.0.0.0/0") }},
		{"source-cidr", func(c *Config) { c.SourceCIDR = netip.MustParsePrefix("::1/128") }},
		{"proxy-pid", func(c *Config) { c.ProxyPIDs = []int{0} }},
	} {
		c := good
		tc.edit(&c)
		err := c.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("%s: Validate = %v, want a problem with %s", tc.field, err, tc.field)
		}
	}
}

func TestValidateTarget(t *testing.T) {
	for _, tc := range []struct {
		target string
		ok     bool
	}{
		{"127.0.0.1:9", true},
		{"127.255.0.7:9", true},
		{"[::1]:9", true},
		{"[::ffff:127.0.0.1]:9", true},
		{"198.18.0.1:7000", true},
		{"198.19.255.254:7000", true},
		{"[::ffff:198.18.0.1]:7000", true},
		{"[2001:db8::1]:7000", true},
		{"[2001:db8:ffff::1]:7000", true},
		{"198.17.255.255:7000", false},
		{"198.20.0.0:7000", false},
		{"192.0.2.1:80", false},
		{"10.0.0.1:80", false},
		{"8.8.8.8:53", false},
		{"0.0.0.0:80", false},
		{"[2001:db9::1]:80", false},
		{"[2001:db7:ffff::1]:80", false},
		{"[::]:80", false},
		{"[fe80::1]:80", false},
	} {
		c := DefaultConfig(UDP)
		c.Target = netip.MustParseAddrPort(tc.target)
		err := c.Validate()
		var ce *ConfigError
		if tc.ok && err != nil {
			t.Errorf("target %s: %v, want it allowed", tc.target, err)
		}
		if !tc.ok && (!errors.As(err, &ce) || ce.Field != "target" || !strings.Contains(ce.Reason, "198.18.0.0/15")) {
			t.Errorf("target %s: Validate = %v, want a target problem naming the allowed ranges", tc.target, err)
		}
	}
}

func TestSources(t *testing.T) {
	for _, tc := range []struct {
		prefix      string
		first, last string
		n           int
	}{
		{"127.0.0.0/16", "127.0.0.1", "127.0.255.254", 65534},
		{"127.1.2.3/32", "127.1.2.3", "127.1.2.3", 1},
		{"127.1.2.2/31", "127.1.2.2", "127.1.2.3", 2},
		{"::1/128", "::1", "::1", 1},
	} {
		s := newSources(netip.MustParsePrefix(tc.prefix))
		if int(s.n) != tc.n {
			t.Errorf("%s: %d addresses, want %d", tc.prefix, s.n, tc.n)
		}
		first := s.pick()
		for range tc.n - 2 {
			s.pick()
		}
		last := first
		if tc.n > 1 {
			last = s.pick()
		}
		if first.String() != tc.first || last.String() != tc.last || s.pick() != first {
			t.Errorf("%s: first %s last %s, want %s %s and wrap-around", tc.prefix, first, last, tc.first, tc.last)
		}
	}
	if newSources(netip.Prefix{}).pick().IsValid() {
		t.Error("no prefix gave an address")
	}
}

func TestProcParsing(t *testing.T) {
	cpu, err := procCPU(os.Getpid())
	if err != nil || cpu < 0 {
		t.Fatalf("procCPU: %v, %v", cpu, err)
	}
	rss, err := procRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("procRSS: %v, %v", rss, err)
	}
	if _, err := procCPU(1 << 30); err == nil {
		t.Fatal("procCPU of a missing pid succeeded")
	}
}

func TestProxyPIDMissing(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := config(RR, s)
	cfg.ProxyPIDs = []int{1 << 30} // above pid_max: never a process
	if _, err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "pid 1073741824") {
		t.Fatalf("Run with a missing pid: %v", err)
	}
}

// TestCancelStopsEarly: a cancelled context ends every mode at once, with
// the figures measured until then, even when replies could still come.
func TestCancelStopsEarly(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		kind testsrv.Kind
		net  string
		rate float64
	}{
		{Stream, testsrv.Sink, "tcp", 0},
		{RR, testsrv.Echo, "tcp", 0},
		{RR, testsrv.Echo, "tcp", 200},
		{Connect, testsrv.Echo, "tcp", 0},
		{UDP, testsrv.Echo, "udp", 0},
		{UDP, testsrv.Echo, "udp", 200},
	} {
		s := testsrv.StartTB(t, tc.kind, tc.net)
		cfg := config(tc.mode, s)
		cfg.Conns = 2
		cfg.Rate = tc.rate
		cfg.Duration = time.Hour
		cfg.Timeout = time.Hour
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		start := time.Now()
		res, err := Run(ctx, cfg)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tc.mode, err)
		}
		// On a starved machine the cancel can come before the load
		// starts; then there is nothing to count.
		if el := time.Since(start); el > 3*time.Second || res.ElapsedS > 1 || res.ElapsedS > 0.1 && res.Ops == 0 || res.Errors != 0 {
			t.Fatalf("%s rate %v: returned after %v with %.3f s measured, %d ops, %d errors (%s)",
				tc.mode, tc.rate, el, res.ElapsedS, res.Ops, res.Errors, res.FirstError)
		}
		// Missed counts the slots due before the cancel, not the hour
		// planned (720,000 slots at 200/s).
		if tc.rate > 0 && float64(res.Missed) > res.ElapsedS*tc.rate+2 {
			t.Fatalf("%s rate %v: %d missed in %.3f s", tc.mode, tc.rate, res.Missed, res.ElapsedS)
		}
	}
}

// TestUDPCancelDoesNotWaitForLosses: after a cancel, the open-loop receiver
// does not wait out the loss timeout for replies that will never come.
func TestUDPCancelDoesNotWaitForLosses(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // bound, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cfg := DefaultConfig(UDP)
	cfg.Target = netip.MustParseAddrPort(pc.LocalAddr().String())
	cfg.Rate = 100
	cfg.Duration = time.Hour
	cfg.Timeout = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := Run(ctx, cfg)
		errc <- err
	}()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still waits for replies 5 s after the cancel")
	}
}
