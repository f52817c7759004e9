package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// fastHealth are health flags that detect a dead backend in ~0.2 s.
var fastHealth = []string{"--health-interval", "50ms", "--health-timeout", "200ms", "--health-fall", "2", "--health-rise", "1"}

// startLoad runs clients that each open a connection, do one round trip
// and close, until the test ends. Each client uses its own 127.0.1.x
// source address so src-ip hashing spreads them.
func startLoad(tb testing.TB, target netip.AddrPort, clients int) *testsrv.ConnectLoad {
	tb.Helper()
	l := testsrv.StartConnectLoad(testsrv.LoadConfig{
		Target:  target.String(),
		Clients: clients,
		Source:  func(i int) *net.TCPAddr { return &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(10+i))} },
		Msg:     []byte("hello"),
	})
	tb.Cleanup(l.Stop)
	return l
}

// waitProgress waits until the load has made n more successful round trips.
func waitProgress(tb testing.TB, l *testsrv.ConnectLoad, n int64) {
	tb.Helper()
	target := l.OK.Load() + n
	waitFor(tb, fmt.Sprintf("%d more round trips", n), func() bool { return l.OK.Load() >= target })
}

// checkLoad fails tb unless every round trip of l succeeded, and some did.
func checkLoad(tb testing.TB, l *testsrv.ConnectLoad) {
	tb.Helper()
	if f := l.Failed.Load(); f != 0 {
		tb.Fatalf("%d of %d connections failed; first: %v", f, f+l.OK.Load(), l.FirstErr())
	}
	if l.OK.Load() == 0 {
		tb.Fatal("no connection succeeded")
	}
}

func backendState(tb testing.TB, r *running, addr netip.AddrPort) balancer.State {
	tb.Helper()
	for _, bi := range r.Service("default").Info() {
		if bi.Address == addr.String() {
			return bi.State
		}
	}
	return ""
}

// TestBackendKilledUnderLoad: a backend dies under continuous load; after
// detection it gets no new connection, and no client connection fails.
func TestBackendKilledUnderLoad(t *testing.T) {
	a, b, c := copyEcho(t), copyEcho(t), copyEcho(t)
	r := start(t, append([]string{"--backend", a.addr, "--backend", b.addr, "--backend", c.addr}, fastHealth...)...)
	l := startLoad(t, r.Addr(), 16)
	waitProgress(t, l, 300)
	if a.accepted.Load() == 0 {
		t.Fatal("backend a got no connection before the kill; the clients do not spread")
	}
	// The kill: a stops accepting (connects are refused), then its open
	// connections die too. Connects refused in between are retried on the
	// next backend, so no client connection may fail.
	a.closeListener()
	// Taken once the listener is closed: a connection started before could
	// still land in a's accept queue and be reset with it.
	killed := time.Now()
	addrA := netip.MustParseAddrPort(a.addr)
	waitFor(t, "backend a marked down", func() bool { return backendState(t, r, addrA) == balancer.StateDown })
	detected := time.Now()
	a.closeConns()
	after := a.accepted.Load()
	waitProgress(t, l, 500)
	l.Stop()
	// A connection that had completed its handshake with a but was still
	// in a's accept queue is reset by a's kernel when a closes its
	// listener: that is the backend dying under it, which no L4 balancer
	// can undo once the client's bytes were sent. Such connections started
	// before the kill; every connection started after it must succeed.
	var late, early int
	for _, at := range l.FailedAt() {
		switch {
		case at.After(killed):
			late++
		default:
			early++
		}
	}
	if late > 0 {
		t.Fatalf("%d connections started after the kill failed (detected after %v); first error %v", late, detected.Sub(killed), l.FirstErr())
	}
	if early > 16 {
		t.Fatalf("%d connections in flight at the kill failed, more than the 16 clients", early)
	}
	if l.OK.Load() == 0 {
		t.Fatal("no connection succeeded")
	}
	if got := a.accepted.Load(); got != after {
		t.Fatalf("backend a accepted %d connections after it was marked down", got-after)
	}
}

// TestPassiveEjection: with active checks too slow to notice, consecutive
// connect failures on the data path take the backend out.
func TestPassiveEjection(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	b := testsrv.StartTB(t, testsrv.Echo, "tcp")
	r := start(t, "--backend", a.Addr().String(), "--backend", b.Addr().String(),
		"--health-interval", "1h", "--passive-fall", "3", "--hash-key", "src-ip-port")
	a.Close()
	for i := 0; i < 50 && backendState(t, r, a.Addr()) != balancer.StateDown; i++ {
		cn := r.dial(t)
		cn.SetDeadline(time.Now().Add(5 * time.Second))
		cn.Write([]byte("x"))
		if _, err := io.ReadFull(cn, make([]byte, 1)); err != nil {
			t.Fatalf("connection %d failed although b is up: %v", i, err)
		}
		cn.Close()
	}
	waitFor(t, "passive ejection", func() bool { return backendState(t, r, a.Addr()) == balancer.StateDown })
}

