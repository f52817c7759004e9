package server

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// BenchmarkRoundTrip measures one request/response through the balancer on
// loopback (client → sluice → echo → sluice → client), per splice mode and
// message size: the data path's cost per event pair, to compare splicing
// with read/write through the loop's buffer. The client and the echo share
// the machine, so compare modes within one run, never across machines.
func BenchmarkRoundTrip(b *testing.B) {
	for _, mode := range []string{"auto", "always", "never"} {
		for _, size := range []int{64, 4 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) {
				echo := testsrv.StartTB(b, testsrv.Echo, "tcp")
				r := start(b, "--backend", echo.Addr().String(), "--splice", mode, "--health-interval", "1h", "--workers", "1")
				c := r.dial(b)
				msg := make([]byte, size)
				buf := make([]byte, size)
				b.SetBytes(int64(2 * size))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write(msg); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkConnect measures a new proxied connection per round trip.
func BenchmarkConnect(b *testing.B) {
	echo := testsrv.StartTB(b, testsrv.Echo, "tcp")
	r := start(b, "--backend", echo.Addr().String(), "--health-interval", "1h", "--workers", "1")
	buf := make([]byte, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", r.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
