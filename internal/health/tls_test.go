package health

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

var loopbackIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}

// writeFile writes data to dir/name through a temporary file renamed
// over it, as certificate rotation tools do, and returns the path.
func writeFile(tb testing.TB, dir, name string, data []byte) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		tb.Fatal(err)
	}
	return p
}

// tlsScript runs script on the server side of a TLS connection over c,
// after the handshake; a failed handshake ends the connection.
func tlsScript(conf *tls.Config, script func(c net.Conn)) func(c net.Conn) {
	return func(c net.Conn) {
		tc := tls.Server(c, conf)
		if err := tc.Handshake(); err != nil {
			return
		}
		script(tc)
	}
}

// serverConf serves cert, and records the SNI of each handshake on sni
// when it is not nil.
func serverConf(cert tls.Certificate, sni chan<- string) *tls.Config {
	return &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if sni != nil {
			sni <- h.ServerName
		}
		return &cert, nil
	}}
}

// tlsCheckConfig is a Config for a check of kind over TLS.
func tlsCheckConfig(kind string) Config {
	c := DefaultConfig()
	c.Kind, c.TLS = kind, true
	return c
}

// sourceOf returns the TLS source of a checker made by NewChecker.
func sourceOf(tb testing.TB, ch Checker) *tlsSource {
	tb.Helper()
	var s *tlsSource
	switch c := ch.(type) {
	case tcpCheck:
		s = c.tls
	case sendExpect:
		s = c.tls
	case redisCheck:
		s = c.tls
	case grpcCheck:
		s = c.tls
	}
	if s == nil {
		tb.Fatalf("checker %T has no TLS source", ch)
	}
	return s
}

// fakeClock is the clock of a tlsSource in tests: it moves only when told.
type fakeClock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (f *fakeClock) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

// useFakeClock gives src a fake clock, at which the files were last
// looked at.
func useFakeClock(src *tlsSource) *fakeClock {
	f := &fakeClock{t: time.Unix(1_000_000_000, 0)}
	src.mu.Lock()
	defer src.mu.Unlock()
	src.now = f.now
	src.nextLook = f.t.Add(src.every)
	return f
}

func TestTLSTCPCheck(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	srv := ca.Issue(t, "backend", loopbackIPs, nil, false)
	ch := newChecker(t, tlsCheckConfig("tcp"))
	t.Run("TLS server", func(t *testing.T) {
		p := startPeer(t, "127.0.0.1", tlsScript(serverConf(srv.TLS, nil), silent))
		wantErr(t, runCheck(ch, p.addr), "")
	})
	t.Run("TLS server on IPv6", func(t *testing.T) {
		p := startPeer(t, "::1", tlsScript(serverConf(srv.TLS, nil), silent))
		wantErr(t, runCheck(ch, p.addr), "")
	})
	t.Run("plain server that answers", func(t *testing.T) {
		// A Redis without TLS answers the ClientHello with an error line.
		p := startPeer(t, "127.0.0.1", answer(t, nil, "-ERR unknown command\r\n"))
		wantErr(t, runCheck(ch, p.addr), `TLS handshake: the backend does not speak TLS (it answered "-ERR `)
	})
	t.Run("plain server that hangs up", func(t *testing.T) {
		p := startPeer(t, "127.0.0.1", hangUp(t, nil))
		wantErr(t, runCheck(ch, p.addr), "TLS handshake: ")
	})
	t.Run("plain server that stays silent", func(t *testing.T) {
		// The wedged server a bare connect passes.
		p := startPeer(t, "127.0.0.1", silent)
		_, err := timedCheck(ch, p.addr, 50*time.Millisecond)
		wantErr(t, err, "TLS handshake: ")
		if !isTimeout(err) {
			t.Fatalf("check of a silent server: %v, want a timeout", err)
		}
	})
}

