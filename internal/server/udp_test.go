package server

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestUDPService runs a UDP service through the server: replies come back
// intact from the service address, clients stick to a backend, the metrics
// count the datagrams, and a UDP send-expect check takes a dead backend
// out.
func TestUDPService(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "udp")
	b := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := start(t, "--proto", "udp", "--backend", a.Addr().String(), "--backend", b.Addr().String(), "--admin-addr", "127.0.0.1:0",
		"--health-check", "send-expect", "--health-send", "ping", "--health-expect", "ping",
		"--health-interval", "50ms", "--health-timeout", "200ms", "--health-fall", "2", "--health-rise", "1")
	const clients, each = 8, 20
	for i := 0; i < clients; i++ {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 4, byte(1+i))}, net.UDPAddrFromAddrPort(r.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 2048)
		for j := 0; j < each; j++ {
			msg := fmt.Sprintf("client %d datagram %d", i, j)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			n, from, err := c.ReadFromUDP(buf)
			if err != nil || string(buf[:n]) != msg {
				t.Fatalf("client %d: reply %q, %v", i, buf[:n], err)
			}
			if from.AddrPort() != r.Addr() {
				t.Fatalf("reply from %v, want the service address %v", from, r.Addr())
			}
		}
	}
	// A reply is counted just after it is sent, so the client can see it
	// first: wait for the count rather than read it once.
	var m map[string]float64
	var up, down float64
	waitFor(t, "datagram counts", func() bool {
		_, body := httpGet(t, "http://"+r.AdminAddr()+"/metrics")
		m = parseMetrics(body)
		up, down = 0, 0
		for _, s := range []*testsrv.Server{a, b} {
			up += m[fmt.Sprintf(`sluice_udp_datagrams_total{backend="%s",direction="up",service="default"}`, s.Addr())]
			down += m[fmt.Sprintf(`sluice_udp_datagrams_total{backend="%s",direction="down",service="default"}`, s.Addr())]
		}
		return up >= clients*each && down >= clients*each
	})
	if up != clients*each || down != clients*each {
		t.Fatalf("metrics count %v up and %v down, sent %d", up, down, clients*each)
	}
	if got := m[`sluice_udp_sessions_total{event="created",service="default"}`]; got != clients {
		t.Fatalf("sessions created %v, want %d", got, clients)
	}
	var active int64
	for _, bi := range r.Service("default").Info() {
		active += bi.ActiveConnections
	}
	if active != clients {
		t.Fatalf("backends report %d active sessions, want %d", active, clients)
	}
	a.Close()
	waitFor(t, "dead UDP backend marked down", func() bool { return backendState(t, r, a.Addr()) == "down" })
}

// activeOn returns the open sessions (or connections) the default service
// counts on each backend.
func activeOn(r *running) map[string]int64 {
	out := map[string]int64{}
	for _, bi := range r.Service("default").Info() {
		out[bi.Address] = bi.ActiveConnections
	}
	return out
}

// udpRoundTrip sends msg on c and checks that it comes back.
func udpRoundTrip(tb testing.TB, c *net.UDPConn, msg string) {
	tb.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != msg {
		tb.Fatalf("reply %q, %v; want %q", buf[:n], err, msg)
	}
}

// sessionBackend returns the one backend with an open session.
func sessionBackend(tb testing.TB, r *running) string {
	tb.Helper()
	var on []string
	for addr, n := range activeOn(r) {
		for range n {
			on = append(on, addr)
		}
	}
	if len(on) != 1 {
		tb.Fatalf("sessions on %v, want one", on)
	}
	return on[0]
}

