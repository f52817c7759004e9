package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// running is a balancer started in-process for a test.
type running struct {
	*Server
	cancel context.CancelFunc
	done   chan error
}

// start parses args (the --listen flag is added: a free loopback port),
// starts the balancer, and stops it at the end of the test.
func start(tb testing.TB, args ...string) *running {
	tb.Helper()
	// A drain that needs its timeout is a bug in every test but the one
	// that tests the timeout; 10s makes it visible in stop below.
	cfg := parse(tb, append([]string{"--listen", "127.0.0.1:0", "--drain-timeout", "10s"}, args...)...)
	return startCfg(tb, cfg, zaptest.NewLogger(tb, zaptest.Level(zap.WarnLevel)))
}

// parse parses a command line for a test.
func parse(tb testing.TB, args ...string) config.Config {
	tb.Helper()
	cfg, err := config.Parse(args, io.Discard)
	if err != nil {
		tb.Fatalf("parse %v: %v", args, err)
	}
	return cfg
}

// startCfg starts a balancer from cfg, logging to log, and stops it at the
// end of the test.
func startCfg(tb testing.TB, cfg config.Config, log *zap.Logger) *running {
	tb.Helper()
	return startOpts(tb, cfg, log, Options{})
}

// startOpts is startCfg with process-level options.
func startOpts(tb testing.TB, cfg config.Config, log *zap.Logger, opts Options) *running {
	tb.Helper()
	s, err := New(cfg, log, opts)
	if err != nil {
		tb.Fatalf("new server: %v", err)
	}
	return run(tb, s)
}

// run runs s, built by New, until the end of the test.
func run(tb testing.TB, s *Server) *running {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Server: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	<-s.Ready()
	tb.Cleanup(func() { r.stop(tb) })
	return r
}

// stop cancels the server and waits for Run; idempotent.
func (r *running) stop(tb testing.TB) error {
	tb.Helper()
	r.cancel()
	begin := time.Now()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
			if el := time.Since(begin); el > 5*time.Second {
				tb.Errorf("stopping took %v: connections outlived their clients (see the drain log line)", el)
			}
		}
		return err
	case <-time.After(30 * time.Second):
		tb.Fatal("server did not stop within 30s")
	}
	return nil
}

func (r *running) dial(tb testing.TB) *net.TCPConn {
	tb.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(r.Addr()))
	if err != nil {
		tb.Fatalf("dial balancer: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond until it holds or the deadline passes. It is for
// state with no event to wait on (counters of another goroutine).
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestBulkHalfClose sends 256 MiB through the balancer to an echo backend
// and reads 256 MiB back, then half-closes: the echo must finish and close,
// and both directions must be byte-exact.
func TestBulkHalfClose(t *testing.T) {
	size := int64(256 << 20)
	if testing.Short() {
		size = 16 << 20
	}
	for _, mode := range []string{"auto", "always", "never"} {
		t.Run(mode, func(t *testing.T) {
			echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
			r := start(t, "--backend", echo.Addr().String(), "--splice", mode)
			c := r.dial(t)

			var sent, got [sha256.Size]byte
			var nread int64
			var readErr error
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := sha256.New()
				nread, readErr = io.Copy(h, c)
				copy(got[:], h.Sum(nil))
			}()
			h := sha256.New()
			src := io.TeeReader(io.LimitReader(newRandReader(uint64(size)), size), h)
			if _, err := io.Copy(struct{ io.Writer }{c}, src); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("close write: %v", err)
			}
			copy(sent[:], h.Sum(nil))
			wg.Wait()
			if readErr != nil {
				t.Fatalf("read: %v", readErr)
			}
			if nread != size || sent != got {
				t.Fatalf("echo through balancer: read %d of %d bytes, sha256 match %v", nread, size, sent == got)
			}
			waitFor(t, "connection close", func() bool { return r.Stats().Closed == 1 })
			st := r.Stats()
			if st.BytesUp != uint64(size) || st.BytesDown != uint64(size) {
				t.Errorf("counters: up %d down %d, want %d each", st.BytesUp, st.BytesDown, size)
			}
			if mode == "never" && st.SplicedBytes != 0 {
				t.Errorf("--splice never spliced %d bytes", st.SplicedBytes)
			}
			if mode != "never" && st.SplicedBytes == 0 {
				t.Errorf("--splice %s spliced nothing in a bulk transfer", mode)
			}
			if st.Resets != 0 {
				t.Errorf("resets = %d, want 0", st.Resets)
			}
		})
	}
}

