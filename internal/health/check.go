// Package health runs active health checks against backends: a Checker
// speaks one protocol (TCP connect, send/expect, Redis, PostgreSQL, MySQL,
// gRPC; the tcp, send-expect, redis and grpc checks optionally over TLS,
// with certificate files reread when they rotate), a RiseFall turns a run
// of results into an up/down verdict, and a Monitor runs one jittered
// check loop per backend, off the data-path loops.
package health

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Checker probes one backend. Check returns nil when the backend is
// healthy. Implementations are safe for concurrent use and respect ctx's
// deadline.
type Checker interface {
	Check(ctx context.Context, addr netip.AddrPort) error
}

// Config selects and tunes the checks of a service.
type Config struct {
	// Kind is tcp, send-expect, redis, postgres, mysql or grpc.
	Kind string
	// Interval is the time between the starts of two checks of a backend.
	Interval time.Duration
	// Timeout bounds one check.
	Timeout time.Duration
	// Rise is the consecutive successes that bring a down backend up.
	Rise int
	// Fall is the consecutive failures that take an up backend down.
	Fall int
	// Send and Expect are the send-expect payload and the substring the
	// answer must contain; \r, \n, \t and \\ escapes are understood.
	Send, Expect string
	// RedisPassword, when set, makes the redis check AUTH before PING.
	RedisPassword string
	// GRPCService is the service name asked of grpc.health.v1 ("" is the
	// server as a whole).
	GRPCService string
	// PostgresUser and PostgresDatabase are the user and database the
	// postgres check asks a session for; it never authenticates, so the
	// user needs no password. Empty means the defaults, "sluice_health" and
	// "postgres". A user that pg_hba.conf lets in with a password (or a
	// database that pgbouncer knows) keeps the server's log free of a
	// failed-connection line per check.
	PostgresUser, PostgresDatabase string
	// MySQLUser, when set, makes the mysql check log in as this user with
	// no password after the server's greeting, instead of hanging up,
	// which the server counts toward max_connect_errors (see mysqlCheck).
	MySQLUser string
	// Network is "tcp" (default) or "udp": the send-expect check of a UDP
	// service sends Send as one datagram and expects a reply containing
	// Expect.
	Network string
	// TLS runs the tcp (which then passes when the TLS handshake
	// completes and the server keeps the session), send-expect, redis
	// and grpc (ALPN h2) checks over TLS.
	// Not for postgres and mysql, which negotiate TLS inside their own
	// protocol, nor for UDP.
	TLS bool
	// TLSCA is a PEM bundle the backend's certificate is verified
	// against; "" means it is not verified (a check asks whether the
	// backend serves, not who it is).
	TLSCA string
	// TLSServerName is sent as SNI and is the name verified against
	// TLSCA; "" sends none and verifies the backend's IP address against
	// the certificate's IP SANs.
	TLSServerName string
	// TLSCert and TLSKey are the PEM files of a client certificate and
	// its key for backends that require one (mTLS); both or neither.
	TLSCert, TLSKey string
}

// Kinds lists the check kinds. "none" runs no check: backends stay up
// unless drained.
var Kinds = []string{"tcp", "send-expect", "redis", "postgres", "mysql", "grpc", "none"}

// DefaultConfig returns the defaults the flags start from.
func DefaultConfig() Config {
	return Config{Kind: "tcp", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
		PostgresUser: defaultPostgresUser, PostgresDatabase: defaultPostgresDatabase}
}

// MinInterval and MinTimeout are the shortest check period and check time
// accepted, MaxTimeout the longest check time. A timeout above the
// interval is fine (the checks then run back to back), but a check that
// may take more than MaxTimeout, Fall times over before a dead backend is
// taken down, is a typo (1h for 1s) rather than a setting.
const (
	MinInterval = 10 * time.Millisecond
	MinTimeout  = time.Millisecond
	MaxTimeout  = 10 * time.Minute
)

