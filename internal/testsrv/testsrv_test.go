package testsrv

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// dialTB connects to s over TCP and closes the connection at cleanup.
func dialTB(tb testing.TB, s *Server) *net.TCPConn {
	tb.Helper()
	c, err := net.DialTCP(s.Network(), nil, net.TCPAddrFromAddrPort(s.Addr()))
	if err != nil {
		tb.Fatalf("dial %s: %v", s.Addr(), err)
	}
	tb.Cleanup(func() { c.Close() })
	// No test here should take long; a stuck peer fails instead of hanging.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// echoAll writes payload to c from a second goroutine, shuts down the write
// side, and returns everything read from c up to EOF.
func echoAll(tb testing.TB, c *net.TCPConn, payload []byte) []byte {
	tb.Helper()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		tb.Fatalf("write: %v", err)
	}
	if rerr != nil {
		tb.Fatalf("read echo: %v", rerr)
	}
	return got
}

func TestEchoByteExact(t *testing.T) {
	for _, network := range []string{"tcp", "tcp6"} {
		for _, size := range []int{0, 1, 100, smallBuf - 1, smallBuf, smallBuf + 1, 3<<20 + 17} {
			t.Run(network+"/"+itoa(size), func(t *testing.T) {
				if network == "tcp6" && !hasIPv6Loopback() {
					t.Skip("no ::1 on this host")
				}
				s := StartTB(t, Echo, network)
				c := dialTB(t, s)
				want := randomBytes(size, uint64(size))
				got := echoAll(t, c, want)
				if !bytes.Equal(got, want) {
					t.Fatalf("echo of %d bytes returned %d bytes, equal prefix %d", size, len(got), commonPrefix(got, want))
				}
				s.Close()
				st := s.Stats()
				if st.Accepted != 1 || st.BytesIn != uint64(size) || st.BytesOut != uint64(size) || st.Errors != 0 || st.Active != 0 {
					t.Fatalf("stats after close: %+v, want 1 accepted, %d bytes each way, no errors", st, size)
				}
			})
		}
	}
}

// TestEchoHalfClose checks that after the client's FIN the echo still
// delivers everything and then answers with its own FIN (EOF, not a reset),
// while the client's socket stays open for reading.
func TestEchoHalfClose(t *testing.T) {
	s := StartTB(t, Echo, "tcp")
	c := dialTB(t, s)

	// Round trips in the small-buffer mode first, then a bulk tail that
	// moves the connection to splice, then the half-close.
	for i := range 3 {
		msg := []byte("ping " + itoa(i))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("round trip %d: got %q want %q", i, got, msg)
		}
	}
	tail := randomBytes(1<<20+3, 7)
	got := echoAll(t, c, tail)
	if !bytes.Equal(got, tail) {
		t.Fatalf("tail after half-close: got %d bytes, want %d (equal prefix %d)", len(got), len(tail), commonPrefix(got, tail))
	}
	// The server must have finished with a FIN: another read is EOF again.
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after echo EOF: %d, %v; want 0, EOF", n, err)
	}
}

// TestEchoHalfCloseWithoutReading: the client sends and half-closes before
// reading anything; the echo must not drop what it has not yet written.
func TestEchoHalfCloseBeforeReading(t *testing.T) {
	s := StartTB(t, Echo, "tcp")
	c := dialTB(t, s)
	msg := randomBytes(1000, 3) // fits in socket buffers: no reader needed
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %d bytes want %d", len(got), len(msg))
	}
}

