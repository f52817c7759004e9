package udpproxy

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestStopDrainKeepsSessions is a stop, with no successor: DrainAlone goes
// on reading the listening sockets, so the clients with a session go on
// talking to their backend, both ways, while a new client's datagram opens
// no session and is counted (DropDraining) rather than left unread in the
// socket's queue. The drain ends once the sessions have been idle for
// DrainIdle, and CloseAll frees the port.
func TestStopDrainKeepsSessions(t *testing.T) {
	checkFDs(t)
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	cfg := testConfig()
	r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, cfg, nil, 2)

	const n = 8
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = newClient(t, fmt.Sprintf("127.0.9.%d", i+1))
		if _, err := clients[i].roundTrip(r.addr, []byte("before")); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	drained := make([]<-chan struct{}, len(r.proxies))
	for i := range r.proxies {
		r.do(i, func(p *Proxy) { drained[i] = p.DrainAlone() })
	}
	// The sessions go on, both ways.
	for i, c := range clients {
		req := fmt.Sprintf("during-%d", i)
		if got, err := c.roundTrip(r.addr, []byte(req)); err != nil || string(got) != req {
			t.Fatalf("client %d during the drain: %q, %v; want %q", i, got, err, req)
		}
	}
	if up := r.traffic().DatagramsUp; up != 2*n {
		t.Errorf("%d datagrams sent on, want %d: each client's two", up, 2*n)
	}
	checkDraining(t, drained)

	// A new client is refused, and its datagram counted, not queued.
	newcomer := newClient(t, "127.0.9.99")
	if _, err := newcomer.conn.WriteToUDPAddrPort([]byte("new"), r.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the newcomer's datagram counted as a drop", func() bool {
		return r.sum(func(s *Stats) uint64 { return s.Drops(DropDraining) }) == 1
	})
	for i := range r.proxies {
		r.do(i, func(p *Proxy) {
			if q, _ := unix.IoctlGetInt(p.lnfd, unix.SIOCINQ); q != 0 {
				t.Errorf("proxy %d: %d bytes left unread in the listening socket", i, q)
			}
		})
	}
	if c := r.sum(func(s *Stats) uint64 { return s.SessionsCreated.Load() }); c != n {
		t.Errorf("%d sessions created, want %d: the draining proxies opened one for a new client", c, n)
	}

	// With nothing more to carry, the sessions end after DrainIdle.
	r.awaitDrained(t, drained, cfg.DrainIdle, n)
	// The port is free: a bind without SO_REUSEPORT succeeds.
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(r.addr))
	if err != nil {
		t.Fatalf("listen again on %s: %v", r.addr, err)
	}
	c.Close()
}
