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
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// answer is the script of a peer that reads exactly req and then writes
// each of answers in its own Write (nil req: read nothing), then waits
// for the check to hang up.
func answer(tb testing.TB, req []byte, answers ...string) func(c net.Conn) {
	return func(c net.Conn) {
		if len(req) > 0 && !readExactly(tb, c, req) {
			return
		}
		for _, a := range answers {
			if _, err := io.WriteString(c, a); err != nil {
				return // the check may hang up before reading everything
			}
		}
		silent(c)
	}
}

// hangUp is the script of a peer that reads exactly req and closes the
// connection without answering.
func hangUp(tb testing.TB, req []byte) func(c net.Conn) {
	return func(c net.Conn) {
		if len(req) > 0 {
			readExactly(tb, c, req)
		}
	}
}

// wantErr checks err against want: "" means healthy, anything else must
// be a substring of the error.
func wantErr(tb testing.TB, err error, want string) {
	tb.Helper()
	switch {
	case want == "" && err != nil:
		tb.Fatalf("check failed on a healthy peer: %v", err)
	case want != "" && err == nil:
		tb.Fatalf("check passed, want an error containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		tb.Fatalf("check error %q does not contain %q", err, want)
	}
}

func TestTCPCheck(t *testing.T) {
	t.Parallel()
	ch := newChecker(t, Config{Kind: "tcp"})
	t.Run("listening", func(t *testing.T) {
		p := startPeer(t, "127.0.0.1", silent)
		if err := runCheck(ch, p.addr); err != nil {
			t.Fatalf("check of a listening port: %v", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		err := runCheck(ch, closedAddr(t))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("check of a closed port: %v, want ECONNREFUSED", err)
		}
	})
}

func TestSendExpectCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		send, expect string // as configured, with escapes
		script       func(tb testing.TB) func(net.Conn)
		wantErr      string
	}{
		{
			name: "match", send: `PING\r\n`, expect: `+PONG`,
			script: func(tb testing.TB) func(net.Conn) {
				return answer(tb, []byte("PING\r\n"), "+PONG\r\n")
			},
		},
		{
			name: "match split over writes", send: `PING\r\n`, expect: `+PONG\r\n`,
			script: func(tb testing.TB) func(net.Conn) {
				return answer(tb, []byte("PING\r\n"), "+P", "ON", "G\r", "\n")
			},
		},
		{
			name: "banner without send", send: "", expect: `220 `,
			script: func(tb testing.TB) func(net.Conn) {
				return answer(tb, nil, "220 mx.example.net ESMTP ready\r\n")
			},
		},
		{
			name: "match after other lines", send: `GET /healthz HTTP/1.0\r\n\r\n`, expect: `\r\n\r\nok`,
			script: func(tb testing.TB) func(net.Conn) {
				return answer(tb, []byte("GET /healthz HTTP/1.0\r\n\r\n"),
					"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
			},
		},
		{
			name: "escaped backslash stays a backslash", send: `a\\nb\t`, expect: `\\n`,
			script: func(tb testing.TB) func(net.Conn) {
				return answer(tb, []byte("a\\nb\t"), `got a\nb`)
			},
		},
		{
			name: "mismatch then close", send: `PING\r\n`, expect: `+PONG`,
			script: func(tb testing.TB) func(net.Conn) {
				return func(c net.Conn) {
					if readExactly(tb, c, []byte("PING\r\n")) {
						io.WriteString(c, "-ERR unknown command 'PING'\r\n")
					}
				}
			},
			wantErr: `expected "+PONG", got "-ERR unknown command 'PING'\r\n": EOF`,
		},
		{
			name: "CRLF expected, LF sent", send: `HELLO\r\n`, expect: `OK\r\n`,
			script: func(tb testing.TB) func(net.Conn) {
				return func(c net.Conn) {
					if readExactly(tb, c, []byte("HELLO\r\n")) {
						io.WriteString(c, "OK\n")
					}
				}
			},
			wantErr: `expected "OK\r\n", got "OK\n"`,
		},
		{
			name: "hang up without answer", send: `PING\r\n`, expect: `+PONG`,
			script: func(tb testing.TB) func(net.Conn) {
				return hangUp(tb, []byte("PING\r\n"))
			},
			wantErr: "EOF",
		},
		{
			name: "no match within 64 KiB", send: "", expect: `OK`,
			script: func(tb testing.TB) func(net.Conn) {
				return answer(tb, nil, strings.Repeat("x", 70<<10))
			},
			wantErr: `expected "OK" within 65536 bytes, got "xxxx`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startPeer(t, "127.0.0.1", tc.script(t))
			ch := newChecker(t, Config{Kind: "send-expect", Send: tc.send, Expect: tc.expect})
			wantErr(t, runCheck(ch, p.addr), tc.wantErr)
		})
	}
	t.Run("closed port", func(t *testing.T) {
		t.Parallel()
		ch := newChecker(t, Config{Kind: "send-expect", Send: "x", Expect: "y"})
		if err := runCheck(ch, closedAddr(t)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("check of a closed port: %v, want ECONNREFUSED", err)
		}
	})
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		``:                ``,
		`plain`:           `plain`,
		`PING\r\n`:        "PING\r\n",
		`a\tb`:            "a\tb",
		`\\`:              `\`,
		`\\r\\n`:          `\r\n`,
		`\\\r`:            "\\\r",
		`trailing\`:       `trailing\`,
		`\x41 stays`:      `\x41 stays`,
		"real\r\nbytes":   "real\r\nbytes",
		`\r\n\r\n`:        "\r\n\r\n",
		`QUIT\r\n\\done`:  "QUIT\r\n\\done",
		`\n\n\t\r\\\\end`: "\n\n\t\r\\\\end",
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

const (
	redisPing = "*1\r\n$4\r\nPING\r\n"
	// redisPassword is 15 bytes long, so its bulk length has two digits.
	redisPassword = "s3cr3t-passw0rd"
	redisAuth     = "*2\r\n$4\r\nAUTH\r\n$15\r\n" + redisPassword + "\r\n"
)

// redisScript answers each command of reqs, in order, with the matching
// reply, reading one command before answering it as a Redis server does.
func redisScript(tb testing.TB, reqs []string, replies ...string) func(net.Conn) {
	return func(c net.Conn) {
		for i, req := range reqs {
			if !readExactly(tb, c, []byte(req)) {
				return
			}
			if i < len(replies) {
				if _, err := io.WriteString(c, replies[i]); err != nil {
					return
				}
			}
		}
		silent(c)
	}
}

func TestRedisCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		password string
		script   func(tb testing.TB) func(net.Conn)
		timeout  time.Duration // of the check; 0: checkTimeout
		wantErr  string
	}{
		{
			name: "PONG",
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisPing}, "+PONG\r\n")
			},
		},
		{
			name: "PONG one byte at a time",
			script: func(tb testing.TB) func(net.Conn) {
				return func(c net.Conn) {
					if !readExactly(tb, c, []byte(redisPing)) {
						return
					}
					for _, b := range []byte("+PONG\r\n") {
						if _, err := c.Write([]byte{b}); err != nil {
							return
						}
					}
					silent(c)
				}
			},
		},
		{
			name: "LOADING",
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisPing}, "-LOADING Redis is loading the dataset in memory\r\n")
			},
			wantErr: `PING answered "-LOADING Redis is loading the dataset in memory"`,
		},
		{
			name: "NOAUTH without a password",
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisPing}, "-NOAUTH Authentication required.\r\n")
			},
			wantErr: `PING answered "-NOAUTH Authentication required."`,
		},
		{
			name: "MASTERDOWN",
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisPing},
					"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n")
			},
			wantErr: "MASTERDOWN",
		},
		{
			name: "hang up without answer",
			script: func(tb testing.TB) func(net.Conn) {
				return hangUp(tb, []byte(redisPing))
			},
			wantErr: "read PING reply: EOF",
		},
		{
			name: "line too long",
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisPing}, "+"+strings.Repeat("P", 1000))
			},
			wantErr: "line too long",
		},
		{
			name: "not redis",
			script: func(tb testing.TB) func(net.Conn) {
				return func(c net.Conn) {
					readExactly(tb, c, []byte(redisPing))
					io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
				}
			},
			wantErr: `PING answered "HTTP/1.1 400 Bad Request"`,
		},
		{
			name: "AUTH then PING", password: redisPassword,
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisAuth, redisPing}, "+OK\r\n", "+PONG\r\n")
			},
		},
		{
			name: "WRONGPASS", password: redisPassword,
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisAuth, redisPing},
					"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
					"-NOAUTH Authentication required.\r\n")
			},
			wantErr: `AUTH refused: "-WRONGPASS invalid username-password pair or user is disabled."`,
		},
		{
			name: "AUTH on a server without a password", password: redisPassword,
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisAuth, redisPing},
					"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
					"+PONG\r\n")
			},
			wantErr: `AUTH refused: "-ERR AUTH <password> called without any password`,
		},
		{
			name: "AUTH ok, LOADING", password: redisPassword,
			script: func(tb testing.TB) func(net.Conn) {
				return redisScript(tb, []string{redisAuth, redisPing},
					"+OK\r\n", "-LOADING Redis is loading the dataset in memory\r\n")
			},
			wantErr: "LOADING",
		},
		{
			// Redis at maxclients sends an error as it accepts, where
			// the AUTH reply would be, and hangs up. The script reads
			// the request first, so the check's write cannot fail.
			name: "error on connect, with a password", password: redisPassword,
			script: func(tb testing.TB) func(net.Conn) {
				return func(c net.Conn) {
					readExactly(tb, c, []byte(redisAuth+redisPing))
					io.WriteString(c, "-ERR max number of clients reached\r\n")
				}
			},
			wantErr: `server refused the connection: "-ERR max number of clients reached"`,
		},
		{
			name: "AUTH refused, no PING reply in time", password: redisPassword, timeout: 200 * time.Millisecond,
			script: func(tb testing.TB) func(net.Conn) {
				return func(c net.Conn) {
					readExactly(tb, c, []byte(redisAuth+redisPing))
					io.WriteString(c, "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
					silent(c)
				}
			},
			wantErr: `AUTH refused: "-WRONGPASS`,
		},
		{
			name: "hang up after AUTH", password: redisPassword,
			script: func(tb testing.TB) func(net.Conn) {
				return hangUp(tb, []byte(redisAuth+redisPing))
			},
			wantErr: "read AUTH reply: EOF",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startPeer(t, "127.0.0.1", tc.script(t))
			ch := newChecker(t, Config{Kind: "redis", RedisPassword: tc.password})
			_, err := timedCheck(ch, p.addr, cmp.Or(tc.timeout, checkTimeout))
			wantErr(t, err, tc.wantErr)
		})
	}
}