func TestSink(t *testing.T) {
	s := StartTB(t, Sink, "tcp")
	c := dialTB(t, s)
	const n = 5<<20 + 11
	if _, err := c.Write(randomBytes(n, 1)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	// The sink closes after our EOF and sends nothing.
	rest, err := io.ReadAll(c)
	if err != nil || len(rest) != 0 {
		t.Fatalf("sink sent %d bytes, err %v; want 0, nil", len(rest), err)
	}
	s.Close()
	if st := s.Stats(); st.BytesIn != n || st.BytesOut != 0 || st.Accepted != 1 || st.Errors != 0 {
		t.Fatalf("stats %+v, want %d bytes in, 0 out, 1 accepted, no errors", st, n)
	}
}

func TestSource(t *testing.T) {
	s, err := Start(context.Background(), Config{Kind: Source, ChunkSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := dialTB(t, s)
	got := make([]byte, 3<<20)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if b != byte(i%1000) {
			t.Fatalf("byte %d is %d, want %d", i, b, byte(i%1000))
		}
	}
	c.Close()
	s.Close()
	if st := s.Stats(); st.BytesOut < uint64(len(got)) || st.Errors != 0 || st.Active != 0 {
		t.Fatalf("stats %+v, want ≥ %d bytes out, no errors", st, len(got))
	}
}

func TestUDPEcho(t *testing.T) {
	s := StartTB(t, Echo, "udp")
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadBuffer(1 << 20)
	sizes := []int{0, 1, 16, 1472, 9000, 65507}
	var total uint64
	buf := make([]byte, 70000)
	for _, size := range sizes {
		want := randomBytes(size, uint64(size))
		if _, err := c.Write(want); err != nil {
			t.Fatalf("send %d bytes: %v", size, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("receive echo of %d bytes: %v", size, err)
		}
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("echo of %d bytes returned %d bytes", size, n)
		}
		total += uint64(size)
	}
	s.Close()
	st := s.Stats()
	if st.DatagramsIn != uint64(len(sizes)) || st.DatagramsOut != uint64(len(sizes)) || st.BytesIn != total || st.BytesOut != total || st.RemoteIPs != 1 {
		t.Fatalf("stats %+v, want %d datagrams and %d bytes each way from 1 address", st, len(sizes), total)
	}
}

// TestCloseEndsIdleConnections: Close must not wait for peers to leave.
func TestCloseEndsIdleConnections(t *testing.T) {
	for _, kind := range []Kind{Echo, Sink, Source} {
		t.Run(kind.String(), func(t *testing.T) {
			s := StartTB(t, kind, "tcp")
			var conns []*net.TCPConn
			for range 5 {
				conns = append(conns, dialTB(t, s))
			}
			// One round trip proves the connections were accepted
			// (for the sink, a write cannot prove it; Active can).
			if kind == Echo {
				for _, c := range conns {
					c.Write([]byte("x"))
					if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
						t.Fatal(err)
					}
				}
			}
			s.Close()
			if st := s.Stats(); st.Active != 0 {
				t.Fatalf("after Close: %d active", st.Active)
			}
			for _, c := range conns {
				if kind == Source {
					continue // has unread pattern bytes before the EOF
				}
				if _, err := c.Read(make([]byte, 1)); err == nil {
					t.Fatal("read after server Close succeeded")
				}
			}
		})
	}
}

func TestContextCancelStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, Config{Kind: Echo})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	s.Close()
	if _, err := net.DialTimeout("tcp", s.Addr().String(), time.Second); err == nil {
		t.Fatal("dial after context cancel succeeded")
	}
}

func TestRemoteIPs(t *testing.T) {
	s := StartTB(t, Echo, "tcp")
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.4"} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		c.Close()
	}
	got := s.RemoteIPs()
	if len(got) != 3 || got[0].String() != "127.0.0.2" || got[2].String() != "127.0.0.4" {
		t.Fatalf("RemoteIPs = %v, want 127.0.0.2 .3 .4", got)
	}
}

func TestBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Kind: Sink, Network: "udp"},
		{Kind: Echo, Network: "unix"},
		{Kind: Echo, Addr: "127.0.0.1:notaport"},
	} {
		s, err := Start(context.Background(), cfg)
		if err == nil {
			s.Close()
			t.Errorf("Start(%+v) succeeded", cfg)
		}
	}
	if _, err := Start(context.Background(), Config{Kind: 99}); !errors.Is(err, errKind) {
		t.Errorf("unknown kind: %v", err)
	}
}

func hasIPv6Loopback() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func itoa(i int) string { return strconv.Itoa(i) }
