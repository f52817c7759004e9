package health

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// The handshake responses the check sends as user "sluice_health" to
// mysqlHandshake and to the other greetings of these tests: capabilities
// CLIENT_LONG_PASSWORD|CLIENT_PROTOCOL_41, with CLIENT_SECURE_CONNECTION
// and CLIENT_PLUGIN_AUTH when the server has them, max packet 16 MiB,
// charset 33, 23 zero bytes, the user, an empty auth response, and the
// server's auth plugin with CLIENT_PLUGIN_AUTH.
var (
	mysqlLogin       = mysqlResponse(0x00088201, "caching_sha2_password")
	mysqlLoginNative = mysqlResponse(0x00088201, "mysql_native_password")
	mysqlLoginNoPlug = mysqlResponse(0x00008201, "")
)

const mysqlTestUser = "sluice_health"

func mysqlResponse(caps uint32, plugin string) string {
	p := binary.LittleEndian.AppendUint32(nil, caps)
	p = append(p, "\x00\x00\x00\x01\x21"...)
	p = append(p, strings.Repeat("\x00", 23)...)
	p = append(p, mysqlTestUser+"\x00\x00"...)
	if plugin != "" {
		p = append(p, plugin+"\x00"...)
	}
	return mysqlPacket(1, p)
}

// The server's answers after a handshake response (sequence 2 on).
var (
	mysqlOK     = mysqlPacket(2, []byte{0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00})
	mysqlQuit   = "\x01\x00\x00\x00\x01"
	mysqlDenied = mysqlErr41(2, 1045, "28000", "Access denied for user 'sluice_health'@'localhost' (using password: NO)")
	mysqlSwitch = mysqlPacket(2, []byte("\xfemysql_native_password\x00abcdefghijklmnopqrst\x00"))
	mysqlEmpty3 = "\x00\x00\x00\x03" // the empty auth response to a switch
	// mysqlGreetV5 is the greeting of MySQL 5.0: protocol 4.1, no
	// plugin auth.
	mysqlGreetV5 = mysqlPacket(0, bytes.Join([][]byte{
		[]byte("\x0a5.0.96\x00"),
		{0x01, 0x00, 0x00, 0x00}, // connection id
		[]byte("abcdefgh\x00"),   // auth data, filler
		{0x2c, 0xa2},             // capability flags, lower 2 bytes
		{0x08, 0x02, 0x00},       // character set, status
		{0x00, 0x00, 0x00},       // capability flags, upper 2 bytes; auth data length
		make([]byte, 10),         // reserved
		[]byte("ijklmnopqrst\x00"),
	}, nil))
	// mysqlGreetNoPluginName is mysqlHandshake with the plugin name cut
	// off: the check names mysql_native_password.
	mysqlGreetNoPluginName = mysqlPacket(0, []byte(mysqlHandshake[4:len(mysqlHandshake)-len("caching_sha2_password\x00")]))
)

// mysqlErr41 is an ERR packet as a server sends it after the handshake
// response: 0xff, the error code, '#', the SQL state, the message.
func mysqlErr41(seq byte, code uint16, state, msg string) string {
	return mysqlPacket(seq, append([]byte{0xff, byte(code), byte(code >> 8), '#'}, state+msg...))
}

func TestMySQLGreetingShapes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		packet string
		want   mysqlGreeting
	}{
		{"MySQL 8.0", mysqlHandshake, mysqlGreeting{caps: 0xdfffffff, plugin: "caching_sha2_password"}},
		{"MariaDB 10.11", mariaDBHandshake, mysqlGreeting{caps: 0x81fff7fe, plugin: "mysql_native_password"}},
		{"MySQL 5.0", mysqlGreetV5, mysqlGreeting{caps: 0xa22c}},
		{"no plugin name", mysqlGreetNoPluginName, mysqlGreeting{caps: 0xdfffffff}},
	} {
		_, rest, _ := bytes.Cut([]byte(tc.packet[5:]), []byte{0})
		g, err := parseMySQLGreeting(rest)
		if err != nil || g != tc.want {
			t.Errorf("%s: parsed %+v, %v; want %+v", tc.name, g, err, tc.want)
		}
	}
}