func writeFile(tb testing.TB, path string, lines ...string) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// TestBackendsFileReloadUnderLoad rewrites the backends file and reloads
// (SIGHUP and the Reload method) over and over under load: no connection
// fails, and the membership follows the file.
func TestBackendsFileReloadUnderLoad(t *testing.T) {
	var srv []*testsrv.Server
	for i := 0; i < 4; i++ {
		srv = append(srv, testsrv.StartTB(t, testsrv.Echo, "tcp"))
	}
	path := filepath.Join(t.TempDir(), "backends")
	writeFile(t, path, "# initial", srv[0].Addr().String(), srv[1].Addr().String()+" weight=2")
	r := start(t, append([]string{"--backends-file", path}, fastHealth...)...)
	l := startLoad(t, r.Addr(), 12)
	sets := [][]int{{0, 1, 2}, {2, 3}, {1}, {0, 3}, {0, 1, 2, 3}, {3}}
	for round := 0; round < 12; round++ {
		set := sets[round%len(sets)]
		var lines []string
		for _, i := range set {
			lines = append(lines, srv[i].Addr().String())
		}
		writeFile(t, path, lines...)
		if round%2 == 0 {
			syscall.Kill(os.Getpid(), syscall.SIGHUP)
		} else {
			r.Reload()
		}
		want := fmt.Sprint(sortedAddrs(srv, set))
		waitFor(t, "membership "+want, func() bool { return fmt.Sprint(r.Service("default").Members()) == want })
		waitProgress(t, l, 50)
	}
	l.Stop()
	checkLoad(t, l)

	// A bad file is rejected whole; the set in force stays.
	before := fmt.Sprint(r.Service("default").Members())
	writeFile(t, path, srv[0].Addr().String(), "not-an-address")
	r.Reload()
	if got := fmt.Sprint(r.Service("default").Members()); got != before {
		t.Fatalf("bad file changed membership to %s", got)
	}
}

