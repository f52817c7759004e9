package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// peerIOTimeout bounds every read and write of a scripted peer, so a peer
// waiting for bytes the check never sends fails the test instead of
// hanging it.
const peerIOTimeout = 5 * time.Second

// peer is a scripted TCP server on loopback: every accepted connection is
// handed to the script on its own goroutine. Cleanup closes the listener
// and waits for all goroutines. It leaves open connections alone, so a
// script always sees every byte the check sent; a script ends when the
// check hangs up, or at the peerIOTimeout deadline of its connection.
type peer struct {
	ln   net.Listener
	addr netip.AddrPort
	wg   sync.WaitGroup
}

// startPeer listens on network address host:0 ("127.0.0.1" or "::1") and
// runs script for each connection until cleanup.
func startPeer(tb testing.TB, host string, script func(c net.Conn)) *peer {
	tb.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	p := &peer{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	p.wg.Add(1)
	go p.accept(script)
	tb.Cleanup(p.close)
	return p
}

func (p *peer) accept(script func(c net.Conn)) {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		c.SetDeadline(time.Now().Add(peerIOTimeout))
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			script(c)
		}()
	}
}

// close stops accepting and waits for the scripts to end.
func (p *peer) close() {
	p.ln.Close()
	p.wg.Wait()
}

// readExactly reads len(want) bytes from c and reports a test error when
// they differ from want. It returns whether they matched.
func readExactly(tb testing.TB, c net.Conn, want []byte) bool {
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		tb.Errorf("peer: read %q: %v (got %q)", want, err, got)
		return false
	}
	if !bytes.Equal(got, want) {
		tb.Errorf("peer: read %q, want %q", got, want)
		return false
	}
	return true
}

// silent is the script of a peer that accepts and never answers: it waits
// until the check closes the connection (or the peer is cleaned up).
func silent(c net.Conn) { io.Copy(io.Discard, c) }

// timedCheck runs ch against addr with the given timeout and returns how
// long it took and its error.
func timedCheck(ch Checker, addr netip.AddrPort, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	err := ch.Check(ctx, addr)
	return time.Since(start), err
}

// checkTimeout is how long a check that should succeed or fail on the
// peer's answer may take: far more than loopback needs, far less than the
// test's budget.
const checkTimeout = 5 * time.Second

// runCheck runs ch against addr with checkTimeout.
func runCheck(ch Checker, addr netip.AddrPort) error {
	_, err := timedCheck(ch, addr, checkTimeout)
	return err
}

// newChecker is NewChecker that fails the test on error.
func newChecker(tb testing.TB, c Config) Checker {
	tb.Helper()
	ch, err := NewChecker(c)
	if err != nil {
		tb.Fatalf("NewChecker(%+v): %v", c, err)
	}
	return ch
}

// isTimeout reports whether err is a deadline that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// startOnFreePort runs a server that must be told its port, and returns
// its address. It calls start with a loopback address whose port was free
// a moment ago; start runs the server there and returns nil once it is
// up, or, once the server has exited, an error with its output. Another
// process (a test package run in parallel) may take the port before the
// server binds it: while start's error says the address is in use,
// startOnFreePort tries a new port, 3 times in all. Any other error fails
// the test at once.
func startOnFreePort(tb testing.TB, start func(addr netip.AddrPort) error) netip.AddrPort {
	tb.Helper()
	for try := 1; ; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("listen: %v", err)
		}
		addr := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		err = start(addr)
		if err == nil {
			return addr
		}
		if try == 3 || !strings.Contains(strings.ToLower(err.Error()), syscall.EADDRINUSE.Error()) {
			tb.Fatal(err)
		}
		tb.Logf("%v taken before the server bound it, trying another port: %v", addr, err)
	}
}

// awaitUp runs ch against addr every 10 ms, each time for at most a
// second, until up holds for its result, and returns nil then. It returns
// the last result when the server exits (exited is closed) or limit
// passes first.
func awaitUp(addr netip.AddrPort, ch Checker, up func(error) bool, exited <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := timedCheck(ch, addr, time.Second)
		if up(err) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not up within %v: %w", limit, err)
		}
		select {
		case <-exited:
			return fmt.Errorf("exited: %w", err)
		case <-tick.C: // polling: the server signals nothing
		}
	}
}

// isNil is the up of awaitUp for a server that is up once the check
// passes.
func isNil(err error) bool { return err == nil }

// takenOnce returns start with the port of its first call taken while
// that call runs, as another process may take it between
// startOnFreePort's look and the server's bind. *calls counts the calls.
func takenOnce(tb testing.TB, calls *int, start func(netip.AddrPort) error) func(netip.AddrPort) error {
	return func(addr netip.AddrPort) error {
		if *calls++; *calls == 1 {
			ln, err := net.Listen("tcp", addr.String())
			if err != nil {
				tb.Fatal(err)
			}
			defer ln.Close()
		}
		return start(addr)
	}
}

// TestStartOnFreePort: each real server the tests run, started on a port
// another process has taken, fails there with the address in use, and
// startOnFreePort starts it again on another port.
func TestStartOnFreePort(t *testing.T) {
	t.Parallel()
	for name, runner := range map[string]func(t *testing.T) func(netip.AddrPort) error{
		"redis": func(t *testing.T) func(netip.AddrPort) error { return redisRunner(t, redisCheck{}, "--port", "") },
		"postgres": func(t *testing.T) func(netip.AddrPort) error {
			c := newPGCluster(t)
			return func(addr netip.AddrPort) error { return c.run(t, addr) }
		},
		"mariadb": func(t *testing.T) func(netip.AddrPort) error {
			argv := installMariaDB(t, mariaDBConfig{init: mysqlUsers(netip.MustParseAddr("127.0.0.1"))})
			return func(addr netip.AddrPort) error {
				_, err := runMariaDB(t, argv, addr)
				return err
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			calls := 0
			startOnFreePort(t, takenOnce(t, &calls, runner(t)))
			if calls != 2 {
				t.Fatalf("started %d times, want 2 (a taken port, then a free one)", calls)
			}
		})
	}
}

// closedAddr returns a loopback address that refuses connections for as
// long as the test runs (testsrv.RefusedAddr).
func closedAddr(tb testing.TB) netip.AddrPort {
	tb.Helper()
	return netip.MustParseAddrPort(testsrv.RefusedAddr(tb))
}