// pgSSLRequest is the 8-byte SSLRequest: length 8, code 1234<<16 | 5679.
var pgSSLRequest = []byte{0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f}

// pgTerminate is the Terminate message: 'X' and a length of 4.
const pgTerminate = "X\x00\x00\x00\x04"

// pgMessage frames a backend message: its type, an int32 length that
// counts itself, and body.
func pgMessage(typ byte, body string) string {
	n := 4 + len(body)
	return string([]byte{typ, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) + body
}

// pgErrorResponse frames an ErrorResponse message: the severity, code,
// message and, when given, detail fields, each a type byte and a
// NUL-terminated string, and a final NUL.
func pgErrorResponse(severity, code, msg string, detail ...string) string {
	fields := "S" + severity + "\x00V" + severity + "\x00C" + code + "\x00M" + msg + "\x00"
	for _, d := range detail {
		fields += "D" + d + "\x00"
	}
	return pgMessage('E', fields+"\x00")
}

// pgAuth frames an authentication request ('R') with its code and data.
func pgAuth(code byte, data string) string { return pgMessage('R', "\x00\x00\x00"+string(code)+data) }

// pgServer is the script of a PostgreSQL server: it reads the SSLRequest
// and answers 'S' (then a TLS handshake) when tlsConf is set, else 'N';
// then it goes on as pgStartup.
func pgServer(tb testing.TB, tlsConf *tls.Config, user, database, answer string, terminate bool) func(net.Conn) {
	return func(c net.Conn) {
		if !readExactly(tb, c, pgSSLRequest) {
			return
		}
		if tlsConf == nil {
			io.WriteString(c, "N")
		} else {
			io.WriteString(c, "S")
			tc := tls.Server(c, tlsConf)
			if err := tc.Handshake(); err != nil {
				tb.Errorf("peer: TLS handshake: %v", err)
				return
			}
			c = tc
		}
		pgStartup(tb, c, user, database, answer, terminate)
	}
}

// pgStartup reads a StartupMessage of protocol 3.0 from c and checks its
// user and database; writes answer; and then wants the check to send
// nothing but a Terminate when terminate is set, before it hangs up.
func pgStartup(tb testing.TB, c net.Conn, user, database, answer string, terminate bool) {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		tb.Errorf("peer: read StartupMessage: %v", err)
		return
	}
	n, version := binary.BigEndian.Uint32(hdr[:]), binary.BigEndian.Uint32(hdr[4:])
	if n < 9 || n > 1024 || version != 3<<16 {
		tb.Errorf("peer: StartupMessage of length %d, protocol %#x; want protocol 3.0", n, version)
		return
	}
	params := make([]byte, n-8)
	if _, err := io.ReadFull(c, params); err != nil {
		tb.Errorf("peer: read StartupMessage: %v", err)
		return
	}
	got := strings.Split(string(params), "\x00")
	want := []string{"user", user, "database", database, "application_name", "sluice-health", "", ""}
	if !slices.Equal(got, want) {
		tb.Errorf("peer: StartupMessage parameters %q, want %q", got, want)
		return
	}
	io.WriteString(c, answer)
	rest, err := io.ReadAll(c)
	if err != nil {
		tb.Errorf("peer: read after the answer: %v", err)
	}
	if want := map[bool]string{true: pgTerminate}[terminate]; string(rest) != want {
		tb.Errorf("peer: after the answer the check sent %q, want %q", rest, want)
	}
}