// newRandReader returns a fast deterministic pseudo-random byte stream.
func newRandReader(seed uint64) io.Reader {
	return &randReader{r: rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1})}
}

type randReader struct{ r *rand.ChaCha8 }

func (r *randReader) Read(p []byte) (int, error) { return r.r.Read(p) }

// TestHalfCloseResponseAfterFIN checks that after the client's FIN reaches
// the backend, the backend can still answer: it reads to EOF and then
// writes its reply.
func TestHalfCloseResponseAfterFIN(t *testing.T) {
	addr, served := oneConnBackend(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d bytes", n)
	})
	r := start(t, "--backend", addr)
	c := r.dial(t)
	if _, err := c.Write(bytes.Repeat([]byte("x"), 100000)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if string(reply) != "got 100000 bytes" {
		t.Fatalf("reply %q", reply)
	}
	<-served
}

// TestHalfCloseBackendFirst is the other order: the backend speaks first
// and sends its FIN, then the client answers and closes. When the second
// FIN arrives both directions have ended and sluice closes both sockets
// without a shutdown of its own: each side must still see all the bytes
// and a clean end, never a reset.
func TestHalfCloseBackendFirst(t *testing.T) {
	got := make(chan string, 1)
	addr, served := oneConnBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("hello"))
		c.CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(b)
	})
	r := start(t, "--backend", addr)
	c := r.dial(t)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	greeting, err := io.ReadAll(c)
	if err != nil || string(greeting) != "hello" {
		t.Fatalf("client read %q, %v; want hello and EOF", greeting, err)
	}
	if _, err := c.Write(bytes.Repeat([]byte("y"), 100000)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if b := <-got; b != strings.Repeat("y", 100000) {
		t.Fatalf("backend read %d bytes (%.40q), want 100000 y and EOF", len(b), b)
	}
	<-served
	// The client's socket is closed by sluice once both FINs have passed:
	// a clean close reads as EOF, a reset as ECONNRESET.
	var one [1]byte
	if n, err := c.Read(one[:]); n != 0 || err != io.EOF {
		t.Fatalf("client read after both FINs = %d, %v; want EOF", n, err)
	}
}

// TestManyConnections holds 2,000 connections open at once through the
// balancer, each proving it is proxied with an echo round trip.
func TestManyConnections(t *testing.T) {
	const n = 2000
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	r := start(t, "--backend", echo.Addr().String())
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = r.dial(t)
	}
	for i, c := range conns {
		msg := []byte(fmt.Sprintf("hello %d", i))
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("conn %d write: %v", i, err)
		}
	}
	for i, c := range conns {
		want := fmt.Sprintf("hello %d", i)
		buf := make([]byte, len(want))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want {
			t.Fatalf("conn %d: got %q, %v", i, buf, err)
		}
	}
	if st := r.Stats(); st.Accepted != n || st.Closed != 0 {
		t.Fatalf("accepted %d closed %d, want %d and 0", st.Accepted, st.Closed, n)
	}
	if a := echo.Stats().Active; a != n {
		t.Fatalf("backend has %d connections, want %d", a, n)
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "all connections closed", func() bool { return r.Stats().Closed == n })
}

// TestRefusingBackendSkipped: with one backend refusing, every connection
// still reaches the live one through the preference order.
func TestRefusingBackendSkipped(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	dead := testsrv.RefusedAddr(t)
	r := start(t, "--backend", dead, "--backend", echo.Addr().String(), "--hash-key", "src-ip-port")
	for i := 0; i < 200; i++ {
		c := r.dial(t)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatalf("conn %d write: %v", i, err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("conn %d: no echo: %v", i, err)
		}
		c.Close()
	}
	st := r.Stats()
	if st.ConnectFailures == 0 {
		t.Fatalf("no connect failure counted: the dead backend was never chosen")
	}
	if st.NoBackend != 0 {
		t.Fatalf("%d connections found no backend", st.NoBackend)
	}
}

