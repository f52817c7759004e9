package admin

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
)

func testHandler(t *testing.T) (http.Handler, *balancer.Service, netip.AddrPort) {
	t.Helper()
	be := netip.MustParseAddrPort("127.0.0.1:7001")
	svc, err := balancer.NewService(balancer.ServiceConfig{Name: "db", Loops: 1},
		[]balancer.Spec{{Addr: be, Weight: 1}}, balancer.Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	h := Handler(Deps{
		Services:  []*balancer.Service{svc},
		Listening: func() bool { return true },
		Gatherer:  prometheus.NewRegistry(),
	}, zap.NewNop())
	return h, svc, be
}

// TestPostGuard: a drain that a browser could have been made to send
// (another site's page, or a DNS name rebound to the endpoint's address) is
// refused and changes nothing; the same request named by address, as curl
// sends it, drains.
func TestPostGuard(t *testing.T) {
	cases := []struct {
		name   string
		host   string
		header map[string]string
		want   int
	}{
		{"DNS name (rebinding)", "attacker.example:9090", nil, http.StatusForbidden},
		{"DNS name without port", "attacker.example", nil, http.StatusForbidden},
		{"cross-site fetch", "127.0.0.1:9090", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"other origin", "127.0.0.1:9090", map[string]string{"Origin": "http://attacker.example"}, http.StatusForbidden},
		{"IPv4 address", "127.0.0.1:9090", nil, http.StatusOK},
		{"IPv6 address", "[::1]:9090", nil, http.StatusOK},
		{"localhost", "localhost:9090", nil, http.StatusOK},
		{"same origin", "127.0.0.1:9090", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:9090"}, http.StatusOK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, svc, be := testHandler(t)
			req := httptest.NewRequest("POST", "/backends/"+be.String()+"/drain", nil)
			req.Host = c.host
			for k, v := range c.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != c.want {
				t.Fatalf("status %d (%s), want %d", rec.Code, strings.TrimSpace(rec.Body.String()), c.want)
			}
			drained := svc.Info()[0].State == balancer.StateDraining
			if drained != (c.want == http.StatusOK) {
				t.Fatalf("status %d but backend state %q", rec.Code, svc.Info()[0].State)
			}
		})
	}
}

// TestGetNotGuarded: reads stay open to any Host, so Prometheus may scrape
// the endpoint by DNS name.
func TestGetNotGuarded(t *testing.T) {
	h, _, _ := testHandler(t)
	for _, path := range []string{"/metrics", "/backends", "/healthz"} {
		req := httptest.NewRequest("GET", path, nil)
		req.Host = "lb1.example:9090"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", path, rec.Code)
		}
	}
}

func TestLiteralHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.0.0.1:80": true, "[::1]:80": true, "::1": true, "[fe80::1%eth0]:80": true,
		"localhost": true, "LocalHost.:80": true, "a.localhost:80": true,
		"": false, "example.com": false, "127.0.0.1.example:80": false, "localhost.example": false, "[bad]:80": false,
	} {
		if got := literalHost(host); got != want {
			t.Errorf("literalHost(%q) = %v, want %v", host, got, want)
		}
	}
}

// TestCloseFinishesRequestsInFlight: Close (at an upgrade's hand-over, or
// at exit) stops accepting but lets a request already being answered
// finish, instead of cutting it.
func TestCloseFinishesRequestsInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		w.Write([]byte("done\n"))
	})
	s, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), nil, h, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	type result struct {
		code int
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + s.Addr().String() + "/")
		if err != nil {
			got <- result{err: err}
			return
		}
		resp.Body.Close()
		got <- result{code: resp.StatusCode}
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// Close must not return while the request is unanswered; once it
	// is answered, both end.
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with a request in flight", err)
	case r := <-got:
		t.Fatalf("the request ended (%d, %v) before it was answered", r.code, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if r := <-got; r.err != nil || r.code != http.StatusOK {
		t.Fatalf("request in flight at Close: %d, %v; want 200", r.code, r.err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if c, err := net.Dial("tcp", s.Addr().String()); err == nil {
		c.Close()
		t.Fatal("still accepting after Close")
	}
}
