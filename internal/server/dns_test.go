package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// zone is a tiny authoritative DNS server on loopback whose A records the
// test changes.
type zone struct {
	mu        sync.Mutex // guards a, held and questions
	a         map[string][]netip.Addr
	held      map[string]chan struct{} // answers for a name wait until its channel closes
	questions map[string]chan struct{} // closed at a name's first question
	s         *dns.Server
	delay     atomic.Int64 // nanoseconds each answer waits
}

func startZone(tb testing.TB) *zone {
	tb.Helper()
	z := &zone{a: map[string][]netip.Addr{}, held: map[string]chan struct{}{}, questions: map[string]chan struct{}{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	started := make(chan struct{})
	z.s = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve), NotifyStartedFunc: func() { close(started) }}
	go z.s.ActivateAndServe()
	<-started
	tb.Cleanup(func() { z.s.Shutdown() })
	return z
}

func (z *zone) set(name string, addrs ...netip.Addr) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.a[dns.Fqdn(name)] = addrs
}

// hold makes the answers for name wait until release is called, at the
// latest at the end of the test.
func (z *zone) hold(tb testing.TB, name string) (release func()) {
	tb.Helper()
	gate := make(chan struct{})
	z.mu.Lock()
	z.held[dns.Fqdn(name)] = gate
	z.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	tb.Cleanup(release) // before the server's Shutdown, which waits for the handlers
	return release
}

// asked returns a channel closed once name has been asked for.
func (z *zone) asked(name string) <-chan struct{} {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.askedLocked(dns.Fqdn(name))
}

func (z *zone) askedLocked(fqdn string) chan struct{} {
	ch := z.questions[fqdn]
	if ch == nil {
		ch = make(chan struct{})
		z.questions[fqdn] = ch
	}
	return ch
}

func (z *zone) serve(w dns.ResponseWriter, req *dns.Msg) {
	time.Sleep(time.Duration(z.delay.Load())) // a distant server
	for _, q := range req.Question {
		z.mu.Lock()
		gate := z.held[q.Name]
		ch := z.askedLocked(q.Name)
		select {
		case <-ch:
		default:
			close(ch)
		}
		z.mu.Unlock()
		if gate != nil {
			<-gate
		}
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	z.mu.Lock()
	for _, q := range req.Question {
		if q.Qtype != dns.TypeA {
			continue
		}
		for _, a := range z.a[q.Name] {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: a.AsSlice()})
		}
	}
	z.mu.Unlock()
	w.WriteMsg(m)
}

func (z *zone) resolver() *net.Resolver {
	addr := z.s.PacketConn.LocalAddr().String()
	return &net.Resolver{PreferGo: true, StrictErrors: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// TestDNSDiscovery: backends found by --backend-dns join the membership
// and take traffic; a change of the records is followed.
func TestDNSDiscovery(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	// Two backends on one port but different loopback addresses.
	port := a.Addr().Port()
	b, err := testsrv.Start(context.Background(), testsrv.Config{Kind: testsrv.Echo, Addr: fmt.Sprintf("127.0.0.2:%d", port)})
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2:%d: %v", port, err)
	}
	t.Cleanup(func() { b.Close() })
	z := startZone(t)
	z.set("db.test", netip.MustParseAddr("127.0.0.1"))
	cfg := parse(t, []string{"--listen", "127.0.0.1:0", "--backend-dns", fmt.Sprintf("db.test:%d", port), "--dns-interval", "1s"}...)
	cfg.Services[0].DNS.Resolver = z.resolver()
	s := startCfg(t, cfg, zap.NewNop())
	want := func(addrs ...string) func() bool {
		return func() bool { return fmt.Sprint(s.Service("default").Members()) == fmt.Sprint(addrs) }
	}
	waitFor(t, "first resolution", want(a.Addr().String()))
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("through a discovered backend: %v", err)
	}
	c.Close()
	z.set("db.test", netip.MustParseAddr("127.0.0.2"))
	waitFor(t, "re-resolution", want(b.Addr().String()))
}