// TestAllBackendsRefuse: the client's connection is reset once the retries
// are spent, and the failures are counted.
func TestAllBackendsRefuse(t *testing.T) {
	r := start(t, "--backend", testsrv.RefusedAddr(t), "--backend", testsrv.RefusedAddr(t), "--connect-retries", "1")
	// The reset may beat the dialer's own check of the handshake.
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(r.Addr()))
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("got %v, want connection reset", err)
	}
	waitFor(t, "connection closed", func() bool { return r.Stats().Closed == 1 })
	st := r.Stats()
	if st.ConnectFailures != 2 || st.NoBackend != 1 {
		t.Fatalf("connect failures %d, no-backend %d; want 2 and 1", st.ConnectFailures, st.NoBackend)
	}
}

// TestConnectTimeout: a backend that never answers the SYN (its accept
// queue is full) makes the attempt time out.
func TestConnectTimeout(t *testing.T) {
	// A listener with backlog 0 whose queue we fill: further SYNs are
	// dropped, so connects hang until the timeout.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	// Fill the queue (backlog 0 admits one) with direct connects.
	for i := 0; i < 2; i++ {
		d := net.Dialer{Timeout: 200 * time.Millisecond}
		if c, err := d.Dial("tcp", addr.String()); err == nil {
			defer c.Close()
		}
	}
	r := start(t, "--backend", addr.String(), "--connect-timeout", "300ms", "--connect-retries", "0")
	c := r.dial(t)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	begin := time.Now()
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read = %v, want connection reset after the connect timeout", err)
	}
	if el := time.Since(begin); el < 250*time.Millisecond {
		t.Fatalf("gave up after %v, before the 300ms connect timeout", el)
	}
	if st := r.Stats(); st.ConnectTimeouts != 1 {
		t.Fatalf("connect timeouts = %d, want 1", st.ConnectTimeouts)
	}
}

// TestIdleTimeout: a connection with no traffic is closed after the idle
// timeout, and one with traffic is not.
func TestIdleTimeout(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	r := start(t, "--backend", echo.Addr().String(), "--idle-timeout", "300ms")
	begin := time.Now()
	idle := r.dial(t)
	busy := r.dial(t)
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The busy connection keeps talking every 50ms for 600ms: twice the
	// idle timeout, and it must survive.
	busyErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 1)
		for i := 0; i < 12; i++ {
			busy.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := busy.Write([]byte{'x'}); err != nil {
				busyErr <- err
				return
			}
			if _, err := io.ReadFull(busy, buf); err != nil {
				busyErr <- err
				return
			}
			time.Sleep(50 * time.Millisecond) // the traffic pattern under test, not synchronisation
		}
		busyErr <- nil
	}()
	n, err := idle.Read(make([]byte, 1))
	if n != 0 || err != io.EOF {
		t.Fatalf("idle read = %d, %v; want EOF from the idle timeout", n, err)
	}
	if el := time.Since(begin); el < 300*time.Millisecond {
		t.Fatalf("closed after %v, before the 300ms idle timeout", el)
	}
	if err := <-busyErr; err != nil {
		t.Fatalf("busy connection broke: %v", err)
	}
	if st := r.Stats(); st.IdleTimeouts != 1 {
		t.Fatalf("idle timeouts = %d, want 1", st.IdleTimeouts)
	}
}

// TestResetPassedOn: a backend that aborts its connection makes the client
// see a reset, not a clean end.
func TestResetPassedOn(t *testing.T) {
	addr, served := oneConnBackend(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, 5))
		c.SetLinger(0)
	})
	r := start(t, "--backend", addr)
	c := r.dial(t)
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read = %v, want connection reset", err)
	}
	<-served
	waitFor(t, "reset counted", func() bool { return r.Stats().Resets == 1 })
}

// openFDs counts this process's open file descriptors.
func openFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}

// TestNoFDLeak: after traffic of every kind (bulk, small, refused, reset)
// and the end of every connection, the process holds the same fds as before
// the balancer started.
func TestNoFDLeak(t *testing.T) {
	// testsrv's echo splices with io.Copy, and the Go runtime caches the
	// pipes of that in a sync.Pool: they would look like a leak. This echo
	// copies through a buffer and holds no fd once its connections close.
	echo := copyEcho(t)
	dead := testsrv.RefusedAddr(t)
	before := openFDs(t)
	r := start(t, "--backend", echo.addr, "--backend", dead, "--hash-key", "src-ip-port")
	for i := 0; i < 50; i++ {
		c := r.dial(t)
		payload := make([]byte, 1+i*40000) // small and bulk, to use pipes
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, c)
		if err != nil || n != int64(len(payload)) {
			t.Fatalf("conn %d: echoed %d of %d: %v", i, n, len(payload), err)
		}
		c.Close()
	}
	waitFor(t, "all closed", func() bool { st := r.Stats(); return st.Closed == st.Accepted })
	waitFor(t, "backend closed", func() bool { return echo.active.Load() == 0 })
	if err := r.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("open fds: %d before the balancer, %d after it stopped", before, after)
	}
}

