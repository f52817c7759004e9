package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/handoff"
	"github.com/sluice-lb/sluice/internal/testsrv"
	"github.com/sluice-lb/sluice/internal/udpproxy"
)

// infoOf returns the default service's view of addr; its Address is empty
// when addr is not a member.
func infoOf(s *Server, addr string) balancer.BackendInfo {
	for _, bi := range s.Service("default").Info() {
		if bi.Address == addr {
			return bi
		}
	}
	return balancer.BackendInfo{}
}

// TestInheritedBackendStates: a successor started with its predecessor's
// backend states (an upgrade) serves from them. A drained backend is
// draining and a down one down from the start, whether configured by flag
// or by a backends file, though every one of them answers; the states of
// another service, and of an address no longer configured, are not
// applied. The checks of a backend inherited down start down: its first
// passing check leaves it down, until --health-rise have passed.
func TestInheritedBackendStates(t *testing.T) {
	const rise = 5
	up, drained := testsrv.StartTB(t, testsrv.Echo, "tcp"), testsrv.StartTB(t, testsrv.Echo, "tcp")
	down, fileDown := testsrv.StartTB(t, testsrv.Echo, "tcp"), testsrv.StartTB(t, testsrv.Echo, "tcp")
	file := filepath.Join(t.TempDir(), "backends")
	writeFile(t, file, drained.Addr().String(), fileDown.Addr().String())
	cfg := parse(t, "--listen", "127.0.0.1:0", "--drain-timeout", "10s", "--backend", up.Addr().String(), "--backend", down.Addr().String(),
		"--backends-file", file, "--health-interval", "100ms", "--health-rise", fmt.Sprint(rise))
	failed := &handoff.Check{Time: time.Now().Add(-time.Second), Error: "connection refused", Duration: time.Millisecond}
	gone := "127.0.0.1:1"
	opts := Options{Inherited: Inheritance{Backends: []handoff.Backend{
		{Service: "default", Addr: up.Addr().String(), LastCheck: &handoff.Check{Time: failed.Time, OK: true}},
		{Service: "default", Addr: drained.Addr().String(), Drained: true},
		{Service: "default", Addr: down.Addr().String(), Down: true, LastCheck: failed},
		{Service: "default", Addr: fileDown.Addr().String(), Down: true, LastCheck: failed},
		{Service: "default", Addr: gone, Drained: true},
		{Service: "other", Addr: up.Addr().String(), Drained: true, Down: true},
	}}}
	// Looked at before Run starts the checks, which may replace the last
	// check at once.
	s, err := New(cfg, zap.NewNop(), opts)
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]balancer.State{
		up.Addr().String():       balancer.StateUp,
		drained.Addr().String():  balancer.StateDraining,
		down.Addr().String():     balancer.StateDown,
		fileDown.Addr().String(): balancer.StateDown,
		gone:                     "",
	} {
		if got := infoOf(s, addr).State; got != want {
			t.Errorf("%s: %q after the takeover, want %q", addr, got, want)
		}
	}
	if lc := infoOf(s, down.Addr().String()).LastCheck; lc == nil || lc.Error != failed.Error {
		t.Errorf("down backend's last check %+v, want the inherited one", lc)
	}
	if t.Failed() {
		s.release()
		t.FailNow()
	}
	start := time.Now()
	r := run(t, s)
	// Rise-1 further checks, 400ms, must pass before one is up, so the
	// poll sees the report of each one's first passing check.
	first := map[string]balancer.State{}
	waitFor(t, "passing checks of the backends inherited down", func() bool {
		for _, b := range []*testsrv.Server{down, fileDown} {
			bi := infoOf(r.Server, b.Addr().String())
			if _, seen := first[bi.Address]; !seen && bi.LastCheck != nil && bi.LastCheck.OK && bi.LastCheck.Time.After(start) {
				first[bi.Address] = bi.State
			}
		}
		return len(first) == 2
	})
	for addr, st := range first {
		if st != balancer.StateDown {
			t.Fatalf("inherited down backend %s %s after its first passing check, want down until %d have passed", addr, st, rise)
		}
	}
	waitFor(t, "the backends inherited down up", func() bool {
		return infoOf(r.Server, down.Addr().String()).State == balancer.StateUp && infoOf(r.Server, fileDown.Addr().String()).State == balancer.StateUp
	})
	if st := infoOf(r.Server, drained.Addr().String()).State; st != balancer.StateDraining {
		t.Fatalf("inherited drained backend is %s", st)
	}
}

