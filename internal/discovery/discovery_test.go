package discovery

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tickName is a target every test watcher has: it always answers, and
// dnsServer.settle counts rounds by its queries.
const tickName = "tick.test."

var tickBackend = Backend{Addr: netip.MustParseAddrPort("127.0.0.99:1"), Weight: 1}

const (
	msgFailed    = "resolve failed, keeping last good backends"
	msgRecovered = "resolve recovered"
	msgHold      = "name is gone, holding its last backends"
	msgRemoved   = "name is still gone after the hold, removing its backends"
)

// harness runs a Watcher against a dnsServer.
type harness struct {
	dns     *dnsServer
	logs    *observer.ObservedLogs
	updates chan []Backend
	cancel  context.CancelFunc
	done    chan struct{}
}

// start runs a watcher of tick.test and targets with a short interval; the
// test's cleanup stops it and waits for Run to return.
func start(t *testing.T, s *dnsServer, cfg Config) *harness {
	t.Helper()
	s.set(t, tickName, "A 127.0.0.99")
	core, logs := observer.New(zapcore.InfoLevel)
	cfg.Targets = append([]Target{{Kind: Host, Name: tickName, Port: 1}}, cfg.Targets...)
	if cfg.Interval == 0 {
		cfg.Interval = 5 * time.Millisecond
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	cfg.Resolver = s.resolver()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := &harness{dns: s, logs: logs, updates: make(chan []Backend, 100), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	w := New(cfg, zap.New(core))
	go func() {
		defer close(h.done)
		w.Run(ctx, func(bs []Backend) { h.updates <- bs })
	}()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
}

// expect waits for an update to want plus tickBackend. It skips the
// updates before: a round that runs while the test changes records sees
// some queries answered before the change and some after, as a watcher in
// production would, and may report a set in between.
func (h *harness) expect(t *testing.T, want ...string) {
	t.Helper()
	w := backends(t, want...)
	timeout := time.After(10 * time.Second)
	var got []Backend
	for !slices.Equal(got, w) {
		select {
		case got = <-h.updates:
		case <-timeout:
			t.Fatalf("no update to %v in 10s; last was %v", w, got)
		}
	}
}

// quiet waits for a full round and checks it made no update.
func (h *harness) quiet(t *testing.T) {
	t.Helper()
	h.dns.settle(t)
	select {
	case bs := <-h.updates:
		t.Fatalf("unexpected update %v", bs)
	default:
	}
}

func (h *harness) count(msg string) int { return h.logs.FilterMessage(msg).Len() }

// waitLog waits, a round at a time, until msg has been logged n times.
func (h *harness) waitLog(t *testing.T, msg string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); h.count(msg) < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d lines %q in 10s, want %d", h.count(msg), msg, n)
		}
		h.dns.settle(t)
	}
}

// backends parses "ip:port" or "ip:port,weight=N" and adds tickBackend,
// sorted.
func backends(t *testing.T, specs ...string) []Backend {
	t.Helper()
	bs := []Backend{tickBackend}
	for _, s := range specs {
		b := Backend{Weight: 1}
		addr, w, ok := strings.Cut(s, ",weight=")
		if ok {
			if _, err := fmt.Sscan(w, &b.Weight); err != nil {
				t.Fatal(err)
			}
		}
		b.Addr = netip.MustParseAddrPort(addr)
		bs = append(bs, b)
	}
	slices.SortFunc(bs, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	return bs
}

func TestParseHost(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Target
		err  string
	}{
		{in: "web.default.svc.cluster.local:8080", want: Target{Kind: Host, Name: "web.default.svc.cluster.local", Port: 8080}},
		{in: "web.service.consul.:443", want: Target{Kind: Host, Name: "web.service.consul.", Port: 443}},
		{in: "localhost:1", want: Target{Kind: Host, Name: "localhost", Port: 1}},
		{in: "Web-1.Example:65535", want: Target{Kind: Host, Name: "Web-1.Example", Port: 65535}},
		{in: "web", err: "want NAME:PORT"},
		{in: "web:", err: "want a number from 1 to 65535"},
		{in: "web:0", err: "want a number from 1 to 65535"},
		{in: "web:65536", err: "want a number from 1 to 65535"},
		{in: "web:http", err: "want a number from 1 to 65535"},
		{in: ":80", err: "empty DNS name"},
		{in: "10.0.0.1:80", err: "is an IP address, not a DNS name"},
		{in: "[::1]:80", err: "is an IP address, not a DNS name"},
		{in: "a..b:80", err: `DNS label ""`},
		{in: "-a.b:80", err: "hyphen"},
		{in: "a b:80", err: "not allowed"},
		{in: strings.Repeat("a", 64) + ".b:80", err: "want 1 to 63 characters"},
		{in: strings.Repeat("abcdefg.", 32) + "x:80", err: "more than 253"},
	} {
		got, err := ParseHost(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseHost(%q) error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseHost(%q) = %+v, %v, want %+v", c.in, got, err, c.want)
		}
		if got.String() != c.in {
			t.Errorf("String() = %q, want %q", got.String(), c.in)
		}
	}
}

