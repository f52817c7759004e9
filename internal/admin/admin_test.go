package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
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

// postTo posts to path on h as curl does, naming the endpoint by address
// (guard refuses a DNS name), and returns the answer.
func postTo(h http.Handler, path string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", path, nil)
	req.Host = "127.0.0.1:9090"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
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

// TestAbsentDrainsListed: a backend drained by the operator that then left
// (DNS dropped it) is listed by GET /backends under its service's
// "absent", drained, with when it left and until when its drain holds,
// and not among "backends", whose entries keep their fields; POST enable
// forgets the drain, so the address returns up.
func TestAbsentDrainsListed(t *testing.T) {
	h, svc, be := testHandler(t)
	gone := netip.MustParseAddrPort("10.0.0.5:5432")
	if err := svc.SetSource(balancer.SourceDNS, []balancer.Spec{{Addr: gone, Weight: 1}}); err != nil {
		t.Fatal(err)
	}
	post := func(path string) {
		t.Helper()
		if rec := postTo(h, path); rec.Code != http.StatusOK {
			t.Fatalf("POST %s: %d %s", path, rec.Code, rec.Body)
		}
	}
	type service struct {
		Service  string           `json:"service"`
		Backends []map[string]any `json:"backends"`
		Absent   []map[string]any `json:"absent"`
	}
	get := func() service {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/backends", nil))
		var out []service
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || len(out) != 1 {
			t.Fatalf("GET /backends: %v, %s", err, rec.Body)
		}
		if !strings.Contains(rec.Body.String(), `"absent": [`) {
			t.Fatalf("GET /backends has no absent list (want [] when there is none): %s", rec.Body)
		}
		return out[0]
	}

	post("/backends/" + gone.String() + "/drain")
	before := time.Now()
	if err := svc.SetSource(balancer.SourceDNS, nil); err != nil {
		t.Fatal(err)
	}
	got := get()
	if len(got.Backends) != 1 || got.Backends[0]["address"] != be.String() {
		t.Fatalf("backends %v, want %v alone", got.Backends, be)
	}
	for _, f := range []string{"address", "weight", "state", "sources", "active_connections", "connections_total", "connect_errors_total"} {
		if _, ok := got.Backends[0][f]; !ok {
			t.Errorf("backend entry lacks %q: %v", f, got.Backends[0])
		}
	}
	if len(got.Absent) != 1 {
		t.Fatalf("absent %v, want %v", got.Absent, gone)
	}
	a := got.Absent[0]
	left, err1 := time.Parse(time.RFC3339Nano, fmt.Sprint(a["left"]))
	until, err2 := time.Parse(time.RFC3339Nano, fmt.Sprint(a["drain_until"]))
	if a["address"] != gone.String() || a["state"] != string(balancer.StateDraining) || err1 != nil || err2 != nil ||
		left.Before(before.Add(-time.Second)) || until.Sub(left) != 24*time.Hour {
		t.Fatalf("absent entry %v (%v, %v)", a, err1, err2)
	}

	post("/backends/" + gone.String() + "/enable")
	if got := get(); len(got.Absent) != 0 {
		t.Fatalf("absent %v after enable, want none", got.Absent)
	}
	if err := svc.SetSource(balancer.SourceDNS, []balancer.Spec{{Addr: gone, Weight: 1}}); err != nil {
		t.Fatal(err)
	}
	if bi := svc.Info()[0]; bi.Address != gone.String() || bi.State != balancer.StateUp {
		t.Fatalf("enabled while absent, it returned as %+v", bi)
	}
}

// TestDrainNotFoundSaysWhat: a drain that finds nothing to act on is 404,
// and says what is missing: the service named by ?service= (a typo must
// not read as "no such backend" when the backend is there), or the backend
// in that service, or in any.
func TestDrainNotFoundSaysWhat(t *testing.T) {
	h, svc, be := testHandler(t)
	for _, c := range []struct{ path, want string }{
		{"/backends/" + be.String() + "/drain?service=dbb", `no service "dbb"`},
		{"/backends/10.9.9.9:1/drain?service=db", `service "db" has no backend 10.9.9.9:1`},
		{"/backends/10.9.9.9:1/drain", "no service has backend 10.9.9.9:1"},
	} {
		rec := postTo(h, c.path)
		var body struct{ Error string }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusNotFound || !strings.Contains(body.Error, c.want) {
			t.Errorf("POST %s: %d %s, want 404 saying %q", c.path, rec.Code, strings.TrimSpace(rec.Body.String()), c.want)
		}
	}
	if st := svc.Info()[0].State; st != balancer.StateUp {
		t.Fatalf("backend %s after requests that found nothing", st)
	}
}

// TestIdleConnectionsClosed: a keep-alive connection that sends no further
// request is closed by the server after its idle timeout, so idle clients
// cannot hold the balancer's file descriptors for good.
func TestIdleConnectionsClosed(t *testing.T) {
	c := dialShortTimeouts(t, func(srv *http.Server) {
		if srv.IdleTimeout <= 0 {
			t.Fatalf("IdleTimeout %v: idle keep-alive connections are never closed", srv.IdleTimeout)
		}
		srv.IdleTimeout = 200 * time.Millisecond // the behaviour, without the wait
	})
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		t.Fatal("the server closed after the first response: not a keep-alive test")
	}
	// The server must end the idle connection well before the deadline.
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("idle keep-alive connection not closed by the server: %v", err)
	}
}

