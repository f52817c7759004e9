package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// heldUDP is a slow UDP backend, answered for by the test, and its
// clients: each client has sent a request that the backend holds, while it
// keeps the client's session active with a "pending" datagram every
// 100ms, as a backend reporting progress would. The sessions are thus
// active whenever a drain begins, however long an upgrade's start takes.
type heldUDP struct {
	be      *net.UDPConn
	clients []*net.UDPConn
	froms   []netip.AddrPort // where the backend got request i from: its session's socket
	stop    chan struct{}
	done    chan struct{}
}

// holdUDP sends "req-i" from n clients to the service at svc and holds the
// requests at be, each in flight until answer.
func holdUDP(tb testing.TB, be *net.UDPConn, svc string, n int) *heldUDP {
	tb.Helper()
	h := &heldUDP{be: be, froms: make([]netip.AddrPort, n), stop: make(chan struct{}), done: make(chan struct{})}
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(svc))
	for i := range n {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 11, byte(1+i))}, to)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		h.clients = append(h.clients, c)
		if _, err := c.Write(fmt.Appendf(nil, "req-%d", i)); err != nil {
			tb.Fatal(err)
		}
	}
	froms, reqs := testsrv.ReadUDP(tb, be, n, 10*time.Second)
	for j, req := range reqs {
		var i int
		if _, err := fmt.Sscanf(req, "req-%d", &i); err != nil || i < 0 || i >= n {
			tb.Fatalf("backend got %q", req)
		}
		h.froms[i] = froms[j]
	}
	go h.keep()
	tb.Cleanup(h.release)
	return h
}

// keep sends "pending" on every session each 100ms until release, for
// at most 30s.
func (h *heldUDP) keep() {
	defer close(h.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for range 300 {
		select {
		case <-h.stop:
			return
		case <-tick.C:
		}
		for _, from := range h.froms {
			h.be.WriteToUDPAddrPort([]byte("pending"), from)
		}
	}
}

// release stops the "pending" datagrams; idempotent.
func (h *heldUDP) release() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

// answer answers every held request, now, and checks that each client
// receives its answer from the service address svc.
func (h *heldUDP) answer(tb testing.TB, svc string) {
	tb.Helper()
	h.release()
	for i, from := range h.froms {
		if _, err := h.be.WriteToUDPAddrPort(fmt.Appendf(nil, "re:req-%d", i), from); err != nil {
			tb.Fatal(err)
		}
	}
	for i, c := range h.clients {
		want := fmt.Sprintf("re:req-%d", i)
		got, err := readSkipping(c, "pending")
		if err != nil || got != want {
			tb.Fatalf("client %d: the answer sent after the drain began: %q, %v; want %q", i, got, err, want)
		}
	}
}

// readSkipping reads c (a connected socket: only the service's datagrams
// reach it) until a datagram other than skip comes, for up to 5s.
func readSkipping(c *net.UDPConn, skip string) (string, error) {
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		k, err := c.Read(buf)
		if err != nil {
			return "", err
		}
		if !bytes.Equal(buf[:k], []byte(skip)) {
			return string(buf[:k]), nil
		}
	}
}

// startHeldUDP starts sluice with two workers and a UDP service toward a
// backend the test answers for, and holds n clients' requests in flight.
func startHeldUDP(tb testing.TB, n int) (*proc, *heldUDP, *net.UDPConn, string) {
	tb.Helper()
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { be.Close() })
	p := startCopy(tb, "--proto", "udp", "--listen", "127.0.0.1:0", "--backend", be.LocalAddr().String(), "--workers", "2", "--drain-timeout", "20s")
	addr, _ := p.started(tb)
	return p, holdUDP(tb, be, addr, n), be, addr
}

// answerInDrain waits until p (sent a stop or an upgrade) drains, answers
// the held requests and checks that they reach their clients, and returns
// when the drain began.
func (h *heldUDP) answerInDrain(tb testing.TB, p *proc, addr string) time.Time {
	tb.Helper()
	drain := p.waitLog(tb, "draining connections", "sluice stopped")
	begin := time.Now()
	h.answer(tb, addr)
	if n := len(h.clients); drain["msg"] != "draining connections" || drain["udp_sessions"] != float64(n) {
		tb.Errorf("drain: %v; want it draining %d UDP sessions", drain, n)
	}
	return begin
}