// testTLSConfig returns a server TLS config with a fresh certificate for
// 127.0.0.1.
func testTLSConfig(tb testing.TB) *tls.Config {
	tb.Helper()
	leaf := testsrv.NewCA(tb, "sluice test CA").Issue(tb, "postgres.test", []net.IP{net.IPv4(127, 0, 0, 1)}, nil, false)
	return &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}
}

// pgSessionStart is what a server sends a user it lets in without a
// password: AuthenticationOk, a parameter status, the key data, and
// ReadyForQuery.
var pgSessionStart = pgAuth(0, "") + pgMessage('S', "client_encoding\x00UTF8\x00") +
	pgMessage('K', "\x00\x00\x00\x01\x00\x00\x00\x02") + pgMessage('Z', "I")

func TestPostgresCheck(t *testing.T) {
	t.Parallel()
	const user, db = "sluice_health", "postgres" // the defaults
	tlsConf := testTLSConfig(t)
	for _, tc := range []struct {
		name           string
		tls            bool
		user, database string // configured; empty for the defaults
		answer         string // to the StartupMessage
		terminate      bool   // the check must send a Terminate
		wantErr        string
	}{
		{name: "SCRAM asked", answer: pgAuth(10, "SCRAM-SHA-256\x00\x00")},
		{name: "MD5 asked", answer: pgAuth(5, "\x01\x02\x03\x04")},
		{name: "trust: session started", answer: pgSessionStart, terminate: true},
		{
			name:    "trust: slots kept for superusers",
			answer:  pgAuth(0, "") + pgErrorResponse("FATAL", "53300", "remaining connection slots are reserved for non-replication superuser connections"),
			wantErr: "server refuses sessions: FATAL 53300: remaining connection slots are reserved",
		},
		{name: "TLS, SCRAM asked", tls: true, answer: pgAuth(10, "SCRAM-SHA-256\x00\x00")},
		{name: "TLS, trust", tls: true, answer: pgSessionStart, terminate: true},
		{name: "configured user and database", user: "monitor", database: "app", answer: pgAuth(10, "SCRAM-SHA-256\x00\x00")},
		{name: "no pg_hba.conf line", answer: pgErrorResponse("FATAL", "28000",
			`no pg_hba.conf entry for host "127.0.0.1", user "sluice_health", database "postgres", no encryption`)},
		{name: "no such role", answer: pgErrorResponse("FATAL", "28000", `role "sluice_health" does not exist`)},
		{name: "no such database", answer: pgErrorResponse("FATAL", "3D000", `database "postgres" does not exist`)},
		{
			name:    "starting up",
			answer:  pgErrorResponse("FATAL", "57P03", "the database system is starting up"),
			wantErr: "server refuses sessions: FATAL 57P03: the database system is starting up",
		},
		{
			name:    "shutting down",
			answer:  pgErrorResponse("FATAL", "57P03", "the database system is shutting down"),
			wantErr: "server refuses sessions: FATAL 57P03: the database system is shutting down",
		},
		{
			name:    "recovery without hot standby",
			answer:  pgErrorResponse("FATAL", "57P03", "the database system is not accepting connections", "Hot standby mode is disabled."),
			wantErr: "FATAL 57P03: the database system is not accepting connections (Hot standby mode is disabled.)",
		},
		{
			name:    "too many clients",
			answer:  pgErrorResponse("FATAL", "53300", "sorry, too many clients already"),
			wantErr: "server refuses sessions: FATAL 53300: sorry, too many clients already",
		},
		{
			name: "TLS, too many clients", tls: true,
			answer:  pgErrorResponse("FATAL", "53300", "sorry, too many clients already"),
			wantErr: "server refuses sessions: FATAL 53300: sorry, too many clients already",
		},
		{
			name:    "administrator shutdown",
			answer:  pgErrorResponse("FATAL", "57P01", "terminating connection due to administrator command"),
			wantErr: "FATAL 57P01: terminating connection due to administrator command",
		},
		{
			name:    "pgbouncer: unknown database",
			answer:  pgErrorResponse("FATAL", "08P01", "no such database: postgres"),
			wantErr: "FATAL 08P01: no such database: postgres",
		},
		{
			name:    "authentication request without its code",
			answer:  pgMessage('R', ""),
			wantErr: "authentication request ('R') of 0 bytes, too short for its code: not a PostgreSQL server",
		},
		{
			name:    "authentication request with half its code",
			answer:  pgMessage('R', "\x00\x00"),
			wantErr: "authentication request ('R') of 2 bytes",
		},
		{
			name:    "other message type",
			answer:  pgMessage('Z', "I"),
			wantErr: "StartupMessage answered with message type 'Z'",
		},
		{
			name:    "not a message", // the start of an HTTP answer: 'H', then "TTP/" as a length
			answer:  "HTTP/",
			wantErr: "message type 'H' with length 1414811695, not a PostgreSQL server",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var conf *tls.Config
			if tc.tls {
				conf = tlsConf
			}
			wantUser, wantDB := cmp.Or(tc.user, user), cmp.Or(tc.database, db)
			p := startPeer(t, "127.0.0.1", pgServer(t, conf, wantUser, wantDB, tc.answer, tc.terminate))
			ch := newChecker(t, Config{Kind: "postgres", PostgresUser: tc.user, PostgresDatabase: tc.database})
			wantErr(t, runCheck(ch, p.addr), tc.wantErr)
		})
	}
}