// TestUDPSessionKeepsDrainedBackend: a UDP session keeps its backend while
// that backend is drained (open sessions finish, as connections do); only
// new clients go elsewhere.
func TestUDPSessionKeepsDrainedBackend(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "udp")
	b := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := start(t, "--proto", "udp", "--backend", a.Addr().String(), "--backend", b.Addr().String(), "--workers", "1")
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	udpRoundTrip(t, c, "one")
	on := sessionBackend(t, r)
	if err := r.Service("default").SetDrained(netip.MustParseAddrPort(on), true); err != nil {
		t.Fatal(err)
	}
	udpRoundTrip(t, c, "two")
	if now := sessionBackend(t, r); now != on {
		t.Fatalf("the session moved from drained %s to %s", on, now)
	}
}

// TestUDPCloseOnDown: with --close-on-down, a UDP backend marked down has
// its sessions ended, and the client's next datagram is answered by
// another backend. (This used to crash the process: the hook looked for
// TCP proxies.)
func TestUDPCloseOnDown(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "udp")
	b := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := start(t, "--proto", "udp", "--backend", a.Addr().String(), "--backend", b.Addr().String(), "--workers", "2",
		"--close-on-down", "--health-check", "send-expect", "--health-send", "ping", "--health-expect", "ping",
		"--health-interval", "50ms", "--health-timeout", "200ms", "--health-fall", "1", "--health-rise", "1")
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	udpRoundTrip(t, c, "one")
	on := netip.MustParseAddrPort(sessionBackend(t, r))
	for _, s := range []*testsrv.Server{a, b} {
		if s.Addr() == on {
			s.Close()
		}
	}
	waitFor(t, "the dead backend's session ended", func() bool {
		return backendState(t, r, on) == "down" && activeOn(r)[on.String()] == 0
	})
	udpRoundTrip(t, c, "two")
	if now := sessionBackend(t, r); now == on.String() {
		t.Fatalf("the session is still on down %s", on)
	}
}