func sortedAddrs(srv []*testsrv.Server, set []int) []netip.AddrPort {
	var out []netip.AddrPort
	for _, i := range set {
		out = append(out, srv[i].Addr())
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].Compare(out[i]) < 0 {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestBoundedLoad: one hot client address opens most connections; with
// --hash-balance-factor 1.25 no backend holds more than
// ceil(1.25 × mean), and without it the hot client's backend takes them all.
func TestBoundedLoad(t *testing.T) {
	const hot, cold = 120, 40
	for _, factor := range []string{"0", "1.25"} {
		t.Run("factor="+factor, func(t *testing.T) {
			var srv []*testsrv.Server
			args := []string{"--hash-balance-factor", factor, "--health-interval", "1h"}
			for i := 0; i < 4; i++ {
				s := testsrv.StartTB(t, testsrv.Echo, "tcp")
				srv = append(srv, s)
				args = append(args, "--backend", s.Addr().String())
			}
			r := start(t, args...)
			dialFrom := func(ip net.IP) {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
				c, err := d.Dial("tcp", r.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Write([]byte("x"))
				if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < hot; i++ {
				dialFrom(net.IPv4(127, 0, 2, 1))
				if i%3 == 0 && i/3 < cold {
					dialFrom(net.IPv4(127, 0, 3, byte(1+i/3)))
				}
			}
			total, peak := 0, 0
			for _, s := range srv {
				n := int(s.Stats().Active)
				total += n
				peak = max(peak, n)
			}
			if total != hot+cold {
				t.Fatalf("backends hold %d connections, want %d", total, hot+cold)
			}
			limit := int(math.Ceil(1.25 * float64(total) / 4))
			if factor == "0" {
				if peak < hot {
					t.Fatalf("without bounded loads the hot client should pile onto one backend: peak %d", peak)
				}
				return
			}
			if peak > limit {
				t.Fatalf("peak backend load %d above the cap %d", peak, limit)
			}
		})
	}
}

func httpGet(tb testing.TB, url string) (int, string) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func httpPost(tb testing.TB, url string) (int, string) {
	tb.Helper()
	resp, err := http.Post(url, "", nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestAdminAndMetrics: the admin endpoint reports, drains and enables;
// metrics counters equal the connections and bytes actually made.
func TestAdminAndMetrics(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	b := testsrv.StartTB(t, testsrv.Echo, "tcp")
	r := start(t, "--backend", a.Addr().String(), "--backend", b.Addr().String(), "--admin-addr", "127.0.0.1:0",
		"--hash-key", "src-ip-port", "--health-interval", "1h")
	base := "http://" + r.AdminAddr()
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Fatalf("readyz %d %s", code, body)
	}
	const n = 40
	for i := 0; i < n; i++ {
		c := r.dial(t)
		c.Write([]byte("0123456789"))
		io.ReadFull(c, make([]byte, 10))
		c.Close()
	}
	waitFor(t, "connections closed", func() bool { st := r.Stats(); return st.Closed == n })
	code, body := httpGet(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("metrics %d", code)
	}
	m := parseMetrics(body)
	var total float64
	for _, s := range []*testsrv.Server{a, b} {
		lbl := fmt.Sprintf(`{backend="%s",service="default"}`, s.Addr())
		got := m["sluice_backend_connections_total"+lbl]
		if got != float64(s.Stats().Accepted) {
			t.Errorf("%s: metric says %v connections, backend accepted %d", s.Addr(), got, s.Stats().Accepted)
		}
		total += got
		if up := m["sluice_backend_up"+lbl]; up != 1 {
			t.Errorf("%s: up = %v", s.Addr(), up)
		}
		down := fmt.Sprintf(`{backend="%s",direction="down",service="default"}`, s.Addr())
		if m["sluice_backend_bytes_total"+down] != 10*got {
			t.Errorf("%s: bytes down %v for %v connections of 10 bytes", s.Addr(), m["sluice_backend_bytes_total"+down], got)
		}
	}
	if total != n || m[`sluice_connections_accepted_total{service="default"}`] != n {
		t.Fatalf("metrics count %v connections, made %d", total, n)
	}

	// Drain a: an open connection to it keeps working, new ones go to b.
	open := dialUntilBackend(t, r, a)
	if code, body := httpPost(t, base+"/backends/"+a.Addr().String()+"/drain"); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	_, body = httpGet(t, base+"/backends")
	var list []struct {
		Service  string                 `json:"service"`
		Backends []balancer.BackendInfo `json:"backends"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("backends JSON: %v\n%s", err, body)
	}
	states := map[string]balancer.State{}
	for _, bi := range list[0].Backends {
		states[bi.Address] = bi.State
	}
	if states[a.Addr().String()] != balancer.StateDraining || states[b.Addr().String()] != balancer.StateUp {
		t.Fatalf("states after drain: %v", states)
	}
	before := a.Stats().Accepted
	for i := 0; i < 20; i++ {
		c := r.dial(t)
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		c.Close()
	}
	if a.Stats().Accepted != before {
		t.Fatal("a drained backend got new connections")
	}
	open.SetDeadline(time.Now().Add(5 * time.Second))
	open.Write([]byte("still"))
	if _, err := io.ReadFull(open, make([]byte, 5)); err != nil {
		t.Fatalf("connection to the drained backend broke: %v", err)
	}
	if code, _ := httpPost(t, base+"/backends/"+a.Addr().String()+"/enable"); code != 200 {
		t.Fatal("enable failed")
	}
	if code, _ := httpPost(t, base+"/backends/127.0.0.1:1/drain"); code != 404 {
		t.Fatalf("drain of an unknown backend: %d, want 404", code)
	}
	// Through a real request line too: an address no backend can have
	// is a bad request, not an unknown backend.
	for _, bad := range []string{"nonsense", "127.0.0.1:0", "[fe80::1%25lo]:5432"} {
		if code, body := httpPost(t, base+"/backends/"+bad+"/drain"); code != 400 || !strings.Contains(body, "backend address: ") {
			t.Fatalf("drain of the bad address %s: %d %s, want 400", bad, code, body)
		}
	}
	// With every backend drained, readyz says so.
	httpPost(t, base+"/backends/"+a.Addr().String()+"/drain")
	httpPost(t, base+"/backends/"+b.Addr().String()+"/drain")
	if code, _ := httpGet(t, base+"/readyz"); code != 503 {
		t.Fatalf("readyz with no backend up: %d", code)
	}
}

// dialUntilBackend opens connections until one lands on s, and returns it.
func dialUntilBackend(tb testing.TB, r *running, s *testsrv.Server) net.Conn {
	tb.Helper()
	for i := 0; i < 200; i++ {
		before := s.Stats().Accepted
		c := r.dial(tb)
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		if s.Stats().Accepted > before {
			return c
		}
		c.Close()
	}
	tb.Fatalf("no connection reached %s", s.Addr())
	return nil
}

// parseMetrics reads the Prometheus text format into name{labels} → value.
func parseMetrics(body string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// TestAllBackendsDown: new connections are refused at once and counted,
// and the log says so once, not per connection.
func TestAllBackendsDown(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := parse(t, append([]string{"--listen", "127.0.0.1:0", "--backend", a.Addr().String()}, fastHealth...)...)
	core, logs := observer.New(zapcore.InfoLevel)
	s := startCfg(t, cfg, zap.New(core))
	a.Close()
	waitFor(t, "all down", func() bool { return !s.Service("default").Up() })
	for i := 0; i < 10; i++ {
		begin := time.Now()
		c, err := net.Dial("tcp", s.Addr().String())
		if err == nil {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) && err != io.EOF {
			t.Fatalf("connection %d: %v, want it closed at once", i, err)
		}
		if el := time.Since(begin); el > time.Second {
			t.Fatalf("refusal took %v", el)
		}
	}
	if st := s.Stats(); st.NoBackend != 10 {
		t.Fatalf("no-backend count %d, want 10", st.NoBackend)
	}
	if n := logs.FilterMessage("no backend is up: new connections are refused").Len(); n != 1 {
		t.Fatalf("logged the all-down state %d times, want once", n)
	}
}

// TestCloseOnDown: with --close-on-down a backend's open connections are
// reset when it goes down, those opened before a change of its weight too;
// without it they are left alone.
func TestCloseOnDown(t *testing.T) {
	for _, tc := range []struct {
		name         string
		on, reweight bool
	}{{"off", false, false}, {"on", true, false}, {"on after a weight change", true, true}} {
		on := tc.on
		t.Run(tc.name, func(t *testing.T) {
			a := testsrv.StartTB(t, testsrv.Echo, "tcp")
			args := []string{"--backend", a.Addr().String(), "--admin-addr", "127.0.0.1:0", "--health-interval", "1h"}
			if on {
				args = append(args, "--close-on-down")
			}
			r := start(t, args...)
			c := r.dial(t)
			c.Write([]byte("x"))
			io.ReadFull(c, make([]byte, 1))
			if tc.reweight {
				if err := r.Service("default").SetSource(balancer.SourceStatic, []balancer.Spec{{Addr: a.Addr(), Weight: 2}}); err != nil {
					t.Fatal(err)
				}
			}
			// Mark it down through the health path.
			r.Service("default").SetHealth(a.Addr(), false, balancer.CheckResult{Error: "test"})
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if on {
				_, err := c.Read(make([]byte, 1))
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("read = %v, want reset", err)
				}
				return
			}
			c.Write([]byte("y"))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatalf("connection broke without --close-on-down: %v", err)
			}
		})
	}
}

// TestConfigFileServices runs two services from a config file.
func TestConfigFileServices(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	b := testsrv.StartTB(t, testsrv.Echo, "tcp")
	path := filepath.Join(t.TempDir(), "sluice.conf")
	writeFile(t, path,
		"# two services",
		"drain-timeout 5s",
		"[service one]",
		"listen 127.0.0.1:0",
		"backend "+a.Addr().String(),
		"[service two]",
		"listen 127.0.0.1:0",
		"backend "+b.Addr().String()+",weight=2",
		"health-check tcp",
	)
	cfg := parse(t, []string{"--config", path}...)
	s := startCfg(t, cfg, zap.NewNop())
	for name, backend := range map[string]*testsrv.Server{"one": a, "two": b} {
		c, err := net.Dial("tcp", s.ServiceAddr(name).String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		c.Close()
		if backend.Stats().Accepted != 1 {
			t.Fatalf("service %s did not reach its backend", name)
		}
	}
}

// TestReloadKeepsOtherServices: on a reload, one service's bad backends
// file keeps that service's backends and nothing more; the config file's
// other changes apply.
func TestReloadKeepsOtherServices(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	b := testsrv.StartTB(t, testsrv.Echo, "tcp")
	dir := t.TempDir()
	backends, conf := filepath.Join(dir, "backends"), filepath.Join(dir, "sluice.conf")
	writeFile(t, backends, a.Addr().String())
	lines := func(twoBackend *testsrv.Server) []string {
		return []string{
			"[service one]", "listen 127.0.0.1:0", "backends-file " + backends, "health-interval 1h",
			"[service two]", "listen 127.0.0.1:0", "backend " + twoBackend.Addr().String(), "health-interval 1h",
		}
	}
	writeFile(t, conf, lines(a)...)
	s := startCfg(t, parse(t, "--config", conf), zap.NewNop())
	one := fmt.Sprint(s.Service("one").Members())

	writeFile(t, backends, "not-an-address")
	writeFile(t, conf, lines(b)...)
	s.Reload()
	if got, want := fmt.Sprint(s.Service("two").Members()), fmt.Sprint([]netip.AddrPort{b.Addr()}); got != want {
		t.Fatalf("service two has %s after the reload, want %s", got, want)
	}
	if got := fmt.Sprint(s.Service("one").Members()); got != one {
		t.Fatalf("service one's bad file changed its backends from %s to %s", one, got)
	}
}