// TestPostgresCheckNotPostgres: peers that fail the check before or at
// the StartupMessage.
func TestPostgresCheckNotPostgres(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		script  func(tb testing.TB) func(net.Conn)
		wantErr string
	}{
		{
			name: "ErrorResponse to SSLRequest",
			script: func(tb testing.TB) func(net.Conn) {
				// An ErrorResponse ('E', length, fields): per the
				// protocol only a server predating SSL support
				// answers an SSLRequest this way.
				return answer(tb, pgSSLRequest, pgErrorResponse("FATAL", "0A000",
					"unsupported frontend protocol 1234.5679: server supports 1.0 to 3.0"))
			},
			wantErr: `SSLRequest answered 'E', not a PostgreSQL server`,
		},
		{
			name: "HTTP server",
			script: func(tb testing.TB) func(net.Conn) {
				return answer(tb, pgSSLRequest, "HTTP/1.1 400 Bad Request\r\n\r\n")
			},
			wantErr: `SSLRequest answered 'H'`,
		},
		{
			name: "hang up without answer",
			script: func(tb testing.TB) func(net.Conn) {
				return hangUp(tb, pgSSLRequest)
			},
			wantErr: "read SSLRequest answer: EOF",
		},
		{
			name: "hang up after StartupMessage",
			script: func(tb testing.TB) func(net.Conn) {
				return func(c net.Conn) {
					if !readExactly(tb, c, pgSSLRequest) {
						return
					}
					io.WriteString(c, "N")
					var n [4]byte // read the whole StartupMessage, so closing sends a FIN, not a reset
					if _, err := io.ReadFull(c, n[:]); err == nil {
						io.ReadFull(c, make([]byte, binary.BigEndian.Uint32(n[:])-4))
					}
				}
			},
			wantErr: "read answer to StartupMessage: EOF",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startPeer(t, "127.0.0.1", tc.script(t))
			wantErr(t, runCheck(newChecker(t, Config{Kind: "postgres"}), p.addr), tc.wantErr)
		})
	}
}