// Validate reports every problem with c, one per element, naming the flag.
func (c Config) Validate() []string {
	var probs []string
	known := false
	for _, k := range Kinds {
		known = known || k == c.Kind
	}
	if !known {
		probs = append(probs, fmt.Sprintf("--health-check %q: want one of %s", c.Kind, strings.Join(Kinds, ", ")))
	}
	// A floor keeps a typo (1ns) from turning the checks into a busy
	// loop that fills the backend with TIME_WAIT sockets.
	if c.Interval < MinInterval {
		probs = append(probs, fmt.Sprintf("--health-interval %q: want %s or more", c.Interval, MinInterval))
	}
	if c.Timeout < MinTimeout || c.Timeout > MaxTimeout {
		probs = append(probs, fmt.Sprintf("--health-timeout %q: want %s to %s", c.Timeout, MinTimeout, MaxTimeout))
	}
	if c.Rise < 1 || c.Rise > 100 {
		probs = append(probs, fmt.Sprintf("--health-rise %q: want 1 to 100", strconv.Itoa(c.Rise)))
	}
	if c.Fall < 1 || c.Fall > 100 {
		probs = append(probs, fmt.Sprintf("--health-fall %q: want 1 to 100", strconv.Itoa(c.Fall)))
	}
	if c.Kind == "send-expect" && c.Expect == "" {
		probs = append(probs, "--health-expect is required with --health-check send-expect")
	}
	for _, fv := range [][2]string{{"--health-postgres-user", c.PostgresUser}, {"--health-postgres-database", c.PostgresDatabase}} {
		if strings.IndexByte(fv[1], 0) >= 0 || len(fv[1]) > maxPostgresName {
			probs = append(probs, fmt.Sprintf("%s %q: want at most %d bytes and no NUL", fv[0], fv[1], maxPostgresName))
		}
	}
	if strings.IndexByte(c.MySQLUser, 0) >= 0 || utf8.RuneCountInString(c.MySQLUser) > maxMySQLUser {
		probs = append(probs, fmt.Sprintf("--health-mysql-user %q: want at most %d characters and no NUL", c.MySQLUser, maxMySQLUser))
	}
	if c.Network == "udp" && c.Kind != "send-expect" && c.Kind != "none" {
		probs = append(probs, fmt.Sprintf("--health-check %q: a UDP service can use send-expect or none", c.Kind))
	}
	return append(probs, c.validateTLS()...)
}

// validateTLS reports the problems of the --health-tls flags that need no
// file read.
func (c Config) validateTLS() []string {
	var probs []string
	if c.TLS {
		switch {
		case c.Network == "udp":
			probs = append(probs, "--health-tls with --proto udp: a UDP service's check cannot run over TLS")
		case c.Kind == "postgres" || c.Kind == "mysql":
			probs = append(probs, fmt.Sprintf("--health-tls with --health-check %s: the %s check negotiates TLS inside its own protocol; use tcp, send-expect, redis or grpc", c.Kind, c.Kind))
		case c.Kind == "none":
			probs = append(probs, "--health-tls with --health-check none: there is no check to run over TLS")
		}
	} else {
		for _, fv := range [][2]string{{"--health-tls-ca", c.TLSCA}, {"--health-tls-server-name", c.TLSServerName},
			{"--health-tls-cert", c.TLSCert}, {"--health-tls-key", c.TLSKey}} {
			if fv[1] != "" {
				probs = append(probs, fmt.Sprintf("%s %q: has no effect without --health-tls", fv[0], fv[1]))
			}
		}
	}
	if c.TLSCert != "" && c.TLSKey == "" {
		probs = append(probs, fmt.Sprintf("--health-tls-cert %q: needs --health-tls-key, the certificate's key", c.TLSCert))
	}
	if c.TLSKey != "" && c.TLSCert == "" {
		probs = append(probs, fmt.Sprintf("--health-tls-key %q: needs --health-tls-cert, the key's certificate", c.TLSKey))
	}
	if n := c.TLSServerName; n != "" && (len(n) > 253 || strings.ContainsFunc(n, func(r rune) bool { return r <= ' ' || r >= 0x7f })) {
		probs = append(probs, fmt.Sprintf("--health-tls-server-name %q: want a host name of at most 253 ASCII characters, no spaces", n))
	}
	return probs
}

// CheckFiles reads the --health-tls CA bundle, client certificate and key
// that c names, when its check runs over TLS, and reports every problem
// (missing, unreadable, not PEM, a key that does not match its
// certificate), each naming the flag and the file. Validate does not read
// files; call both at start.
func (c Config) CheckFiles() []string {
	if !c.TLS || len(c.validateTLS()) > 0 {
		return nil
	}
	_, probs := loadTLSMaterial(c.TLSCA, c.TLSCert, c.TLSKey)
	return probs
}

// NewChecker returns the checker c.Kind names; nil for "none". A check
// over TLS with certificate files logs nothing when a rotated file is bad;
// see NewCheckerLog.
func NewChecker(c Config) (Checker, error) { return NewCheckerLog(c, zap.NewNop()) }

