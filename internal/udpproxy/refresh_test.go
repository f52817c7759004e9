package udpproxy

import (
	"net/netip"
	"testing"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
)

// TestIdleSessionFollowsReturningBackend: a backend that leaves the
// service and comes back (a DNS round without it) is a new Backend, whose
// counters /backends and the metrics read. A session open to it counts
// there as soon as the proxy is told of the change (Refresh, which the
// server calls from the service's Members hook), not only at its client's
// next datagram: the open session at once, and the replies the backend
// sends before the client sends again.
func TestIdleSessionFollowsReturningBackend(t *testing.T) {
	checkFDs(t)
	be, backend := quietBackend(t)
	spec := []balancer.Spec{{Addr: backend, Weight: 1}}
	var r *rig // set before the hook is first called
	hooks := balancer.Hooks{Members: func([]netip.AddrPort, map[netip.AddrPort]bool) { r.loops[0].Submit(r.proxies[0].Refresh) }}
	svc, err := balancer.NewService(balancer.ServiceConfig{Name: "u", Loops: 1}, spec, hooks, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	r = startServiceRig(t, svc, testConfig())
	// barrier returns once the loop has run what was submitted before.
	barrier := func() { r.do(0, func(*Proxy) {}) }

	c := newClient(t, "127.0.0.1")
	froms, _ := heldRequests(t, be, r.addr, []*client{c})
	svc.SetSource(balancer.SourceStatic, nil)
	svc.SetSource(balancer.SourceStatic, spec)
	barrier() // the Refresh the hook submitted has run
	if info := svc.Info(); len(info) != 1 || info[0].ActiveConnections != 1 {
		t.Errorf("/backends: %+v; want the returned backend with the 1 session open to it", info)
	}
	if _, err := be.WriteToUDPAddrPort([]byte("re:req-0"), froms[0]); err != nil {
		t.Fatal(err)
	}
	expectReplies(t, []*client{c}, r.addr)
	barrier() // the reply is counted on the loop once sent
	if got := svc.Backends()[0].Counts(); got.DatagramsDown != 1 || got.BytesDown != uint64(len("re:req-0")) {
		t.Errorf("the returned backend counts %d datagrams and %d bytes down, want the reply's 1 and %d",
			got.DatagramsDown, got.BytesDown, len("re:req-0"))
	}
}
