package health

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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
	port   uint16
	log    lockedBuffer
	exited chan struct{} // closed when the server has exited
}

// at returns the server's address on ip, one it listens on.
func (db *mariaDB) at(ip netip.Addr) netip.AddrPort { return netip.AddrPortFrom(ip, db.port) }

// startMariaDB installs a data directory in a temporary directory and runs
// MariaDB on it, listening on 127.0.0.1 and on also (when valid), with the
// statements of init run at its start and the given server options. It
// returns once the check finds the server accepting connections, and
// stops the server at cleanup. It skips the test when MariaDB is not
// installed.
func startMariaDB(tb testing.TB, also netip.Addr, init string, opts ...string) *mariaDB {
	tb.Helper()
	server, err := exec.LookPath("mariadbd")
	if err != nil {
		server = "/usr/sbin/mariadbd" // Debian's, off a user's PATH
	}
	installDB, err := exec.LookPath("mariadb-install-db")
	if _, serr := os.Stat(server); serr != nil || err != nil {
		tb.Skip("no mariadbd and mariadb-install-db (Debian: mariadb-server): the check against a real MariaDB is not run")
	}
	dir := tb.TempDir()
	data := filepath.Join(dir, "data")
	common := []string{"--no-defaults", "--datadir=" + data,
		"--innodb-log-file-size=4M", "--innodb-data-file-path=ibdata1:4M:autoextend"}
	if os.Geteuid() == 0 {
		common = append(common, "--user=root") // mariadbd refuses root unless told
	}
	cmd := exec.Command(installDB, append(common, "--skip-test-db")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	initFile := filepath.Join(dir, "init.sql")
	if err := os.WriteFile(initFile, []byte(init), 0o600); err != nil {
		tb.Fatal(err)
	}
	db := &mariaDB{port: uint16(freePort(tb)), exited: make(chan struct{})}
	bind := "127.0.0.1"
	if also.IsValid() {
		bind += "," + also.String()
	}
	args := append(common, "--port="+strconv.Itoa(int(db.port)), "--bind-address="+bind,
		"--socket="+filepath.Join(dir, "sock"), "--pid-file="+filepath.Join(dir, "pid"), "--tmpdir="+dir,
		"--init-file="+initFile, "--skip-log-bin", "--innodb-buffer-pool-size=8M")
	srv := exec.Command(server, append(args, opts...)...)
	srv.Stdout, srv.Stderr = &db.log, &db.log
	if err := srv.Start(); err != nil {
		tb.Fatalf("start mariadbd: %v", err)
	}
	go func() { srv.Wait(); close(db.exited) }()
	tb.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case <-db.exited:
		case <-time.After(mariaDBStartTimeout):
			srv.Process.Kill()
			<-db.exited
			tb.Errorf("mariadbd did not stop on SIGTERM within %v", mariaDBStartTimeout)
		}
	})
	deadline := time.Now().Add(mariaDBStartTimeout)
	for {
		err := runCheck(mysqlCheck{}, db.at(netip.MustParseAddr("127.0.0.1")))
		if err == nil {
			return db
		}
		if time.Now().After(deadline) {
			tb.Fatalf("mariadbd not accepting connections within %v: %v\n%s", mariaDBStartTimeout, err, db.log.String())
		}
		select {
		case <-db.exited:
			tb.Fatalf("mariadbd exited: %v\n%s", err, db.log.String())
		case <-time.After(10 * time.Millisecond): // polling: the server signals nothing
		}
	}
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

