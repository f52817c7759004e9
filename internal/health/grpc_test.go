package health

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// grpcPeer is a real gRPC server on loopback. With a health server
// (hs != nil) it serves grpc.health.v1; without one, only an empty
// server that answers Unimplemented.
type grpcPeer struct {
	addr netip.AddrPort
	hs   *grpchealth.Server
}

// startGRPC serves grpc.health.v1 on host:0 until cleanup. The server as
// a whole ("") starts SERVING; set per-service statuses with g.hs.
func startGRPC(tb testing.TB, host string) *grpcPeer {
	tb.Helper()
	g := startGRPCServer(tb, host, true)
	g.hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	return g
}

func startGRPCServer(tb testing.TB, host string, withHealth bool, opts ...grpc.ServerOption) *grpcPeer {
	tb.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	s := grpc.NewServer(opts...)
	g := &grpcPeer{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	if withHealth {
		g.hs = grpchealth.NewServer()
		healthpb.RegisterHealthServer(s, g.hs)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			tb.Errorf("grpc serve: %v", err)
		}
	}()
	tb.Cleanup(func() {
		if g.hs != nil {
			g.hs.Shutdown()
		}
		s.Stop()
		wg.Wait()
	})
	return g
}

// isGRPCDeadline reports whether err is a gRPC status DeadlineExceeded.
func isGRPCDeadline(err error) bool { return status.Code(err) == codes.DeadlineExceeded }

func TestGRPCCheck(t *testing.T) {
	t.Parallel()
	g := startGRPC(t, "127.0.0.1")
	g.hs.SetServingStatus("sluice.test.Ready", healthpb.HealthCheckResponse_SERVING)
	g.hs.SetServingStatus("sluice.test.Draining", healthpb.HealthCheckResponse_NOT_SERVING)
	g.hs.SetServingStatus("sluice.test.Unknown", healthpb.HealthCheckResponse_UNKNOWN)
	for _, tc := range []struct {
		service  string
		wantCode codes.Code // of a failed RPC; codes.OK: the RPC succeeds
		wantErr  string
	}{
		{service: ""},
		{service: "sluice.test.Ready"},
		{service: "sluice.test.Draining", wantErr: "grpc health status NOT_SERVING"},
		{service: "sluice.test.Unknown", wantErr: "grpc health status UNKNOWN"},
		{service: "sluice.test.Missing", wantCode: codes.NotFound, wantErr: "unknown service"},
	} {
		t.Run("service="+tc.service, func(t *testing.T) {
			t.Parallel()
			err := runCheck(newChecker(t, Config{Kind: "grpc", GRPCService: tc.service}), g.addr)
			wantErr(t, err, tc.wantErr)
			if got := status.Code(err); tc.wantCode != codes.OK && got != tc.wantCode {
				t.Fatalf("status code %v, want %v", got, tc.wantCode)
			}
		})
	}
}

// TestGRPCCheckFollowsStatus flips the server's status and checks that
// every check sees the current one over its fresh connection.
func TestGRPCCheckFollowsStatus(t *testing.T) {
	t.Parallel()
	g := startGRPC(t, "127.0.0.1")
	ch := newChecker(t, Config{Kind: "grpc"})
	for i, st := range []healthpb.HealthCheckResponse_ServingStatus{
		healthpb.HealthCheckResponse_SERVING,
		healthpb.HealthCheckResponse_NOT_SERVING,
		healthpb.HealthCheckResponse_SERVING,
	} {
		g.hs.SetServingStatus("", st)
		err := runCheck(ch, g.addr)
		if (err == nil) != (st == healthpb.HealthCheckResponse_SERVING) {
			t.Fatalf("step %d: status %v, check error %v", i, st, err)
		}
	}
	// Shutdown sets every service NOT_SERVING, as a server does when it
	// starts draining.
	g.hs.Shutdown()
	if err := runCheck(ch, g.addr); err == nil || !strings.Contains(err.Error(), "NOT_SERVING") {
		t.Fatalf("after health Shutdown: check error %v, want NOT_SERVING", err)
	}
}

func TestGRPCCheckFailures(t *testing.T) {
	t.Parallel()
	ch := newChecker(t, Config{Kind: "grpc"})
	t.Run("no health service", func(t *testing.T) {
		t.Parallel()
		g := startGRPCServer(t, "127.0.0.1", false)
		if err := runCheck(ch, g.addr); status.Code(err) != codes.Unimplemented {
			t.Fatalf("check of a server without grpc.health.v1: %v, want Unimplemented", err)
		}
	})
	t.Run("closed port", func(t *testing.T) {
		t.Parallel()
		if err := runCheck(ch, closedAddr(t)); status.Code(err) != codes.Unavailable {
			t.Fatalf("check of a closed port: %v, want Unavailable", err)
		}
	})
	t.Run("HTTP/1 server", func(t *testing.T) {
		t.Parallel()
		p := startPeer(t, "127.0.0.1", func(c net.Conn) {
			buf := make([]byte, 64)
			c.Read(buf) // the HTTP/2 preface, taken as a bad request
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"))
		})
		if err := runCheck(ch, p.addr); err == nil {
			t.Fatal("check passed against an HTTP/1 server")
		}
	})
}