// TestInheritedDownWithoutChecks: a service without health checks takes
// the drains handed over but not the down verdicts: nothing would bring
// those backends up again.
func TestInheritedDownWithoutChecks(t *testing.T) {
	a, b := "127.0.0.1:1", "127.0.0.1:2"
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend", a, "--backend", b, "--health-check", "none")
	s, err := New(cfg, zap.NewNop(), Options{Inherited: Inheritance{Backends: []handoff.Backend{
		{Service: "default", Addr: a, Down: true, LastCheck: &handoff.Check{Error: "refused"}},
		{Service: "default", Addr: b, Drained: true, Down: true},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.release()
	if got := infoOf(s, a); got.State != balancer.StateUp || got.LastCheck != nil {
		t.Errorf("%s: %s, last check %+v; want up, no check", a, got.State, got.LastCheck)
	}
	if got := infoOf(s, b).State; got != balancer.StateDraining {
		t.Errorf("%s: %s, want draining", b, got)
	}
}

// TestBackendStatesRoundTrip: what a server hands over is what its
// successor's services start from.
func TestBackendStatesRoundTrip(t *testing.T) {
	a, b, c := "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend", a, "--backend", b, "--backend", c, "--health-interval", "1h")
	old, err := New(cfg, zap.NewNop(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer old.release()
	svc := old.Service("default")
	if err := svc.SetDrained(netip.MustParseAddrPort(a), true); err != nil {
		t.Fatal(err)
	}
	svc.SetHealth(netip.MustParseAddrPort(b), false, balancer.CheckResult{Time: time.Now(), Error: "refused"})
	sent := old.backendStates()
	cfg = parse(t, "--listen", "127.0.0.1:0", "--backend", a, "--backend", b, "--backend", c, "--health-interval", "1h")
	s, err := New(cfg, zap.NewNop(), Options{Inherited: Inheritance{Backends: sent}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.release()
	got := fmt.Sprint(infoOf(s, a).State, infoOf(s, b).State, infoOf(s, c).State)
	if want := fmt.Sprint(balancer.StateDraining, balancer.StateDown, balancer.StateUp); got != want {
		t.Fatalf("successor: %s, want %s", got, want)
	}
	if lc := infoOf(s, b).LastCheck; lc == nil || lc.Error != "refused" {
		t.Fatalf("down backend's last check %+v", lc)
	}
}

// TestStoppedBeforeReadyIsNotReady: a successor stopped (SIGTERM) before it
// served does not report readiness to its predecessor, which would take
// that as the upgrade done, drain and exit, leaving nothing serving. It
// stops without it, and its predecessor sees the handoff end.
func TestStoppedBeforeReadyIsNotReady(t *testing.T) {
	backend := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend", backend.Addr().String(), "--health-interval", "1h")
	var ready atomic.Bool
	s, err := New(cfg, zap.NewNop(), Options{OnReady: func() { ready.Store(true) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if ready.Load() {
		t.Fatal("OnReady was called for a server stopped before it served")
	}
}

// adminPost posts to path on s's admin endpoint and returns the status
// and the Retry-After header.
func adminPost(t *testing.T, s *Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+s.AdminAddr()+path, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// TestUpgradeRefusesStateChanges: while an upgrade hands the backends'
// states to the new process, a drain posted to the old one is refused
// with 503 and Retry-After, rather than applied where the new process,
// which took the states before, does not see it. Reads still answer;
// once the upgrade has failed, drains apply again. The new release is a
// script that says it started, then waits to be let go and exits without
// reporting ready.
func TestUpgradeRefusesStateChanges(t *testing.T) {
	backend := testsrv.StartTB(t, testsrv.Echo, "tcp")
	exe, started, release := fakeRelease(t, `echo up > "$STARTED"`, `read x < "$RELEASE"`)
	cfg := parse(t, "--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--backend", backend.Addr().String(),
		"--health-interval", "1h", "--drain-timeout", "10s")
	s := startOpts(t, cfg, zap.NewNop(), Options{Executable: exe})
	upgrade := make(chan error, 1)
	go func() { upgrade <- s.Upgrade() }()
	// Opening a fifo waits for the other end: the script runs.
	if b, err := os.ReadFile(started); err != nil || string(b) != "up\n" {
		t.Fatalf("the new release's start: %q, %v", b, err)
	}
	drain := "/backends/" + backend.Addr().String() + "/drain"
	if code, retry := adminPost(t, s.Server, drain); code != http.StatusServiceUnavailable || retry == "" {
		t.Errorf("drain during the hand-over: %d, Retry-After %q; want 503 with Retry-After", code, retry)
	}
	if st := infoOf(s.Server, backend.Addr().String()).State; st != balancer.StateUp {
		t.Errorf("backend %s during the hand-over, want up", st)
	}
	if resp, err := http.Get("http://" + s.AdminAddr() + "/backends"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /backends during the hand-over: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if err := os.WriteFile(release, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-upgrade; err == nil {
		t.Fatal("the upgrade to a release that never reported ready succeeded")
	}
	if code, _ := adminPost(t, s.Server, drain); code != http.StatusOK {
		t.Fatalf("drain after the failed upgrade: %d, want 200", code)
	}
	if st := infoOf(s.Server, backend.Addr().String()).State; st != balancer.StateDraining {
		t.Fatalf("backend %s after the drain, want draining", st)
	}
}

// fakeRelease writes a shell script, with lines as its commands, to stand
// in for a new release, and two fifos for it, whose paths it has in
// $STARTED and $RELEASE: one for it to say it runs, one to wait on.
func fakeRelease(tb testing.TB, lines ...string) (exe, started, release string) {
	tb.Helper()
	dir := tb.TempDir()
	started, release = filepath.Join(dir, "started"), filepath.Join(dir, "release")
	for _, f := range []string{started, release} {
		if err := unix.Mkfifo(f, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	exe = filepath.Join(dir, "sluice")
	writeFile(tb, exe, append([]string{"#!/bin/sh", "STARTED='" + started + "'", "RELEASE='" + release + "'"}, lines...)...)
	if err := os.Chmod(exe, 0o755); err != nil {
		tb.Fatal(err)
	}
	return exe, started, release
}

// heldDNSConfig returns the configuration, with args added, of a service
// with the admin endpoint, an echo backend, and the DNS name db.test,
// which the zone returned answers with the backend's address once answer
// is called: an upgrade's successor started from it serves, but waits
// until then to report ready.
func heldDNSConfig(t *testing.T, args ...string) (cfg config.Config, backend *testsrv.Server, z *zone, answer func()) {
	t.Helper()
	backend = testsrv.StartTB(t, testsrv.Echo, "tcp")
	z = startZone(t)
	z.set("db.test", backend.Addr().Addr())
	answer = z.hold(t, "db.test")
	cfg = parse(t, append([]string{"--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--backend", backend.Addr().String(),
		"--backend-dns", fmt.Sprintf("db.test:%d", backend.Addr().Port()), "--health-check", "none"}, args...)...)
	cfg.Services[0].DNS.Resolver = z.resolver()
	return cfg, backend, z, answer
}

// TestSuccessorRefusesStateChangesUntilReady: an upgrade's successor
// shares the admin socket with its predecessor, so a drain may reach it
// before it has taken over; applied then, it would be lost if the upgrade
// failed. It is refused with 503 until the successor reports ready, and
// applies after. The successor waits for its DNS discovery's answer,
// which the test holds.
//
// Told to upgrade meanwhile (a `pkill -USR2 sluice` meant for its
// predecessor), it starts no new release: it would hand over states that
// are not its own yet, and the end of that upgrade would lift the refusal.
func TestSuccessorRefusesStateChangesUntilReady(t *testing.T) {
	cfg, backend, z, answer := heldDNSConfig(t)
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	exe := filepath.Join(dir, "sluice")
	writeFile(t, exe, "#!/bin/sh", "echo up > "+started)
	if err := os.Chmod(exe, 0o755); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	s := startOpts(t, cfg, zap.NewNop(), Options{Executable: exe, OnReady: func() { close(ready) }})
	<-z.asked("db.test")
	if err := s.Upgrade(); err == nil {
		t.Error("a successor that had not taken over upgraded")
	}
	if _, err := os.Stat(started); err == nil {
		t.Error("a successor that had not taken over started a new release")
	}
	drain := "/backends/" + backend.Addr().String() + "/drain"
	if code, retry := adminPost(t, s.Server, drain); code != http.StatusServiceUnavailable || retry == "" {
		t.Errorf("drain before the successor took over: %d, Retry-After %q; want 503 with Retry-After", code, retry)
	}
	answer()
	<-ready
	if code, _ := adminPost(t, s.Server, drain); code != http.StatusOK {
		t.Fatalf("drain after the successor took over: %d, want 200", code)
	}
	if st := infoOf(s.Server, backend.Addr().String()).State; st != balancer.StateDraining {
		t.Fatalf("backend %s after the drain, want draining", st)
	}
}

// TestStoppedBeforeReadyDrains: an upgrade's successor stopped before it
// took over tells its predecessor so (Stopped, not OnReady), which keeps
// serving; it stops answering on the admin socket the two share at once,
// and drains the connections it accepted, like any stop: they finish
// rather than being cut. The successor waits for its DNS discovery's
// answer, which never comes.
func TestStoppedBeforeReadyDrains(t *testing.T) {
	cfg, _, _, _ := heldDNSConfig(t, "--drain-timeout", "1m")
	var ready atomic.Bool
	stopped := make(chan struct{})
	s, err := New(cfg, zap.NewNop(), Options{OnReady: func() { ready.Store(true) }, Stopped: func() { close(stopped) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer cancel()
	<-s.Ready()
	admin := s.AdminAddr()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func() error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}
	if err := echo(); err != nil {
		t.Fatalf("through the successor: %v", err)
	}

	cancel()
	<-stopped
	if ready.Load() {
		t.Fatal("OnReady was called for a successor stopped before it took over")
	}
	waitFor(t, "the admin socket closed", func() bool {
		a, err := net.Dial("tcp", admin)
		if err == nil {
			a.Close()
		}
		return err != nil
	})
	if err := echo(); err != nil {
		t.Fatalf("the connection the stopped successor accepted: %v; it should drain", err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the drain did not end when its last connection closed")
	}
}

// TestStoppedSuccessorIsReaped: a stop of this process during an upgrade
// sends the successor SIGTERM and leaves it to drain; Run does not return
// before the successor has been reaped, and one that outlives the drain
// timeout (plus reapGrace) is killed, so that the goroutine reaping it
// ends with Run. The new release is a script that ignores SIGTERM and
// never reports ready.
func TestStoppedSuccessorIsReaped(t *testing.T) {
	u := upgradeToScript(t, "trap '' TERM", `echo $$ > "$STARTED"`, `read x < "$RELEASE"`)
	pid, cancel, done, upgrade := u.pid, u.cancel, u.done, u.upgrade
	// Until it is found reaped, pid is this process's child, which cannot
	// be another process's pid: a failure leaves no process behind.
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			unix.Kill(pid, unix.SIGKILL)
		}
	})

	cancel()
	upErr := <-upgrade
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	if err := unix.Kill(pid, 0); err == unix.ESRCH {
		reaped = true
	} else {
		t.Errorf("the new process (pid %d), which ignores SIGTERM, is still there after Run returned (kill 0: %v)", pid, err)
	}
	if !errors.Is(upErr, errStopping) {
		t.Errorf("upgrade: %v, want %v", upErr, errStopping)
	}
}

// TestStoppedSuccessorToldKept: a process stopped during its upgrade
// drains reading the UDP sockets it shares with the successor, which it
// stops too; a successor that reported ready meanwhile (its Ready frame
// crossed the stop) would drain reading them as well, and each would
// drop the datagrams of the other's sessions. So the successor is sent a
// Keep frame before its SIGTERM, to leave them to this process (see
// Options.Kept). The new release is a script that, at the SIGTERM, saves
// what it has been sent on the hand-over socket, fd 3, and is there to
// read then.
func TestStoppedSuccessorToldKept(t *testing.T) {
	got := filepath.Join(t.TempDir(), "after-term")
	u := upgradeToScript(t, `trap 'dd iflag=nonblock <&3 > "`+got+`" 2>/dev/null; exit 0' TERM`, `echo $$ > "$STARTED"`,
		"while :; do sleep 0.05; done")
	t.Cleanup(func() { unix.Kill(u.pid, unix.SIGKILL) }) // until reaped, this process's child
	u.cancel()
	if err := <-u.upgrade; !errors.Is(err, errStopping) {
		t.Errorf("upgrade: %v, want %v", err, errStopping)
	}
	select {
	case <-u.done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"keep":true`) {
		t.Fatalf("the new process had no Keep frame to read at its SIGTERM; it had %q", b)
	}
}

// TestSuccessorLeavesKeptUDP: a successor that took over and is stopping
// drains its UDP service without reading the socket handed over when its
// predecessor says it keeps reading it (Kept: the predecessor was stopped
// before it saw the successor take over, and stops it): two readers would
// each take datagrams of the other's sessions, and drop them. When the
// predecessor does not say so (it has stopped reading), the successor
// goes on reading, as any stop does. The test holds the predecessor's
// socket, and reads what the successor leaves in it.
func TestSuccessorLeavesKeptUDP(t *testing.T) {
	for _, kept := range []bool{true, false} {
		t.Run(fmt.Sprintf("kept=%v", kept), func(t *testing.T) {
			s, r, held, addr, draining := keptSuccessor(t, 1, kept)
			session, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
			if err != nil {
				t.Fatal(err)
			}
			defer session.Close()
			udpRoundTrip(t, session, "before") // the drain waits for this session
			r.cancel()
			<-draining
			newcomer, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
			if err != nil {
				t.Fatal(err)
			}
			defer newcomer.Close()
			if _, err := newcomer.Write([]byte("new")); err != nil {
				t.Fatal(err)
			}
			dropped := func() bool { return s.services[0].udp[0].Stats().Drops(udpproxy.DropDraining) == 1 }
			if kept {
				// Not read: the predecessor reads it. Were the successor
				// reading, it would have by now.
				time.Sleep(300 * time.Millisecond)
				if dropped() {
					t.Fatal("the successor read the newcomer's datagram, and dropped it")
				}
			} else {
				// Read, and dropped: the successor takes no new client.
				waitFor(t, "the newcomer's datagram dropped", dropped)
			}
			n, _, err := unix.Recvfrom(held, make([]byte, 64), unix.MSG_DONTWAIT)
			if left := err == nil && n == 3; left != kept {
				t.Fatalf("the newcomer's datagram left in the socket: %v (recvfrom: %d, %v), want %v", left, n, err, kept)
			}
		})
	}
}

// keptSuccessor runs a UDP successor with workers loops, handed one
// socket, that the test holds too (held: the predecessor's), which has
// taken over; Options.Kept reports kept. draining is closed once its
// drain has begun with sessions open.
func keptSuccessor(t *testing.T, workers int, kept bool) (s *Server, r *running, held int, addr netip.AddrPort, draining <-chan struct{}) {
	t.Helper()
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	held, addr, err := udpproxy.Listen(netip.MustParseAddrPort("127.0.0.1:0"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(held) })
	given, err := unix.Dup(held) // the successor owns what it is given
	if err != nil {
		t.Fatal(err)
	}
	cfg := parse(t, "--listen", addr.String(), "--proto", "udp", "--backend", echo.Addr().String(),
		"--workers", strconv.Itoa(workers), "--health-check", "none", "--drain-timeout", "10s")
	log, _, draining := onLog("draining connections")
	ready := make(chan struct{})
	s, err = New(cfg, log, Options{
		Inherited: Inheritance{Sockets: []handoff.Socket{{Kind: handoff.KindListener, Service: "default", Proto: "udp", Addr: addr.String(), FD: given}}},
		OnReady:   func() { close(ready) },
		Kept:      func() bool { return kept },
	})
	if err != nil {
		t.Fatal(err)
	}
	r = run(t, s)
	<-ready
	return s, r, held, addr, draining
}

// TestSuccessorClosesJoinedWhenKept: a successor with more loops than the
// UDP sockets handed over opened the others at its takeover (joinGroups);
// stopping with its predecessor kept (Options.Kept), it leaves the shared
// socket to the predecessor, and must close those it opened, which the
// predecessor has not: left open and unread, they kept their share of
// the clients' datagrams (the predecessor's sessions' too) for the whole
// drain. Every newcomer's datagram must reach the predecessor's socket.
func TestSuccessorClosesJoinedWhenKept(t *testing.T) {
	s, r, held, addr, draining := keptSuccessor(t, 2, true)
	// A session on loop 0, the shared socket's, keeps the drain going.
	for i := 0; s.services[0].udp[0].Stats().SessionsCreated.Load() == 0; i++ {
		if i == 64 {
			t.Fatal("64 clients, none on loop 0")
		}
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		udpRoundTrip(t, c, "before")
	}
	r.cancel()
	<-draining
	const newcomers = 32
	for range newcomers {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("new")); err != nil {
			t.Fatal(err)
		}
	}
	unix.SetsockoptTimeval(held, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 300000})
	got := 0
	for got < newcomers {
		if _, _, err := unix.Recvfrom(held, make([]byte, 64), 0); err != nil {
			break
		}
		got++
	}
	if got != newcomers {
		t.Fatalf("the predecessor's socket got %d of %d newcomers' datagrams: the others went to a socket only the successor had, and did not read", got, newcomers)
	}
}

// TestStoppedSuccessorReapedByItsDrain: a successor stopped before it took
// over drains for its own --drain-timeout, which it sends with its
// Stopping frame; the old process must not kill it at the end of its
// own, shorter one. The new release is a script that sends that frame
// (5 minutes) on the hand-over socket, fd 3, and waits.
func TestStoppedSuccessorReapedByItsDrain(t *testing.T) {
	body := `{"version":3,"stopping":true,"drain_timeout_ns":300000000000}`
	frame := fmt.Sprintf(`\%03o\%03o\%03o\%03o%s`, len(body)>>24, len(body)>>16&0xff, len(body)>>8&0xff, len(body)&0xff, body)
	u := upgradeToScript(t, "trap '' TERM", `echo $$ > "$STARTED"`, "printf '"+frame+"' >&3", `read x < "$RELEASE"`)
	// Killed before Run is stopped, which then reaps it at once; until
	// then pid is this process's child, which cannot be another's.
	t.Cleanup(func() {
		unix.Kill(u.pid, unix.SIGKILL)
		u.cancel()
		<-u.done
	})
	if err := <-u.upgrade; !errors.Is(err, errSuccessorStopped) {
		t.Fatalf("Upgrade: %v, want the successor stopped", err)
	}
	u.s.reapMu.Lock()
	var deadline time.Time
	if len(u.s.reapers) == 1 {
		deadline = u.s.reapers[0].deadline
	}
	u.s.reapMu.Unlock()
	if earliest := time.Now().Add(4 * time.Minute); deadline.Before(earliest) {
		t.Fatalf("the stopped successor is reaped by %v, before its 5-minute drain could end (this process's drain timeout is 100ms)", deadline)
	}
}

// scriptUpgrade is a server (drain timeout 100ms) upgrading to a script.
type scriptUpgrade struct {
	s       *Server
	pid     int // the script's
	cancel  context.CancelFunc
	done    chan error // Run's result
	upgrade chan error // Upgrade's result
}

// upgradeToScript starts a server whose new release is a fakeRelease of
// lines, which must write its pid to $STARTED first, and starts its
// upgrade; it returns once the script runs.
func upgradeToScript(t *testing.T, lines ...string) *scriptUpgrade {
	t.Helper()
	exe, started, _ := fakeRelease(t, lines...)
	backend := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend", backend.Addr().String(), "--health-check", "none", "--drain-timeout", "100ms")
	s, err := New(cfg, zap.NewNop(), Options{Executable: exe})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	u := &scriptUpgrade{s: s, cancel: cancel, done: make(chan error, 1), upgrade: make(chan error, 1)}
	go func() { u.done <- s.Run(ctx) }()
	<-s.Ready()
	go func() { u.upgrade <- s.Upgrade() }()
	// Opening a fifo waits for the other end: the script runs.
	b, err := os.ReadFile(started)
	if err != nil {
		t.Fatal(err)
	}
	if u.pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
		t.Fatalf("the new release's pid %q: %v", b, err)
	}
	return u
}

// TestSuccessorJoinsAtTakeover: an upgrade's successor with more loops
// than sockets handed over (--workers 4 after 1) opens its other loops'
// sockets only when it takes over. Opened in New, they joined the
// SO_REUSEPORT group of the socket handed over, and the kernel gave them
// three quarters of the new connections and datagrams: a successor whose
// start failed after that (here: release, as New does on a later error),
// or that was stopped before it took over, closed them with what was
// waiting in them, and those clients were reset or never answered while
// the old process went on serving. Each client here must be answered by
// the old process; then a successor that takes over serves on every
// loop.
func TestSuccessorJoinsAtTakeover(t *testing.T) {
	for _, tc := range []struct {
		proto string
		// served is how many clients loop i of sv has taken.
		served func(sv *service, i int) uint64
	}{
		{"tcp", func(sv *service, i int) uint64 { return sv.proxies[i].Stats().Accepted.Load() }},
		{"udp", func(sv *service, i int) uint64 { return sv.udp[i].Stats().SessionsCreated.Load() }},
	} {
		t.Run(tc.proto, func(t *testing.T) {
			backend := testsrv.StartTB(t, testsrv.Echo, tc.proto)
			args := []string{"--proto", tc.proto, "--backend", backend.Addr().String(), "--health-check", "none"}
			old := start(t, append(args, "--workers", "1")...)
			successor := func(ready func()) *Server {
				t.Helper()
				var socks []handoff.Socket
				for _, so := range old.sockets() {
					fd, err := unix.Dup(so.FD) // the successor owns what it is given
					if err != nil {
						t.Fatal(err)
					}
					so.FD = fd
					socks = append(socks, so)
				}
				cfg := parse(t, append(args, "--listen", old.Addr().String(), "--workers", "4", "--drain-timeout", "10s")...)
				s, err := New(cfg, zap.NewNop(), Options{Inherited: Inheritance{Sockets: socks}, OnReady: ready})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}

			failed := successor(func() { t.Error("OnReady of a successor that never ran") })
			var answers []func() error
			for range 32 {
				answers = append(answers, sendEcho(t, tc.proto, old.Addr()))
			}
			failed.release()
			waitAnswers(t, answers, "came while the successor started")

			ready := make(chan struct{})
			s := run(t, successor(func() { close(ready) }))
			<-ready
			answers = answers[:0]
			for range 64 {
				answers = append(answers, sendEcho(t, tc.proto, old.Addr()))
			}
			waitAnswers(t, answers, "came after the takeover")
			for i := 1; i < 4; i++ {
				if n := tc.served(s.services[0], i); n == 0 {
					t.Errorf("loop %d of the successor took none of 64 clients after the takeover", i)
				}
			}
		})
	}
}

// waitAnswers waits for the answers to the exchanges sent, and fails at
// the first missing: their deadlines were set as they were sent, so past
// the first missed the others would have passed too.
func waitAnswers(tb testing.TB, answers []func() error, when string) {
	tb.Helper()
	for i, answered := range answers {
		if err := answered(); err != nil {
			tb.Fatalf("client %d of %d, which %s: %v", i, len(answers), when, err)
		}
	}
}

// sendEcho sends a byte to addr over network, from a new client socket,
// which an echo backend returns; answered waits for it.
func sendEcho(tb testing.TB, network string, addr netip.AddrPort) (answered func() error) {
	tb.Helper()
	c, err := net.Dial(network, addr.String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		tb.Fatal(err)
	}
	return func() error {
		_, err := c.Read(make([]byte, 64))
		c.Close()
		return err
	}
}