// TestMySQLCheckLogin runs the check with --health-mysql-user against
// scripted servers: it passes on OK (and then sends COM_QUIT) or access
// denied (1045), fails with the server's code and message on any other
// error, and fails without a panic on whatever else a server sends.
func TestMySQLCheckLogin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		greeting string   // sent on accept
		login    string   // the handshake response the peer wants ("" reads none)
		script   []string // then, in turn: an answer to send, or "<" and the bytes to read
		hangUp   bool     // then close the connection, not wait for the check to
		wantErr  string
	}{
		{name: "OK", login: mysqlLogin, script: []string{mysqlOK, "<" + mysqlQuit}},
		{name: "access denied", login: mysqlLogin, script: []string{mysqlDenied}},
		{name: "access denied without SQL state", login: mysqlLogin, script: []string{mysqlPacket(2, []byte("\xff\x15\x04Access denied"))}},
		{
			name: "too many connections", login: mysqlLogin, script: []string{mysqlErr41(2, 1040, "08004", "Too many connections")},
			wantErr: `server refused the session: ERROR 1040 (08004): "Too many connections"`,
		},
		{
			name: "shutdown in progress", login: mysqlLogin, script: []string{mysqlErr41(2, 1053, "08S01", "Server shutdown in progress")},
			wantErr: `server refused the session: ERROR 1053 (08S01): "Server shutdown in progress"`,
		},
		{
			name: "SQL state that is not one", login: mysqlLogin, script: []string{mysqlErr41(2, 1152, "a\x00b\nc", "Aborted")},
			wantErr: `ERROR 1152: "#a\x00b\ncAborted"`,
		},
		{name: "auth switch, then OK", login: mysqlLogin, script: []string{mysqlSwitch, "<" + mysqlEmpty3, mysqlPacket(4, []byte{0, 0, 0, 2, 0}), "<" + mysqlQuit}},
		{name: "auth switch, then denied", login: mysqlLogin, script: []string{mysqlSwitch, "<" + mysqlEmpty3, mysqlErr41(4, 1045, "28000", "Access denied")}},
		{
			name: "auth switch twice", login: mysqlLogin, script: []string{mysqlSwitch, "<" + mysqlEmpty3, mysqlPacket(4, []byte("\xfeclient_ed25519\x00abc"))},
			wantErr: `server asks for more authentication (packet "\xfeclient_ed25519\x00abc")`,
		},
		{name: "fast auth, then OK", login: mysqlLogin, script: []string{mysqlPacket(2, []byte{0x01, 0x03}), mysqlPacket(3, []byte{0, 0, 0, 2, 0}), "<" + mysqlQuit}},
		{
			name: "full auth asked", login: mysqlLogin, script: []string{mysqlPacket(2, []byte{0x01, 0x04})},
			wantErr: `server asks for more authentication (packet "\x01\x04")`,
		},
		{
			name: "pre-4.1 auth switch", login: mysqlLogin, script: []string{mysqlPacket(2, []byte{0xfe})},
			wantErr: `server asks for more authentication (packet "\xfe")`,
		},
		{
			name: "fast auth forever", login: mysqlLogin,
			script:  []string{mysqlPacket(2, []byte{1, 3}), mysqlPacket(3, []byte{1, 3}), mysqlPacket(4, []byte{1, 3}), mysqlPacket(5, []byte{1, 3})},
			wantErr: "no OK or ERR within 4 packets",
		},
		{
			name: "HTTP garbage", login: mysqlLogin, script: []string{"HTTP/1.1 400 Bad Request\r\n\r\n"},
			wantErr: "bad answer to the handshake response packet header (length 5526600, sequence 80)",
		},
		{
			name: "unknown packet type", login: mysqlLogin, script: []string{mysqlPacket(2, []byte("\x42hello"))},
			wantErr: "handshake response answered with packet type 0x42, not a MySQL server",
		},
		{name: "sequence 1", login: mysqlLogin, script: []string{mysqlPacket(1, []byte{0, 0, 0})}, wantErr: "sequence 1"},
		{name: "empty packet", login: mysqlLogin, script: []string{"\x00\x00\x00\x02"}, wantErr: "(length 0, sequence 2)"},
		{name: "ERR without code", login: mysqlLogin, script: []string{mysqlPacket(2, []byte{0xff, 0x15})}, wantErr: `ERR packet "\xff\x15" without an error code`},
		{name: "short OK", login: mysqlLogin, script: []string{mysqlOK[:6]}, hangUp: true, wantErr: "read answer to the handshake response: unexpected EOF"},
		{name: "short header", login: mysqlLogin, script: []string{"\x07\x00"}, hangUp: true, wantErr: "read answer to the handshake response header: unexpected EOF"},
		{name: "hang up", login: mysqlLogin, hangUp: true, wantErr: "read answer to the handshake response header: EOF"},
		{name: "MariaDB", greeting: mariaDBHandshake, login: mysqlLoginNative, script: []string{mysqlOK, "<" + mysqlQuit}},
		{name: "greeting without plugin name", greeting: mysqlGreetNoPluginName, login: mysqlLoginNative, script: []string{mysqlOK, "<" + mysqlQuit}},
		{name: "MySQL 5.0: no plugin auth", greeting: mysqlGreetV5, login: mysqlLoginNoPlug, script: []string{mysqlDenied}},
		{
			name: "greeting without capabilities", greeting: mysqlPacket(0, []byte("\x0a4.0.1\x00\x01\x00\x00\x00")),
			wantErr: "server does not speak protocol 4.1",
		},
		{
			name: "greeting short of its auth data", greeting: mysqlPacket(0, []byte(mysqlHandshake[4:4+50])),
			wantErr: "handshake with 11 bytes of auth data where 13 were announced",
		},
		{
			name: "too many connections at once", greeting: mysqlErr(1040, "Too many connections"),
			wantErr: `server refused: ERROR 1040: "Too many connections"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startPeer(t, "127.0.0.1", func(c net.Conn) {
				if _, err := io.WriteString(c, cmp.Or(tc.greeting, mysqlHandshake)); err != nil {
					return
				}
				if tc.login != "" && !readExactly(t, c, []byte(tc.login)) {
					return
				}
				for _, s := range tc.script {
					if want, ok := strings.CutPrefix(s, "<"); ok {
						if !readExactly(t, c, []byte(want)) {
							return
						}
					} else if _, err := io.WriteString(c, s); err != nil {
						return
					}
				}
				if !tc.hangUp {
					silent(c) // until the check hangs up
				}
			})
			wantErr(t, runCheck(newChecker(t, Config{Kind: "mysql", MySQLUser: mysqlTestUser}), p.addr), tc.wantErr)
		})
	}
}

// mariaDBHandshake is the greeting of MariaDB 10.11: its version starts
// with "5.5.5-", its auth plugin is mysql_native_password.
var mariaDBHandshake = mysqlPacket(0, []byte("\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x2a\x00\x00\x00"+
	"abcdefgh\x00\xfe\xf7\x2d\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00"+
	"ijklmnopqrst\x00mysql_native_password\x00"))

// rw joins a reader and a writer.
type rw struct {
	io.Reader
	io.Writer
}

// FuzzMySQLConversation feeds the mysql check, with and without a user,
// arbitrary server bytes: it must end with an answer, never a panic, and
// pass only on a greeting of protocol 10.
func FuzzMySQLConversation(f *testing.F) {
	for _, s := range []string{
		mysqlHandshake + mysqlOK,
		mysqlHandshake + mysqlDenied,
		mysqlHandshake + mysqlSwitch + mysqlPacket(4, []byte{0, 0, 0}),
		mysqlHandshake + mysqlPacket(2, []byte{1, 3}) + mysqlOK,
		mariaDBHandshake + mysqlErr41(2, 1040, "08004", "Too many connections"),
		mysqlGreetV5 + mysqlOK,
		mysqlErr(1129, "Host is blocked"),
		mysqlHandshake[:40],
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, user := range []string{"", mysqlTestUser} {
			var sent bytes.Buffer
			err := mysqlCheck{user: user}.converse(rw{bytes.NewReader(data), &sent})
			if err == nil && (len(data) < 5 || data[3] != 0 || data[4] != 10) {
				t.Fatalf("user %q: passed on %q, which is no greeting", user, data)
			}
			if user == "" && sent.Len() != 0 {
				t.Fatalf("without a user the check sent %q", sent.Bytes())
			}
		}
	})
}

// mariaDBStartTimeout bounds how long a real MariaDB may take to start;
// it needs well under a second on an idle machine.
const mariaDBStartTimeout = 20 * time.Second

// mariaDB is a throwaway MariaDB server for one test.
type mariaDB struct {
	addr   netip.AddrPort // where it listens
	log    lockedBuffer
	exited chan struct{} // closed when the server has exited
}

// mariaDBConfig says where startMariaDB runs a server, and how.
type mariaDBConfig struct {
	// netns is the network namespace to run the server in, one the test
	// has made; there it listens on port 3306 of bind. "" runs it in the
	// test's own namespace, on a free port of 127.0.0.1, with
	// --skip-name-resolve.
	netns string
	bind  netip.Addr
	init  string   // SQL statements the server runs at its start
	opts  []string // further server options
}

// mariaDBCommands returns the paths of mariadbd and mariadb-install-db,
// and skips the test when they are not installed.
func mariaDBCommands(tb testing.TB) (server, installDB string) {
	tb.Helper()
	server, err := exec.LookPath("mariadbd")
	if err != nil {
		server = "/usr/sbin/mariadbd" // Debian's, off a user's PATH
	}
	installDB, err = exec.LookPath("mariadb-install-db")
	if _, serr := os.Stat(server); serr != nil || err != nil {
		tb.Skip("no mariadbd and mariadb-install-db (Debian: mariadb-server): the check against a real MariaDB is not run")
	}
	return server, installDB
}

// startMariaDB installs a data directory in a temporary directory and runs
// MariaDB on it as cfg says. It returns once the server answers a check
// (one with an unknown user, whose access denied counts toward no
// max_connect_errors), and stops the server at cleanup, before the
// temporary directory goes. It skips the test when MariaDB is not
// installed.
func startMariaDB(tb testing.TB, cfg mariaDBConfig) *mariaDB {
	tb.Helper()
	argv := installMariaDB(tb, cfg)
	if cfg.netns != "" {
		// ip netns exec execs mariadbd in its own process: the process
		// started is mariadbd.
		db, err := runMariaDB(tb, append([]string{"ip", "netns", "exec", cfg.netns}, argv...), netip.AddrPortFrom(cfg.bind, 3306))
		if err != nil {
			tb.Fatal(err)
		}
		return db
	}
	var db *mariaDB
	startOnFreePort(tb, func(addr netip.AddrPort) (err error) {
		db, err = runMariaDB(tb, argv, addr)
		return err
	})
	return db
}

// installMariaDB installs a data directory in a temporary directory, and
// returns the command line that runs MariaDB on it as cfg says, but for
// the namespace and the address.
func installMariaDB(tb testing.TB, cfg mariaDBConfig) []string {
	tb.Helper()
	server, installDB := mariaDBCommands(tb)
	dir := tb.TempDir()
	data := filepath.Join(dir, "data")
	common := []string{"--no-defaults", "--datadir=" + data, "--tmpdir=" + dir,
		"--innodb-log-file-size=4M", "--innodb-data-file-path=ibdata1:4M:autoextend"}
	if os.Geteuid() == 0 {
		common = append(common, "--user=root") // mariadbd refuses root unless told
	}
	cmd := exec.Command(installDB, append(common, "--skip-test-db")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	initFile := filepath.Join(dir, "init.sql")
	if err := os.WriteFile(initFile, []byte(cfg.init), 0o600); err != nil {
		tb.Fatal(err)
	}
	argv := append([]string{server}, common...)
	if cfg.netns == "" {
		argv = append(argv, "--skip-name-resolve")
	}
	argv = append(argv, "--socket="+filepath.Join(dir, "sock"), "--pid-file="+filepath.Join(dir, "pid"),
		"--init-file="+initFile, "--skip-log-bin", "--innodb-buffer-pool-size=8M")
	return append(argv, cfg.opts...)
}

// runMariaDB runs argv, a mariadbd command line, on addr, and returns the
// server once it answers a check, or, once it has exited, an error with
// its output. A server that is up is stopped at cleanup.
func runMariaDB(tb testing.TB, argv []string, addr netip.AddrPort) (*mariaDB, error) {
	tb.Helper()
	db := &mariaDB{addr: addr, exited: make(chan struct{})}
	argv = append(argv[:len(argv):len(argv)], "--port="+strconv.Itoa(int(addr.Port())), "--bind-address="+addr.Addr().String())
	srv := exec.Command(argv[0], argv[1:]...)
	srv.Stdout, srv.Stderr = &db.log, &db.log
	if err := srv.Start(); err != nil {
		tb.Fatalf("start mariadbd: %v", err)
	}
	go func() { srv.Wait(); close(db.exited) }()
	stop := func() {
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case <-db.exited:
		case <-time.After(mariaDBStartTimeout):
			srv.Process.Kill()
			<-db.exited
			tb.Errorf("mariadbd did not stop on SIGTERM within %v", mariaDBStartTimeout)
		}
	}
	if err := awaitUp(addr, mysqlCheck{user: "sluice_ready"}, isNil, db.exited, mariaDBStartTimeout); err != nil {
		stop()
		return nil, fmt.Errorf("mariadbd on %v: %w\n%s", addr, err, db.log.String())
	}
	tb.Cleanup(stop)
	return db, nil
}

// awaitLog waits until the server's log holds line n times, and fails the
// test when mariaDBStartTimeout passes first.
func (db *mariaDB) awaitLog(tb testing.TB, line string, n int) {
	tb.Helper()
	for deadline := time.Now().Add(mariaDBStartTimeout); strings.Count(db.log.String(), line) < n; {
		if time.Now().After(deadline) {
			tb.Fatalf("%q not %d times in the server's log within %v:\n%s", line, n, mariaDBStartTimeout, db.log.String())
		}
		time.Sleep(5 * time.Millisecond) // polling: the log is the only signal
	}
}

// expect runs ch against the server, again while the server has no
// connection to spare for its greeting (whileFull), and fails the test
// unless the check passes (want "") or fails with an error containing
// want.
func (db *mariaDB) expect(tb testing.TB, what string, ch Checker, want string) {
	tb.Helper()
	err := whileFull(func() error { return runCheck(ch, db.addr) })
	if want == "" && err != nil {
		tb.Fatalf("%s: %v\n%s", what, err, db.log.String())
	}
	wantErr(tb, err, want)
}

// quietQuits fails the test when the server's log names user: a session
// the check ends with COM_QUIT leaves no line there.
func (db *mariaDB) quietQuits(tb testing.TB, user string) {
	tb.Helper()
	if log := db.log.String(); strings.Contains(log, user) {
		tb.Errorf("the server logged %s:\n%s", user, log)
	}
}

// mysqlCheckers are the checks the tests run against a real server:
// without a user, and as a user without a password, one with a password
// and one the server does not know.
type mysqlCheckers struct{ noUser, noPassword, password, unknown Checker }

func newMySQLCheckers(tb testing.TB) mysqlCheckers {
	tb.Helper()
	return mysqlCheckers{
		noUser:     newChecker(tb, Config{Kind: "mysql"}),
		noPassword: newChecker(tb, Config{Kind: "mysql", MySQLUser: "sluice_nopw"}),
		password:   newChecker(tb, Config{Kind: "mysql", MySQLUser: "sluice_pw"}),
		unknown:    newChecker(tb, Config{Kind: "mysql", MySQLUser: "sluice_nobody"}),
	}
}

// mysqlUsers returns the statements that create the users of
// mysqlCheckers the server knows, for clients from ip.
func mysqlUsers(ip netip.Addr) string {
	return fmt.Sprintf("CREATE USER 'sluice_nopw'@'%s';\nCREATE USER 'sluice_pw'@'%[1]s' IDENTIFIED BY 'secret';\n", ip)
}

// mysqlSession logs in to addr as user, who has no password, and returns
// the session, which is closed at cleanup.
func mysqlSession(tb testing.TB, addr netip.AddrPort, user string) net.Conn {
	tb.Helper()
	var c net.Conn
	var body []byte
	err := whileFull(func() error {
		var err error
		if c, err = net.DialTimeout("tcp", addr.String(), checkTimeout); err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(checkTimeout))
		if body, err = readMySQLPacket(c, "handshake", 0); err == nil && body[0] == 0xff {
			err = fmt.Errorf("server refused: %w", parseMySQLError(body))
		}
		if err != nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	_, rest, _ := bytes.Cut(body[1:], []byte{0})
	g, err := parseMySQLGreeting(rest)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := c.Write(mysqlCheck{user: user}.handshakeResponse(g)); err != nil {
		tb.Fatal(err)
	}
	if body, err = readMySQLPacket(c, "login answer", 2); err != nil || body[0] != 0 {
		tb.Fatalf("login as %s: %q, %v", user, body, err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// whileFull runs f again while it fails because the server has no
// connection to spare (1040 instead of a greeting), for up to slotWait: a
// connection just ended may still hold its slot for a moment.
func whileFull(f func() error) error {
	for deadline := time.Now().Add(slotWait); ; {
		err := f()
		if err == nil || !strings.Contains(err.Error(), "server refused: ERROR 1040:") || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond) // polling: the server signals nothing
	}
}

// TestMySQLCheckRealServer runs the mysql check against MariaDB, on
// loopback, when it is installed. With --health-mysql-user it passes for a
// user without a password (a session, ended with COM_QUIT), one with a
// password and an unknown one (access denied), and fails with 1040 while
// the server is full. TestMySQLCheckRealServerOffLoopback shows what
// max_connect_errors does to a check from elsewhere.
func TestMySQLCheckRealServer(t *testing.T) {
	t.Parallel()
	const maxConns = 10 // MariaDB's least
	db := startMariaDB(t, mariaDBConfig{
		init: mysqlUsers(netip.MustParseAddr("127.0.0.1")),
		opts: []string{fmt.Sprintf("--max-connections=%d", maxConns)},
	})
	ch := newMySQLCheckers(t)
	db.expect(t, "no user", ch.noUser, "")
	db.expect(t, "user without a password", ch.noPassword, "")
	db.expect(t, "user with a password", ch.password, "")
	db.expect(t, "unknown user", ch.unknown, "")

	// Every connection taken (by sessions of a user without SUPER): the
	// server greets the check, and refuses its session once it has logged
	// in. Only a user it lets in sees that.
	var held []net.Conn
	for range maxConns {
		held = append(held, mysqlSession(t, db.addr, "sluice_nopw"))
	}
	db.expect(t, "server full", ch.noPassword, `server refused the session: ERROR 1040 (08004): "Too many connections"`)
	db.expect(t, "server full, no user", ch.noUser, "")
	db.expect(t, "server full, user with a password", ch.password, "")
	for _, c := range held {
		io.WriteString(c, mysqlQuit)
		c.Close()
	}
	db.quietQuits(t, "sluice_nopw")
}

// The addresses of TestMySQLCheckRealServerOffLoopback, 198.18.33.0/30 of
// the benchmarking range, which no other test uses: the check's end of
// the veth pair, in the test's own namespace, and the server's, in the
// namespace the test makes.
var (
	mysqlClientIP = netip.MustParseAddr("198.18.33.1")
	mysqlServerIP = netip.MustParseAddr("198.18.33.2")
)

var mysqlNetnsCount atomic.Int32

// mysqlNetns creates a network namespace for a MariaDB server and a veth
// pair to it, mysqlClientIP/30 on this side and mysqlServerIP/30 on the
// other, all removed in tb.Cleanup; it returns the namespace's name. It
// skips the test unless it runs as root, with iproute2's ip.
//
// MariaDB looks up the name of a client that is not on loopback, unless
// --skip-name-resolve, which also turns max_connect_errors off (MariaDB
// 10.11.19 with it: seven aborted handshakes from mysqlClientIP with
// max_connect_errors 3, and the host still got in). So the server makes
// its lookups, but the namespace's nsswitch.conf sends them to its own
// hosts file alone, which names no client: a lookup fails at once, from a
// file, and no DNS server is asked (its resolv.conf names only the
// namespace's loopback, should anything try DNS).
func mysqlNetns(tb testing.TB) string {
	tb.Helper()
	testsrv.RequireNetns(tb, "runs MariaDB in a network namespace, so that the check's address is not on loopback")
	if _, err := os.Stat("/var/run/nscd/socket"); err == nil {
		tb.Skip("nscd runs here: it would answer the server's lookups with this host's resolver, not the namespace's files")
	}
	subnet := netip.PrefixFrom(mysqlClientIP, 30).Masked()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		tb.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && subnet.Contains(p.Addr()) {
			tb.Fatalf("%s is on an interface here already (another run of this test?): %s", subnet, a)
		}
	}
	pid, n := os.Getpid(), mysqlNetnsCount.Add(1)
	ns := fmt.Sprintf("sl-mysql-%d-%d", pid, n)
	testsrv.Netns(tb, ns, map[string]string{
		"nsswitch.conf": "hosts: files\n",
		"hosts":         "127.0.0.1 localhost\n::1 localhost\n",
		"resolv.conf":   "nameserver 127.0.0.1\n",
	})
	// At most 15 bytes, IFNAMSIZ's limit.
	here, there := fmt.Sprintf("slm%dh%d", pid, n), fmt.Sprintf("slm%dn%d", pid, n)
	testsrv.IP(tb, "link", "add", here, "type", "veth", "peer", "name", there, "netns", ns)
	tb.Cleanup(func() {
		// Deleting the namespace would take the pair with it, but only
		// once no process is left there.
		if out, err := exec.Command("ip", "link", "delete", here).CombinedOutput(); err != nil {
			tb.Errorf("ip link delete %s: %v: %s", here, err, out)
		}
	})
	testsrv.IP(tb, "addr", "add", netip.PrefixFrom(mysqlClientIP, 30).String(), "dev", here)
	testsrv.IP(tb, "link", "set", here, "up")
	testsrv.IP(tb, "-n", ns, "addr", "add", netip.PrefixFrom(mysqlServerIP, 30).String(), "dev", there)
	testsrv.IP(tb, "-n", ns, "link", "set", there, "up")
	return ns
}

// TestMySQLCheckRealServerOffLoopback runs the mysql check against
// MariaDB in a network namespace of its own, over a veth pair, so that the
// server sees the check come from mysqlClientIP, not loopback, and counts
// its aborted handshakes (max_connect_errors 3 here). The checks with a
// user do not count, a session resets the count, and the checks without
// one get the host blocked: the risk the option is for. It needs root, for
// the namespace.
func TestMySQLCheckRealServerOffLoopback(t *testing.T) {
	t.Parallel()
	mariaDBCommands(t) // skip before making the namespace
	db := startMariaDB(t, mariaDBConfig{
		netns: mysqlNetns(t),
		bind:  mysqlServerIP,
		init:  mysqlUsers(mysqlClientIP),
		opts:  []string{"--max-connect-errors=3"},
	})
	ch := newMySQLCheckers(t)
	// The server counts an aborted handshake once the check has gone,
	// and then logs it: the next check waits for the line, so that it
	// finds the count as the steps say.
	aborted := 0
	noUser := func(what string) {
		t.Helper()
		db.expect(t, what, ch.noUser, "")
		aborted++
		db.awaitLog(t, fmt.Sprintf("host: '%s' (This connection closed normally without authentication)", mysqlClientIP), aborted)
	}
	noUser("no user, 1 of 3")
	noUser("no user, 2 of 3")
	db.expect(t, "session", ch.noPassword, "") // resets the count
	noUser("no user after a session, 1 of 3")
	noUser("no user after a session, 2 of 3")
	// Access denied does not count.
	for i := range 3 {
		db.expect(t, fmt.Sprintf("user with a password, %d", i+1), ch.password, "")
		db.expect(t, fmt.Sprintf("unknown user, %d", i+1), ch.unknown, "")
	}
	noUser("no user, 3 of 3")
	db.expect(t, "no user from a blocked host", ch.noUser,
		fmt.Sprintf(`server refused: ERROR 1129: "Host '%s' is blocked because of many connection errors`, mysqlClientIP))
	db.expect(t, "user without a password from a blocked host", ch.noPassword, "ERROR 1129")
	db.quietQuits(t, "sluice_nopw")
}