// TestPostgresCheckTLSFallback: a server that answers the SSLRequest 'S'
// and then fails the TLS handshake is asked again, as libpq asks with
// sslmode=prefer, on a new connection that starts with the StartupMessage
// in plain text; the check goes by that answer, and names both failures
// when it fails.
func TestPostgresCheckTLSFallback(t *testing.T) {
	t.Parallel()
	const user, db = "sluice_health", "postgres" // the defaults
	tls11 := testTLSConfig(t)
	tls11.MinVersion, tls11.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	for _, tc := range []struct {
		name      string
		breakTLS  func(c net.Conn) // after 'S'
		answer    string           // to the plain-text StartupMessage
		terminate bool             // the check must send a Terminate
		wantErr   string           // after "TLS handshake: ..."
	}{
		{
			name:     "TLS 1.1 only, SCRAM asked",
			breakTLS: func(c net.Conn) { tls.Server(c, tls11).Handshake() },
			answer:   pgAuth(10, "SCRAM-SHA-256\x00\x00"),
		},
		{
			name:      "not a TLS record, trust",
			breakTLS:  func(c net.Conn) { io.WriteString(c, "not a TLS record\n") },
			answer:    pgSessionStart,
			terminate: true,
		},
		{
			name:     "hang up, then starting up",
			breakTLS: func(net.Conn) {},
			answer:   pgErrorResponse("FATAL", "57P03", "the database system is starting up"),
			wantErr:  "; then in plain text: server refuses sessions: FATAL 57P03: the database system is starting up",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var conns atomic.Int32
			p := startPeer(t, "127.0.0.1", func(c net.Conn) {
				switch n := conns.Add(1); n {
				case 1:
					if readExactly(t, c, pgSSLRequest) {
						io.WriteString(c, "S")
						tc.breakTLS(c)
					}
				case 2:
					pgStartup(t, c, user, db, tc.answer, tc.terminate)
				default:
					t.Errorf("peer: connection %d, want 2", n)
				}
			})
			err := runCheck(newChecker(t, Config{Kind: "postgres"}), p.addr)
			wantErr(t, err, tc.wantErr)
			if err != nil && !strings.HasPrefix(err.Error(), "TLS handshake: ") {
				t.Errorf("error %q does not start with the TLS failure", err)
			}
			p.close()
			if n := conns.Load(); n != 2 {
				t.Errorf("the check made %d connections, want 2", n)
			}
		})
	}
}