// TestUDPBackendsCounted: GET /backends counts a UDP service's sessions as
// its backends' connections, as it counts a TCP service's connections:
// each client's session once (its later datagrams are no new
// connection), on the backend it went to, on every loop; the open ones
// are active.
func TestUDPBackendsCounted(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "udp")
	b := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := start(t, "--proto", "udp", "--backend", a.Addr().String(), "--backend", b.Addr().String(),
		"--admin-addr", "127.0.0.1:0", "--workers", "2")
	const clients = 8
	for i := range clients {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 7, byte(1+i))}, net.UDPAddrFromAddrPort(r.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		udpRoundTrip(t, c, "one")
		udpRoundTrip(t, c, "two")
	}
	_, body := httpGet(t, "http://"+r.AdminAddr()+"/backends")
	var list []struct {
		Backends []balancer.BackendInfo `json:"backends"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil || len(list) != 1 {
		t.Fatalf("backends JSON: %v\n%s", err, body)
	}
	var total uint64
	var active int64
	for _, bi := range list[0].Backends {
		if bi.Connections != uint64(bi.ActiveConnections) || bi.ConnectErrors != 0 {
			t.Errorf("%s: %d connections, %d active, %d connect errors; want as many connections as active sessions, no error",
				bi.Address, bi.Connections, bi.ActiveConnections, bi.ConnectErrors)
		}
		total += bi.Connections
		active += bi.ActiveConnections
	}
	if total != clients || active != clients {
		t.Fatalf("/backends counts %d connections and %d active for %d UDP clients\n%s", total, active, clients, body)
	}
}

// TestUDPMetricsPruned: a backend that leaves a UDP service takes its
// per-backend series with it, as a TCP backend does, so a churning backend
// set does not grow /metrics (or the process) forever; the backend that
// stays counts the datagrams of the sessions moved to it.
func TestUDPMetricsPruned(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "udp")
	b := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := start(t, "--proto", "udp", "--backend", a.Addr().String(), "--admin-addr", "127.0.0.1:0", "--workers", "2")
	const clients = 4
	var cs []*net.UDPConn
	for i := range clients {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 8, byte(1+i))}, net.UDPAddrFromAddrPort(r.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
		udpRoundTrip(t, c, "to a")
	}
	series := func(m map[string]float64, s *testsrv.Server) (n int) {
		for k := range m {
			if strings.HasPrefix(k, "sluice_udp_") && strings.Contains(k, `backend="`+s.Addr().String()+`"`) {
				n++
			}
		}
		return n
	}
	metrics := func() map[string]float64 {
		_, body := httpGet(t, "http://"+r.AdminAddr()+"/metrics")
		return parseMetrics(body)
	}
	if n := series(metrics(), a); n != 4 {
		t.Fatalf("%d series of %s while it serves, want 4 (datagrams and bytes, up and down)", n, a.Addr())
	}

	if err := r.Service("default").SetSource(balancer.SourceStatic, []balancer.Spec{{Addr: b.Addr(), Weight: 1}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		udpRoundTrip(t, c, "to b")
	}
	var m map[string]float64
	down := fmt.Sprintf(`sluice_udp_datagrams_total{backend="%s",direction="down",service="default"}`, b.Addr())
	waitFor(t, "the replies from b counted", func() bool { m = metrics(); return m[down] == clients })
	if n := series(m, a); n != 0 {
		t.Errorf("%d series of %s after it left the service, want none", n, a.Addr())
	}
	up := fmt.Sprintf(`sluice_udp_datagrams_total{backend="%s",direction="up",service="default"}`, b.Addr())
	if m[up] != clients || m[`sluice_udp_sessions_total{event="remapped",service="default"}`] != clients {
		t.Errorf("%v datagrams up to %s and %v sessions remapped, want %d each", m[up], b.Addr(),
			m[`sluice_udp_sessions_total{event="remapped",service="default"}`], clients)
	}
}

// heldUDP starts n clients that each send "req-i" to the service at svc,
// and reads every request at the backend be, unanswered: it returns the
// clients and, in the order they came, where the requests came from (the
// sessions' sockets) and what they were. The clients close at the end of
// the test.
func heldUDP(tb testing.TB, be *net.UDPConn, svc netip.AddrPort, n int) (clients []*net.UDPConn, froms []netip.AddrPort, reqs []string) {
	tb.Helper()
	for i := range n {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 10, byte(1+i))}, net.UDPAddrFromAddrPort(svc))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		clients = append(clients, c)
		if _, err := c.Write(fmt.Appendf(nil, "req-%d", i)); err != nil {
			tb.Fatal(err)
		}
	}
	froms, reqs = testsrv.ReadUDP(tb, be, n, 5*time.Second)
	return clients, froms, reqs
}

// udpBackend is a loopback UDP socket for a test to answer as a backend.
func udpBackend(tb testing.TB) *net.UDPConn {
	tb.Helper()
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { be.Close() })
	return be
}

// onLog returns a logger that records its lines in logs and closes the
// returned channel at the first line with message msg.
func onLog(msg string) (*zap.Logger, *observer.ObservedLogs, <-chan struct{}) {
	core, logs := observer.New(zapcore.InfoLevel)
	seen := make(chan struct{})
	var once sync.Once
	return zap.New(core, zap.Hooks(func(e zapcore.Entry) error {
		if e.Message == msg {
			once.Do(func() { close(seen) })
		}
		return nil
	})), logs, seen
}

// TestUDPStopKeepsReplies: a stop does not cut the UDP replies in flight.
// A slow backend's answers sent after the drain began still reach their
// clients from the service address; the drain ends when the sessions are
// idle, well before --drain-timeout, with nothing cut, and the process
// then holds no fd more than before the balancer started.
func TestUDPStopKeepsReplies(t *testing.T) {
	be := udpBackend(t) // opened first: the netpoller's fds are not counted
	before := openFDs(t)
	log, logs, draining := onLog("draining connections")
	r := startCfg(t, parse(t, "--listen", "127.0.0.1:0", "--proto", "udp", "--backend", be.LocalAddr().String(),
		"--workers", "2", "--drain-timeout", "20s"), log)
	const n = 8
	clients, froms, reqs := heldUDP(t, be, r.Addr(), n)

	r.cancel()
	begin := time.Now()
	select {
	case <-draining:
	case err := <-r.done:
		close(r.done)
		t.Errorf("Run returned (%v) without draining any UDP session", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no drain within 10s")
	}
	for i, from := range froms {
		if _, err := be.WriteToUDPAddrPort([]byte("re:"+reqs[i]), from); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2048)
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := c.Read(buf)
		if want := fmt.Sprintf("re:req-%d", i); err != nil || string(buf[:k]) != want {
			t.Fatalf("client %d: reply sent after the stop began: %q, %v; want %q", i, buf[:k], err, want)
		}
		c.Close()
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	if el := time.Since(begin); el > 10*time.Second {
		t.Errorf("the drain took %v: the idle sessions waited for --drain-timeout", el)
	}
	if l := logs.FilterMessage("draining connections").All(); len(l) != 1 || l[0].ContextMap()["udp_sessions"] != int64(n) {
		t.Errorf("drain lines %v, want one with udp_sessions %d", l, n)
	}
	stopped := logs.FilterMessage("sluice stopped").All()
	if len(stopped) != 1 || stopped[0].ContextMap()["udp_sessions_ended_at_drain_timeout"] != int64(0) {
		t.Errorf("stop lines %v, want one with udp_sessions_ended_at_drain_timeout 0", stopped)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open fds: %d before the balancer, %d after it stopped", before, after)
	}
}

// TestUDPDrainTimeout: a UDP session still busy at --drain-timeout (its
// backend streams to it) is ended then, and counted apart from the TCP
// connections reset.
func TestUDPDrainTimeout(t *testing.T) {
	be := udpBackend(t)
	core, logs := observer.New(zapcore.InfoLevel)
	r := startCfg(t, parse(t, "--listen", "127.0.0.1:0", "--proto", "udp", "--backend", be.LocalAddr().String(),
		"--drain-timeout", "300ms"), zap.New(core))
	_, froms, _ := heldUDP(t, be, r.Addr(), 1)
	// The backend streams to the session, a datagram every 20ms, so that
	// it is never idle for the drain's 2s (at most 10s of it).
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for range 500 {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			be.WriteToUDPAddrPort([]byte("tick"), froms[0])
		}
	}()
	err := r.stop(t)
	close(stop)
	<-done
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if l := logs.FilterMessage("drain timeout, resetting open connections").All(); len(l) != 1 || l[0].ContextMap()["udp_sessions"] != int64(1) {
		t.Errorf("drain timeout lines %v, want one with udp_sessions 1", l)
	}
	stopped := logs.FilterMessage("sluice stopped").All()
	if len(stopped) != 1 || stopped[0].ContextMap()["udp_sessions_ended_at_drain_timeout"] != int64(1) ||
		stopped[0].ContextMap()["reset_at_drain_timeout"] != int64(0) {
		t.Errorf("stop lines %v, want one with udp_sessions_ended_at_drain_timeout 1 and reset_at_drain_timeout 0", stopped)
	}
}

// TestUDPDrainClosesForOlderSuccessor: when the successor of an upgrade is
// of a release that may not read every UDP socket handed over (its Ready
// frame says version 1), the drain closes the UDP sockets and sessions at
// once, as before sessions outlived a stop: kept open and unread, the
// sockets would take their share of new clients' datagrams.
func TestUDPDrainClosesForOlderSuccessor(t *testing.T) {
	be := udpBackend(t)
	log, logs, _ := onLog("draining connections")
	r := startCfg(t, parse(t, "--listen", "127.0.0.1:0", "--proto", "udp", "--backend", be.LocalAddr().String(),
		"--workers", "2", "--drain-timeout", "20s"), log)
	heldUDP(t, be, r.Addr(), 4)
	r.closeUDPAtDrain = true // as Upgrade sets it for a version-1 successor; Run reads it after the stop
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if l := logs.FilterMessage("draining connections").All(); len(l) != 0 {
		t.Fatalf("the drain waited for UDP sessions: %v", l[0].ContextMap())
	}
}
