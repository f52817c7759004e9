package server

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fillUntilBlocked writes to c until a write has been blocked for 500ms:
// every buffer between c and a peer that does not read is then full (a
// proxy loop kept off the CPU that long by a loaded machine could end it
// early, a risk this long wait makes small). It returns how many bytes
// were written, and any other write error.
func fillUntilBlocked(c *net.TCPConn) (sent int64, err error) {
	buf := make([]byte, 64<<10)
	for {
		c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Write(buf)
		sent += int64(n)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.SetWriteDeadline(time.Time{})
			return sent, nil
		}
		if err != nil {
			return sent, err
		}
	}
}

// readToEnd reads c until an error and returns it (io.EOF for a clean end).
func readToEnd(c *net.TCPConn) error {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		return io.EOF
	}
	return err
}

// TestResetWhileThePeerStalls: a side that resets while the bytes it sent
// wait for a peer that does not read is passed on at once, as a reset: the
// proxy does not wait to read the error behind those bytes, and the peer
// does not see a clean end of a cut stream.
func TestResetWhileThePeerStalls(t *testing.T) {
	for _, mode := range []string{"never", "always"} {
		t.Run("client resets/"+mode, func(t *testing.T) {
			look := make(chan struct{})
			got := make(chan error, 1)
			addr, _ := oneConnBackend(t, func(c *net.TCPConn) {
				<-look // does not read until told
				got <- readToEnd(c)
			})
			var once sync.Once
			tell := func() { once.Do(func() { close(look) }) }
			t.Cleanup(tell) // before the backend's cleanup waits for it
			r := start(t, "--backend", addr, "--splice", mode, "--health-interval", "1h")
			c := r.dial(t)
			if _, err := fillUntilBlocked(c); err != nil {
				t.Fatalf("client fill: %v", err)
			}
			c.SetLinger(0)
			c.Close()
			waitFor(t, "the reset counted", func() bool { return r.Stats().Resets == 1 })
			tell()
			if err := <-got; !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("backend read %v, want a reset", err)
			}
		})
		t.Run("backend resets/"+mode, func(t *testing.T) {
			addr, _ := oneConnBackend(t, func(c *net.TCPConn) {
				if _, err := fillUntilBlocked(c); err != nil {
					t.Errorf("backend fill: %v", err)
				}
				c.SetLinger(0) // the deferred close resets
			})
			r := start(t, "--backend", addr, "--splice", mode, "--health-interval", "1h")
			c := r.dial(t)
			waitFor(t, "the reset counted", func() bool { return r.Stats().Resets == 1 })
			if err := readToEnd(c); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("client read %v, want a reset", err)
			}
		})
	}
}

// TestIdleTimeoutWithHeldBytes: the idle timeout of a connection whose
// client stopped reading, with bytes still held for it, ends in a reset.
func TestIdleTimeoutWithHeldBytes(t *testing.T) {
	release := make(chan struct{})
	addr, _ := oneConnBackend(t, func(c *net.TCPConn) {
		_, _ = fillUntilBlocked(c) // the reset under test may end it
		<-release
	})
	defer close(release)
	r := start(t, "--backend", addr, "--idle-timeout", "300ms", "--health-interval", "1h")
	c := r.dial(t)
	waitFor(t, "the idle timeout", func() bool { return r.Stats().IdleTimeouts == 1 })
	if err := readToEnd(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %v, want a reset: a FIN would make the cut response look complete", err)
	}
}

// TestSlowReaderIsNotIdle: a client that reads a large response slowly but
// steadily keeps its connection, though the proxy writes to it only when
// its send buffer has room again, which can take longer than the idle
// timeout.
func TestSlowReaderIsNotIdle(t *testing.T) {
	const total = 4 << 20
	release := make(chan struct{})
	addr, _ := oneConnBackend(t, func(c *net.TCPConn) {
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(make([]byte, total)); err != nil {
			t.Errorf("backend write: %v", err)
		}
		<-release
	})
	defer close(release)
	r := start(t, "--backend", addr, "--idle-timeout", "300ms", "--health-interval", "1h")
	c := r.dial(t)
	// Small, but above two loopback segments (64 KiB each): a window
	// below one segment stalls the sender on zero-window probes.
	c.SetReadBuffer(256 << 10)
	buf := make([]byte, 16<<10)
	got := 0
	deadline := time.Now().Add(20 * time.Second)
	for got < total && time.Now().Before(deadline) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		got += n
		if err != nil {
			t.Fatalf("read %v after %d of %d bytes (idle timeouts %d)", err, got, total, r.Stats().IdleTimeouts)
		}
		time.Sleep(10 * time.Millisecond) // the slow reader under test, not synchronisation
	}
	if got != total || r.Stats().IdleTimeouts != 0 {
		t.Fatalf("read %d of %d bytes, idle timeouts %d", got, total, r.Stats().IdleTimeouts)
	}
}