// TestReturningDNSBackendKeepsDrainAndDown: DNS drops two backends for a
// round and returns them. The one the operator drained comes back
// drained; the one its checks had down comes back down, and stays down
// until --health-rise checks started after its return have passed, even
// though it now answers.
func TestReturningDNSBackendKeepsDrainAndDown(t *testing.T) {
	const rise = 5
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	port := a.Addr().Port()
	bAddr := netip.MustParseAddrPort(fmt.Sprintf("127.0.0.2:%d", port)) // nothing listens yet: down
	z := startZone(t)
	z.set("db.test", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"))
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend-dns", fmt.Sprintf("db.test:%d", port), "--dns-interval", "1s",
		"--health-interval", "100ms", "--health-fall", "1", "--health-rise", fmt.Sprint(rise))
	cfg.Services[0].DNS.Resolver = z.resolver()
	s := startCfg(t, cfg, zap.NewNop())
	svc := s.Service("default")
	state := func(addr netip.AddrPort) balancer.BackendInfo {
		for _, bi := range svc.Info() {
			if bi.Address == addr.String() {
				return bi
			}
		}
		return balancer.BackendInfo{}
	}
	waitFor(t, "a up and b down", func() bool {
		return state(a.Addr()).State == balancer.StateUp && state(bAddr).State == balancer.StateDown
	})
	if err := svc.SetDrained(a.Addr(), true); err != nil {
		t.Fatal(err)
	}

	z.set("db.test", netip.MustParseAddr("127.0.0.3"))
	waitFor(t, "both gone", func() bool { return state(a.Addr()).Address == "" && state(bAddr).Address == "" })
	b, err := testsrv.Start(context.Background(), testsrv.Config{Kind: testsrv.Echo, Addr: bAddr.String()})
	if err != nil {
		t.Skipf("cannot listen on %v: %v", bAddr, err)
	}
	t.Cleanup(func() { b.Close() })
	z.set("db.test", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"))
	waitFor(t, "both back", func() bool { return state(a.Addr()).Address != "" && state(bAddr).Address != "" })
	back := time.Now()
	if st := state(a.Addr()).State; st != balancer.StateDraining {
		t.Fatalf("drained backend returned %s", st)
	}
	if st := state(bAddr).State; st != balancer.StateDown {
		t.Fatalf("down backend returned %s", st)
	}
	// Its first passing check after its return leaves it down: the checks
	// start from its verdict. (Rise-1 further checks, 200ms, must pass
	// before it is up, so the poll sees this report.)
	var first balancer.BackendInfo
	waitFor(t, "a passing check of the returned backend", func() bool {
		first = state(bAddr)
		return first.LastCheck != nil && first.LastCheck.OK && first.LastCheck.Time.After(back)
	})
	if first.State != balancer.StateDown {
		t.Fatalf("returned backend %s after its first passing check, want down until %d have passed", first.State, rise)
	}
	waitFor(t, "the returned backend up", func() bool { return state(bAddr).State == balancer.StateUp })
	if st := state(a.Addr()).State; st != balancer.StateDraining {
		t.Fatalf("drained backend is %s", st)
	}
}

// TestReloadSwitchesDNSNames: a SIGHUP that changes a service's
// --backend-dns restarts its discovery with the new name; the backends of
// the old name go once the new one answers, and with no name left the
// discovered backends go at once.
func TestReloadSwitchesDNSNames(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	port := a.Addr().Port()
	z := startZone(t)
	z.set("old.test", netip.MustParseAddr("127.0.0.1"))
	z.set("new.test", netip.MustParseAddr("127.0.0.2"))
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	writeDBConf(t, conf, fmt.Sprintf("backend-dns old.test:%d\n", port))
	cfg := parse(t, "--config", conf)
	cfg.Services[0].DNS.Resolver = z.resolver()
	s := startCfg(t, cfg, zap.NewNop())
	members := func(addrs ...string) func() bool {
		return func() bool { return fmt.Sprint(s.Service("db").Members()) == fmt.Sprint(addrs) }
	}
	waitFor(t, "the old name's backend", members(fmt.Sprintf("127.0.0.1:%d", port)))

	// The interval is an hour: only a restarted discovery can see the
	// new name.
	writeDBConf(t, conf, fmt.Sprintf("backend-dns new.test:%d\n", port))
	s.Reload()
	waitFor(t, "the new name's backend", members(fmt.Sprintf("127.0.0.2:%d", port)))

	writeDBConf(t, conf, "backend 127.0.0.1:1\n")
	s.Reload()
	if got := fmt.Sprint(s.Service("db").Members()); got != "[127.0.0.1:1]" {
		t.Fatalf("members after the names were removed: %s, want only the static backend", got)
	}
}

// writeDBConf writes a config file of one service, db, checked by nobody
// and resolving its names once an hour, with lines added.
func writeDBConf(tb testing.TB, path, lines string) {
	tb.Helper()
	body := "[service db]\nlisten 127.0.0.1:0\nhealth-check none\ndns-interval 1h\n" + lines
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// TestSuccessorReadyWithDNSBackends: an upgrade's successor reports that it
// serves only once a service whose backends all come from DNS has them:
// its predecessor stops accepting at that report, and new clients would
// meet a service with no backend. The DNS server answers after 300ms.
func TestSuccessorReadyWithDNSBackends(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	z := startZone(t)
	z.set("db.test", netip.MustParseAddr("127.0.0.1"))
	z.delay.Store(int64(300 * time.Millisecond))
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend-dns", fmt.Sprintf("db.test:%d", a.Addr().Port()), "--health-check", "none")
	cfg.Services[0].DNS.Resolver = z.resolver()
	atReady := make(chan string, 1)
	s, err := New(cfg, zap.NewNop(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.opts.OnReady = func() { atReady <- fmt.Sprint(s.Service("default").Members()) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if got, want := <-atReady, fmt.Sprintf("[%s]", a.Addr()); got != want {
		t.Fatalf("members when the successor reported ready: %s, want %s", got, want)
	}
}

// TestReloadToGoneNameDropsOldBackends: a reload that names a DNS name with
// no records drops the old name's backends once the new name has been
// gone for the hold, as a name that disappears without a reload does; a
// restarted discovery that never found anything used to say nothing, and
// the old backends stayed for good.
func TestReloadToGoneNameDropsOldBackends(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	port := a.Addr().Port()
	z := startZone(t)
	z.set("old.test", netip.MustParseAddr("127.0.0.1"))
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	write := func(name string) {
		body := fmt.Sprintf("[service db]\nlisten 127.0.0.1:0\nhealth-check none\ndns-interval 1s\nbackend-dns %s:%d\n", name, port)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("old.test")
	cfg := parse(t, "--config", conf)
	cfg.Services[0].DNS.Resolver = z.resolver()
	cfg.Services[0].DNS.Hold = 200 * time.Millisecond
	s := startCfg(t, cfg, zap.NewNop())
	members := func() string { return fmt.Sprint(s.Service("db").Members()) }
	waitFor(t, "the old name's backend", func() bool { return members() == fmt.Sprintf("[127.0.0.1:%d]", port) })
	write("typo.test")
	s.Reload()
	waitFor(t, "the old name's backend gone", func() bool { return members() == "[]" })
}

// TestReadyWaitsForReloadedDiscovery: a reload (a SIGHUP during an
// upgrade) that restarts the DNS discovery an upgrade's successor waits
// for, before it reports ready, makes it wait for the discovery of the
// reloaded names instead, and with no names left for none. It waited on
// the stopped discovery, which never has a first round, for the whole
// timeout, then reported ready with a warning that DNS had not answered.
func TestReadyWaitsForReloadedDiscovery(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	port := a.Addr().Port()
	for _, tc := range []struct {
		name, reloaded, want string
	}{
		{"new names", fmt.Sprintf("backend-dns new.test:%d\n", port), fmt.Sprintf("[%s]", a.Addr())},
		{"no names", "backend 127.0.0.1:1\n", "[127.0.0.1:1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := startZone(t)
			z.set("new.test", netip.MustParseAddr("127.0.0.1"))
			z.hold(t, "old.test") // never answered in this test
			conf := filepath.Join(t.TempDir(), "sluice.conf")
			writeDBConf(t, conf, fmt.Sprintf("backend-dns old.test:%d\n", port))
			cfg := parse(t, "--config", conf)
			cfg.Services[0].DNS.Resolver = z.resolver()
			core, logs := observer.New(zapcore.WarnLevel)
			atReady := make(chan string, 1)
			var s *Server
			s, err := New(cfg, zap.New(core), Options{OnReady: func() { atReady <- fmt.Sprint(s.Service("db").Members()) }})
			if err != nil {
				t.Fatal(err)
			}
			run(t, s)
			<-z.asked("old.test")
			writeDBConf(t, conf, tc.reloaded)
			s.Reload()
			got := <-atReady
			if n := logs.FilterMessage("DNS discovery has not answered yet: reporting ready without its backends").Len(); n != 0 {
				t.Errorf("warned %d times that DNS had not answered, though the reloaded discovery had", n)
			}
			if got != tc.want {
				t.Errorf("members when the successor reported ready: %s, want %s", got, tc.want)
			}
		})
	}
}