// TestDrain: on shutdown the listener closes at once, an open connection
// may finish, and Run returns once it has.
func TestDrain(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	r := start(t, "--backend", echo.Addr().String(), "--drain-timeout", "20s")
	c := r.dial(t)
	c.Write([]byte("a"))
	io.ReadFull(c, make([]byte, 1))
	r.cancel()
	waitFor(t, "listener closed", func() bool {
		nc, err := net.Dial("tcp", r.Addr().String())
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	// The open connection still works during the drain.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("b")); err != nil {
		t.Fatalf("write during drain: %v", err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("read during drain: %v", err)
	}
	select {
	case <-r.done:
		t.Fatal("Run returned with a connection still open")
	default:
	}
	c.Close()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		close(r.done)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the last connection closed")
	}
}

// TestDrainTimeout: connections still open at the drain timeout are reset.
func TestDrainTimeout(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	core, logs := observer.New(zapcore.InfoLevel)
	r := startCfg(t, parse(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--drain-timeout", "200ms"), zap.New(core))
	var open []net.Conn
	for range 3 {
		c := r.dial(t)
		c.Write([]byte("a"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("echo: %v", err)
		}
		open = append(open, c)
	}
	// One ends before the stop and is not counted as cut.
	open[0].Close()
	waitFor(t, "the closed connection to end", func() bool { return r.Stats().Closed == 1 })
	if err := r.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	for _, c := range open[1:] {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read after drain timeout = %v, want reset", err)
		}
	}
	// The last line counts the connections the drain cut.
	stopped := logs.FilterMessage("sluice stopped").All()
	if len(stopped) != 1 || stopped[0].ContextMap()["reset_at_drain_timeout"] != int64(2) {
		t.Fatalf("stop lines %v, want one with reset_at_drain_timeout 2", stopped)
	}
}

// TestMaxConns: beyond --max-conns new connections wait in the accept
// queue and are served once a slot frees.
func TestMaxConns(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	r := start(t, "--backend", echo.Addr().String(), "--max-conns", "2", "--workers", "1")
	a, b := r.dial(t), r.dial(t)
	for _, c := range []*net.TCPConn{a, b} {
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
	}
	third := r.dial(t) // completes the handshake in the kernel's queue
	third.Write([]byte("y"))
	waitFor(t, "accept paused", func() bool { return r.services[0].proxies[0].Stats().AcceptPauses.Load() > 0 })
	if st := r.Stats(); st.Accepted != 2 {
		t.Fatalf("accepted %d connections with --max-conns 2", st.Accepted)
	}
	a.Close()
	third.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(third, make([]byte, 1)); err != nil {
		t.Fatalf("third connection not served after a slot freed: %v", err)
	}
}

// bufEcho is an echo backend that copies through a per-connection buffer,
// and whose listener and connections can be closed separately.
type bufEcho struct {
	addr     string
	ln       *net.TCPListener
	active   atomic.Int64
	accepted atomic.Int64
	mu       sync.Mutex // guards conns
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

func copyEcho(tb testing.TB) *bufEcho {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	e := &bufEcho{addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]bool{}}
	tb.Cleanup(func() { e.closeListener(); e.closeConns(); e.wg.Wait() })
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			e.active.Add(1)
			e.mu.Lock()
			e.conns[c] = true
			e.mu.Unlock()
			e.wg.Add(1)
			go e.serve(c)
		}
	}()
	return e
}

func (e *bufEcho) serve(c *net.TCPConn) {
	defer e.wg.Done()
	defer e.active.Add(-1)
	defer func() {
		e.mu.Lock()
		delete(e.conns, c)
		e.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			c.CloseWrite()
			return
		}
	}
}

func (e *bufEcho) closeListener() { e.ln.Close() }

func (e *bufEcho) closeConns() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for c := range e.conns {
		c.Close()
	}
}

// oneConnBackend is a backend that accepts one connection, hands it to
// serve, and closes it; served is closed once that is done.
func oneConnBackend(tb testing.TB, serve func(*net.TCPConn)) (addr string, served <-chan struct{}) {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	tb.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return ln.Addr().String(), done
}