func TestParseSRV(t *testing.T) {
	for _, c := range []struct {
		in  string
		err string
	}{
		{in: "_http._tcp.web.default.svc.cluster.local"},
		{in: "_web._tcp.service.consul."},
		{in: "_dns._udp.example"},
		{in: "web.service.consul", err: "want _service._proto.NAME"},
		{in: "_http.web.example", err: "want _service._proto.NAME"},
		{in: "_http._tcp", err: "want _service._proto.NAME"},
		{in: "_._tcp.web", err: "want _service._proto.NAME"},
		{in: "_http._tcp.web:80", err: "not allowed"},
		{in: "", err: "empty DNS name"},
	} {
		got, err := ParseSRV(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseSRV(%q) error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if want := (Target{Kind: SRV, Name: c.in}); err != nil || got != want {
			t.Errorf("ParseSRV(%q) = %+v, %v", c.in, got, err)
		}
		if got.String() != c.in {
			t.Errorf("String() = %q", got.String())
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{Targets: []Target{{Kind: Host, Name: "a", Port: 1}}}).Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	err := Config{
		Targets:  []Target{{Kind: Host, Name: "a"}, {Kind: 9, Name: "b"}, {Kind: SRV, Name: "bad name"}},
		Interval: -1, Timeout: -1, MaxAddrs: -1, Hold: -1,
	}.Validate()
	for _, want := range []string{"port 0", "unknown kind", "not allowed", "interval", "timeout", "max addresses", "hold"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
	if err := (Config{}).Validate(); err == nil || !strings.Contains(err.Error(), "no DNS targets") {
		t.Errorf("empty config: %v", err)
	}
	d := DefaultConfig()
	if d.Interval != 30*time.Second || d.Timeout != 5*time.Second || d.MaxAddrs != 1024 || d.Hold != 30*time.Second {
		t.Errorf("defaults %+v", d)
	}
}

func TestHostMembership(t *testing.T) {
	s := newDNSServer(t)
	s.set(t, "web.test.", "A 127.0.0.2", "A 127.0.0.1", "A 127.0.0.1", "AAAA ::1", "AAAA ::ffff:127.0.0.3")
	s.set(t, "alias.test.", "A 127.0.0.2")
	h := start(t, s, Config{Targets: []Target{
		{Kind: Host, Name: "web.test.", Port: 8080},
		{Kind: Host, Name: "alias.test.", Port: 8080}, // same backend twice
		{Kind: Host, Name: "web.test.", Port: 9090},
	}})
	h.expect(t, "127.0.0.1:8080", "127.0.0.2:8080", "127.0.0.3:8080", "[::1]:8080",
		"127.0.0.1:9090", "127.0.0.2:9090", "127.0.0.3:9090", "[::1]:9090")
	h.quiet(t)

	// An addition, then a removal.
	s.set(t, "web.test.", "A 127.0.0.1", "A 127.0.0.4", "AAAA ::1")
	h.expect(t, "127.0.0.1:8080", "127.0.0.2:8080", "127.0.0.4:8080", "[::1]:8080",
		"127.0.0.1:9090", "127.0.0.4:9090", "[::1]:9090")
	s.set(t, "web.test.", "A 127.0.0.4")
	h.expect(t, "127.0.0.2:8080", "127.0.0.4:8080", "127.0.0.4:9090")
	// The same answer in another order changes nothing.
	s.set(t, "alias.test.", "A 127.0.0.4", "A 127.0.0.2")
	h.quiet(t)
	if n := h.count(msgFailed); n != 0 {
		t.Errorf("%d failure lines, want 0", n)
	}
}

// TestFailuresKeepLastGood takes a target through each kind of failure:
// the set never changes, and each failing spell is logged once (as a hold
// when the name is gone), as is each recovery. The good answer has no AAAA records, so that a round that sees
// half a change (the A answer from before it, the AAAA answer from after,
// or the reverse) sees either the good set or a failure, and the counts
// are exact.
func TestFailuresKeepLastGood(t *testing.T) {
	s := newDNSServer(t)
	s.set(t, "web.test.", "A 127.0.0.1", "A 127.0.0.2")
	h := start(t, s, Config{Targets: []Target{{Kind: Host, Name: "web.test.", Port: 80}}, Timeout: 200 * time.Millisecond})
	h.expect(t, "127.0.0.1:80", "127.0.0.2:80")

	good := func() {
		s.set(t, "web.test.", "A 127.0.0.1", "A 127.0.0.2")
		s.setMode("web.test.", answer)
		s.setMode("web.test. AAAA", answer)
	}
	for i, fail := range []struct {
		name  string
		apply func()
	}{
		{"SERVFAIL", func() { s.setMode("web.test.", servfail) }},
		{"AAAA SERVFAIL, A good", func() { s.setMode("web.test. AAAA", servfail) }},
		{"AAAA timeout, A good", func() { s.setMode("web.test. AAAA", drop) }},
		{"timeout", func() { s.setMode("web.test.", drop) }},
		{"NXDOMAIN", func() { s.set(t, "web.test.") }},
		{"no records of the type", func() { s.set(t, "web.test.", "TXT \"moved\"") }},
		{"unusable addresses", func() { s.set(t, "web.test.", "A 0.0.0.0", "A 224.0.0.1", "A 255.255.255.255") }},
	} {
		t.Run(fail.name, func(t *testing.T) {
			fail.apply()
			h.quiet(t)
			h.quiet(t) // several failing rounds, one line
			if n := h.count(msgFailed) + h.count(msgHold); n != i+1 {
				t.Fatalf("%d failure lines, want %d", n, i+1)
			}
			good()
			h.quiet(t) // recovered with the same set: no update
			h.quiet(t)
			if n := h.count(msgRecovered); n != i+1 {
				t.Fatalf("%d recovery lines, want %d", n, i+1)
			}
		})
	}
	// Recovery with a different answer is an update.
	s.setMode("web.test.", servfail)
	h.quiet(t)
	s.set(t, "web.test.", "A 127.0.0.3", "AAAA ::1")
	s.setMode("web.test.", answer)
	h.expect(t, "127.0.0.3:80", "[::1]:80")

	line := h.logs.FilterMessage(msgFailed).All()[0]
	fields := line.ContextMap()
	if line.Level != zapcore.WarnLevel || fields["target"] != "web.test.:80" || fields["kept"] != int64(2) || fields["error"] == "" {
		t.Errorf("failure line %v %v", line.Level, fields)
	}
}

// TestFailureBeforeFirstAnswer starts with a failing target: nothing to
// keep, one line, and the first good answer is the first update.
func TestFailureBeforeFirstAnswer(t *testing.T) {
	s := newDNSServer(t)
	s.setMode("web.test.", servfail)
	h := start(t, s, Config{Targets: []Target{{Kind: Host, Name: "web.test.", Port: 80}}})
	h.expect(t) // tick.test alone
	h.quiet(t)
	if n := h.count(msgFailed); n != 1 {
		t.Fatalf("%d failure lines, want 1", n)
	}
	s.set(t, "web.test.", "A 127.0.0.1")
	s.setMode("web.test.", answer)
	h.expect(t, "127.0.0.1:80")
}

func TestHugeAnswer(t *testing.T) {
	s := newDNSServer(t)
	many := func(n int) []string {
		var rrs []string
		for i := range n {
			rrs = append(rrs, fmt.Sprintf("A 127.0.%d.%d", 1+i/250, 1+i%250))
		}
		return rrs
	}
	// 500 records are more than a UDP answer holds: the resolver retries
	// over TCP.
	s.set(t, "web.test.", many(500)...)
	h := start(t, s, Config{Targets: []Target{{Kind: Host, Name: "web.test.", Port: 80}}, MaxAddrs: 600})
	select {
	case got := <-h.updates:
		if len(got) != 501 {
			t.Fatalf("%d backends, want 501", len(got))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no update in 10s")
	}
	s.set(t, "web.test.", many(1000)...)
	h.quiet(t)
	if n := h.count(msgFailed); n != 1 {
		t.Fatalf("%d failure lines, want 1", n)
	}
	if err := h.logs.FilterMessage(msgFailed).All()[0].ContextMap()["error"]; !strings.Contains(fmt.Sprint(err), "more than the limit of 600") {
		t.Errorf("error %v", err)
	}
}

func TestSRV(t *testing.T) {
	s := newDNSServer(t)
	const name = "_http._tcp.web.test."
	s.set(t, name,
		"SRV 10 5 8080 a.test.",
		"SRV 10 0 8080 b.test.",
		"SRV 10 7 8082 gone.test.", // NXDOMAIN: skipped
		"SRV 20 1 9090 c.test.",
	)
	s.set(t, "a.test.", "A 127.0.1.1", "AAAA ::1")
	s.set(t, "b.test.", "A 127.0.1.2", "A 127.0.1.1") // 127.0.1.1 twice: the larger weight wins
	s.set(t, "c.test.", "A 127.0.1.3")
	h := start(t, s, Config{Targets: []Target{{Kind: SRV, Name: name}}})
	h.expect(t, "127.0.1.1:8080,weight=5", "127.0.1.2:8080", "[::1]:8080,weight=5")

	// The lowest priority has no usable record left (a target that never
	// resolved is skipped at once): the next one is used. (A target that
	// resolved and then is gone is held: TestSRVTargetGoneIsRemovedAfterHold.)
	s.set(t, name, "SRV 10 7 8082 gone.test.", "SRV 20 1 9090 c.test.")
	h.expect(t, "127.0.1.3:9090")

	// Weights above MaxWeight scale down, keeping their ratio. (Changes
	// are ordered so that no state in between fails.)
	s.set(t, "a.test.", "A 127.0.1.1")
	s.set(t, name, "SRV 0 65535 1 a.test.", "SRV 0 6553 2 a.test.", "SRV 0 0 3 a.test.")
	h.expect(t, "127.0.1.1:1,weight=1000", "127.0.1.1:2,weight=100", "127.0.1.1:3")

	// When no record target resolves, and one fails other than NXDOMAIN,
	// the SRV target fails: the last good set stays.
	s.setMode("a.test.", servfail)
	h.quiet(t)
	if n := h.count(msgFailed); n != 1 {
		t.Fatalf("%d failure lines, want 1", n)
	}
	s.setMode("a.test.", answer)
	h.quiet(t)
	// An SRV name that is gone, or whose targets all are, starts a hold
	// (the default, 30s, outlasts the test): the set stays.
	s.set(t, name)
	h.quiet(t)
	s.set(t, name, "SRV 0 1 1 gone.test.", "SRV 0 1 1 .")
	h.quiet(t)
	if n, m := h.count(msgFailed), h.count(msgHold); n != 1 || m != 1 {
		t.Fatalf("%d failure lines and %d hold lines, want 1 each", n, m)
	}
	if n := h.count(msgRecovered); n != 1 {
		t.Fatalf("%d recovery lines, want 1", n)
	}
}

func TestSRVWeight(t *testing.T) {
	for _, c := range []struct {
		w, max uint16
		want   int
	}{
		{0, 0, 1}, {0, 10, 1}, {10, 10, 10}, {1000, 1000, 1000},
		{65535, 65535, 1000}, {1, 65535, 1}, {6553, 65535, 100}, {1001, 1001, 1000}, {500, 1001, 500},
	} {
		if got := srvWeight(c.w, c.max); got != c.want {
			t.Errorf("srvWeight(%d, %d) = %d, want %d", c.w, c.max, got, c.want)
		}
	}
}

// TestRunStops cancels Run while a lookup waits on a server that never
// answers, with a timeout far away: Run returns at once, its goroutines
// gone (TestMain checks for leaks).
func TestRunStops(t *testing.T) {
	s := newDNSServer(t)
	s.setMode("web.test.", drop)
	h := start(t, s, Config{Targets: []Target{{Kind: Host, Name: "web.test.", Port: 80}}, Timeout: time.Hour})
	// Wait until the lookup is in flight.
	for q := ""; !strings.HasPrefix(q, "web.test. "); {
		select {
		case q = <-s.queries:
		case <-time.After(10 * time.Second):
			t.Fatal("no query for web.test. in 10s")
		}
	}
	h.stop()
	select {
	case bs := <-h.updates:
		t.Fatalf("update %v after a cancelled round", bs)
	default:
	}
	if n := h.count(msgFailed); n != 0 {
		t.Fatalf("cancellation logged as a failure")
	}
}

func TestMergeAndDiff(t *testing.T) {
	b := func(s string, w int) Backend { return Backend{Addr: netip.MustParseAddrPort(s), Weight: w} }
	targets := []target{
		{last: []Backend{b("10.0.0.2:80", 1), b("10.0.0.1:80", 3)}},
		{},
		{last: []Backend{b("10.0.0.1:80", 5), b("[::1]:80", 1), b("10.0.0.1:81", 1)}},
	}
	got := merge(targets)
	want := []Backend{b("10.0.0.1:80", 5), b("10.0.0.1:81", 1), b("10.0.0.2:80", 1), b("[::1]:80", 1)}
	if !slices.Equal(got, want) {
		t.Fatalf("merge = %v, want %v", got, want)
	}
	next := []Backend{b("10.0.0.1:80", 1), b("10.0.0.3:80", 1), b("[::1]:80", 1), b("[::2]:80", 1)}
	if a, r := diff(got, next); a != 2 || r != 2 {
		t.Fatalf("diff = +%d -%d, want +2 -2", a, r)
	}
	if a, r := diff(nil, next); a != 4 || r != 0 {
		t.Fatalf("diff from nothing = +%d -%d", a, r)
	}
	if s := fmt.Sprint(want[0], " ", want[1]); s != "10.0.0.1:80,weight=5 10.0.0.1:81" {
		t.Fatalf("String: %s", s)
	}
}

// TestSRVPortZeroSkipped: an SRV record with port 0 names nothing a
// backend could listen on; it is skipped like a "." target.
func TestSRVPortZeroSkipped(t *testing.T) {
	s := newDNSServer(t)
	const name = "_db._tcp.zero.test."
	s.set(t, name, "SRV 10 5 0 a.test.", "SRV 10 5 5432 b.test.")
	s.set(t, "a.test.", "A 127.0.1.1")
	s.set(t, "b.test.", "A 127.0.1.2")
	h := start(t, s, Config{Targets: []Target{{Kind: SRV, Name: name}}})
	h.expect(t, "127.0.1.2:5432,weight=5")
}

// TestLargeSRVFromDistantServer: the targets of a large SRV answer are
// resolved concurrently. One after another, 200 targets from a server
// 15ms away need 6s of round trips (A and AAAA each), three times the
// round's 2s timeout, and the service would never get a backend.
func TestLargeSRVFromDistantServer(t *testing.T) {
	s := newDNSServer(t)
	s.delay.Store(int64(15 * time.Millisecond))
	const name = "_db._tcp.big.test."
	var rrs, want []string
	for i := range 200 {
		target := fmt.Sprintf("n%d.test.", i)
		ip := fmt.Sprintf("127.1.%d.%d", 1+i/250, 1+i%250)
		rrs = append(rrs, "SRV 10 1 5432 "+target)
		s.set(t, target, "A "+ip)
		want = append(want, ip+":5432")
	}
	s.set(t, name, rrs...)
	h := start(t, s, Config{Targets: []Target{{Kind: SRV, Name: name}}, Interval: time.Second})
	h.expect(t, want...)
}

// TestGoneNameIsRemovedAfterHold: a name that is gone (NXDOMAIN, or no
// records of the types asked) keeps its backends for the hold, then loses
// them; another target's backends stay. When the name comes back, so do
// its backends.
func TestGoneNameIsRemovedAfterHold(t *testing.T) {
	const hold = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		gone []string // web.test.'s records while it is gone
	}{
		{"NXDOMAIN", nil},
		{"NODATA", []string{`TXT "moved"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newDNSServer(t)
			s.set(t, "web.test.", "A 127.0.0.1", "AAAA ::1")
			s.set(t, "stay.test.", "A 127.0.0.2")
			h := start(t, s, Config{Hold: hold, Targets: []Target{
				{Kind: Host, Name: "web.test.", Port: 80},
				{Kind: Host, Name: "stay.test.", Port: 80},
			}})
			h.expect(t, "127.0.0.1:80", "[::1]:80", "127.0.0.2:80")

			began := time.Now() // at or before the first answer saying it is gone
			s.set(t, "web.test.", tc.gone...)
			h.expect(t, "127.0.0.2:80")
			if held := time.Since(began); held < hold {
				t.Fatalf("backends removed %v after the name went, before the hold of %v", held, hold)
			}
			if n, m := h.count(msgHold), h.count(msgRemoved); n != 1 || m != 1 {
				t.Fatalf("%d hold lines and %d removal lines, want 1 each", n, m)
			}
			for _, msg := range []string{msgHold, msgRemoved} {
				l := h.logs.FilterMessage(msg).All()[0]
				if f := l.ContextMap(); l.Level != zapcore.WarnLevel || f["target"] != "web.test.:80" || f["error"] == "" {
					t.Errorf("%q line: %v %v", msg, l.Level, f)
				}
			}
			if f := h.logs.FilterMessage(msgHold).All()[0].ContextMap(); f["kept"] != int64(2) || f["hold"] != hold {
				t.Errorf("hold line fields %v", f)
			}
			if f := h.logs.FilterMessage(msgRemoved).All()[0].ContextMap(); f["removed"] != int64(2) {
				t.Errorf("removal line fields %v", f)
			}
			h.quiet(t) // still gone: nothing more to remove, nothing logged
			if n := h.count(msgFailed) + h.count(msgHold) + h.count(msgRemoved); n != 2 {
				t.Fatalf("%d failure, hold and removal lines, want 2", n)
			}

			s.set(t, "web.test.", "A 127.0.0.3")
			h.expect(t, "127.0.0.2:80", "127.0.0.3:80")
			if n := h.count(msgRecovered); n != 1 {
				t.Fatalf("%d recovery lines, want 1", n)
			}
		})
	}
}

// TestOnlyGoneAnswersEndAHold: a hold started by NXDOMAIN, followed by
// SERVFAIL for longer than the hold, keeps the backends (a DNS outage must
// not empty a database pool); the next NXDOMAIN answer removes them, the
// hold having long passed. The same goes for an SRV record's target. A
// target that only ever fails keeps its backends however long it fails.
func TestOnlyGoneAnswersEndAHold(t *testing.T) {
	const hold = 100 * time.Millisecond
	const srvName = "_pg._tcp.db.test."
	for _, tc := range []struct {
		name            string
		target          Target
		gone            string // the name that goes
		before, after   []string
		holdMsg, remMsg string
	}{
		{"name", Target{Kind: Host, Name: "web.test.", Port: 80}, "web.test.",
			[]string{"127.0.0.1:80"}, nil, msgHold, msgRemoved},
		{"SRV target", Target{Kind: SRV, Name: srvName}, "a.test.",
			[]string{"127.0.1.1:5432", "127.0.1.2:5432"}, []string{"127.0.1.2:5432"}, msgTargetHold, msgTargetRemoved},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newDNSServer(t)
			s.set(t, "web.test.", "A 127.0.0.1")
			s.set(t, srvName, "SRV 10 1 5432 a.test.", "SRV 10 1 5432 b.test.")
			s.set(t, "a.test.", "A 127.0.1.1")
			s.set(t, "b.test.", "A 127.0.1.2")
			s.set(t, "down.test.", "A 127.0.0.2")
			h := start(t, s, Config{Hold: hold, Targets: []Target{tc.target, {Kind: Host, Name: "down.test.", Port: 80}}})
			h.expect(t, append(tc.before, "127.0.0.2:80")...)
			s.setMode("down.test.", servfail)

			s.set(t, tc.gone)
			h.waitLog(t, tc.holdMsg, 1)
			s.setMode(tc.gone, servfail)
			for since := time.Now(); time.Since(since) < 3*hold; {
				h.dns.settle(t)
			}
			h.quiet(t)
			if n := h.count(tc.remMsg); n != 0 {
				t.Fatalf("%d removal lines after SERVFAIL answers only", n)
			}

			s.setMode(tc.gone, answer) // NXDOMAIN again
			h.expect(t, append(tc.after, "127.0.0.2:80")...)
			if n := h.count(tc.remMsg); n != 1 {
				t.Fatalf("%d removal lines, want 1", n)
			}
			// The hold ran on through the failures, from the first
			// answer saying the name was gone.
			if f := h.logs.FilterMessage(tc.remMsg).All()[0].ContextMap(); f["gone_for"].(time.Duration) < 3*hold {
				t.Errorf("removal line: gone for %v, want at least the %v of SERVFAIL answers: they restarted the hold", f["gone_for"], 3*hold)
			}
		})
	}
}

// TestSRVTargetFailureKeepsTheOthers: one record target that fails to
// resolve does not hold back the others. A target that never resolved
// adds nothing; one that did keeps its last addresses while it fails.
// Each is logged once when it starts failing and once when it recovers.
func TestSRVTargetFailureKeepsTheOthers(t *testing.T) {
	const (
		name       = "_pg._tcp.db.test."
		msgAgain   = "SRV target resolves again"
		msgMissing = "SRV target does not exist, skipping it"
	)
	s := newDNSServer(t)
	s.set(t, name, "SRV 10 1 5432 a.test.", "SRV 10 1 5432 b.test.", "SRV 10 1 5432 new.test.", "SRV 10 1 5432 gone.test.")
	s.set(t, "a.test.", "A 127.0.1.1")
	s.set(t, "b.test.", "A 127.0.1.2")
	s.setMode("new.test.", servfail)
	h := start(t, s, Config{Targets: []Target{{Kind: SRV, Name: name}}})
	h.expect(t, "127.0.1.1:5432", "127.0.1.2:5432")

	// b.test fails too, after resolving: it keeps its address, while
	// a.test's change goes through.
	s.setMode("b.test.", servfail)
	s.set(t, "a.test.", "A 127.0.1.3")
	h.expect(t, "127.0.1.2:5432", "127.0.1.3:5432")
	h.quiet(t)
	lines := h.logs.FilterMessage(msgTargetFailed).All()
	if len(lines) != 2 {
		t.Fatalf("%d lines %q, want 2 (new.test, then b.test)", len(lines), msgTargetFailed)
	}
	for i, want := range []struct {
		target string
		kept   int64
	}{{"new.test.", 0}, {"b.test.", 1}} {
		f := lines[i].ContextMap()
		if f["srv"] != name || f["target"] != want.target || f["kept"] != want.kept || f["error"] == "" {
			t.Errorf("line %d: %v, want target %s kept %d", i, f, want.target, want.kept)
		}
	}
	if n := h.count(msgMissing); n != 1 {
		t.Errorf("%d lines %q, want 1 (gone.test)", n, msgMissing)
	}
	if n := h.count(msgFailed); n != 0 {
		t.Errorf("%d failure lines for the SRV name, want 0", n)
	}

	s.set(t, "new.test.", "A 127.0.1.4")
	s.setMode("new.test.", answer)
	s.set(t, "b.test.", "A 127.0.1.5")
	s.setMode("b.test.", answer)
	h.expect(t, "127.0.1.3:5432", "127.0.1.4:5432", "127.0.1.5:5432")
	h.quiet(t)
	if n := h.count(msgAgain); n != 2 {
		t.Errorf("%d lines %q, want 2", n, msgAgain)
	}
}

// Lines of an SRV record target's failure and hold.
const (
	msgTargetFailed  = "SRV target failed to resolve, keeping its last addresses"
	msgTargetHold    = "SRV target does not exist, holding its last addresses"
	msgTargetRemoved = "SRV target still does not exist after the hold, removing its addresses"
)

// TestSRVTargetGoneIsRemovedAfterHold: an SRV record target whose name is
// gone (NXDOMAIN, or no address records) keeps its addresses for the hold,
// as a name does, then loses them; the other targets stay. A priority
// whose targets are all held stays in use for the hold, and when the last
// target of the answer goes, its backends go once its hold is over, not
// after a second hold of the SRV name.
func TestSRVTargetGoneIsRemovedAfterHold(t *testing.T) {
	const hold = 300 * time.Millisecond
	const name = "_pg._tcp.db.test."
	for _, tc := range []struct {
		name    string
		records []string // name's SRV records
		gone    []string // a.test.'s records while it is gone
		want    []string // the backends once a.test.'s hold is over
		// The lines of the removal: the target's (the others stay) or
		// the name's (a.test. was the last).
		targetRemoved, nameRemoved int
	}{
		{"NXDOMAIN", []string{"SRV 10 1 5432 a.test.", "SRV 10 1 5432 b.test."}, nil,
			[]string{"127.0.1.2:5432"}, 1, 0},
		{"NODATA", []string{"SRV 10 1 5432 a.test.", "SRV 10 1 5432 b.test."}, []string{`TXT "moved"`},
			[]string{"127.0.1.2:5432"}, 1, 0},
		{"next priority", []string{"SRV 10 1 5432 a.test.", "SRV 20 1 5432 b.test."}, nil,
			[]string{"127.0.1.2:5432"}, 1, 0},
		{"last target", []string{"SRV 10 1 5432 a.test."}, nil,
			nil, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newDNSServer(t)
			s.set(t, name, tc.records...)
			s.set(t, "a.test.", "A 127.0.1.1")
			s.set(t, "b.test.", "A 127.0.1.2")
			h := start(t, s, Config{Hold: hold, Targets: []Target{{Kind: SRV, Name: name}}})
			first := []string{"127.0.1.1:5432"}
			if len(tc.records) == 2 && !strings.HasPrefix(tc.records[1], "SRV 20") {
				first = append(first, "127.0.1.2:5432")
			}
			h.expect(t, first...)

			began := time.Now() // at or before the first answer saying a.test. is gone
			s.set(t, "a.test.", tc.gone...)
			h.expect(t, tc.want...)
			if held := time.Since(began); held < hold {
				t.Fatalf("a.test.'s backend removed %v after it went, before the hold of %v", held, hold)
			}
			h.quiet(t) // still gone: nothing more to remove, nothing logged
			if n := h.count(msgTargetHold); n != 1 {
				t.Errorf("%d lines %q, want 1", n, msgTargetHold)
			}
			if n := h.count(msgTargetRemoved); n != tc.targetRemoved {
				t.Errorf("%d lines %q, want %d", n, msgTargetRemoved, tc.targetRemoved)
			}
			if n := h.count(msgRemoved); n != tc.nameRemoved {
				t.Errorf("%d lines %q, want %d", n, msgRemoved, tc.nameRemoved)
			}
			if n := h.count(msgHold); n != 0 {
				t.Errorf("%d lines %q: the SRV name was held after its target's hold", n, msgHold)
			}
			l := h.logs.FilterMessage(msgTargetHold).All()
			if len(l) > 0 {
				if f := l[0].ContextMap(); l[0].Level != zapcore.WarnLevel || f["srv"] != name || f["target"] != "a.test." ||
					f["kept"] != int64(1) || f["hold"] != hold || f["error"] == "" {
					t.Errorf("hold line %v %v", l[0].Level, f)
				}
			}

			s.set(t, "a.test.", "A 127.0.1.3")
			want := append(slices.Clone(tc.want), "127.0.1.3:5432")
			if tc.name == "next priority" {
				want = []string{"127.0.1.3:5432"}
			}
			h.expect(t, want...)
		})
	}
}

// TestSRVDuplicatesCountOnce: an answer that names the same backends
// several times (a record repeated with another weight, a second name for
// the same addresses) is within the address limit when its distinct
// addresses are, and each address gets the largest weight given for it.
func TestSRVDuplicatesCountOnce(t *testing.T) {
	s := newDNSServer(t)
	const name = "_db._tcp.dup.test."
	s.set(t, name, "SRV 10 1 5432 a.test.", "SRV 10 5 5432 a.test.", "SRV 10 3 5432 alias.test.")
	s.set(t, "a.test.", "A 127.0.1.1", "A 127.0.1.2")
	s.set(t, "alias.test.", "A 127.0.1.2", "A 127.0.1.1")
	h := start(t, s, Config{Targets: []Target{{Kind: SRV, Name: name}}, MaxAddrs: 3})
	h.dns.settle(t)
	if n := h.count(msgFailed); n != 0 {
		t.Fatalf("%d failure lines: %v", n, h.logs.FilterMessage(msgFailed).All()[0].ContextMap()["error"])
	}
	h.expect(t, "127.0.1.1:5432,weight=5", "127.0.1.2:5432,weight=5")
}
