package server

import (
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestUDPStopServesSessions: a stop, with no successor, lets the UDP
// sessions open go on both ways until they are idle, as TCP lets its
// connections finish, and takes no new client: that one's datagram is
// dropped and counted under reason "draining", not left unread.
func TestUDPStopServesSessions(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	log, _, draining := onLog("draining connections")
	r := startCfg(t, parse(t, "--listen", "127.0.0.1:0", "--proto", "udp", "--backend", echo.Addr().String(),
		"--workers", "2", "--drain-timeout", "20s", "--admin-addr", "127.0.0.1:0"), log)
	const n = 4
	var clients []*net.UDPConn
	for i := range n {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 12, byte(1+i))}, net.UDPAddrFromAddrPort(r.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		udpRoundTrip(t, c, "before")
	}
	admin := r.AdminAddr()

	r.cancel()
	select {
	case <-draining:
	case <-time.After(10 * time.Second):
		t.Fatal("no drain within 10s")
	}
	for _, c := range clients {
		udpRoundTrip(t, c, "during the drain")
	}
	newcomer, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 12, 99)}, net.UDPAddrFromAddrPort(r.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer newcomer.Close()
	if _, err := newcomer.Write([]byte("new")); err != nil {
		t.Fatal(err)
	}
	var m map[string]float64
	waitFor(t, "the newcomer's datagram counted", func() bool {
		_, body := httpGet(t, "http://"+admin+"/metrics")
		m = parseMetrics(body)
		return m[`sluice_udp_drops_total{reason="draining",service="default"}`] == 1
	})
	if got := m[`sluice_udp_sessions_total{event="created",service="default"}`]; got != n {
		t.Errorf("%v sessions created, want the %d before the stop", got, n)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// TestUDPReturningBackendCounted: when a backend leaves a UDP service and
// comes back, GET /backends counts the session open to it at once, and the
// metrics the replies it sends, before the session's client sends again.
func TestUDPReturningBackendCounted(t *testing.T) {
	be := udpBackend(t)
	addr := be.LocalAddr().(*net.UDPAddr).AddrPort()
	r := start(t, "--proto", "udp", "--backend", addr.String(), "--admin-addr", "127.0.0.1:0", "--workers", "2")
	clients, froms, _ := heldUDP(t, be, r.Addr(), 1)
	sv := r.Service("default")
	if err := sv.SetSource(balancer.SourceStatic, nil); err != nil {
		t.Fatal(err)
	}
	if err := sv.SetSource(balancer.SourceStatic, []balancer.Spec{{Addr: addr, Weight: 1}}); err != nil {
		t.Fatal(err)
	}
	var body string
	waitFor(t, "the open session counted at the returned backend", func() bool {
		_, body = httpGet(t, "http://"+r.AdminAddr()+"/backends")
		var list []struct {
			Backends []balancer.BackendInfo `json:"backends"`
		}
		return json.Unmarshal([]byte(body), &list) == nil && len(list) == 1 && len(list[0].Backends) == 1 &&
			list[0].Backends[0].ActiveConnections == 1
	})
	if _, err := be.WriteToUDPAddrPort([]byte("re:req-0"), froms[0]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	clients[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if k, err := clients[0].Read(buf); err != nil || string(buf[:k]) != "re:req-0" {
		t.Fatalf("reply: %q, %v", buf[:k], err)
	}
	down := fmt.Sprintf(`sluice_udp_datagrams_total{backend="%s",direction="down",service="default"}`, addr)
	waitFor(t, "the reply counted at the returned backend", func() bool {
		_, body := httpGet(t, "http://"+r.AdminAddr()+"/metrics")
		return parseMetrics(body)[down] == 1
	})
}
