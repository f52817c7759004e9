package udpproxy

import (
	"net/netip"
	"testing"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestFailedOpenEvictsNothing: at the session cap, a new client whose
// session cannot be made (its backend's address cannot be connected to)
// costs no working session: the one that would have made room stays, and
// goes on serving its client.
func TestFailedOpenEvictsNothing(t *testing.T) {
	checkFDs(t)
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, testConfig(), NewSessionLimiter(1), 1)
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