func TestTLSSendExpectCheck(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	srv := ca.Issue(t, "backend", loopbackIPs, nil, false)
	c := tlsCheckConfig("send-expect")
	c.Send, c.Expect = `PING\r\n`, "PONG"
	ch := newChecker(t, c)
	conf := serverConf(srv.TLS, nil)
	for _, tc := range []struct {
		name, reply, wantErr string
	}{
		{"expected answer", "+PONG\r\n", ""},
		{"other answer", "-ERR busy\r\n", `expected "PONG", got "-ERR busy\r\n"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The peer hangs up after its answer.
			p := startPeer(t, "127.0.0.1", tlsScript(conf, func(c net.Conn) {
				if readExactly(t, c, []byte("PING\r\n")) {
					io.WriteString(c, tc.reply)
				}
			}))
			wantErr(t, runCheck(ch, p.addr), tc.wantErr)
		})
	}
	t.Run("plain server", func(t *testing.T) {
		p := startPeer(t, "127.0.0.1", answer(t, nil, "+PONG\r\n"))
		wantErr(t, runCheck(ch, p.addr), "does not speak TLS")
	})
}

func TestTLSRedisCheck(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	srv := ca.Issue(t, "redis", loopbackIPs, nil, false)
	conf := serverConf(srv.TLS, nil)
	c := tlsCheckConfig("redis")
	c.RedisPassword = redisPassword
	ch := newChecker(t, c)
	t.Run("PONG", func(t *testing.T) {
		p := startPeer(t, "127.0.0.1", tlsScript(conf, redisScript(t, []string{redisAuth + redisPing}, "+OK\r\n+PONG\r\n")))
		wantErr(t, runCheck(ch, p.addr), "")
	})
	t.Run("loading", func(t *testing.T) {
		p := startPeer(t, "127.0.0.1", tlsScript(conf, redisScript(t, []string{redisAuth + redisPing},
			"+OK\r\n-LOADING Redis is loading the dataset in memory\r\n")))
		wantErr(t, runCheck(ch, p.addr), "PING answered \"-LOADING")
	})
}

// startGRPCTLS serves grpc.health.v1 over TLS with conf, the server as a
// whole SERVING.
func startGRPCTLS(tb testing.TB, conf *tls.Config) *grpcPeer {
	tb.Helper()
	g := startGRPCServer(tb, "127.0.0.1", true, grpc.Creds(credentials.NewTLS(conf)))
	g.hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	return g
}

func TestTLSGRPCCheck(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	srv := ca.Issue(t, "grpc", loopbackIPs, []string{"grpc.test"}, false)
	g := startGRPCTLS(t, serverConf(srv.TLS, nil))
	g.hs.SetServingStatus("sluice.test.Draining", healthpb.HealthCheckResponse_NOT_SERVING)

	wantErr(t, runCheck(newChecker(t, tlsCheckConfig("grpc")), g.addr), "")
	c := tlsCheckConfig("grpc")
	c.GRPCService = "sluice.test.Draining"
	wantErr(t, runCheck(newChecker(t, c), g.addr), "grpc health status NOT_SERVING")

	// Verified against the CA, by IP address and by name.
	caFile := writeFile(t, t.TempDir(), "ca.pem", ca.PEM)
	c = tlsCheckConfig("grpc")
	c.TLSCA = caFile
	wantErr(t, runCheck(newChecker(t, c), g.addr), "")
	c.TLSServerName = "grpc.test"
	wantErr(t, runCheck(newChecker(t, c), g.addr), "")
	c.TLSServerName = "other.test"
	wantErr(t, runCheck(newChecker(t, c), g.addr), "certificate is valid for grpc.test")

	// In plain text the TLS server is not reached, and a TLS check of a
	// plain server fails.
	if err := runCheck(newChecker(t, Config{Kind: "grpc"}), g.addr); err == nil {
		t.Fatal("plain-text grpc check of a TLS server passed")
	}
	plain := startGRPC(t, "127.0.0.1")
	wantErr(t, runCheck(newChecker(t, tlsCheckConfig("grpc")), plain.addr), "first record does not look like a TLS handshake")
}

// TestTLSVerify: without --health-tls-ca any certificate passes; with it,
// the certificate must chain to it and be valid for the server name or,
// without one, for the backend's IP address. The server name is sent as
// SNI, and no SNI is sent without one.
func TestTLSVerify(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	other := testsrv.NewCA(t, "another CA")
	dir := t.TempDir()
	caFile := writeFile(t, dir, "ca.pem", ca.PEM)
	otherFile := writeFile(t, dir, "other.pem", other.PEM)
	byIP := ca.Issue(t, "db", loopbackIPs, []string{"db.test"}, false)
	byName := ca.Issue(t, "db", nil, []string{"db.test"}, false)
	for _, tc := range []struct {
		name       string
		cert       testsrv.Leaf
		ca         string
		serverName string
		wantErr    string
	}{
		{"unverified", byIP, "", "", ""},
		{"unverified, cert of another CA", other.Issue(t, "x", nil, []string{"x.test"}, false), "", "", ""},
		{"unverified, with SNI", byIP, "", "db.test", ""},
		{"CA, IP SAN", byIP, caFile, "", ""},
		{"CA, name", byIP, caFile, "db.test", ""},
		{"CA, name only in the certificate", byName, caFile, "db.test", ""},
		{"CA, no IP SAN", byName, caFile, "", "cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs"},
		{"CA, wrong name", byIP, caFile, "cache.test", "certificate is valid for db.test, not cache.test"},
		{"other CA", byIP, otherFile, "", "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sni := make(chan string, 1)
			p := startPeer(t, "127.0.0.1", tlsScript(serverConf(tc.cert.TLS, sni), silent))
			c := tlsCheckConfig("tcp")
			c.TLSCA, c.TLSServerName = tc.ca, tc.serverName
			wantErr(t, runCheck(newChecker(t, c), p.addr), tc.wantErr)
			p.close() // the handshake is over, and its SNI recorded
			select {
			case got := <-sni:
				if got != tc.serverName {
					t.Fatalf("server saw SNI %q, want %q", got, tc.serverName)
				}
			default:
				t.Fatal("the server saw no TLS handshake")
			}
		})
	}
}

// TestTLSClientCert: a backend that requires a client certificate passes
// the checks that hold one it trusts, and fails the others.
func TestTLSClientCert(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	clientCA := testsrv.NewCA(t, "client CA")
	stranger := testsrv.NewCA(t, "stranger CA")
	srv := ca.Issue(t, "backend", loopbackIPs, nil, false)
	dir := t.TempDir()
	good := clientCA.Issue(t, "sluice", nil, nil, true)
	bad := stranger.Issue(t, "sluice", nil, nil, true)
	goodCert, goodKey := writeFile(t, dir, "good.crt", good.CertPEM), writeFile(t, dir, "good.key", good.KeyPEM)
	badCert, badKey := writeFile(t, dir, "bad.crt", bad.CertPEM), writeFile(t, dir, "bad.key", bad.KeyPEM)

	conf := serverConf(srv.TLS, nil)
	conf.ClientAuth = tls.RequireAndVerifyClientCert
	conf.ClientCAs = x509.NewCertPool()
	conf.ClientCAs.AddCert(clientCA.Cert)
	p := startPeer(t, "127.0.0.1", tlsScript(conf, answer(t, []byte("PING\r\n"), "+PONG\r\n")))
	g := startGRPCTLS(t, conf)
	// The gRPC check fails on the server's alert or on the connection it
	// closes, whichever the client sees first.
	for _, tc := range []struct {
		name, cert, key, wantErr string
	}{
		{"trusted certificate", goodCert, goodKey, ""},
		{"no certificate", "", "", "certificate required"},
		{"untrusted certificate", badCert, badKey, "unknown certificate authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tlsCheckConfig("send-expect")
			c.Send, c.Expect = `PING\r\n`, "PONG"
			c.TLSCert, c.TLSKey = tc.cert, tc.key
			wantErr(t, runCheck(newChecker(t, c), p.addr), tc.wantErr)
			c = tlsCheckConfig("grpc")
			c.TLSCert, c.TLSKey = tc.cert, tc.key
			if err := runCheck(newChecker(t, c), g.addr); (err == nil) != (tc.wantErr == "") {
				t.Fatalf("grpc check: %v, want an error: %v", err, tc.wantErr != "")
			}
		})
	}
}

// TestTLSTCPCheckClientCert: under TLS 1.3, the tcp check fails when the
// server refuses its client certificate, or its want of one, after the
// handshake, and passes when the server takes it: at once when the server
// sends a session ticket or speaks first, after minVerdictWait when it
// does neither (but within half the check's time).
func TestTLSTCPCheckClientCert(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	clientCA, stranger := testsrv.NewCA(t, "client CA"), testsrv.NewCA(t, "stranger CA")
	srv := ca.Issue(t, "backend", loopbackIPs, nil, false)
	dir := t.TempDir()
	good, bad := clientCA.Issue(t, "sluice", nil, nil, true), stranger.Issue(t, "sluice", nil, nil, true)
	goodCert, goodKey := writeFile(t, dir, "good.crt", good.CertPEM), writeFile(t, dir, "good.key", good.KeyPEM)
	badCert, badKey := writeFile(t, dir, "bad.crt", bad.CertPEM), writeFile(t, dir, "bad.key", bad.KeyPEM)
	server := func(auth tls.ClientAuthType, tickets bool, script func(net.Conn)) netip.AddrPort {
		conf := serverConf(srv.TLS, nil)
		conf.MinVersion = tls.VersionTLS13
		conf.ClientAuth, conf.ClientCAs = auth, x509.NewCertPool()
		conf.ClientCAs.AddCert(clientCA.Cert)
		conf.SessionTicketsDisabled = !tickets
		return startPeer(t, "127.0.0.1", tlsScript(conf, script)).addr
	}
	required := server(tls.RequireAndVerifyClientCert, true, silent)
	noTickets := server(tls.RequireAndVerifyClientCert, false, silent)
	speaksFirst := server(tls.RequireAndVerifyClientCert, false, answer(t, nil, "+OK ready\r\n"))
	optional := server(tls.VerifyClientCertIfGiven, false, silent)
	for _, tc := range []struct {
		name      string
		addr      netip.AddrPort
		cert, key string
		wantErr   string
		waits     bool // for minVerdictWait: no ticket, no data
	}{
		{"trusted certificate", required, goodCert, goodKey, "", false},
		{"trusted certificate, no tickets", noTickets, goodCert, goodKey, "", true},
		{"trusted certificate, server speaks first", speaksFirst, goodCert, goodKey, "", false},
		{"untrusted certificate", required, badCert, badKey,
			"TLS session refused after the handshake: remote error: tls: unknown certificate authority", false},
		{"untrusted certificate, no tickets", noTickets, badCert, badKey, "unknown certificate authority", false},
		{"no certificate", required, "", "", "TLS session refused after the handshake: remote error: tls: certificate required", false},
		{"no certificate, optional", optional, "", "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tlsCheckConfig("tcp")
			c.TLSCert, c.TLSKey = tc.cert, tc.key
			ch := newChecker(t, c)
			// The quickest of three: a loaded machine may slow one.
			fastest := time.Duration(math.MaxInt64)
			for range 3 {
				elapsed, err := timedCheck(ch, tc.addr, checkTimeout)
				wantErr(t, err, tc.wantErr)
				fastest = min(fastest, elapsed)
			}
			if tc.waits && fastest < minVerdictWait {
				t.Fatalf("check passed after %v, before minVerdictWait (%v): it did not wait for a refusal", fastest, minVerdictWait)
			}
			if tc.wantErr == "" && !tc.waits && fastest >= minVerdictWait {
				t.Fatalf("check passed after %v at the quickest, want less than minVerdictWait (%v): a ticket or data did not end the wait", fastest, minVerdictWait)
			}
		})
	}
	// The wait takes at most half the check's time: a tight timeout
	// does not turn the pass into a failure.
	c := tlsCheckConfig("tcp")
	c.TLSCert, c.TLSKey = goodCert, goodKey
	const timeout = 40 * time.Millisecond // below minVerdictWait
	elapsed, err := timedCheck(newChecker(t, c), noTickets, timeout)
	if err != nil || elapsed >= timeout {
		t.Fatalf("check with a %v timeout: %v after %v, want a pass within it", timeout, err, elapsed)
	}
}

// newRotatingChecker is NewCheckerLog with a fake clock for the looks at
// the files and a log that records lines of level and above.
func newRotatingChecker(tb testing.TB, c Config, level zapcore.Level) (Checker, *fakeClock, *observer.ObservedLogs) {
	tb.Helper()
	core, logs := observer.New(level)
	ch, err := NewCheckerLog(c, zap.New(core))
	if err != nil {
		tb.Fatal(err)
	}
	return ch, useFakeClock(sourceOf(tb, ch)), logs
}

// TestTLSRotation: the files are looked at again once per check interval,
// and a new version is used by the next check; a bad new version is
// logged once and the last good one stays in use.
func TestTLSRotation(t *testing.T) {
	t.Parallel()
	caA, caB := testsrv.NewCA(t, "CA A"), testsrv.NewCA(t, "CA B")
	srvA := caA.Issue(t, "backend", loopbackIPs, nil, false)
	srvB := caB.Issue(t, "backend", loopbackIPs, nil, false)
	// The server presents A's certificate until told otherwise.
	var mu sync.Mutex // guards presented
	presented := srvA.TLS
	conf := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		c := presented
		return &c, nil
	}}
	present := func(l testsrv.Leaf) {
		mu.Lock()
		defer mu.Unlock()
		presented = l.TLS
	}
	p := startPeer(t, "127.0.0.1", tlsScript(conf, silent))

	dir := t.TempDir()
	c := tlsCheckConfig("tcp")
	c.TLSCA = writeFile(t, dir, "ca.pem", caA.PEM)
	ch, clock, logs := newRotatingChecker(t, c, zapcore.InfoLevel)
	wantErr(t, runCheck(ch, p.addr), "")

	// The backend moves to CA B, and so does the CA file.
	present(srvB)
	wantErr(t, runCheck(ch, p.addr), "certificate signed by unknown authority")
	writeFile(t, dir, "ca.pem", caB.PEM)
	clock.advance(c.Interval - time.Nanosecond)
	wantErr(t, runCheck(ch, p.addr), "certificate signed by unknown authority") // not looked at yet
	clock.advance(time.Nanosecond)
	wantErr(t, runCheck(ch, p.addr), "")
	if n := logs.FilterMessage("health check TLS files reread").Len(); n != 1 {
		t.Fatalf("%d reread log lines, want 1", n)
	}

	// A bad new version: B stays in use, and the problem is logged once.
	writeFile(t, dir, "ca.pem", []byte("-----BEGIN CERTIFICATE-----\ntruncated"))
	for range 3 {
		clock.advance(c.Interval)
		wantErr(t, runCheck(ch, p.addr), "")
	}
	bad := logs.FilterMessage("new health check TLS files are bad; the last good ones stay in use").All()
	if len(bad) != 1 {
		t.Fatalf("%d log lines for the bad file, want 1: %v", len(bad), logs.All())
	}
	if probs := bad[0].ContextMap()["problems"]; !strings.Contains(strings.Join(toStrings(probs), ""), "--health-tls-ca") {
		t.Fatalf("bad file logged with problems %v, want it named", probs)
	}
	// The next good version is taken.
	present(srvA)
	writeFile(t, dir, "ca.pem", caA.PEM)
	clock.advance(c.Interval)
	wantErr(t, runCheck(ch, p.addr), "")
}

// TestTLSStalledFiles: a look at the files that stalls (a stat on a dead
// NFS mount) keeps no check past its context, so Monitor.Close, which
// cancels the checks and waits for them, returns at once; checks that
// start meanwhile use the files as last read and start no other look.
// When the stat returns, the look ends and its new version is used.
func TestTLSStalledFiles(t *testing.T) {
	t.Parallel()
	caA, caB := testsrv.NewCA(t, "CA A"), testsrv.NewCA(t, "CA B")
	p := startPeer(t, "127.0.0.1", tlsScript(serverConf(caA.Issue(t, "backend", loopbackIPs, nil, false).TLS, nil), silent))
	dir := t.TempDir()
	c := tlsCheckConfig("tcp")
	c.TLSCA = writeFile(t, dir, "ca.pem", caA.PEM)
	ch, clock, _ := newRotatingChecker(t, c, zapcore.InfoLevel)
	src := sourceOf(t, ch)
	stalled, release := make(chan struct{}), make(chan struct{})
	var stats atomic.Int32
	src.stat = func(path string) (os.FileInfo, error) {
		if stats.Add(1) == 1 {
			close(stalled)
			<-release
		}
		return os.Stat(path)
	}
	var releaseOnce sync.Once
	unstall := func() { releaseOnce.Do(func() { close(release) }) }
	defer unstall()

	writeFile(t, dir, "ca.pem", caB.PEM)
	clock.advance(c.Interval)
	mc := c
	mc.Interval = 10 * time.Millisecond
	m := NewMonitor(mc, ch, func(netip.AddrPort, bool, Result) {})
	m.Sync([]netip.AddrPort{p.addr}, nil)
	select {
	case <-stalled:
	case <-time.After(waitLimit):
		t.Fatalf("no look at the files within %v", waitLimit)
	}
	closed := make(chan struct{})
	go func() { m.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(waitLimit):
		t.Fatalf("Monitor.Close still waiting %v for a check stalled on the TLS files", waitLimit)
	}

	// Another look is due, but one is under way: the last good files.
	clock.advance(c.Interval)
	wantErr(t, runCheck(ch, p.addr), "")
	if n := stats.Load(); n != 1 {
		t.Fatalf("%d stats, want 1: a look started while another was under way", n)
	}

	unstall()
	src.mu.Lock()
	looking := src.looking
	src.mu.Unlock()
	if looking != nil {
		<-looking
	}
	wantErr(t, runCheck(ch, p.addr), "certificate signed by unknown authority") // CA B, read by the stalled look
}

// TestTLSClientCertRotation: a certificate and key replaced one after the
// other (the certificate first) are taken once both are there; in
// between, the old pair stays in use.
func TestTLSClientCertRotation(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	clientA, clientB := testsrv.NewCA(t, "client CA A"), testsrv.NewCA(t, "client CA B")
	srv := ca.Issue(t, "backend", loopbackIPs, nil, false)
	var mu sync.Mutex // guards trusted
	trusted := clientA.Cert
	conf := &tls.Config{
		Certificates: []tls.Certificate{srv.TLS},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			mu.Lock()
			defer mu.Unlock()
			pool := x509.NewCertPool()
			pool.AddCert(trusted)
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			return err
		},
	}
	p := startPeer(t, "127.0.0.1", tlsScript(conf, answer(t, []byte("PING\r\n"), "+PONG\r\n")))
	dir := t.TempDir()
	a, b := clientA.Issue(t, "sluice", nil, nil, true), clientB.Issue(t, "sluice", nil, nil, true)
	c := tlsCheckConfig("send-expect")
	c.Send, c.Expect = `PING\r\n`, "PONG"
	c.TLSCert, c.TLSKey = writeFile(t, dir, "client.crt", a.CertPEM), writeFile(t, dir, "client.key", a.KeyPEM)
	ch, clock, logs := newRotatingChecker(t, c, zapcore.WarnLevel)
	wantErr(t, runCheck(ch, p.addr), "")

	mu.Lock()
	trusted = clientB.Cert
	mu.Unlock()
	wantErr(t, runCheck(ch, p.addr), "bad certificate")
	writeFile(t, dir, "client.crt", b.CertPEM) // the key is still A's
	clock.advance(c.Interval)
	wantErr(t, runCheck(ch, p.addr), "bad certificate") // A's pair still in use
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d warnings for a certificate without its key, want 1: %v", n, logs.All())
	}
	writeFile(t, dir, "client.key", b.KeyPEM)
	clock.advance(c.Interval)
	wantErr(t, runCheck(ch, p.addr), "")
}

func toStrings(v any) []string {
	switch v := v.(type) {
	case []string:
		return v
	case []any:
		var out []string
		for _, e := range v {
			s, _ := e.(string)
			out = append(out, s)
		}
		return out
	}
	return nil
}

// TestCheckFiles: each bad file is one problem naming its flag and path,
// and NewChecker refuses it too. A FIFO is refused without waiting for a
// writer (smallfile.Read, whose test times that): a plain open would hang
// here, as it would start-up, and every look at the files after a
// rotation.
func TestCheckFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := testsrv.NewCA(t, "sluice test CA")
	a, b := ca.Issue(t, "a", nil, nil, true), ca.Issue(t, "b", nil, nil, true)
	caFile := writeFile(t, dir, "ca.pem", ca.PEM)
	certA, keyA := writeFile(t, dir, "a.crt", a.CertPEM), writeFile(t, dir, "a.key", a.KeyPEM)
	keyB := writeFile(t, dir, "b.key", b.KeyPEM)
	notPEM := writeFile(t, dir, "not.pem", []byte("hello\n"))
	badDER := writeFile(t, dir, "bad-der.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}))
	missing := filepath.Join(dir, "missing.pem")
	big := writeFile(t, dir, "big.pem", make([]byte, maxTLSFile+1))
	fifo := filepath.Join(dir, "fifo.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		ca, cert, key string
		flag, path    string // the problem names both
		want          string // and says this
	}{
		{"missing CA", missing, "", "", "--health-tls-ca", missing, "no such file"},
		{"CA not PEM", notPEM, "", "", "--health-tls-ca", notPEM, "no PEM CERTIFICATE block"},
		{"CA a key", keyA, "", "", "--health-tls-ca", keyA, "no PEM CERTIFICATE block"},
		{"CA unparsable", badDER, "", "", "--health-tls-ca", badDER, "certificate 1: "},
		{"CA a folder", dir, "", "", "--health-tls-ca", dir, "not a regular file"},
		{"CA a FIFO", fifo, "", "", "--health-tls-ca", fifo, "not a regular file"},
		{"CA too big", big, "", "", "--health-tls-ca", big, "larger than"},
		{"missing cert", caFile, missing, keyA, "--health-tls-cert", missing, "no such file"},
		{"cert not PEM", "", notPEM, keyA, "--health-tls-cert", notPEM, "no PEM CERTIFICATE block"},
		{"missing key", "", certA, missing, "--health-tls-key", missing, "no such file"},
		{"key a certificate", "", certA, certA, "--health-tls-key", certA, "no PEM PRIVATE KEY block"},
		{"key of another certificate", "", certA, keyB, "--health-tls-key", keyB, "private key does not match public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tlsCheckConfig("tcp")
			c.TLSCA, c.TLSCert, c.TLSKey = tc.ca, tc.cert, tc.key
			if probs := c.Validate(); len(probs) != 0 {
				t.Fatalf("Validate() = %q", probs)
			}
			probs := c.CheckFiles()
			if len(probs) != 1 {
				t.Fatalf("CheckFiles() = %q, want one problem", probs)
			}
			if p := probs[0]; !strings.HasPrefix(p, fmt.Sprintf("%s %q: ", tc.flag, tc.path)) || !strings.Contains(p, tc.want) {
				t.Fatalf("problem %q does not start with %s %q and say %q", p, tc.flag, tc.path, tc.want)
			}
			if tc.flag == "--health-tls-key" && tc.want == "private key does not match public key" && !strings.Contains(probs[0], "--health-tls-cert "+strconv.Quote(certA)) {
				t.Fatalf("problem %q does not name the certificate too", probs[0])
			}
			if _, err := NewChecker(c); err == nil || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("NewChecker: %v, want the problem", err)
			}
		})
	}
	c := tlsCheckConfig("tcp")
	c.TLSCA, c.TLSCert, c.TLSKey = caFile, certA, keyA
	if probs := c.CheckFiles(); len(probs) != 0 {
		t.Fatalf("good files: CheckFiles() = %q", probs)
	}
	c.TLS = false // not read without --health-tls (Validate says so)
	c.TLSCA = missing
	if probs := c.CheckFiles(); len(probs) != 0 {
		t.Fatalf("without --health-tls: CheckFiles() = %q", probs)
	}
}

// TestTLSStalledLookFailsNoCheck: the check that starts a look at the
// files which stalls waits for it only half its time, then checks with
// the files as last read: a stalled filesystem, which is no fault of the
// backend's, fails no check. (It failed the check that started the look,
// once per interval while every look outlasted the timeout: with one
// backend, every check.)
func TestTLSStalledLookFailsNoCheck(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	p := startPeer(t, "127.0.0.1", tlsScript(serverConf(ca.Issue(t, "backend", loopbackIPs, nil, false).TLS, nil), silent))
	c := tlsCheckConfig("tcp")
	c.TLSCA = writeFile(t, t.TempDir(), "ca.pem", ca.PEM)
	ch, clock, _ := newRotatingChecker(t, c, zapcore.InfoLevel)
	src := sourceOf(t, ch)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	src.stat = func(path string) (os.FileInfo, error) {
		<-release
		return os.Stat(path)
	}
	clock.advance(c.Interval)
	const timeout = time.Second
	elapsed, err := timedCheck(ch, p.addr, timeout)
	if err != nil {
		t.Fatalf("check that started a stalled look: %v after %v, want a pass with the last good files", err, elapsed)
	}
	if elapsed < timeout/4 {
		t.Fatalf("check passed after %v: it did not wait for the look", elapsed)
	}
}