// waitDrained waits for p to exit 0 after its drain began at begin: soon
// after its sessions went idle, not at --drain-timeout, with none cut.
func waitDrained(tb testing.TB, p *proc, begin time.Time) {
	tb.Helper()
	stopped := p.waitLog(tb, "sluice stopped")
	if st, err := p.cmd.Wait(); err != nil || !st.Success() {
		tb.Fatalf("sluice: %v %v", st, err)
	}
	if el := time.Since(begin); el > 10*time.Second {
		tb.Errorf("the drain took %v: the idle sessions waited for --drain-timeout", el)
	}
	if stopped["udp_sessions_ended_at_drain_timeout"] != float64(0) {
		tb.Errorf("stop line %v: sessions were cut", stopped)
	}
}

// roundTrips sends "prefix-i" from client i; the backend be answers each
// request at once with "re:" and the request, and each client must receive
// its answer. It returns where the backend got the requests from.
func roundTrips(tb testing.TB, be *net.UDPConn, clients []*net.UDPConn, prefix string) []netip.AddrPort {
	tb.Helper()
	for i, c := range clients {
		if _, err := c.Write(fmt.Appendf(nil, "%s-%d", prefix, i)); err != nil {
			tb.Fatal(err)
		}
	}
	var froms []netip.AddrPort
	buf := make([]byte, 2048)
	be.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range clients {
		k, from, err := be.ReadFromUDPAddrPort(buf)
		if err != nil {
			tb.Fatalf("the backend got %d of the %d requests %s-*: %v", len(froms), len(clients), prefix, err)
		}
		froms = append(froms, from)
		be.WriteToUDPAddrPort(append([]byte("re:"), buf[:k]...), from)
	}
	for i, c := range clients {
		if got, err := readSkipping(c, "pending"); err != nil || got != fmt.Sprintf("re:%s-%d", prefix, i) {
			tb.Fatalf("client %d: %q, %v; want the answer to %s-%d", i, got, err, prefix, i)
		}
	}
	return froms
}

// TestUpgradeKeepsUDPReplies: the answers a slow UDP backend sends after
// an upgrade began reach their clients through the old process, whose
// sessions outlive its listening; the clients' next requests are the new
// process's, and the old one exits once its sessions are idle, long
// before --drain-timeout.
func TestUpgradeKeepsUDPReplies(t *testing.T) {
	p, h, be, addr := startHeldUDP(t, 8)
	if err := p.cmd.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	child := int(p.waitLog(t, "new process serves")["pid"].(float64))
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	begin := h.answerInDrain(t, p, addr)

	// The next requests reach the backend from new sessions: the new
	// process's.
	for _, from := range roundTrips(t, be, h.clients, "next") {
		if slices.Contains(h.froms, from) {
			t.Errorf("a request after the upgrade came from the old process's session %v", from)
		}
	}
	waitDrained(t, p, begin)
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}

// TestStopKeepsUDPReplies: after SIGTERM, the answers a slow UDP backend
// sends still reach their clients, and the process exits 0 once its
// sessions are idle, long before --drain-timeout, with none cut.
func TestStopKeepsUDPReplies(t *testing.T) {
	p, h, _, addr := startHeldUDP(t, 8)
	if err := p.cmd.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitDrained(t, p, h.answerInDrain(t, p, addr))
}

// TestUpgradeToFewerWorkersReadsEveryUDPSocket: a new process with fewer
// workers than the old one reads every UDP socket handed over. The old
// process, draining, still holds them all for its sessions' replies, so a
// socket the new one closed would stay in the kernel's SO_REUSEPORT group
// unread, and the datagrams hashed to it would be lost until the old
// process exits.
func TestUpgradeToFewerWorkersReadsEveryUDPSocket(t *testing.T) {
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	write := func(workers int) {
		// Port 0: the new process takes the service's sockets over by
		// its name.
		body := fmt.Sprintf("workers %d\ndrain-timeout 20s\n[service dns]\nproto udp\nlisten 127.0.0.1:0\nbackend %s\n", workers, be.LocalAddr())
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(2)
	p := startCopy(t, "--config", conf)
	addr, _ := p.started(t)
	h := holdUDP(t, be, addr, 4) // keeps the old process draining

	write(1)
	if err := p.cmd.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	child := int(p.waitLog(t, "new process serves")["pid"].(float64))
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	if m := p.waitLog(t, "draining connections", "sluice stopped"); m["msg"] != "draining connections" {
		t.Fatalf("the old process stopped at once: %v", m)
	}
	// New clients, hashed by the kernel over both sockets (all 16 to one
	// of them: a chance of 2^-15).
	var clients []*net.UDPConn
	for i := range 16 {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 12, byte(1+i))}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	roundTrips(t, be, clients, "new")
	h.answer(t, addr)
	if st, err := p.cmd.Wait(); err != nil || !st.Success() {
		t.Fatalf("old process: %v %v", st, err)
	}
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}
