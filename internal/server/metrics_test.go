package server

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A backend that leaves its service takes its check-duration series with
// it; the others and the other services' stay.
func TestCheckSeriesPrune(t *testing.T) {
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "d"}, []string{"service", "backend", "result"})
	a, b := netip.MustParseAddrPort("198.18.0.1:1"), netip.MustParseAddrPort("198.18.0.2:1")
	one := &checkSeries{vec: vec, service: "one", seen: map[netip.AddrPort]bool{}}
	two := &checkSeries{vec: vec, service: "two", seen: map[netip.AddrPort]bool{}}
	one.observe(a, "ok", time.Millisecond)
	one.observe(a, "fail", time.Millisecond)
	one.observe(b, "ok", time.Millisecond)
	two.observe(a, "ok", time.Millisecond)
	count := func() int {
		ch := make(chan prometheus.Metric, 16)
		vec.Collect(ch)
		close(ch)
		n := 0
		for range ch {
			n++
		}
		return n
	}
	if n := count(); n != 4 {
		t.Fatalf("%d series before, want 4", n)
	}
	one.prune([]netip.AddrPort{b})
	if n := count(); n != 2 {
		t.Fatalf("%d series after service one dropped %s, want 2 (one's %s, two's %s)", n, a, b, a)
	}
	one.prune([]netip.AddrPort{b})
	if n := count(); n != 2 {
		t.Fatalf("a second prune changed the count to %d", n)
	}
	// A check of a that ends after a left does not bring its series back;
	// once a is a member again, it counts.
	one.observe(a, "ok", time.Millisecond)
	if n := count(); n != 2 {
		t.Fatalf("a late check of a removed backend made %d series, want 2", n)
	}
	one.prune([]netip.AddrPort{a, b})
	one.observe(a, "ok", time.Millisecond)
	if n := count(); n != 3 {
		t.Fatalf("%d series after a came back, want 3", n)
	}
}
