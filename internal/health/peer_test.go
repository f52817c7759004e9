package health

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
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

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// closedAddr returns a loopback address that refuses connections for as
// long as the test runs (testsrv.RefusedAddr).
func closedAddr(tb testing.TB) netip.AddrPort {
	tb.Helper()
	return netip.MustParseAddrPort(testsrv.RefusedAddr(tb))
}
