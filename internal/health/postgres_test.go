package health

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgStartTimeout bounds how long a real PostgreSQL may take to start or
// to reach a state; it needs well under a second on an idle machine.
const pgStartTimeout = 20 * time.Second

// pgCluster is a throwaway PostgreSQL cluster for one test.
type pgCluster struct {
	bin, data string
	cred      *syscall.Credential // run as this user; nil unless we are root
	addr      netip.AddrPort
	log       lockedBuffer
	exited    chan struct{} // closed when the running server has exited
	cmd       *exec.Cmd
}

// newPGCluster runs initdb in a temporary directory. Its pg_hba.conf lets
// the superuser "postgres" in from 127.0.0.1 without a password (trust)
// and asks every other user for one (SCRAM). It skips the test when
// PostgreSQL is not installed, or when the test runs as root and there is
// no user "nobody" to run it as (PostgreSQL refuses to run as root).
func newPGCluster(tb testing.TB) *pgCluster {
	tb.Helper()
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		// Debian keeps the server's programs off PATH.
		found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
		if len(found) == 0 {
			tb.Skip("no initdb on PATH or in /usr/lib/postgresql: the check against a real PostgreSQL is not run")
		}
		initdb = found[len(found)-1]
	}
	bin := filepath.Join(filepath.Dir(initdb), "postgres")
	if _, err := os.Stat(bin); err != nil {
		tb.Skipf("no postgres beside %s: the check against a real PostgreSQL is not run", initdb)
	}
	dir, err := os.MkdirTemp("", "sluice-pg-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	c := &pgCluster{bin: bin, data: filepath.Join(dir, "data")}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			tb.Skipf("running as root and no user nobody to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			tb.Fatal(err)
		}
	}
	cmd := c.command(initdb, "-D", c.data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
		"--no-locale", "-E", "UTF8", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("initdb: %v\n%s", err, out)
	}
	c.writeFile(tb, "pg_hba.conf", []byte("local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"))
	return c
}

// writeFile writes a file of the cluster's user into its data directory
// and returns its path.
func (c *pgCluster) writeFile(tb testing.TB, name string, data []byte) string {
	tb.Helper()
	path := filepath.Join(c.data, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	if c.cred != nil {
		if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			tb.Fatal(err)
		}
	}
	return path
}

// command returns cmd as the cluster's user.
func (c *pgCluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// start runs the server on a free loopback port with the given settings
// (name=value), as run does: it returns once the server answers, and
// stops it at cleanup if it still runs.
func (c *pgCluster) start(tb testing.TB, settings ...string) {
	tb.Helper()
	c.addr = startOnFreePort(tb, func(addr netip.AddrPort) error { return c.run(tb, addr, settings...) })
}

// run runs the server on addr and returns once it answers as PostgreSQL
// (it lets the check in, or refuses it a session), or, once it has
// exited, an error with what it logged. A server that is up is stopped at
// cleanup.
func (c *pgCluster) run(tb testing.TB, addr netip.AddrPort, settings ...string) error {
	tb.Helper()
	args := []string{"-D", c.data, "-h", addr.Addr().String(), "-p", strconv.Itoa(int(addr.Port())), "-k", filepath.Dir(c.data),
		"-c", "fsync=off", "-c", "log_min_messages=warning"}
	for _, s := range settings {
		args = append(args, "-c", s)
	}
	logged := len(c.log.String())
	c.cmd = c.command(c.bin, args...)
	c.cmd.Stdout, c.cmd.Stderr = &c.log, &c.log
	if err := c.cmd.Start(); err != nil {
		tb.Fatalf("start postgres: %v", err)
	}
	c.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { cmd.Wait(); close(exited) }(c.cmd, c.exited)
	answers := func(err error) bool { return err == nil || strings.Contains(err.Error(), "server refuses sessions") }
	if err := awaitUp(addr, postgresCheck{user: "postgres", database: "postgres"}, answers, c.exited, pgStartTimeout); err != nil {
		c.stop(tb)
		return fmt.Errorf("postgres on %v: %w\n%s", addr, err, c.log.String()[logged:])
	}
	tb.Cleanup(func() { c.stop(tb) })
	return nil
}

// stop asks the server for a fast shutdown and waits for it to exit.
func (c *pgCluster) stop(tb testing.TB) {
	select {
	case <-c.exited:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.exited:
	case <-time.After(pgStartTimeout):
		c.cmd.Process.Kill()
		<-c.exited
		tb.Errorf("postgres did not stop on SIGINT within %v", pgStartTimeout)
	}
}

// startTLS is start with TLS on, with a fresh certificate and key for
// 127.0.0.1 in the data directory.
func (c *pgCluster) startTLS(tb testing.TB, settings ...string) {
	tb.Helper()
	cert := testTLSConfig(tb).Certificates[0]
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		tb.Fatal(err)
	}
	certFile := c.writeFile(tb, "server.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	keyFile := c.writeFile(tb, "server.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))
	c.start(tb, append([]string{"ssl=on", "ssl_cert_file=" + certFile, "ssl_key_file=" + keyFile}, settings...)...)
}

// await runs ch against the server until cond holds for its error, and
// returns that error. It fails the test when the server exits or
// pgStartTimeout passes first.
func (c *pgCluster) await(tb testing.TB, ch Checker, what string, cond func(error) bool) error {
	tb.Helper()
	deadline := time.Now().Add(pgStartTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := runCheck(ch, c.addr)
		if cond(err) {
			return err
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v; last check: %v\n%s", what, pgStartTimeout, err, c.log.String())
		}
		select {
		case <-c.exited:
			tb.Fatalf("%s: postgres exited; last check: %v\n%s", what, err, c.log.String())
		case <-tick.C:
		}
	}
}

