package health

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// redisStartTimeout bounds how long startRedis waits for a server to
// answer; redis-server is ready in milliseconds on an idle machine.
const redisStartTimeout = 10 * time.Second

// lockedBuffer collects a child's output for the failure message.
type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startRedis runs redis-server on 127.0.0.1, with no persistence, the
// given password ("" for none) and further options, and returns its
// address once our own check passes against it. The server is killed at
// cleanup. It skips the test when redis-server is not installed.
func startRedis(tb testing.TB, password string, opts ...string) netip.AddrPort {
	tb.Helper()
	return startRedisServer(tb, redisCheck{password: password}, "--port", password, opts...)
}

// startRedisServer is startRedis with the port given by portFlag
// (--port, or --tls-port with --port 0 among opts), up once ready passes.
func startRedisServer(tb testing.TB, ready Checker, portFlag, password string, opts ...string) netip.AddrPort {
	tb.Helper()
	return startOnFreePort(tb, redisRunner(tb, ready, portFlag, password, opts...))
}

// redisRunner returns the start function of startOnFreePort for
// startRedisServer. The server it starts is killed at cleanup.
func redisRunner(tb testing.TB, ready Checker, portFlag, password string, opts ...string) func(netip.AddrPort) error {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Skip("redis-server not on PATH: the check against a real Redis is not run")
	}
	return func(addr netip.AddrPort) error {
		args := []string{portFlag, strconv.Itoa(int(addr.Port())), "--bind", addr.Addr().String(),
			"--save", "", "--appendonly", "no", "--dir", tb.TempDir(),
			"--protected-mode", "yes", "--loglevel", "warning"}
		if password != "" {
			args = append(args, "--requirepass", password)
		}
		cmd := exec.Command(bin, append(args, opts...)...)
		var out lockedBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			tb.Fatalf("start redis-server: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
		}
		if err := awaitUp(addr, ready, isNil, exited, redisStartTimeout); err != nil {
			stop()
			return fmt.Errorf("redis-server on %v: %w\n%s", addr, err, out.String())
		}
		tb.Cleanup(stop)
		return nil
	}
}

func TestRedisCheckRealServer(t *testing.T) {
	t.Parallel()
	t.Run("no password", func(t *testing.T) {
		t.Parallel()
		addr := startRedis(t, "")
		if err := runCheck(newChecker(t, Config{Kind: "redis"}), addr); err != nil {
			t.Fatalf("check of redis-server: %v", err)
		}
		// Redis 6+ refuses AUTH when no password is configured.
		err := runCheck(newChecker(t, Config{Kind: "redis", RedisPassword: redisPassword}), addr)
		wantErr(t, err, "AUTH refused")
	})
	t.Run("requirepass", func(t *testing.T) {
		t.Parallel()
		addr := startRedis(t, redisPassword)
		if err := runCheck(newChecker(t, Config{Kind: "redis", RedisPassword: redisPassword}), addr); err != nil {
			t.Fatalf("check with the right password: %v", err)
		}
		wantErr(t, runCheck(newChecker(t, Config{Kind: "redis", RedisPassword: "wrong"}), addr),
			`AUTH refused: "-WRONGPASS`)
		wantErr(t, runCheck(newChecker(t, Config{Kind: "redis"}), addr), `PING answered "-NOAUTH`)
	})
	t.Run("maxclients", func(t *testing.T) {
		t.Parallel()
		addr := startRedis(t, redisPassword, "--maxclients", "1")
		holdRedisClient(t, addr)
		// Redis refuses the check's connection as it accepts it, and
		// hangs up: that is no refusal of the password.
		ch := newChecker(t, Config{Kind: "redis", RedisPassword: redisPassword})
		for range 20 { // the server may hang up before or after the check's write
			wantErr(t, runCheck(ch, addr), `server refused the connection: "-ERR max number of clients reached"`)
		}
	})
}

// holdRedisClient takes the one client slot of a redis-server started
// with --maxclients 1 and the password redisPassword, and keeps it until
// cleanup. The slot of the check that found the server up may still be
// taken for a moment: it tries for up to slotWait.
func holdRedisClient(tb testing.TB, addr netip.AddrPort) {
	tb.Helper()
	for deadline := time.Now().Add(slotWait); ; {
		c, err := net.DialTimeout("tcp", addr.String(), checkTimeout)
		if err != nil {
			tb.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(checkTimeout))
		if _, err := io.WriteString(c, redisAuth); err != nil {
			tb.Fatal(err)
		}
		line, err := newLineReader(c).line()
		if err == nil && line == "+OK" {
			c.SetDeadline(time.Time{})
			tb.Cleanup(func() { c.Close() })
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			tb.Fatalf("no client slot within %v: %q, %v", slotWait, line, err)
		}
		time.Sleep(20 * time.Millisecond) // polling: the server signals nothing
	}
}

// TestRedisCheckRealServerTLS: the redis check over TLS against a
// redis-server that serves only TLS and requires a client certificate.
func TestRedisCheckRealServerTLS(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	srv := ca.Issue(t, "redis", loopbackIPs, nil, false)
	client := ca.Issue(t, "sluice", nil, nil, true)
	dir := t.TempDir()
	caFile := writeFile(t, dir, "ca.pem", ca.PEM)
	c := tlsCheckConfig("redis")
	c.TLSCA = caFile
	c.TLSCert, c.TLSKey = writeFile(t, dir, "client.crt", client.CertPEM), writeFile(t, dir, "client.key", client.KeyPEM)
	ch := newChecker(t, c)
	addr := startRedisServer(t, ch, "--tls-port", "", "--port", "0",
		"--tls-cert-file", writeFile(t, dir, "redis.crt", srv.CertPEM),
		"--tls-key-file", writeFile(t, dir, "redis.key", srv.KeyPEM),
		"--tls-ca-cert-file", caFile, "--tls-auth-clients", "yes")
	wantErr(t, runCheck(ch, addr), "")
	// The tcp check over TLS 1.3 reads the server's verdict on its
	// certificate: OpenSSL's session ticket, or its refusal.
	tc := c
	tc.Kind = "tcp"
	wantErr(t, runCheck(newChecker(t, tc), addr), "")
	tc.TLSCert, tc.TLSKey = "", ""
	wantErr(t, runCheck(newChecker(t, tc), addr), "TLS session refused after the handshake: remote error: tls: certificate required")
	// Without a client certificate the server refuses the session.
	c.TLSCert, c.TLSKey = "", ""
	// The server's alert, or its reset if it comes first.
	if err := runCheck(newChecker(t, c), addr); err == nil {
		t.Fatal("check without a client certificate passed")
	}
	// In plain text the TLS-only server does not answer PING.
	if err := runCheck(newChecker(t, Config{Kind: "redis"}), addr); err == nil {
		t.Fatal("plain-text check of a TLS-only redis-server passed")
	}
}
