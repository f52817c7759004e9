package server

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/handoff"
	"github.com/sluice-lb/sluice/internal/testsrv"
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
	if changed := drainsChanged(sent, old.backendStates()); changed != nil {
		t.Fatalf("drains changed %v, with none made", changed)
	}
	if err := svc.SetDrained(netip.MustParseAddrPort(a), false); err != nil {
		t.Fatal(err)
	}
	if err := svc.SetDrained(netip.MustParseAddrPort(c), true); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(drainsChanged(sent, old.backendStates())), "[default/127.0.0.1:1 default/127.0.0.1:3]"; got != want {
		t.Fatalf("drains changed %s, want %s", got, want)
	}
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
