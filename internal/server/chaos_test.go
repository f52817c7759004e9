package server

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// flow is what went one way on a connection: its length and SHA-256.
type flow struct {
	n   int64
	sum [sha256.Size]byte
}

// writePause pauses a writer now and then, briefly: writers run near full
// speed, so that a reader's pause fills every buffer on the way, the
// proxy's 4 MiB send buffers included.
func writePause(rng *rand.Rand) {
	if rng.IntN(32) == 0 {
		time.Sleep(time.Duration(rng.IntN(1000)) * time.Microsecond)
	}
}

// readPause pauses a reader now and then: mostly not at all, sometimes up
// to 2 ms, and once in a while 20 ms, long enough for a writer at full
// speed to fill every buffer on the way.
func readPause(rng *rand.Rand) {
	switch k := rng.IntN(32); {
	case k == 0:
		time.Sleep(20 * time.Millisecond)
	case k < 4:
		time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
	}
}

// chunk returns a write or read size: mostly up to 16 KiB, sometimes up to
// 64 KiB, so that --splice auto meets both small and bulk reads.
func chunk(rng *rand.Rand) int {
	if rng.IntN(4) == 0 {
		return 1 + rng.IntN(64<<10)
	}
	return 1 + rng.IntN(16<<10)
}

// jitterWrite writes size bytes of the stream seed to c in chunks, with
// pauses, then half-closes c.
func jitterWrite(c *net.TCPConn, seed uint64, size int64, rng *rand.Rand) (flow, error) {
	src := io.LimitReader(newRandReader(seed), size)
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var f flow
	for {
		n, err := io.ReadFull(src, buf[:chunk(rng)])
		if n > 0 {
			h.Write(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				return f, fmt.Errorf("write after %d bytes: %w", f.n, err)
			}
			f.n += int64(n)
		}
		if err != nil { // the stream's end
			break
		}
		writePause(rng)
	}
	copy(f.sum[:], h.Sum(nil))
	return f, c.CloseWrite()
}

// jitterRead reads c to its end in chunks, with pauses.
func jitterRead(c *net.TCPConn, rng *rand.Rand) (flow, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var f flow
	for {
		n, err := c.Read(buf[:chunk(rng)])
		h.Write(buf[:n])
		f.n += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return f, fmt.Errorf("read after %d bytes: %w", f.n, err)
		}
		readPause(rng)
	}
	copy(f.sum[:], h.Sum(nil))
	return f, nil
}

// twoWay sends size bytes of stream seed on c while it reads c to its end,
// both with pauses, and returns what went each way. c has small buffers
// (though above loopback's MSS, or the sender waits for window probes), so
// that the pauses fill them and the proxy stalls and resumes each way, in
// every order. serial waits a moment, writes everything, and only then
// reads, as a server that answers before it takes the rest of a request:
// the bytes its peer sends meanwhile wait in the proxy, whose other
// direction must still flow.
func twoWay(c *net.TCPConn, seed uint64, size int64, serial bool) (sent, got flow, err error) {
	c.SetReadBuffer(128 << 10)
	c.SetWriteBuffer(128 << 10)
	c.SetDeadline(time.Now().Add(30 * time.Second)) // a stall the proxy never ends fails here
	wrng, rrng := rand.New(rand.NewPCG(seed, 1)), rand.New(rand.NewPCG(seed, 2))
	if serial {
		// A slow start: the peer's bytes fill the proxy first, then
		// the answer comes back through it.
		time.Sleep(50 * time.Millisecond)
		sent, err = jitterWrite(c, seed, size, wrng)
		if err != nil {
			return sent, got, err
		}
		got, err = jitterRead(c, rrng)
		return sent, got, err
	}
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sent, werr = jitterWrite(c, seed, size, wrng)
	}()
	got, err = jitterRead(c, rrng)
	<-done
	return sent, got, errors.Join(werr, err)
}

// TestTwoWayJitter moves data both ways at once on several connections,
// each side writing and reading in random chunks with random pauses over
// small socket buffers, then half-closing in its own time; some directions
// carry nothing but the FIN; half the backends answer in full before they
// read. Every byte must arrive in order, each way, in
// every --splice mode. It exercises muting, unmuting and the EPOLLOUT the
// mute takes away and puts back, in orders no directed test picks.
func TestTwoWayJitter(t *testing.T) {
	const conns = 8
	// At most one stream each way is empty: the clients are told apart
	// by what they send. Most are larger than the proxy's socket buffers
	// can take (tcp_wmem's 4 MiB), so that a peer that does not read
	// stalls the proxy.
	clientSizes := []int64{8 << 20, 0, 6 << 20, 100, 8 << 20, 1, 6 << 20, 200 << 10}
	backendSizes := []int64{8 << 20, 12 << 20, 0, 8 << 20, 1, 6 << 20, 100, 12 << 20}
	for _, mode := range []string{"never", "always", "auto"} {
		t.Run(mode, func(t *testing.T) {
			type result struct {
				sent, got flow
				err       error
			}
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			backs := make(chan result, conns)
			var wg sync.WaitGroup
			t.Cleanup(func() { ln.Close(); wg.Wait() })
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range conns {
					c, err := ln.AcceptTCP()
					if err != nil {
						backs <- result{err: err}
						return
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer c.Close()
						seed := uint64(1000 + i)
						var r result
						r.sent, r.got, r.err = twoWay(c, seed, backendSizes[i], i%2 == 1)
						backs <- r
					}()
				}
			}()
			r := start(t, "--backend", ln.Addr().String(), "--splice", mode, "--workers", "2", "--health-interval", "1h")

			clients := make(chan result, conns)
			for i := range conns {
				c := r.dial(t)
				go func() {
					defer c.Close()
					seed := uint64(i)
					var r result
					r.sent, r.got, r.err = twoWay(c, seed, clientSizes[i], false)
					clients <- r
				}()
			}
			// Pair each client with the backend connection that received
			// what it sent: every stream's content is its own.
			bySent := map[flow]result{}
			for range conns {
				c := <-clients
				if c.err != nil {
					t.Fatalf("client: %v", c.err)
				}
				bySent[c.sent] = c
			}
			for range conns {
				b := <-backs
				if b.err != nil {
					t.Fatalf("backend: %v", b.err)
				}
				c, ok := bySent[b.got]
				if !ok {
					t.Fatalf("the backend received %d bytes that no client sent as such", b.got.n)
				}
				delete(bySent, b.got)
				if c.got != b.sent {
					t.Errorf("a client received %d bytes (%x…), its backend sent %d (%x…)", c.got.n, c.got.sum[:4], b.sent.n, b.sent.sum[:4])
				}
			}
		})
	}
}
