package balancer_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/health"
)

// checkFunc adapts a function to health.Checker.
type checkFunc func(ctx context.Context, addr netip.AddrPort) error

func (f checkFunc) Check(ctx context.Context, addr netip.AddrPort) error { return f(ctx, addr) }

// TestEjectionOutlastsReportUnderWay wires a service to a health monitor
// as the server does (the monitor's reports go to SetHealth, the Ejected
// hook is ForceDown) and ejects the backend while the report of a passing
// check that started before the ejection is on its way to SetHealth. That
// report must not bring the ejected backend back: it stays down until
// Rise checks started after the ejection pass.
func TestEjectionOutlastsReportUnderWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := netip.MustParseAddrPort("10.0.0.1:1")
		// Each check hands the test a channel for its result.
		checks := make(chan chan error)
		checker := checkFunc(func(ctx context.Context, _ netip.AddrPort) error {
			res := make(chan error)
			select {
			case checks <- res:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case err := <-res:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		// A report tells the test its verdict, then waits for land before
		// it reaches SetHealth: it is under way in between.
		verdicts := make(chan bool)
		land := make(chan struct{})
		var svc *balancer.Service
		cfg := health.Config{Kind: "tcp", Interval: time.Second, Timeout: time.Hour, Rise: 2, Fall: 1}
		mon := health.NewMonitor(cfg, checker, func(addr netip.AddrPort, up bool, r health.Result) {
			verdicts <- up
			<-land
			svc.SetHealth(addr, up, balancer.CheckResult{Time: r.Time, OK: r.Err == nil, Duration: r.Duration})
		})
		hooks := balancer.Hooks{Members: mon.Sync, Ejected: mon.ForceDown}
		svc, err := balancer.NewService(balancer.ServiceConfig{Name: "t", Loops: 1, PassiveFall: 1},
			[]balancer.Spec{{Addr: a, Weight: 1}}, hooks, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { svc.Run(ctx) })
		defer wg.Wait()
		defer cancel()
		defer mon.Close()
		svc.NotifyMembers()

		state := func() balancer.State {
			synctest.Wait() // whatever the last step set going is done
			return svc.Info()[0].State
		}
		// pass answers the next check with a pass and returns its verdict
		// once its report has landed.
		pass := func() bool {
			(<-checks) <- nil
			up := <-verdicts
			land <- struct{}{}
			return up
		}

		if !pass() || state() != balancer.StateUp {
			t.Fatalf("first passing check: state %v, want up", state())
		}

		// A check passes; while its report, which says up, is under way,
		// the data path ejects the backend.
		(<-checks) <- nil
		if !<-verdicts {
			t.Fatal("second passing check reported down")
		}
		svc.ReportConnect(svc.Pool().Load().Backends[0], false)
		synctest.Wait() // Run has done what it can before the report lands
		land <- struct{}{}
		if got := state(); got != balancer.StateDown {
			t.Fatalf("after an ejection and the late report of a check that started before it: state %v, want down", got)
		}

		// Rise (2) checks started after the ejection bring it back.
		if pass() || state() != balancer.StateDown {
			t.Fatalf("first passing check after the ejection: state %v, want down", state())
		}
		if !pass() || state() != balancer.StateUp {
			t.Fatalf("second passing check after the ejection: state %v, want up", state())
		}
	})
}