// sslAnswer returns the server's answer to an SSLRequest.
func (c *pgCluster) sslAnswer(tb testing.TB) byte {
	tb.Helper()
	_, ans := c.sslRequest(tb)
	return ans
}

// sslRequest sends an SSLRequest on a new connection, which is closed at
// cleanup, and returns it with the server's answer.
func (c *pgCluster) sslRequest(tb testing.TB) (net.Conn, byte) {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", c.addr.String(), checkTimeout)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(checkTimeout))
	var ans [1]byte
	if _, err := conn.Write(pgSSLRequest); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(conn, ans[:]); err != nil {
		tb.Fatal(err)
	}
	return conn, ans[0]
}

// session opens a session as the superuser (trust) and returns it once
// the server is ready for queries; it is closed at cleanup.
// A check's session, ended a moment ago, may hold its slot until its
// server process has exited: session waits up to this long for one.
const slotWait = 5 * time.Second

func (c *pgCluster) session(tb testing.TB) net.Conn {
	tb.Helper()
	for deadline := time.Now().Add(slotWait); ; {
		conn, refusal := c.trySession(tb)
		if conn != nil {
			return conn
		}
		if refusal['C'] != "53300" || time.Now().After(deadline) {
			tb.Fatalf("session refused: %v", refusal)
		}
		time.Sleep(20 * time.Millisecond) // polling: the server signals nothing
	}
}

// trySession starts a session as postgres, or returns the server's
// refusal.
func (c *pgCluster) trySession(tb testing.TB) (net.Conn, map[byte]string) {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", c.addr.String(), checkTimeout)
	if err != nil {
		tb.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(checkTimeout))
	if _, err := conn.Write(postgresCheck{user: "postgres", database: "postgres"}.startupMessage()); err != nil {
		tb.Fatal(err)
	}
	for {
		typ, body, err := readPGMessage(conn)
		if err != nil {
			tb.Fatalf("session: %v", err)
		}
		switch typ {
		case 'E':
			conn.Close()
			return nil, pgFields(body)
		case 'Z': // ReadyForQuery
			conn.SetDeadline(time.Time{})
			tb.Cleanup(func() { conn.Close() })
			return conn, nil
		}
	}
}

// TestPostgresCheckRealServer runs the check against PostgreSQL when it
// is installed: it passes against a running server, over TLS or not,
// whether the server asks for a password or lets the user in, and fails
// while the server has no free connection slot and while it is a standby
// without hot standby. A check that hangs up at the password request
// leaves no line in the server's log.
func TestPostgresCheckRealServer(t *testing.T) {
	t.Parallel()
	c := newPGCluster(t)
	c.startTLS(t, "max_connections=2", "superuser_reserved_connections=0")
	scram := newChecker(t, Config{Kind: "postgres"})
	trust := newChecker(t, Config{Kind: "postgres", PostgresUser: "postgres"})
	c.await(t, scram, "server up", isNil)
	if ans := c.sslAnswer(t); ans != 'S' {
		t.Fatalf("SSLRequest answered %q, want 'S': the checks did not use TLS", ans)
	}
	if err := runCheck(trust, c.addr); err != nil {
		t.Fatalf("check as a user let in without a password: %v", err)
	}

	// Both slots taken: no session for anyone.
	first := c.session(t)
	c.session(t)
	wantErr(t, runCheck(scram, c.addr), "server refuses sessions: FATAL 53300: sorry, too many clients already")
	first.Write([]byte(pgTerminate))
	first.Close()
	c.await(t, scram, "a slot free again", isNil)

	// A standby without hot standby takes no session (without TLS).
	c.stop(t)
	c.writeFile(t, "standby.signal", nil)
	c.start(t, "hot_standby=off")
	err := c.await(t, scram, "standby refusing sessions", func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "Hot standby mode is disabled")
	})
	wantErr(t, err, "server refuses sessions: FATAL 57P03: the database system is not accepting connections")
	c.stop(t)
	if log := c.log.String(); strings.Contains(log, defaultPostgresUser) {
		t.Errorf("the server logged the check's user:\n%s", log)
	}
}

// TestPostgresCheckRealServerTLSFallback runs the check against a
// PostgreSQL whose only TLS cipher suite Go does not implement
// (ECDHE-ECDSA-AES256-SHA384): libpq's clients get TLS sessions, the
// check's handshake fails, and its plain-text retry finds the server
// accepting sessions.
func TestPostgresCheckRealServerTLSFallback(t *testing.T) {
	t.Parallel()
	c := newPGCluster(t)
	c.startTLS(t, "ssl_max_protocol_version=TLSv1.2", "ssl_ciphers=ECDHE-ECDSA-AES256-SHA384")
	c.await(t, newChecker(t, Config{Kind: "postgres"}), "server up", isNil)
	conn, ans := c.sslRequest(t)
	if ans != 'S' {
		t.Fatalf("SSLRequest answered %q, want 'S'", ans)
	}
	// The check's TLS settings; the handshake must fail, or this test
	// tests nothing.
	err := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}).Handshake()
	if err == nil {
		t.Fatal("Go's TLS handshake passed: the server's TLS is not one Go lacks")
	}
}