// NewCheckerLog is NewChecker with a logger, which a check over TLS uses
// to say, once per new version, that rotated certificate files are bad
// (the last good ones stay in use), and when it rereads them.
func NewCheckerLog(c Config, log *zap.Logger) (Checker, error) {
	var src *tlsSource
	if c.TLS && c.Kind != "none" {
		if probs := c.validateTLS(); len(probs) > 0 {
			return nil, errors.New(strings.Join(probs, "; "))
		}
		var err error
		if src, err = newTLSSource(c, log); err != nil {
			return nil, err
		}
	}
	switch c.Kind {
	case "none":
		return nil, nil
	case "tcp":
		return tcpCheck{tls: src}, nil
	case "send-expect":
		if c.Network == "udp" {
			return udpSendExpect{send: []byte(unescape(c.Send)), expect: []byte(unescape(c.Expect))}, nil
		}
		return sendExpect{send: []byte(unescape(c.Send)), expect: []byte(unescape(c.Expect)), tls: src}, nil
	case "redis":
		return redisCheck{password: c.RedisPassword, tls: src}, nil
	case "postgres":
		p := postgresCheck{user: c.PostgresUser, database: c.PostgresDatabase}
		if p.user == "" {
			p.user = defaultPostgresUser
		}
		if p.database == "" {
			p.database = defaultPostgresDatabase
		}
		return p, nil
	case "mysql":
		return mysqlCheck{user: c.MySQLUser}, nil
	case "grpc":
		return grpcCheck{service: c.GRPCService, tls: src}, nil
	}
	return nil, fmt.Errorf("unknown health check %q", c.Kind)
}