// TestStalledRequestClosed: a client that sends a request's headers and
// then stalls in its body is cut off after the read timeout, so stalled
// clients cannot hold the admin API's places (MaxConns) for good.
func TestStalledRequestClosed(t *testing.T) {
	c := dialShortTimeouts(t, func(srv *http.Server) {
		if srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 {
			t.Fatalf("ReadTimeout %v, WriteTimeout %v: a stalled client holds its place for good", srv.ReadTimeout, srv.WriteTimeout)
		}
		srv.ReadTimeout = 200 * time.Millisecond // the behaviour, without the wait
	})
	if _, err := c.Write([]byte("POST /backends/127.0.0.1:1/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("stalled request not cut off by the server: %v", err)
	}
}

// dialShortTimeouts starts an admin server (answering 404 to everything)
// after set has checked and shortened its timeouts, and dials it.
func dialShortTimeouts(t *testing.T, set func(*http.Server)) net.Conn {
	t.Helper()
	s, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), nil, http.NotFoundHandler(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	set(s.srv)
	s.Start()
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDrainBadAddress: an address that no backend can have (port 0, an
// IPv6 zone, a port out of range, a backend line's weight, no address at
// all) is a bad request, 400 saying what is wrong with it, for drain and
// enable alike, and changes nothing; 404 is kept for a well-formed address
// that is not a backend. An IPv4 address written IPv4-mapped names the
// backend as it does plainly.
func TestDrainBadAddress(t *testing.T) {
	h, svc, be := testHandler(t)
	post := func(path string) (int, string) {
		t.Helper()
		rec := postTo(h, path)
		var body struct{ Error string }
		if rec.Code != http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("POST %s: %d with a body that is not a JSON error: %q", path, rec.Code, rec.Body)
			}
		}
		return rec.Code, body.Error
	}
	for _, c := range []struct{ addr, want string }{
		{"127.0.0.1:0", "port 0 is not a valid backend port"},
		{"[::1]:0", "port 0 is not a valid backend port"},
		{"[fe80::1%25eth0]:5432", "zoned IPv6 addresses are not supported"},
		{"127.0.0.1:65536", "want ip:port or [ipv6]:port"},
		{"127.0.0.1:7001,weight=2", "want ip:port or [ipv6]:port"},
		{"127.0.0.1", "want ip:port or [ipv6]:port"},
		{"nonsense", "want ip:port or [ipv6]:port"},
	} {
		for _, op := range []string{"drain", "enable"} {
			path := "/backends/" + c.addr + "/" + op
			if code, msg := post(path); code != http.StatusBadRequest || !strings.HasPrefix(msg, "backend address: ") || !strings.Contains(msg, c.want) {
				t.Errorf("POST %s: %d %q, want 400 saying %q", path, code, msg, c.want)
			}
		}
	}
	if st := svc.Info()[0].State; st != balancer.StateUp {
		t.Fatalf("backend %s after bad requests", st)
	}
	if code, msg := post("/backends/127.0.0.1:7002/drain"); code != http.StatusNotFound {
		t.Errorf("drain of a well-formed address that is no backend: %d %q, want 404", code, msg)
	}
	if code, msg := post("/backends/[::ffff:127.0.0.1]:7001/drain"); code != http.StatusOK {
		t.Fatalf("drain of %s written IPv4-mapped: %d %q, want 200", be, code, msg)
	}
	if st := svc.Info()[0].State; st != balancer.StateDraining {
		t.Fatalf("backend %s after its drain, want %s", st, balancer.StateDraining)
	}
}

// TestConnLimit: at most MaxConns admin connections are served at once.
// One more is not refused: it waits, unanswered and open, until one of
// them closes, and is then served. Every place is given back, whether
// its connection was answered, hung up by the client during its request,
// before one or in the middle of one, or closed by the server after a
// malformed request: then MaxConns requests are served at once again. Close leaves no goroutine
// and no socket behind.
func TestConnLimit(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	socketsBefore := openSockets(t)
	entered := make(chan struct{}, 4*MaxConns)
	release, stop := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done(): // the client hung up
			return
		case <-stop:
		}
		w.Write([]byte("done\n"))
	})
	s, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), nil, h, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	closed := false
	t.Cleanup(func() {
		close(stop)
		if !closed {
			s.Close()
		}
	})
	// request opens a connection and sends a request that holds its
	// place until released.
	request := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte("GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		return c
	}
	waitEntered := func(n int, what string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for i := 0; i < n; i++ {
			select {
			case <-entered:
			case <-deadline:
				t.Fatalf("%s: %d of %d requests served", what, i, n)
			}
		}
	}
	answered := func(c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "done\n" {
			t.Fatalf("answer %d %q, want 200 done", resp.StatusCode, body)
		}
		c.Close()
	}

	held := make([]net.Conn, 0, MaxConns)
	for range MaxConns {
		held = append(held, request())
	}
	waitEntered(MaxConns, "up to the limit")
	extra := request() // connected: the kernel's accept queue holds it
	select {
	case <-entered:
		t.Fatalf("a request beyond the %d connections at once was served", MaxConns)
	case <-time.After(200 * time.Millisecond):
	}
	extra.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := extra.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection beyond the limit read %d bytes, %v; want it open and waiting", n, err)
	}
	// A client hangs up, freeing a place: the waiting connection takes it.
	held[0].Close()
	waitEntered(1, "the connection that waited, once a place was free")
	for range MaxConns {
		release <- struct{}{}
	}
	for _, c := range append(held[1:], extra) {
		answered(c)
	}

	// Connections that end without an answer give their places back too.
	for i := range MaxConns {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		switch i % 3 {
		case 1:
			c.Write([]byte("GET /hold HTTP/1.1\r\nHo"))
		case 2:
			c.Write([]byte("NOT HTTP\r\n\r\n"))
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("malformed request: %v, %v; want 400", resp, err)
			}
		}
		c.Close()
	}
	held = held[:0]
	for range MaxConns {
		held = append(held, request())
	}
	waitEntered(MaxConns, "after connections that ended unanswered")
	for range MaxConns {
		release <- struct{}{}
	}
	for _, c := range held {
		answered(c)
	}

	closed = true
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	goleak.VerifyNone(t, ignore)
	if after := openSockets(t); after != socketsBefore {
		t.Fatalf("%d sockets open before, %d after Close", socketsBefore, after)
	}
}