// hostAddr returns an IPv4 address of this host that is not on loopback,
// and whose reverse lookup, which MariaDB makes for a client that comes
// from it, answers at once; or the zero Addr.
func hostAddr() netip.Addr {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || !p.Addr().Is4() || p.Addr().IsLoopback() || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err = net.DefaultResolver.LookupAddr(ctx, p.Addr().String())
		cancel()
		var dnsErr *net.DNSError
		if err == nil || (errors.As(err, &dnsErr) && dnsErr.IsNotFound) {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// TestMySQLCheckRealServer runs the mysql check against MariaDB when it
// is installed. With --health-mysql-user it passes for a user without a
// password (a session, ended with COM_QUIT), one with a password and an
// unknown one (access denied), and fails with 1040 while the server is
// full. From an address not on loopback, where MariaDB counts aborted
// handshakes (max_connect_errors 3 here), the checks with a user do not
// count, a session resets the count, and the checks without one get the
// host blocked: the risk the option is for.
func TestMySQLCheckRealServer(t *testing.T) {
	t.Parallel()
	lo := netip.MustParseAddr("127.0.0.1")
	ext := hostAddr()
	var init strings.Builder
	for _, ip := range []netip.Addr{lo, ext} {
		if ip.IsValid() {
			fmt.Fprintf(&init, "CREATE USER 'sluice_nopw'@'%s';\nCREATE USER 'sluice_pw'@'%[1]s' IDENTIFIED BY 'secret';\n", ip)
		}
	}
	const maxConns = 10 // MariaDB's least
	db := startMariaDB(t, ext, init.String(), fmt.Sprintf("--max-connections=%d", maxConns), "--max-connect-errors=3")
	noUser := newChecker(t, Config{Kind: "mysql"})
	noPassword := newChecker(t, Config{Kind: "mysql", MySQLUser: "sluice_nopw"})
	password := newChecker(t, Config{Kind: "mysql", MySQLUser: "sluice_pw"})
	unknown := newChecker(t, Config{Kind: "mysql", MySQLUser: "sluice_nobody"})
	check := func(what string, ch Checker, ip netip.Addr, want string) {
		t.Helper()
		err := whileFull(func() error { return runCheck(ch, db.at(ip)) })
		if want == "" && err != nil {
			t.Fatalf("%s: %v\n%s", what, err, db.log.String())
		} else {
			wantErr(t, err, want)
		}
	}
	check("no user", noUser, lo, "")
	check("user without a password", noPassword, lo, "")
	check("user with a password", password, lo, "")
	check("unknown user", unknown, lo, "")

	// Every connection taken (by sessions of a user without SUPER): the
	// server greets the check, and refuses its session once it has logged
	// in. Only a user it lets in sees that.
	var held []net.Conn
	for range maxConns {
		held = append(held, mysqlSession(t, db.at(lo), "sluice_nopw"))
	}
	check("server full", noPassword, lo, `server refused the session: ERROR 1040 (08004): "Too many connections"`)
	check("server full, no user", noUser, lo, "")
	check("server full, user with a password", password, lo, "")
	for _, c := range held {
		io.WriteString(c, mysqlQuit)
		c.Close()
	}

	if !ext.IsValid() {
		t.Skip("no address off loopback whose reverse lookup answers at once: max_connect_errors not tested")
	}
	// The server counts an aborted handshake once the check has gone,
	// and then logs it: the next check waits for the line, so that it
	// finds the count as the steps say.
	aborted := 0
	noUserFromExt := func(what string) {
		t.Helper()
		check(what, noUser, ext, "")
		aborted++
		db.awaitLog(t, fmt.Sprintf("host: '%s' (This connection closed normally without authentication)", ext), aborted)
	}
	noUserFromExt("no user, 1 of 3")
	noUserFromExt("no user, 2 of 3")
	check("session", noPassword, ext, "") // resets the count
	noUserFromExt("no user after a session, 1 of 3")
	noUserFromExt("no user after a session, 2 of 3")
	// Access denied does not count.
	for i := range 3 {
		check(fmt.Sprintf("user with a password from %s, %d", ext, i+1), password, ext, "")
		check(fmt.Sprintf("unknown user from %s, %d", ext, i+1), unknown, ext, "")
	}
	noUserFromExt("no user, 3 of 3")
	check("no user from a blocked host", noUser, ext,
		fmt.Sprintf(`server refused: ERROR 1129: "Host '%s' is blocked because of many connection errors`, ext))
	check("user without a password from a blocked host", noPassword, ext, "ERROR 1129")
	// A session the check ends with COM_QUIT leaves no line in the log.
	if log := db.log.String(); strings.Contains(log, "sluice_nopw") {
		t.Errorf("the server logged the user without a password:\n%s", log)
	}
}