func unescape(s string) string {
	return strings.NewReplacer(`\r`, "\r", `\n`, "\n", `\t`, "\t", `\\`, `\`).Replace(s)
}

// dial connects over network ("tcp" or "udp") with ctx's deadline
// applied to the whole conversation. ctx's end, a cancellation as much as
// the deadline, ends the conversation at once: a Monitor that stops
// checking a backend, or closes, does not wait out the checks' timeout.
func dial(ctx context.Context, network string, addr netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr.String())
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	// After the check, when its ctx is cancelled, this touches a closed
	// connection: harmless.
	context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return c, nil
}

// dialStream connects over TCP and, when src is set, completes a TLS
// handshake, with dial's deadline.
func dialStream(ctx context.Context, addr netip.AddrPort, src *tlsSource) (net.Conn, error) {
	if src == nil {
		return dial(ctx, "tcp", addr)
	}
	conf, err := src.config(ctx, addr)
	if err != nil {
		return nil, err
	}
	tc, err := dialTLS(ctx, addr, conf)
	if err != nil {
		return nil, err // not a nil *tls.Conn in a net.Conn
	}
	return tc, nil
}

// dialTLS connects over TCP and completes a TLS handshake with conf, with
// dial's deadline.
func dialTLS(ctx context.Context, addr netip.AddrPort, conf *tls.Config) (*tls.Conn, error) {
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		// Conn is set only for a first record that is no TLS record;
		// the other RecordHeaderErrors (an oversized record, a record
		// of another version) come from a backend that speaks TLS, and
		// their messages say what is wrong.
		var rh tls.RecordHeaderError
		if errors.As(err, &rh) && rh.Conn != nil {
			return nil, fmt.Errorf("TLS handshake: the backend does not speak TLS (it answered %q)", rh.RecordHeader[:])
		}
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// tcpCheck passes when a connection opens or, over TLS, when the TLS
// handshake completes and the server keeps the session. In TLS 1.3 a
// server sends its verdict on the client certificate after the client's
// handshake has completed: when the server asked for one, the check
// waits for that verdict (see verdict). The checks that go on talking
// (send-expect, redis, grpc) read it anyway.
type tcpCheck struct{ tls *tlsSource }

func (t tcpCheck) Check(ctx context.Context, addr netip.AddrPort) error {
	if t.tls == nil {
		c, err := dial(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	conf, err := t.tls.config(ctx, addr)
	if err != nil {
		return err
	}
	v := newVerdict(conf)
	start := time.Now()
	c, err := dialTLS(ctx, addr, conf)
	if err != nil {
		return err
	}
	defer c.Close()
	return v.await(ctx, c, time.Since(start))
}

// halfLeft returns d, or half the time left before ctx's deadline when
// that is less: how long a check may wait for something that must not
// fail it, and still do its work in the time left.
func halfLeft(ctx context.Context, d time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return min(d, time.Until(dl)/2)
	}
	return d
}

// minVerdictWait is the least time verdict.await waits for a server's
// verdict on the client certificate.
const minVerdictWait = 50 * time.Millisecond

// verdict is the server's verdict on the client certificate of one TLS
// connection, which in TLS 1.3 comes after the client's handshake has
// completed: an alert (certificate required, bad certificate, unknown
// certificate authority) that the client reads only when it next reads.
// It is the connection's session cache, through which it learns of the
// session tickets a server sends once it has taken the certificate (Go's
// and OpenSSL's do by default). Its fields belong to the goroutine that
// runs the handshake and then await.
type verdict struct {
	asked  bool      // the server asked for a client certificate
	ticket bool      // the server sent a session ticket
	conn   *tls.Conn // the connection, once await reads it
}

// newVerdict returns the verdict of the connection conf is for, and makes
// conf report to it: the server's request for a client certificate, and
// its session tickets. The check resumes no session: Get finds none.
func newVerdict(conf *tls.Config) *verdict {
	v := &verdict{}
	get := conf.GetClientCertificate
	conf.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		v.asked = true
		if get == nil {
			return &tls.Certificate{}, nil // none to send
		}
		return get(cri)
	}
	conf.ClientSessionCache = v
	return v
}

// Get finds no session to resume.
func (v *verdict) Get(string) (*tls.ClientSessionState, bool) { return nil, false }

// Put is called for each session ticket; in TLS 1.3, in a read of the
// connection, which it ends: the server has taken the certificate.
func (v *verdict) Put(string, *tls.ClientSessionState) {
	v.ticket = true
	if v.conn != nil {
		v.conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// await returns the server's refusal of c, the connection of v, when a
// TLS 1.3 server that asked for a client certificate refuses it; hs is
// how long the dial and handshake took. It reads c: an alert, or the
// server hanging up, is a refusal; a session ticket or application data
// (a server that speaks first) is not, and ends the read. So does
// silence until the wait ends: hs (at least two round trips), but at
// least minVerdictWait, and at most half the time left before ctx's
// deadline, so a tight timeout does not fail a check that passes. A
// passing check of a TLS 1.3 server that asks for a client certificate
// thus takes longer by a round trip and the server's verification of the
// certificate, until its first ticket (Go's and OpenSSL's servers over
// loopback: 2 to 8 ms a check in all, 2026-11-22, the 2-core dev VM); of
// a server that sends no tickets and waits for its client, by the whole
// wait.
func (v *verdict) await(ctx context.Context, c *tls.Conn, hs time.Duration) error {
	if !v.asked || c.ConnectionState().Version != tls.VersionTLS13 {
		return nil // in TLS 1.2 a refusal fails the handshake
	}
	wait := halfLeft(ctx, max(hs, minVerdictWait))
	v.conn = c
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	switch {
	case ctx.Err() != nil:
		return ctx.Err() // dial's AfterFunc ended the read
	case err == nil || v.ticket || errors.Is(err, os.ErrDeadlineExceeded):
		return nil
	}
	return fmt.Errorf("TLS session refused after the handshake: %w", err)
}

type sendExpect struct {
	send, expect []byte
	tls          *tlsSource // nil: plain text
}

func (s sendExpect) Check(ctx context.Context, addr netip.AddrPort) error {
	c, err := dialStream(ctx, addr, s.tls)
	if err != nil {
		return err
	}
	defer c.Close()
	if len(s.send) > 0 {
		if _, err := c.Write(s.send); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	return expect(c, s.expect, 64<<10)
}

// expect reads until want appears or max bytes were read without it.
func expect(r io.Reader, want []byte, max int) error {
	buf := make([]byte, 0, 512)
	tmp := make([]byte, 512)
	for len(buf) < max {
		n, err := r.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if bytes.Contains(buf, want) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("expected %q, got %q: %w", want, clip(buf), err)
		}
	}
	return fmt.Errorf("expected %q within %d bytes, got %q", want, max, clip(buf))
}

func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// udpSendExpect sends one datagram and wants a reply containing expect.
// An ICMP port unreachable fails it at once (the connected socket reports
// ECONNREFUSED).
type udpSendExpect struct{ send, expect []byte }

func (u udpSendExpect) Check(ctx context.Context, addr netip.AddrPort) error {
	c, err := dial(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(u.send); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("no reply containing %q: %w", u.expect, err)
		}
		if bytes.Contains(buf[:n], u.expect) {
			return nil
		}
	}
}

type redisCheck struct {
	password string
	tls      *tlsSource // nil: plain text
}

func (r redisCheck) Check(ctx context.Context, addr netip.AddrPort) error {
	c, err := dialStream(ctx, addr, r.tls)
	if err != nil {
		return err
	}
	defer c.Close()
	var req []byte
	if r.password != "" {
		req = fmt.Appendf(req, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(r.password), r.password)
	}
	req = append(req, "*1\r\n$4\r\nPING\r\n"...)
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("send PING: %w", err)
	}
	br := newLineReader(c)
	if r.password != "" {
		line, err := br.line()
		if err != nil {
			return fmt.Errorf("read AUTH reply: %w", err)
		}
		if line != "+OK" {
			return r.authRefused(br, line)
		}
	}
	line, err := br.line()
	if err != nil {
		return fmt.Errorf("read PING reply: %w", err)
	}
	if line != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// authRefused returns the error for line, an answer other than +OK where
// the AUTH reply belongs. A server that refuses the connection as it
// accepts it (maxclients, protected mode) sends its error there too, and
// hangs up; after an AUTH reply the PING reply follows. So an error line
// followed by the end of the connection is the server's refusal, not the
// password's.
func (r redisCheck) authRefused(br *lineReader, line string) error {
	if strings.HasPrefix(line, "-") {
		if _, err := br.line(); errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("server refused the connection: %q", line)
		}
	}
	return fmt.Errorf("AUTH refused: %q", line)
}

// lineReader reads CRLF-terminated lines of at most 512 bytes.
type lineReader struct {
	r   io.Reader
	buf []byte
}

func newLineReader(r io.Reader) *lineReader { return &lineReader{r: r} }

func (l *lineReader) line() (string, error) {
	tmp := make([]byte, 256)
	for {
		if i := bytes.Index(l.buf, []byte("\r\n")); i >= 0 {
			s := string(l.buf[:i])
			l.buf = l.buf[i+2:]
			return s, nil
		}
		if len(l.buf) > 512 {
			return "", fmt.Errorf("line too long: %q", clip(l.buf))
		}
		n, err := l.r.Read(tmp)
		l.buf = append(l.buf, tmp[:n]...)
		if err != nil && n == 0 {
			return "", err
		}
	}
}

// The postgres check's defaults, and the longest user or database name it
// sends (PostgreSQL's NAMEDATALEN is 64 with the NUL).
const (
	defaultPostgresUser     = "sluice_health"
	defaultPostgresDatabase = "postgres"
	maxPostgresName         = 63
)

// postgresCheck asks for a session the way libpq does by default
// (sslmode=prefer) and passes when the server is willing to start one.
//
// It sends an SSLRequest, which a PostgreSQL server answers with one byte,
// 'S' or 'N'; after 'S' it does the TLS handshake without verifying the
// certificate (it sends no secret, and it must reach servers that take
// only TLS sessions). A handshake that fails with time left is followed,
// as libpq's sslmode=prefer does, by a second connection in plain text,
// which starts with the StartupMessage: a server whose TLS Go cannot speak
// (a cipher suite Go lacks, such as DHE or CBC with SHA-384; TLS below
// 1.2) still serves libpq's clients, so the check goes by the plain-text
// answer (the server may log each failed handshake). A check that fails
// both ways names both errors. Then it sends a StartupMessage and reads
// the first answer. The server refuses a session it cannot serve before
// it asks who the client is, so:
//
//   - An authentication request ('R') means the server accepts sessions.
//     The check hangs up without answering, which the server does not log.
//     A refusal the server makes only once it knows the user (the slots
//     kept for superusers, a role's connection limit) cannot be seen this
//     way: name a user the server lets in without a password
//     (--health-postgres-user, a trust line in pg_hba.conf) to see those.
//   - After AuthenticationOk (trust) the check reads on: ReadyForQuery
//     means a session has started, and the check ends it with a Terminate
//     message; an ErrorResponse is taken as below.
//   - An ErrorResponse of class 28 (invalid authorization: no pg_hba.conf
//     line, no such role) or 3D000 (no such database) means it would
//     accept sessions of other users.
//   - Any other ErrorResponse, such as 57P03 (starting up, shutting down,
//     in recovery without hot standby) or 53300 (too many clients),
//     means it refuses sessions: the check fails with its message.
type postgresCheck struct{ user, database string }

// postgres protocol constants.
const (
	pgSSLRequestCode = 80877103 // 1234<<16 | 5679
	pgProtocol3      = 196608   // 3<<16 | 0
	pgMaxAnswer      = 16 << 10 // the longest first answer read
)

// errTLSHandshake marks the postgres check's failed TLS handshakes.
var errTLSHandshake = errors.New("TLS handshake")

func (p postgresCheck) Check(ctx context.Context, addr netip.AddrPort) error {
	err := p.attempt(ctx, addr, true)
	if !errors.Is(err, errTLSHandshake) || ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return err // passed, failed otherwise, or out of time
	}
	if perr := p.attempt(ctx, addr, false); perr != nil {
		return fmt.Errorf("%w; then in plain text: %w", err, perr)
	}
	return nil
}

// attempt is one connection of the check: it starts with an SSLRequest
// when askTLS is set, else with the StartupMessage.
func (p postgresCheck) attempt(ctx context.Context, addr netip.AddrPort, askTLS bool) error {
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer func() { c.Close() }() // c becomes the TLS connection, which closes both
	if askTLS {
		if c, err = p.negotiateTLS(ctx, c); err != nil {
			return err
		}
	}
	if _, err := c.Write(p.startupMessage()); err != nil {
		return fmt.Errorf("send StartupMessage: %w", err)
	}
	typ, body, err := readPGMessage(c)
	if err != nil {
		return fmt.Errorf("read answer to StartupMessage: %w", err)
	}
	if typ == 'R' && len(body) < 4 {
		return fmt.Errorf("authentication request ('R') of %d bytes, too short for its code: not a PostgreSQL server", len(body))
	}
	if typ == 'R' && binary.BigEndian.Uint32(body) == 0 { // AuthenticationOk
		if typ, body, err = readPGSessionStart(c); err != nil {
			return err
		}
		if typ == 'Z' {
			if _, err := c.Write([]byte{'X', 0, 0, 0, 4}); err != nil {
				return fmt.Errorf("send Terminate: %w", err)
			}
			return nil
		}
	}
	switch typ {
	case 'R':
		return nil
	case 'E':
		f := pgFields(body)
		if code := f['C']; strings.HasPrefix(code, "28") || code == "3D000" {
			return nil
		}
		msg := fmt.Sprintf("%s %s: %s", cmp.Or(f['V'], f['S']), f['C'], f['M'])
		if d := f['D']; d != "" {
			msg += " (" + d + ")"
		}
		return fmt.Errorf("server refuses sessions: %s", msg)
	}
	return fmt.Errorf("StartupMessage answered with message type %q, not a PostgreSQL server", typ)
}

// negotiateTLS sends an SSLRequest on c and returns the connection to go
// on with: c after 'N', a TLS client over c after 'S'. On error the
// caller still closes c.
func (p postgresCheck) negotiateTLS(ctx context.Context, c net.Conn) (net.Conn, error) {
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:], 8)
	binary.BigEndian.PutUint32(req[4:], pgSSLRequestCode)
	if _, err := c.Write(req[:]); err != nil {
		return c, fmt.Errorf("send SSLRequest: %w", err)
	}
	// One byte exactly: anything after it, before the handshake, could be
	// injected by a man in the middle.
	var ans [1]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		return c, fmt.Errorf("read SSLRequest answer: %w", err)
	}
	switch ans[0] {
	case 'N':
		return c, nil
	case 'S':
		// InsecureSkipVerify: see postgresCheck; nothing secret is sent.
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			return c, fmt.Errorf("%w: %w", errTLSHandshake, err)
		}
		return tc, nil
	}
	return c, fmt.Errorf("SSLRequest answered %q, not a PostgreSQL server", ans[0])
}

// pgMaxStartMessages bounds the messages read between AuthenticationOk
// and ReadyForQuery (parameter statuses, the key data, notices).
const pgMaxStartMessages = 64

// readPGSessionStart reads the messages that follow AuthenticationOk up to
// ReadyForQuery ('Z') or an ErrorResponse ('E'), and returns that one.
func readPGSessionStart(r io.Reader) (typ byte, body []byte, err error) {
	for range pgMaxStartMessages {
		typ, body, err = readPGMessage(r)
		if err != nil {
			return 0, nil, fmt.Errorf("read the session's start: %w", err)
		}
		if typ == 'Z' || typ == 'E' {
			return typ, body, nil
		}
	}
	return 0, nil, fmt.Errorf("no ReadyForQuery within %d messages of AuthenticationOk", pgMaxStartMessages)
}

// startupMessage returns the StartupMessage of protocol 3.0 for p's user
// and database.
func (p postgresCheck) startupMessage() []byte {
	msg := make([]byte, 8, 128)
	binary.BigEndian.PutUint32(msg[4:], pgProtocol3)
	for _, kv := range [][2]string{{"user", p.user}, {"database", p.database}, {"application_name", "sluice-health"}} {
		msg = append(append(append(append(msg, kv[0]...), 0), kv[1]...), 0)
	}
	msg = append(msg, 0)
	binary.BigEndian.PutUint32(msg[0:], uint32(len(msg)))
	return msg
}

// readPGMessage reads one backend message: a type byte, an int32 length
// that counts itself, and the body.
func readPGMessage(r io.Reader) (typ byte, body []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n-4 > pgMaxAnswer {
		return 0, nil, fmt.Errorf("message type %q with length %d, not a PostgreSQL server", hdr[0], n)
	}
	body = make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, fmt.Errorf("read message type %q: %w", hdr[0], err)
	}
	return hdr[0], body, nil
}

// pgFields parses the fields of an ErrorResponse body: each a type byte
// and a NUL-terminated string, up to a NUL type byte.
func pgFields(body []byte) map[byte]string {
	f := make(map[byte]string)
	for len(body) > 1 {
		typ := body[0]
		v, rest, ok := bytes.Cut(body[1:], []byte{0})
		if !ok {
			break
		}
		f[typ] = string(v)
		body = rest
	}
	return f
}

// mysqlCheck reads the server's initial handshake packet (protocol 10): a
// server that sends it is accepting connections, one that sends an ERR
// packet instead (1040 too many connections, 1129 host blocked) is not.
//
// Without a user the check then hangs up. The server counts each such
// connection as an aborted handshake of the balancer's host, and after
// max_connect_errors of them (100 by default) with no login from the host
// in between it blocks the host (1129) until FLUSH HOSTS, and with it the
// connections the balancer forwards. A host on loopback is never blocked.
//
// With a user, as HAProxy's mysql-check does, it answers the greeting with
// a HandshakeResponse41 for that user with an empty auth response (no
// password) and reads the verdict: OK means a session has started, and the
// check ends it with COM_QUIT; ERR 1045 (access denied: the user has a
// password, or is unknown) means the server accepts sessions of other
// users. Neither counts toward max_connect_errors, and an OK resets the
// count. Any other ERR (1040, 1053 shutdown in progress) fails the check
// with its code and message. An authentication switch request is answered
// once, with an empty auth response again.
type mysqlCheck struct{ user string }

// MySQL protocol constants.
const (
	mysqlMaxPacket = 1024 // the longest packet read
	maxMySQLUser   = 80   // the longest user name: MariaDB's (MySQL's is 32)

	mysqlClientLongPassword     = 1 << 0 // CLIENT_MYSQL to MariaDB
	mysqlClientProtocol41       = 1 << 9
	mysqlClientSecureConnection = 1 << 15
	mysqlClientPluginAuth       = 1 << 19

	mysqlCharsetUTF8    = 33   // utf8_general_ci, known to every server
	mysqlAccessDenied   = 1045 // ER_ACCESS_DENIED_ERROR
	mysqlFastAuthOK     = 3    // caching_sha2_password: the cached hash matched
	mysqlMaxAuthPackets = 4    // the packets read after the handshake response
)

// mysqlGreeting is what the check needs of the initial handshake.
type mysqlGreeting struct {
	caps   uint32
	plugin string // the auth plugin it names; "" when it names none
}

// mysqlError is an ERR packet: its error code, its SQL state (empty when
// the server sent none, as before the handshake) and its message.
type mysqlError struct {
	code  uint16
	state string
	msg   string
}

func (e *mysqlError) Error() string {
	if e.state != "" {
		return fmt.Sprintf("ERROR %d (%s): %q", e.code, e.state, e.msg)
	}
	return fmt.Sprintf("ERROR %d: %q", e.code, e.msg)
}

func (m mysqlCheck) Check(ctx context.Context, addr netip.AddrPort) error {
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return m.converse(c)
}

// converse is the check's conversation over an open connection.
func (m mysqlCheck) converse(rw io.ReadWriter) error {
	body, err := readMySQLPacket(rw, "handshake", 0)
	if err != nil {
		return err
	}
	switch body[0] {
	case 10:
	case 0xff:
		return fmt.Errorf("server refused: %w", parseMySQLError(body))
	default:
		return fmt.Errorf("unknown handshake protocol %d", body[0])
	}
	_, rest, ok := bytes.Cut(body[1:], []byte{0})
	if !ok {
		return errors.New("handshake without a server version")
	}
	if m.user == "" {
		return nil
	}
	g, err := parseMySQLGreeting(rest)
	if err != nil {
		return err
	}
	if g.caps&mysqlClientProtocol41 == 0 {
		return errors.New("server does not speak protocol 4.1")
	}
	if _, err := rw.Write(m.handshakeResponse(g)); err != nil {
		return fmt.Errorf("send handshake response: %w", err)
	}
	seq := byte(2)
	switched := false
	for range mysqlMaxAuthPackets {
		body, err := readMySQLPacket(rw, "answer to the handshake response", seq)
		if err != nil {
			return err
		}
		switch {
		case body[0] == 0x00: // OK
			if _, err := rw.Write([]byte{1, 0, 0, 0, 0x01}); err != nil {
				return fmt.Errorf("send COM_QUIT: %w", err)
			}
			return nil
		case body[0] == 0xff:
			err := parseMySQLError(body)
			if e, ok := err.(*mysqlError); ok && e.code == mysqlAccessDenied {
				return nil
			}
			return fmt.Errorf("server refused the session: %w", err)
		case body[0] == 0xfe && len(body) > 1 && !switched: // AuthSwitchRequest
			switched = true
			// An empty auth response: no password, for any plugin.
			if _, err := rw.Write([]byte{0, 0, 0, seq + 1}); err != nil {
				return fmt.Errorf("send auth switch response: %w", err)
			}
			seq += 2
		case body[0] == 0x01 && len(body) == 2 && body[1] == mysqlFastAuthOK: // an OK follows
			seq++
		case body[0] == 0xfe || body[0] == 0x01:
			return fmt.Errorf("server asks for more authentication (packet %q), which the check cannot give", clip(body))
		default:
			return fmt.Errorf("handshake response answered with packet type 0x%02x, not a MySQL server", body[0])
		}
	}
	return fmt.Errorf("no OK or ERR within %d packets of the handshake response", mysqlMaxAuthPackets)
}

// handshakeResponse returns the HandshakeResponse41 packet for m's user,
// with an empty auth response, for the server that sent g. It names the
// server's auth plugin when the server names one, so that a server whose
// users have that plugin needs no switch.
func (m mysqlCheck) handshakeResponse(g mysqlGreeting) []byte {
	caps := uint32(mysqlClientLongPassword|mysqlClientProtocol41) | g.caps&mysqlClientSecureConnection
	if g.caps&mysqlClientPluginAuth != 0 {
		caps |= mysqlClientPluginAuth
	}
	p := make([]byte, 4, 64+len(m.user)+len(g.plugin))
	p = binary.LittleEndian.AppendUint32(p, caps)
	p = binary.LittleEndian.AppendUint32(p, 1<<24) // max packet size
	p = append(p, mysqlCharsetUTF8)
	p = append(p, make([]byte, 23)...)
	p = append(append(p, m.user...), 0)
	// The auth response: its length 0 with CLIENT_SECURE_CONNECTION, an
	// empty NUL-terminated string without: the same byte.
	p = append(p, 0)
	if caps&mysqlClientPluginAuth != 0 {
		p = append(append(p, cmp.Or(g.plugin, "mysql_native_password")...), 0)
	}
	n := len(p) - 4
	p[0], p[1], p[2], p[3] = byte(n), byte(n>>8), byte(n>>16), 1
	return p
}

// readMySQLPacket reads one packet, which must have sequence number seq:
// a 3-byte little-endian payload length, the sequence number, the
// payload. The payload it returns is not empty. what names the packet in
// errors.
func readMySQLPacket(r io.Reader, what string, seq byte) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read %s header: %w", what, err)
	}
	n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
	if n < 1 || n > mysqlMaxPacket || hdr[3] != seq {
		return nil, fmt.Errorf("bad %s packet header (length %d, sequence %d)", what, n, hdr[3])
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return body, nil
}

// parseMySQLGreeting parses what follows the protocol version (10) and
// the NUL-terminated server version in a HandshakeV10 packet: the
// connection id, 8 bytes of auth data, a filler, the lower capability
// flags, and optionally the character set, the status flags, the upper
// capability flags, the auth data length, 10 reserved bytes, the rest of
// the auth data and the auth plugin name. A greeting that ends before the
// capability flags has none (no protocol 4.1).
func parseMySQLGreeting(rest []byte) (mysqlGreeting, error) {
	var g mysqlGreeting
	if len(rest) < 15 {
		return g, nil
	}
	g.caps = uint32(binary.LittleEndian.Uint16(rest[13:15]))
	rest = rest[15:]
	if len(rest) < 16 {
		return g, nil
	}
	g.caps |= uint32(binary.LittleEndian.Uint16(rest[3:5])) << 16
	authLen := int(rest[5])
	rest = rest[16:]
	if g.caps&mysqlClientSecureConnection != 0 {
		skip := max(13, authLen-8)
		if len(rest) < skip {
			return g, fmt.Errorf("handshake with %d bytes of auth data where %d were announced", len(rest), skip)
		}
		rest = rest[skip:]
	}
	if g.caps&mysqlClientPluginAuth != 0 {
		name, _, _ := bytes.Cut(rest, []byte{0}) // some servers leave out the NUL
		g.plugin = string(name)
	}
	return g, nil
}

// parseMySQLError parses the payload of an ERR packet: 0xff, the error
// code, with protocol 4.1 after the handshake '#' and a 5-character SQL
// state, then the message, which is clipped to 256 bytes. It returns a
// *mysqlError, or an error that says the packet is malformed.
func parseMySQLError(body []byte) error {
	if len(body) < 3 {
		return fmt.Errorf("ERR packet %q without an error code", body)
	}
	e := &mysqlError{code: binary.LittleEndian.Uint16(body[1:3])}
	msg := body[3:]
	if len(msg) >= 6 && msg[0] == '#' && isSQLState(msg[1:6]) {
		e.state, msg = string(msg[1:6]), msg[6:]
	}
	e.msg = string(msg[:min(len(msg), 256)])
	return e
}

// isSQLState reports whether b is made of the characters of an SQL state:
// digits and capital letters.
func isSQLState(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}

// grpcCheck asks grpc.health.v1.Health/Check over a fresh connection, in
// plain text or over TLS (ALPN h2).
type grpcCheck struct {
	service string
	tls     *tlsSource // nil: plain text
}

func (g grpcCheck) Check(ctx context.Context, addr netip.AddrPort) error {
	creds := insecure.NewCredentials()
	if g.tls != nil {
		conf, err := g.tls.config(ctx, addr)
		if err != nil {
			return err
		}
		creds = credentials.NewTLS(conf)
	}
	// WithNoProxy: like every other check, probe the backend itself, never
	// through an HTTPS_PROXY that happens to be in the environment.
	cc, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(creds), grpc.WithNoProxy())
	if err != nil {
		return err
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: g.service})
	if err != nil {
		return err
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpc health status %s", st)
	}
	return nil
}