// TestPostgresCheckTLSTimeout: a handshake that runs out of the check's
// time is not tried again in plain text.
func TestPostgresCheckTLSTimeout(t *testing.T) {
	t.Parallel()
	var conns atomic.Int32
	p := startPeer(t, "127.0.0.1", func(c net.Conn) {
		conns.Add(1)
		answer(t, pgSSLRequest, "S")(c)
	})
	_, err := timedCheck(newChecker(t, Config{Kind: "postgres"}), p.addr, 100*time.Millisecond)
	if !isTimeout(err) || !strings.HasPrefix(err.Error(), "TLS handshake: ") {
		t.Fatalf("check error %v, want a TLS handshake timeout", err)
	}
	p.close()
	if n := conns.Load(); n != 1 {
		t.Errorf("the check made %d connections, want 1", n)
	}
}

// mysqlPacket frames payload as a MySQL packet: 3-byte little-endian
// length, sequence number, payload.
func mysqlPacket(seq byte, payload []byte) string {
	n := len(payload)
	return string(append([]byte{byte(n), byte(n >> 8), byte(n >> 16), seq}, payload...))
}

// mysqlHandshake is the shape of the initial handshake a MySQL 8.0 server
// sends on accept (Protocol::HandshakeV10), 74 bytes of payload.
var mysqlHandshake = mysqlPacket(0, bytes.Join([][]byte{
	{0x0a},                   // protocol version 10
	[]byte("8.0.36\x00"),     // server version, NUL-terminated
	{0x0d, 0x00, 0x00, 0x00}, // connection id 13
	[]byte("\x13\x2f\x5c\x7b\x3e\x61\x0f\x48"), // auth-plugin-data-part-1
	{0x00},           // filler
	{0xff, 0xff},     // capability flags, lower 2 bytes
	{0xff},           // character set: utf8mb4_0900_ai_ci
	{0x02, 0x00},     // status: SERVER_STATUS_AUTOCOMMIT
	{0xff, 0xdf},     // capability flags, upper 2 bytes
	{0x15},           // length of auth-plugin-data: 21
	make([]byte, 10), // reserved
	[]byte("\x26\x51\x0c\x69\x3a\x17\x42\x7e\x05\x60\x2d\x71\x00"), // auth-plugin-data-part-2
	[]byte("caching_sha2_password\x00"),
}, nil))

// mysqlErr is an ERR packet as a server sends it before the handshake,
// when it does not know the client's capabilities: 0xff, the error code
// little-endian, the message, no SQL state.
func mysqlErr(code uint16, msg string) string {
	return mysqlPacket(0, append([]byte{0xff, byte(code), byte(code >> 8)}, msg...))
}

func TestMySQLHandshakeShape(t *testing.T) {
	if len(mysqlHandshake) != 4+74 || mysqlHandshake[:4] != "\x4a\x00\x00\x00" {
		t.Fatalf("handshake packet: %d bytes, header % x", len(mysqlHandshake), mysqlHandshake[:4])
	}
}

