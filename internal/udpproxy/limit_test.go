package udpproxy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// startRigPorts is startRig with a port of its own for each loop's
// listening socket, so that a test chooses the loop a client reaches:
// ports[i] is loop i's.
func startRigPorts(tb testing.TB, backends []netip.AddrPort, cfg Config, limiter *SessionLimiter, nloops int) (r *rig, ports []netip.AddrPort) {
	tb.Helper()
	r = newRig(tb, backends, cfg, limiter, nloops, func() (int, netip.AddrPort, error) {
		fd, bound, err := Listen(lo4, cfg.SocketBuffer)
		if err == nil {
			ports = append(ports, bound)
		}
		return fd, bound, err
	})
	return r, ports
}

// TestSessionCapPerLoop: each loop owns its share of the session cap, so
// a loop whose share is full recycles its own sessions and a new client of
// another loop still gets one, however many sessions the first has seen
// come; a cap below the loop count gives every loop one.
func TestSessionCapPerLoop(t *testing.T) {
	for _, tc := range []struct {
		max, loops int
		evicted    uint64 // by loop 0
		sessions   int    // at the end, over the loops
	}{
		{max: 2, loops: 2, evicted: 1, sessions: 2},
		{max: 1, loops: 2, evicted: 1, sessions: 2}, // raised to one per loop
		{max: 3, loops: 2, evicted: 0, sessions: 3}, // loop 0's share is 2
	} {
		t.Run(fmt.Sprintf("max%d", tc.max), func(t *testing.T) {
			checkFDs(t)
			echo := testsrv.StartTB(t, testsrv.Echo, "udp")
			r, ports := startRigPorts(t, []netip.AddrPort{echo.Addr()}, testConfig(), NewSessionLimiter(tc.max, tc.loops), tc.loops)
			send := func(c *client, loop int) {
				t.Helper()
				if _, err := c.roundTrip(ports[loop], []byte("x")); err != nil {
					t.Fatalf("client %s on loop %d: %v", c.addr, loop, err)
				}
			}
			a, b, c := newClient(t, "127.0.11.1"), newClient(t, "127.0.11.2"), newClient(t, "127.0.11.3")
			send(a, 0)
			send(b, 0) // at loop 0's share of 1, a makes room
			send(c, 1) // loop 1 holds none: its share is free

			if e := r.proxies[0].Stats().SessionsEvicted.Load(); e != tc.evicted {
				t.Errorf("loop 0 evicted %d sessions, want %d", e, tc.evicted)
			}
			if d := r.sum(func(s *Stats) uint64 { return s.Drops(DropSessionLimit) }); d != 0 {
				t.Errorf("%d datagrams dropped at the session limit", d)
			}
			got := r.sessions()
			if _, ok := got[c.addr]; !ok || len(got) != tc.sessions {
				t.Errorf("sessions of %v; want c's among %d", got, tc.sessions)
			}
			if o := r.limiter.Open(); o != int64(tc.sessions) {
				t.Errorf("limiter holds %d slots, want %d", o, tc.sessions)
			}
		})
	}
}

// TestFailedOpenEvictsNothing: at the session cap, a new client whose
// session cannot be made (its backend's address cannot be connected to)
// costs no working session: the one that would have made room stays, and
// goes on serving its client.
func TestFailedOpenEvictsNothing(t *testing.T) {
	checkFDs(t)
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, testConfig(), NewSessionLimiter(1, 1), 1)
	st := r.proxies[0].Stats()
	a := newClient(t, "127.0.12.1")
	if _, err := a.roundTrip(r.addr, []byte("a")); err != nil {
		t.Fatal(err)
	}
	// The only backend now is one that a UDP socket without SO_BROADCAST
	// cannot connect to (EACCES).
	working := r.pool.Load()
	r.pool.Store(snapshot(t, 1, netip.MustParseAddrPort("255.255.255.255:9")))
	b := newClient(t, "127.0.12.2")
	if _, err := b.conn.WriteToUDPAddrPort([]byte("b"), r.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new client's datagram dropped", func() bool { return st.Drops(DropSocketFailed) == 1 })
	if e := st.SessionsEvicted.Load(); e != 0 {
		t.Errorf("%d sessions evicted for a session that could not be made", e)
	}
	if got := r.sessions(); len(got) != 1 || got[a.addr] != echo.Addr() {
		t.Errorf("sessions %v, want a's alone, on %s", got, echo.Addr())
	}
	if o := r.limiter.Open(); o != 1 {
		t.Errorf("limiter holds %d slots, want 1", o)
	}
	r.pool.Store(working)
	if got, err := a.roundTrip(r.addr, []byte("again")); err != nil || string(got) != "again" {
		t.Fatalf("a after the failed open: %q, %v", got, err)
	}
	if c := st.SessionsCreated.Load(); c != 1 {
		t.Errorf("%d sessions created, want a's first alone", c)
	}
}
