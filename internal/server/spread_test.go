package server

import (
	"io"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestLoopsEvenOut: long-lived connections end up within two of even over
// the loops, whatever the kernel's SO_REUSEPORT hash did with them, and the
// ones handed from a busier loop to a less busy one are counted in
// sluice_connections_handed_over_total. With 100 connections the kernel's
// spread alone gives no hand-over only about once in 10^5 runs.
func TestLoopsEvenOut(t *testing.T) {
	const n = 100
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--workers", "2",
		"--admin-addr", "127.0.0.1:0", "--health-interval", "1h", "--drain-timeout", "10s")
	r := startCfg(t, cfg, zap.NewNop())
	buf := make([]byte, 4)
	for range n {
		c := r.dial(t)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		// Echoed: the connection runs on its loop before the next is
		// opened, so each accept sees the loops' exact counts.
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	var per []int
	for i, p := range r.services[0].proxies {
		got := make(chan int)
		r.loops[i].Submit(func() { got <- p.Conns() })
		per = append(per, <-got)
	}
	if per[0]+per[1] != n || slices.Max(per)-slices.Min(per) > 2 {
		t.Errorf("connections per loop %v, want %d within 2 of even", per, n)
	}
	_, body := httpGet(t, "http://"+r.AdminAddr()+"/metrics")
	if handed := parseMetrics(body)[`sluice_connections_handed_over_total{service="default"}`]; handed == 0 {
		t.Errorf("sluice_connections_handed_over_total is 0 or missing; connections per loop %v", per)
	}
}