func TestMySQLCheck(t *testing.T) {
	t.Parallel()
	const hostRefused = "Host '127.0.0.1' is not allowed to connect to this MySQL server"
	for _, tc := range []struct {
		name    string
		send    []string // written on accept, one Write each
		wantErr string
	}{
		{name: "handshake v10", send: []string{mysqlHandshake}},
		{name: "handshake in pieces", send: []string{mysqlHandshake[:2], mysqlHandshake[2:9], mysqlHandshake[9:]}},
		{
			name: "MariaDB handshake",
			send: []string{mysqlPacket(0, []byte("\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x2a\x00\x00\x00"+
				"abcdefgh\x00\xfe\xf7\x2d\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00"+
				"ijklmnopqrst\x00mysql_native_password\x00"))},
		},
		{name: "ERR host not allowed", send: []string{mysqlErr(1130, hostRefused)}, wantErr: `server refused: ERROR 1130: "` + hostRefused + `"`},
		{name: "ERR too many connections", send: []string{mysqlErr(1040, "Too many connections")}, wantErr: `server refused: ERROR 1040: "Too many connections"`},
		{name: "ERR without message", send: []string{mysqlErr(1040, "")}, wantErr: `server refused: ERROR 1040: ""`},
		{name: "ERR without code", send: []string{mysqlPacket(0, []byte{0xff, 0x10})}, wantErr: `server refused: ERR packet "\xff\x10" without an error code`},
		{name: "HTTP garbage", send: []string{"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"}, wantErr: "bad handshake packet header"},
		{name: "sequence 1", send: []string{"\x4a\x00\x00\x01" + mysqlHandshake[4:]}, wantErr: "sequence 1"},
		{name: "empty packet", send: []string{"\x00\x00\x00\x00"}, wantErr: "length 0"},
		{name: "protocol 9", send: []string{mysqlPacket(0, []byte("\x093.22.0\x00\x01\x00\x00\x00abcdefgh\x00"))}, wantErr: "unknown handshake protocol 9"},
		{name: "version without NUL", send: []string{mysqlPacket(0, []byte("\x0a8.0.36"))}, wantErr: "without a server version"},
		{name: "truncated", send: []string{mysqlHandshake[:40]}, wantErr: "read handshake: "},
		{name: "hang up without answer", send: nil, wantErr: "read handshake header: EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startPeer(t, "127.0.0.1", func(c net.Conn) {
				for _, s := range tc.send {
					if _, err := io.WriteString(c, s); err != nil {
						return
					}
				}
				if tc.name == "truncated" {
					return // close mid-packet
				}
				if tc.send != nil {
					silent(c) // a server waits for the handshake response
				}
			})
			wantErr(t, runCheck(newChecker(t, Config{Kind: "mysql"}), p.addr), tc.wantErr)
		})
	}
}

// TestSilentPeerTimesOut runs every protocol check against a peer that
// accepts and never answers: the check must fail with a timeout at the
// context's deadline, not before and not much after.
func TestSilentPeerTimesOut(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	for name, c := range map[string]Config{
		"send-expect":        {Kind: "send-expect", Send: `PING\r\n`, Expect: "PONG"},
		"send-expect banner": {Kind: "send-expect", Expect: "220 "},
		"redis":              {Kind: "redis"},
		"redis AUTH":         {Kind: "redis", RedisPassword: redisPassword},
		"postgres":           {Kind: "postgres"},
		"mysql":              {Kind: "mysql"},
		"grpc":               {Kind: "grpc"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := startPeer(t, "127.0.0.1", silent)
			elapsed, err := timedCheck(newChecker(t, c), p.addr, timeout)
			if err == nil {
				t.Fatal("check passed against a silent peer")
			}
			if !isTimeout(err) && !isGRPCDeadline(err) {
				t.Fatalf("error %v (%T) is not a timeout", err, err)
			}
			if elapsed < timeout-10*time.Millisecond || elapsed > timeout+time.Second {
				t.Fatalf("check took %v, want about %v", elapsed, timeout)
			}
		})
	}
}

