package health

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// unblockFIFO opens the writing end of fifo, and closes it, so that a
// read-only open of it waiting for a writer returns.
func unblockFIFO(tb testing.TB, fifo string) {
	tb.Helper()
	if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		f.Close()
	}
}

// TestTLSFileFIFO: a TLS file that is a FIFO is refused as not a regular
// file, at start and when a rotation puts one in its place, without
// waiting for a writer: the open used to block until one came, at start
// for ever, and at a reread with the source's lock held, so that every
// check of the service hung past its timeout.
func TestTLSFileFIFO(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unblockFIFO(t, fifo) })

	c := tlsCheckConfig("tcp")
	c.TLSCA = fifo
	probs := make(chan []string, 1)
	go func() { probs <- c.CheckFiles() }()
	select {
	case p := <-probs:
		if len(p) != 1 || !contains(p[0], "--health-tls-ca", fifo, "not a regular file") {
			t.Fatalf("CheckFiles of a FIFO CA: %q, want one problem naming the flag, the file and why", p)
		}
	case <-time.After(5 * time.Second):
		unblockFIFO(t, fifo)
		t.Fatal("CheckFiles waits for a writer of a FIFO CA")
	}

	// A rotation puts a FIFO where the CA was: the check goes on with the
	// last good CA, in its time.
	ca := testsrv.NewCA(t, "sluice test CA")
	srv := ca.Issue(t, "backend", loopbackIPs, nil, false)
	p := startPeer(t, "127.0.0.1", tlsScript(serverConf(srv.TLS, nil), silent))
	c.TLSCA = writeFile(t, dir, "ca.pem", ca.PEM)
	ch, clock, logs := newRotatingChecker(t, c, zapcore.WarnLevel)
	wantErr(t, runCheck(ch, p.addr), "")
	if err := os.Rename(fifo, c.TLSCA); err != nil {
		t.Fatal(err)
	}
	clock.advance(c.Interval)
	type result struct {
		took time.Duration
		err  error
	}
	res := make(chan result, 1)
	go func() {
		took, err := timedCheck(ch, p.addr, time.Second)
		res <- result{took, err}
	}()
	select {
	case r := <-res:
		wantErr(t, r.err, "")
	case <-time.After(5 * time.Second):
		unblockFIFO(t, c.TLSCA)
		t.Fatal("a check with a 1s timeout still runs after 5s: the reread of the CA waits for a writer of the FIFO")
	}
	if n := logs.FilterMessage("new health check TLS files are bad; the last good ones stay in use").Len(); n != 1 {
		t.Fatalf("%d log lines for the FIFO, want 1", n)
	}
}

// contains reports whether s contains each of subs.
func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