// openSockets counts the process's open socket descriptors.
func openSockets(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// TestHoldRefusesChanges: a drain or enable is applied while Deps.Hold is
// held, released once answered; while Hold refuses, it is 503 with
// Retry-After, saying why, and changes nothing. Reads do not take it.
func TestHoldRefusesChanges(t *testing.T) {
	be := netip.MustParseAddrPort("127.0.0.1:7001")
	svc, err := balancer.NewService(balancer.ServiceConfig{Name: "db", Loops: 1},
		[]balancer.Spec{{Addr: be, Weight: 1}}, balancer.Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	var refuse error
	held, taken := false, 0
	h := Handler(Deps{
		Services:  []*balancer.Service{svc},
		Listening: func() bool { return true },
		Gatherer:  prometheus.NewRegistry(),
		Hold: func() (func(), error) {
			taken++
			if refuse != nil {
				return nil, refuse
			}
			held = true
			return func() { held = false }, nil
		},
	}, zap.NewNop())

	refuse = errors.New("handing over")
	rec := postTo(h, "/backends/"+be.String()+"/drain")
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || !strings.Contains(rec.Body.String(), "handing over") {
		t.Fatalf("drain while refused: %d, Retry-After %q, %s; want 503 with Retry-After and the reason", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	if st := svc.Info()[0].State; st != balancer.StateUp {
		t.Fatalf("backend %s after a refused drain, want up", st)
	}
	for _, path := range []string{"/backends", "/metrics"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s while changes are refused: %d, want 200", path, rec.Code)
		}
	}
	if taken != 1 {
		t.Fatalf("Hold taken %d times by a drain and two reads, want once", taken)
	}

	refuse = nil
	if rec := postTo(h, "/backends/"+be.String()+"/drain"); rec.Code != http.StatusOK {
		t.Fatalf("drain once allowed: %d %s", rec.Code, rec.Body)
	}
	if held {
		t.Fatal("Hold not released after the drain was answered")
	}
	if st := svc.Info()[0].State; st != balancer.StateDraining {
		t.Fatalf("backend %s after the drain, want draining", st)
	}
}
