package udpproxy

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// BenchmarkRoundTrip measures request/response datagrams from 32 client
// addresses to a UDP echo, directly and through one proxy loop with several
// batch settings. At depth=1 each client waits for its reply before sending
// again; at depth=8 it sends 8 requests and then reads 8 replies, so that
// datagrams queue at the proxy as under heavy load. round-trips/s counts
// replies; the proxy forwards two datagrams per round trip (dgrams/s).
// Clients, echo and proxy share the machine, so the wall-clock rates are
// for comparing the cases with each other; proxy-cpu-ns/dgram is the CPU
// time of the loop's own thread per datagram forwarded, which other load
// on the machine disturbs much less.
func BenchmarkRoundTrip(b *testing.B) {
	for _, depth := range []int{1, 8} {
		for _, bc := range []struct {
			name   string
			direct bool
			batch  int
		}{
			{name: "direct", direct: true},
			{name: "batch=1", batch: 1},
			{name: "batch=8", batch: 8},
			{name: "batch=32", batch: 32},
		} {
			b.Run(fmt.Sprintf("depth=%d/%s", depth, bc.name), func(b *testing.B) {
				echo := testsrv.StartTB(b, testsrv.Echo, "udp")
				if bc.direct {
					roundTrips(b, echo.Addr(), 32, depth, 64)
					return
				}
				cfg := DefaultConfig()
				cfg.Batch = bc.batch
				r := startRig(b, lo4, []netip.AddrPort{echo.Addr()}, cfg, nil, 1)
				cpu := r.threadCPU(0)
				roundTrips(b, r.addr, 32, depth, 64)
				cpu = r.threadCPU(0) - cpu
				t := r.traffic()
				n := t.DatagramsUp + t.DatagramsDown
				b.ReportMetric(float64(cpu)/float64(n), "proxy-cpu-ns/dgram")
				r.do(0, func(p *Proxy) {
					b.ReportMetric(float64(p.buf.moved)/float64(p.buf.calls), "dgrams/call")
				})
			})
		}
	}
}

// roundTrips runs about b.N request/response round trips of size bytes
// from conns clients, each with depth requests in flight, and reports the
// rates. A reply not received within a second counts as lost and the
// client goes on.
func roundTrips(b *testing.B, target netip.AddrPort, conns, depth, size int) {
	cs := make([]*client, conns)
	for i := range cs {
		cs[i] = newClient(b, fmt.Sprintf("127.0.5.%d", i+1))
		cs[i].conn.SetReadBuffer(1 << 20)
	}
	var next, lost, done atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := make([]byte, size)
			for next.Add(int64(depth)) <= int64(b.N) {
				sent := 0
				for range depth {
					if _, err := c.conn.WriteToUDPAddrPort(req, target); err == nil {
						sent++
					}
				}
				lost.Add(int64(depth - sent))
				c.conn.SetReadDeadline(time.Now().Add(time.Second))
				for k := range sent {
					if _, _, err := c.conn.ReadFromUDPAddrPort(c.buf); err != nil {
						lost.Add(int64(sent - k))
						break
					}
					done.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	b.StopTimer()
	ok := float64(done.Load())
	b.ReportMetric(ok/elapsed, "round-trips/s")
	b.ReportMetric(2*ok/elapsed, "dgrams/s")
	b.ReportMetric(float64(lost.Load()), "lost")
}

// threadCPU returns the CPU time, in nanoseconds, of loop i's thread.
func (r *rig) threadCPU(i int) int64 {
	var ts unix.Timespec
	r.do(i, func(*Proxy) { unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) })
	return ts.Nano()
}

// TestServeForBench runs a proxy as a process of its own for an external
// load generator (cmd/sluice-bench udp with --proxy-pid), so that the
// proxy's CPU time is measured apart from the generator's. It is skipped
// unless UDPPROXY_BENCH_BACKEND is set, and stops by itself after
// UDPPROXY_BENCH_FOR (default 20s). UDPPROXY_BENCH_LISTEN is the listen
// address (default 127.0.0.1:7300), UDPPROXY_BENCH_BATCH the batch, and
// UDPPROXY_BENCH_LOOPS the loop count.
func TestServeForBench(t *testing.T) {
	backend := os.Getenv("UDPPROXY_BENCH_BACKEND")
	if backend == "" {
		t.Skip("UDPPROXY_BENCH_BACKEND not set: this is a benchmark helper, not a test")
	}
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	cfg := DefaultConfig()
	cfg.Batch, _ = strconv.Atoi(env("UDPPROXY_BENCH_BATCH", "32"))
	loops, _ := strconv.Atoi(env("UDPPROXY_BENCH_LOOPS", "1"))
	d, err := time.ParseDuration(env("UDPPROXY_BENCH_FOR", "20s"))
	if err != nil || d > 5*time.Minute {
		t.Fatalf("UDPPROXY_BENCH_FOR: want a duration up to 5m")
	}
	listen := netip.MustParseAddrPort(env("UDPPROXY_BENCH_LISTEN", "127.0.0.1:7300"))
	be := netip.MustParseAddrPort(backend)
	if !listen.Addr().IsLoopback() || !be.Addr().IsLoopback() {
		t.Fatal("loopback addresses only")
	}
	r := startRig(t, listen, []netip.AddrPort{be}, cfg, nil, loops)
	fmt.Printf("pid %d listening on %s, batch %d, %d loops, for %s\n", os.Getpid(), r.addr, cfg.Batch, loops, d)
	time.Sleep(d)
	tr := r.traffic()
	for _, p := range r.proxies {
		for _, reason := range DropReasons {
			if n := p.Stats().Drops(reason); n > 0 {
				fmt.Printf("drops %s: %d\n", reason, n)
			}
		}
	}
	fmt.Printf("datagrams up %d down %d\n", tr.DatagramsUp, tr.DatagramsDown)
}

// BenchmarkBatchIO isolates what recvmmsg/sendmmsg save: datagrams of 64
// bytes go from one loopback UDP socket to another on the same goroutine,
// 32 at a time, sent and received one syscall per datagram (batch=1) or one
// syscall per 32 (batch=32). Nothing waits on the receiving socket, so no
// wake-up is counted: this is the syscall cost alone, which batching
// divides, next to the per-datagram network stack cost, which it cannot.
func BenchmarkBatchIO(b *testing.B) {
	for _, n := range []int{1, 32} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			rx, rxAddr, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 4<<20)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(rx)
			tx, _, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 4<<20)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(tx)
			out, in := newBatch(32), newBatch(32)
			name, nameLen := rawOf(rxAddr, unix.AF_INET)
			for i := range out.msgs {
				out.names[i] = name
				out.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&out.names[i]))
				out.msgs[i].Hdr.Namelen = nameLen
				out.iovs[i].SetLen(64)
			}
			var sendNs, recvNs time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; done += 32 {
				t0 := time.Now()
				for i := 0; i < 32; i += n {
					if _, err := out.send(tx, i, i+n); err != nil {
						b.Fatal(err)
					}
				}
				t1 := time.Now()
				for got := 0; got < 32; {
					k, err := in.recv(rx, 0, n, true)
					if err != nil {
						b.Fatal(err)
					}
					got += k
				}
				sendNs += t1.Sub(t0)
				recvNs += time.Since(t1)
			}
			b.ReportMetric(float64(sendNs.Nanoseconds())/float64(b.N), "send-ns/dgram")
			b.ReportMetric(float64(recvNs.Nanoseconds())/float64(b.N), "recv-ns/dgram")
		})
	}
}