// TestCheckIPv6 runs the checks that format addresses against peers on
// ::1, when the host has IPv6 loopback.
func TestCheckIPv6(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
	p := startPeer(t, "::1", redisScript(t, []string{redisPing}, "+PONG\r\n"))
	if !p.addr.Addr().Is6() {
		t.Fatalf("peer address %v is not IPv6", p.addr)
	}
	if err := runCheck(newChecker(t, Config{Kind: "redis"}), p.addr); err != nil {
		t.Fatalf("redis check on %v: %v", p.addr, err)
	}
	q := startPeer(t, "::1", silent)
	if err := runCheck(newChecker(t, Config{Kind: "tcp"}), q.addr); err != nil {
		t.Fatalf("tcp check on %v: %v", q.addr, err)
	}
	g := startGRPC(t, "::1")
	if err := runCheck(newChecker(t, Config{Kind: "grpc"}), g.addr); err != nil {
		t.Fatalf("grpc check on %v: %v", g.addr, err)
	}
}

func TestNewChecker(t *testing.T) {
	for _, k := range Kinds {
		c := DefaultConfig()
		c.Kind = k
		c.Expect = "x"
		ch, err := NewChecker(c)
		if err != nil || (ch == nil) != (k == "none") {
			t.Errorf("NewChecker(%q) = %v, %v", k, ch, err)
		}
	}
	for _, k := range []string{"", "http", "TCP", "redis "} {
		if ch, err := NewChecker(Config{Kind: k}); err == nil {
			t.Errorf("NewChecker(%q) = %v, want an error", k, ch)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", k)) {
			t.Errorf("NewChecker(%q) error %q does not name the kind", k, err)
		}
	}
}

// TestUDPSendExpect: a UDP send-expect check passes on the expected reply,
// fails on another one, on silence and on a closed port.
func TestUDPSendExpect(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			switch string(buf[:n]) {
			case "ping":
				pc.WriteTo([]byte("pong"), from)
			case "quiet":
			default:
				pc.WriteTo([]byte("what?"), from)
			}
		}
	}()
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	check := func(send string) error {
		c := Config{Kind: "send-expect", Network: "udp", Send: send, Expect: "pong"}
		ch, err := NewChecker(c)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		return ch.Check(ctx, addr)
	}
	if err := check("ping"); err != nil {
		t.Fatalf("healthy peer: %v", err)
	}
	if err := check("other"); err == nil {
		t.Fatal("wrong reply passed")
	}
	if err := check("quiet"); err == nil {
		t.Fatal("silence passed")
	}
	closed, _ := net.ListenPacket("udp", "127.0.0.1:0")
	caddr := netip.MustParseAddrPort(closed.LocalAddr().String())
	closed.Close()
	ch, _ := NewChecker(Config{Kind: "send-expect", Network: "udp", Send: "ping", Expect: "pong"})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := ch.Check(ctx, caddr); err == nil {
		t.Fatal("closed port passed")
	}
}

// TestCheckEndsOnCancel runs every check against a peer that accepts and
// never answers, with a deadline an hour away, and cancels it once the
// peer has its request: the check must end at once (Monitor.Close and Sync
// cancel the checks under way, and Close waits for them).
func TestCheckEndsOnCancel(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]Config{
		"send-expect":     {Kind: "send-expect", Send: `PING\r\n`, Expect: "PONG"},
		"redis":           {Kind: "redis"},
		"postgres":        {Kind: "postgres"},
		"mysql":           {Kind: "mysql"}, // sends nothing: waits for the server's greeting
		"grpc":            {Kind: "grpc"},
		"udp send-expect": {Kind: "send-expect", Network: "udp", Send: "ping", Expect: "pong"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			hold := make(chan struct{})
			defer close(hold)
			reached := make(chan struct{}, 1)
			var addr netip.AddrPort
			if c.Network == "udp" {
				pc, err := net.ListenPacket("udp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
				go func() {
					pc.ReadFrom(make([]byte, 64))
					reached <- struct{}{}
				}()
			} else {
				addr = startPeer(t, "127.0.0.1", func(conn net.Conn) {
					if c.Kind != "mysql" {
						conn.Read(make([]byte, 1)) // a byte of the request
					}
					select {
					case reached <- struct{}{}:
					default:
					}
					<-hold
				}).addr
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			ended := make(chan error, 1)
			go func() { ended <- newChecker(t, c).Check(ctx, addr) }()
			select {
			case <-reached:
			case err := <-ended:
				t.Fatalf("check ended before it was cancelled: %v", err)
			case <-time.After(waitLimit):
				t.Fatalf("the peer saw nothing within %v", waitLimit)
			}
			cancel()
			select {
			case err := <-ended:
				if err == nil {
					t.Fatal("cancelled check passed")
				}
			case <-time.After(waitLimit):
				t.Fatalf("check still running %v after its cancellation", waitLimit)
			}
		})
	}
}
