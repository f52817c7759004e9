package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/firewall"
	"github.com/sluice-lb/sluice/internal/tcpproxy"
)

func TestParseGood(t *testing.T) {
	cfg, err := Parse([]string{
		"--listen", "127.0.0.1:7000",
		"--backend", "127.0.0.1:7001",
		"--backend", "[::1]:7002,weight=3",
		"--workers", "3", "--hash-key", "src-ip-port",
		"--connect-timeout", "1s", "--connect-retries", "4",
		"--idle-timeout", "24h", "--max-conns", "100", "--drain-timeout", "5s",
		"--splice", "never", "--pipe-size", "1m", "--log-level", "debug", "--log-format", "json",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	svc := cfg.Services[0]
	want := []balancer.Spec{
		{Addr: netip.MustParseAddrPort("127.0.0.1:7001"), Weight: 1},
		{Addr: netip.MustParseAddrPort("[::1]:7002"), Weight: 3},
	}
	if len(svc.Backends) != 2 || svc.Backends[0] != want[0] || svc.Backends[1] != want[1] {
		t.Fatalf("backends %v", svc.Backends)
	}
	if svc.Name != "default" || svc.Listen.String() != "127.0.0.1:7000" || cfg.Workers != 3 || svc.Proxy.HashKey != balancer.HashSrcIPPort ||
		svc.Proxy.ConnectTimeout != time.Second || svc.Proxy.ConnectRetries != 4 || svc.Proxy.IdleTimeout != 24*time.Hour ||
		cfg.MaxConns != 100 || cfg.DrainTimeout != 5*time.Second || svc.Proxy.Splice != tcpproxy.SpliceNever ||
		cfg.PipeSize != 1<<20 || cfg.LogFormat != "json" || cfg.LogLevel.String() != "debug" {
		t.Fatalf("config %+v", cfg)
	}
	if cfg.MaxPipes < 1 {
		t.Fatalf("no pipes left for splicing: %d", cfg.MaxPipes)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse([]string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	px := cfg.Services[0].Proxy
	if px.ConnectRetries != 2 || px.HashKey != balancer.HashSrcIP || px.Splice != tcpproxy.SpliceAuto {
		t.Fatalf("defaults %+v", px)
	}
	for name, d := range map[string]time.Duration{"connect": px.ConnectTimeout, "idle": px.IdleTimeout, "drain": cfg.DrainTimeout,
		"health interval": cfg.Services[0].Health.Interval, "health timeout": cfg.Services[0].Health.Timeout} {
		if d <= 0 {
			t.Errorf("%s timeout default %v is not finite and positive", name, d)
		}
	}
	if cfg.MaxConns < 1 {
		t.Fatalf("derived max-conns %d", cfg.MaxConns)
	}
	// Connections and pipes together fit the open-file limit.
	if need := 2*cfg.MaxConns + 2*cfg.MaxPipes*cfg.Workers + fdReserve; need > openFileLimit() {
		t.Fatalf("derived limits need %d fds, limit %d", need, openFileLimit())
	}
}

// TestHealthMySQLUser: --health-mysql-user reaches the mysql check's
// config, from the command line and from a config file; it is empty (the
// check hangs up after the greeting) unless given.
func TestHealthMySQLUser(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--health-check", "mysql"}
	cfg, err := Parse(base, io.Discard)
	if err != nil || cfg.Services[0].Health.MySQLUser != "" {
		t.Fatalf("without the flag: user %q, %v; want none", cfg.Services[0].Health.MySQLUser, err)
	}
	cfg, err = Parse(append(base, "--health-mysql-user", "sluice_health"), io.Discard)
	if err != nil || cfg.Services[0].Health.MySQLUser != "sluice_health" {
		t.Fatalf("from the command line: user %q, %v", cfg.Services[0].Health.MySQLUser, err)
	}
	path := writeConf(t, "[service db]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\nhealth-check mysql\nhealth-mysql-user sluice_health\n")
	cfg, err = Parse([]string{"--config", path}, io.Discard)
	if err != nil || cfg.Services[0].Health.MySQLUser != "sluice_health" {
		t.Fatalf("from a config file: user %q, %v", cfg.Services[0].Health.MySQLUser, err)
	}
	_, err = Parse(append(base, "--health-mysql-user", strings.Repeat("u", 81)), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--health-mysql-user") {
		t.Fatalf("a user of 81 characters: %v, want a problem naming --health-mysql-user", err)
	}
}

// TestParseBad: each bad command line yields a UsageError whose lines name
// the flag and the offending value.
func TestParseBad(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001"}
	cases := []struct {
		name string
		args []string
		want []string // substrings of the one problem line
	}{
		{"unknown flag", append(base, "--bogus", "1"), []string{"--bogus"}},
		{"bad listen", []string{"--listen", "localhost", "--backend", "127.0.0.1:1"}, []string{"--listen", `"localhost"`}},
		{"port out of range", []string{"--listen", "127.0.0.1:70000", "--backend", "127.0.0.1:1"}, []string{"--listen", "70000"}},
		{"backend port out of range", []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:65536"}, []string{"--backend", "65536"}},
		{"no backend", []string{"--listen", "127.0.0.1:7000"}, []string{"backend"}},
		{"no listen", []string{"--backend", "127.0.0.1:1"}, []string{"--listen"}},
		{"bad backend", append(base, "--backend", "db.example:5432"), []string{"--backend", `"db.example:5432"`}},
		{"bad weight", append(base, "--backend", "127.0.0.1:2,weight=-1"), []string{"--backend", "weight"}},
		{"duplicate backend", append(base, "--backend", "127.0.0.1:7001"), []string{"--backend", "twice"}},
		{"duplicate xdp-iface", append(base, "--xdp-iface", "eth0", "--xdp-iface", "eth1", "--xdp-iface", "eth0"), []string{"--xdp-iface", `"eth0"`, "twice"}},
		{"negative duration", append(base, "--idle-timeout", "-5s"), []string{"--idle-timeout", "-5s"}},
		{"zero connect timeout", append(base, "--connect-timeout", "0s"), []string{"--connect-timeout", "0s"}},
		{"bad duration", append(base, "--drain-timeout", "soon"), []string{"--drain-timeout", "soon"}},
		{"duration that would overflow the loop clock", append(base, "--idle-timeout", "2562047h"), []string{"--idle-timeout", "2562047h", "ten years"}},
		{"UDP session timeout too long", []string{"--proto", "udp", "--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--udp-session-timeout", "87601h"}, []string{"--udp-session-timeout", "87601h"}},
		{"bad workers", append(base, "--workers", "0"), []string{"--workers", "0"}},
		{"bad retries", append(base, "--connect-retries", "-1"), []string{"--connect-retries", "-1"}},
		{"bad hash key", append(base, "--hash-key", "dst"), []string{"--hash-key", "dst"}},
		{"bad splice", append(base, "--splice", "sometimes"), []string{"--splice", "sometimes"}},
		{"bad pipe size", append(base, "--pipe-size", "12q"), []string{"--pipe-size", "12q"}},
		{"tiny pipe", append(base, "--pipe-size", "100"), []string{"--pipe-size", "100"}},
		{"bad log level", append(base, "--log-level", "loud"), []string{"--log-level", "loud"}},
		{"bad log format", append(base, "--log-format", "xml"), []string{"--log-format", "xml"}},
		{"negative max conns", append(base, "--max-conns", "-3"), []string{"--max-conns", "-3"}},
		{"max conns over fd limit", append(base, "--max-conns", "1000000"), []string{"--max-conns", "1000000", "open-file limit is 20000", "at most"}},
		// 2*N wrapped to a negative count that fit any limit.
		{"max conns whose double wraps", append(base, "--max-conns", "4611686018427387904"), []string{"--max-conns", `"4611686018427387904"`, "want 1 to 8388608"}},
		{"max conns at the int limit", append(base, "--max-conns", "9223372036854775807"), []string{"--max-conns", `"9223372036854775807"`, "want 1 to 8388608"}},
		{"max conns just over the cap", append(base, "--max-conns", "8388609"), []string{"--max-conns", `"8388609"`, "want 1 to 8388608"}},
		{"max conns beside UDP sessions", []string{"--proto", "udp", "--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--udp-max-sessions", "15000", "--max-conns", "5000"},
			[]string{"--max-conns", `"5000"`, "15000 of them for --udp-max-sessions", "open-file limit is 20000"}},
		{"UDP sessions over fd limit", []string{"--proto", "udp", "--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--workers", "1", "--udp-max-sessions", "100000"},
			[]string{"--udp-max-sessions", `"100000"`, "needs 100263 file descriptors", "open-file limit is 20000", "at most 19737"}},
		{"stray argument", append(base, "extra"), []string{`"extra"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The open-file limit of the fuzz tests, whatever the machine's.
			_, err := parse(tc.args, io.Discard, 20000, true)
			var ue *UsageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want a UsageError", err)
			}
			if len(ue.Problems) != 1 {
				t.Fatalf("want one problem line, got %q", ue.Problems)
			}
			for _, w := range tc.want {
				if !strings.Contains(ue.Problems[0], w) {
					t.Errorf("problem %q does not mention %q", ue.Problems[0], w)
				}
			}
		})
	}
}

// TestFDSizing: connections, sessions and pipes share the open-file limit
// to the last descriptor, and never a negative share.
func TestFDSizing(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--workers", "1"}
	udp := []string{"--proto", "udp", "--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--workers", "1"}
	// With one loop and one service, 260 descriptors are kept back; with
	// the admin endpoint on, 65 more (its listener and 64 connections).
	admin := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--workers", "1", "--admin-addr", "127.0.0.1:9090"}
	cases := []struct {
		name       string
		args       []string
		limit      int
		ok         bool
		conns      int // when ok
		pipes      int
		wantInProb string // when not ok
	}{
		{"derived", base, 20000, true, 6580, 3290, ""},
		{"every fd to connections", append(base, "--max-conns", "9870"), 20000, true, 9870, 0, ""},
		{"one connection too many", append(base, "--max-conns", "9871"), 20000, false, 0, 0, "at most 9870"},
		{"derived, with the admin endpoint", admin, 20000, true, 6558, 3279, ""},
		{"every fd to connections but the admin endpoint's", append(admin, "--max-conns", "9837"), 20000, true, 9837, 0, ""},
		{"one connection too many for the admin endpoint's", append(admin, "--max-conns", "9838"), 20000, false, 0, 0, "at most 9837"},
		{"limit too low for the admin endpoint and a connection", admin, 327, false, 0, 0, "the admin endpoint and one connection need 328"},
		{"near the cap with the largest limit", append(base, "--max-conns", "8388000"), 1 << 24, true, 8388000, 478, ""},
		{"UDP sessions to the last fd", append(udp, "--udp-max-sessions", "19737"), 20000, true, 1, 0, ""},
		{"one UDP session too many", append(udp, "--udp-max-sessions", "19738"), 20000, false, 0, 0, "--udp-max-sessions \"19738\""},
		// Four loops own at least a session each: a cap of 1 is 4
		// sockets, and 272 descriptors are kept back.
		{"a UDP cap below the loop count, to the last fd", append(udp, "--workers", "4", "--udp-max-sessions", "1", "--max-conns", "1"), 278, true, 1, 0, ""},
		{"a UDP cap below the loop count, one fd short", append(udp, "--workers", "4", "--udp-max-sessions", "1", "--max-conns", "1"), 277, false, 0, 0, "at least one per loop"},
		{"limit too low for anything", base, 200, false, 0, 0, "too low to proxy anything"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parse(tc.args, io.Discard, tc.limit, true)
			if !tc.ok {
				var ue *UsageError
				if !errors.As(err, &ue) || len(ue.Problems) != 1 || !strings.Contains(ue.Problems[0], tc.wantInProb) {
					t.Fatalf("err = %v, want one problem with %q", err, tc.wantInProb)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.MaxConns != tc.conns || cfg.MaxPipes != tc.pipes {
				t.Fatalf("max conns %d, pipes per loop %d; want %d and %d", cfg.MaxConns, cfg.MaxPipes, tc.conns, tc.pipes)
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	_, err := Parse([]string{"--listen", "x", "--backend", "y", "--workers", "0"}, io.Discard)
	var ue *UsageError
	if !errors.As(err, &ue) || len(ue.Problems) != 3 {
		t.Fatalf("want 3 problems, got %v", err)
	}
}

func TestHelpListsEveryFlagWithUnits(t *testing.T) {
	var out bytes.Buffer
	if _, err := Parse([]string{"--help"}, &out); !errors.Is(err, ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	for _, f := range []string{"--listen", "--backend", "--workers", "--hash-key", "--connect-timeout", "--connect-retries",
		"--idle-timeout", "--max-conns", "--drain-timeout", "--splice", "--pipe-size", "--log-level", "--log-format"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("help lacks %s", f)
		}
	}
	if !strings.Contains(out.String(), "bytes") || !strings.Contains(out.String(), "duration") {
		t.Error("help does not give units")
	}
}

func writeConf(t *testing.T, body string) string {
	t.Helper()
	path := t.TempDir() + "/sluice.conf"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigFile(t *testing.T) {
	path := writeConf(t, `# comment
workers 3
drain-timeout 7s

[service pg]
listen 127.0.0.1:6432
backend 127.0.0.1:5432
backend 127.0.0.1:5433,weight=2
health-check postgres
close-on-down

[service cache]
listen 127.0.0.1:6380
backend 127.0.0.1:6379
hash-key src-ip-port
`)
	cfg, err := Parse([]string{"--config", path, "--workers", "1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Workers != 1 {
		t.Errorf("command line did not override the file: workers %d", cfg.Workers)
	}
	if cfg.DrainTimeout != 7*time.Second {
		t.Errorf("drain timeout %v", cfg.DrainTimeout)
	}
	if len(cfg.Services) != 2 || cfg.Services[0].Name != "pg" || cfg.Services[1].Name != "cache" {
		t.Fatalf("services %+v", cfg.Services)
	}
	pg, cache := cfg.Services[0], cfg.Services[1]
	if len(pg.Backends) != 2 || pg.Backends[1].Weight != 2 || pg.Health.Kind != "postgres" || !pg.CloseOnDown {
		t.Errorf("pg %+v", pg)
	}
	if cache.Proxy.HashKey != balancer.HashSrcIPPort || cache.CloseOnDown || cache.Health.Kind != "tcp" {
		t.Errorf("cache %+v", cache)
	}
}

func TestConfigFileErrors(t *testing.T) {
	cases := map[string]struct{ body, want string }{
		"service flag in globals": {"listen 127.0.0.1:1\n[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n", ":1: \"listen\" is a service setting"},
		"unknown key":             {"[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\nbogus 1\n", ":4: unknown flag: --bogus"},
		"bad section":             {"[svc a]\n", ":1: bad section"},
		"duplicate service":       {"[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n[service a]\nlisten 127.0.0.1:4\nbackend 127.0.0.1:3\n", ":4: service \"a\" defined twice"},
		"bad value":               {"[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\nidle-timeout -1s\n", "sluice.conf:4: service a: --idle-timeout \"-1s\""},
		"bad repeated value":      {"[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\nbackend 127.0.0.1:99999\nbackend 127.0.0.1:4\n", "sluice.conf:4: service a: --backend \"127.0.0.1:99999\""},
		"bad health value":        {"[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n\nhealth-interval 1ns\n", "sluice.conf:5: service a: --health-interval \"1ns\""},
		"problem of the section":  {"\n[service a]\nlisten 127.0.0.1:2\n", "sluice.conf:2: service a: no backend"},
		"bad global of the file":  {"workers 1\nadmin-addr bogus\n[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n", "sluice.conf:2: --admin-addr \"bogus\""},
		"NaN":                     {"[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\nhash-balance-factor NaN\n", "sluice.conf:4: service a: --hash-balance-factor \"NaN\""},
		"no services":             {"workers 1\n", "no service"},
		"bad global value":        {"workers many\n[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n", "sluice.conf:1: invalid argument \"many\" for \"--workers\""},
		"unknown global key":      {"\n# c\nbogus 1\n[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n", "sluice.conf:3: unknown flag: --bogus"},
		"control character":       {"wor\rkers 1\n[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n", `sluice.conf:1: unknown flag: --wor\rkers`},
		"global after a section":  {"workers 1\n[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n\nworkers 2\n", `sluice.conf:6: "workers" is a global setting: put it before the first [service NAME] section`},
		"config in a section":     {"[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\nconfig x\n", `sluice.conf:4: "config" cannot be set in the config file`},
		"same listen twice":       {"[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n[service b]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n", "also the address of service \"a\""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]string{"--config", writeConf(t, tc.body)}, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	_, err := Parse([]string{"--config", writeConf(t, "[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n"), "--listen", "127.0.0.1:9"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--listen: with --config") {
		t.Fatalf("service flag beside --config: %v", err)
	}
	// A missing file is one problem, not also "no service".
	_, err = Parse([]string{"--config", "/nonexistent/sluice.conf"}, io.Discard)
	var ue *UsageError
	if !errors.As(err, &ue) || len(ue.Problems) != 1 || !strings.Contains(ue.Problems[0], "/nonexistent/sluice.conf") {
		t.Fatalf("missing config file: %v", err)
	}
}

// Comments may follow a setting or a section header, and a tab may
// separate a key from its value.
func TestConfigFileCommentsAndTabs(t *testing.T) {
	cfg, err := Parse([]string{"--config", writeConf(t, "workers\t1 # one loop\n"+
		"[service a]  # main\nlisten\t127.0.0.1:2\nbackend 127.0.0.1:3,weight=2 # primary\nbackend 127.0.0.1:4\t# spare\n")}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if cfg.Workers != 1 || s.Name != "a" || len(s.Backends) != 2 || s.Backends[0].Weight != 2 {
		t.Fatalf("parsed %+v", cfg)
	}
	// Only a # after a space or tab starts a comment: "127.0.0.1:4#5"
	// is a value, and a bad one.
	if !strings.Contains(err2str(Parse([]string{"--config", writeConf(t, "[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:4#5\n")}, io.Discard)), "--backend \"127.0.0.1:4#5\"") {
		t.Fatal("a # inside a value was taken for a comment")
	}
}

// The values of free-text keys keep their #: bytes a check sends or
// expects, a password.
func TestConfigFileFreeTextKeepsHash(t *testing.T) {
	cfg, err := Parse([]string{"--config", writeConf(t, "[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n"+
		"health-check send-expect\nhealth-send INFO replication\nhealth-expect # Replication  # the INFO header\n")}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Services[0].Health.Expect; got != "# Replication  # the INFO header" {
		t.Fatalf("health-expect %q", got)
	}
}

func err2str(_ Config, err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// A global flag on the command line replaces the file's setting, a
// repeatable one too.
func TestCommandLineOverridesFile(t *testing.T) {
	path := writeConf(t, "xdp-iface lo\ndeny-cidr 198.18.0.0/16\ndeny-cidr 198.19.0.0/16\nworkers 1\n[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n")
	cfg, err := Parse([]string{"--config", path, "--deny-cidr", "198.18.7.0/24", "--workers", "2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Firewall.Rules.Deny; len(d) != 1 || d[0].String() != "198.18.7.0/24" || cfg.Workers != 2 {
		t.Fatalf("deny %v, workers %d; want [198.18.7.0/24] and 2", d, cfg.Workers)
	}
	cfg, err = Parse([]string{"--config", path}, io.Discard)
	if err != nil || len(cfg.Firewall.Rules.Deny) != 2 || cfg.Workers != 1 {
		t.Fatalf("file alone: deny %v, workers %d, %v", cfg.Firewall.Rules.Deny, cfg.Workers, err)
	}
}

func TestBackendsFile(t *testing.T) {
	path := writeConf(t, "# fleet\n127.0.0.1:5432\n127.0.0.1:5433 weight=3 # big one\n\n")
	specs, err := ReadBackendsFile(path)
	if err != nil || len(specs) != 2 || specs[1].Weight != 3 {
		t.Fatalf("specs %v, %v", specs, err)
	}
	for body, want := range map[string]string{
		"127.0.0.1:1\nnope\n":        "line 2",
		"127.0.0.1:1\n127.0.0.1:1\n": "already on line 1",
		"127.0.0.1:1 weight=5000\n":  "line 1",
	} {
		if _, err := ReadBackendsFile(writeConf(t, body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", body, err, want)
		}
	}
}

// TestBackendsFileFIFO: a backends file that is a FIFO is refused at once,
// not waited on for a writer: start-up or a reload would hang there.
func TestBackendsFileFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "backends")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := ReadBackendsFile(fifo)
		got <- err
	}()
	select {
	case err := <-got:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("err = %v, want not a regular file", err)
		}
	case <-time.After(5 * time.Second):
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close() // lets the blocked open return
		}
		t.Fatal("ReadBackendsFile of a FIFO still blocked after 5 s")
	}
}

// TestBackendsFileBesideConfig: a relative backends-file in the config file
// is the file beside the config file, wherever sluice runs from (under
// systemd, /); an absolute one is kept.
func TestBackendsFileBesideConfig(t *testing.T) {
	conf := writeConf(t, "[service a]\nlisten 127.0.0.1:2\nbackends-file pool.backends\n"+
		"[service b]\nlisten 127.0.0.1:3\nbackends-file /nonexistent/b.backends\n")
	dir := filepath.Dir(conf)
	if err := os.WriteFile(filepath.Join(dir, "pool.backends"), []byte("127.0.0.1:5432\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseReload([]string{"--config", conf})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Services[0].BackendsFile, filepath.Join(dir, "pool.backends"); got != want {
		t.Errorf("relative backends-file: %q, want %q", got, want)
	}
	if got := cfg.Services[1].BackendsFile; got != "/nonexistent/b.backends" {
		t.Errorf("absolute backends-file: %q", got)
	}
}

// TestFirewallSizeProblems: rule sets larger than the program's maps are
// bad invocations naming the flag, counting each service's own port once,
// not start-up failures.
func TestFirewallSizeProblems(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--xdp-iface", "eth0"}
	ports := func(n int, extra ...string) []string {
		args := slices.Clone(base)
		for p := 1; len(args) < len(base)+2*n; p++ {
			if p != 7000 {
				args = append(args, "--protect-port", fmt.Sprintf("tcp/%d", p))
			}
		}
		return append(args, extra...)
	}
	// 1023 and the service's own port: the most the map holds; the
	// service's port given again counts once.
	if _, err := Parse(ports(firewall.MaxPorts-1, "--protect-port", "tcp/7000"), io.Discard); err != nil {
		t.Fatalf("%d ports and the service's: %v", firewall.MaxPorts-1, err)
	}
	_, err := Parse(ports(firewall.MaxPorts), io.Discard)
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), fmt.Sprintf("--protect-port: %d ports to protect", firewall.MaxPorts+1)) {
		t.Fatalf("%d ports and the service's: %v, want a usage error naming --protect-port", firewall.MaxPorts, err)
	}
	deny := slices.Clone(base)
	for i := range firewall.MaxPrefixes + 1 {
		deny = append(deny, "--deny-cidr", netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)}).String()+"/32")
	}
	_, err = Parse(deny, io.Discard)
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), fmt.Sprintf("--deny-cidr: %d IPv4 and 0 IPv6 prefixes", firewall.MaxPrefixes+1)) {
		t.Fatalf("%d deny prefixes: %v, want a usage error naming --deny-cidr", firewall.MaxPrefixes+1, err)
	}
}

func TestFirewallFlags(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001"}
	cfg, err := Parse(append(base, "--xdp-iface", "eth0", "--deny-cidr", "198.18.0.0/15", "--allow-cidr", "2001:db8::/32",
		"--rate-limit", "100", "--rate-burst", "20", "--protect-port", "tcp/22", "--protect-port", "53"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fw := cfg.Firewall
	if len(fw.Ifaces) != 1 || len(fw.Rules.Deny) != 1 || len(fw.Rules.Allow) != 1 || fw.Rules.RateLimit != 100 ||
		fw.Rules.RateBurst != 20 || len(fw.Rules.Ports) != 3 {
		t.Fatalf("firewall %+v", fw)
	}
	for _, bad := range [][]string{
		{"--xdp-iface", "eth0", "--deny-cidr", "198.18.0.1/15"},
		{"--xdp-iface", "eth0", "--allow-cidr", "nonsense"},
		{"--xdp-iface", "eth0", "--xdp-mode", "turbo"},
		{"--xdp-iface", "eth0", "--protect-port", "sctp/9"},
		{"--xdp-iface", "eth0", "--rate-burst", "5"},
		{"--deny-cidr", "198.18.0.0/15"},
	} {
		_, err := Parse(append(base, bad...), io.Discard)
		var ue *UsageError
		if !errors.As(err, &ue) || len(ue.Problems) != 1 {
			t.Errorf("%v: err = %v, want one problem", bad, err)
		}
	}
}

// TestREADMEConfigExample keeps the README's config file example valid.
func TestREADMEConfigExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "### Config file")
	if !ok {
		t.Fatal("README has no config file section")
	}
	_, block, ok := strings.Cut(rest, "```\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("no example block in the config file section")
	}
	cfg, err := Parse([]string{"--config", writeConf(t, block)}, io.Discard)
	if err != nil {
		t.Fatalf("README example: %v", err)
	}
	if len(cfg.Services) != 2 || cfg.Services[1].Proto != "udp" || len(cfg.Firewall.Ifaces) != 1 {
		t.Fatalf("README example parsed to %+v", cfg)
	}
}

// TestSettingsChanged: two parses of a config file name exactly the
// settings whose values differ, a flag set to its default being no change.
func TestSettingsChanged(t *testing.T) {
	base := "workers 1\n[service a]\nlisten 127.0.0.1:2\nbackends-file a.backends\nidle-timeout 1h\n"
	cases := []struct {
		name      string
		body      string
		args      []string // besides --config
		global, a []string
	}{
		{"same file", base, nil, nil, nil},
		{"a default spelled out", base + "splice auto\nhealth-rise 2\n", nil, nil, nil},
		{"a service setting", strings.Replace(base, "idle-timeout 1h", "idle-timeout 5s", 1), nil, nil, []string{"idle-timeout"}},
		{"several, path included", base + "backend 127.0.0.1:3\nhealth-check none\nbackends-file b.backends\n", nil, nil, []string{"backend", "backends-file", "health-check"}},
		{"a global", "drain-timeout 5s\nxdp-iface lo\ndeny-cidr 198.18.0.0/15\n" + base, nil, []string{"deny-cidr", "drain-timeout", "xdp-iface"}, nil},
		{"the command line's global wins", "workers 3\n" + strings.TrimPrefix(base, "workers 1\n"), []string{"--workers", "1"}, nil, nil},
	}
	// One path, rewritten, as for a reload.
	path := writeConf(t, base)
	parseFile := func(t *testing.T, body string, args ...string) Config {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := ParseReload(append([]string{"--config", path}, args...))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	was := parseFile(t, base)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			now := parseFile(t, tc.body, tc.args...)
			if got := was.Settings.Changed(now.Settings); !slices.Equal(got, tc.global) {
				t.Errorf("global settings changed: %q, want %q", got, tc.global)
			}
			if got := was.Services[0].Settings.Changed(now.Services[0].Settings); !slices.Equal(got, tc.a) {
				t.Errorf("service a's settings changed: %q, want %q", got, tc.a)
			}
		})
	}
}

// TestSettingsSameValues: the same values written another way are no
// change: an address or a prefix spelled otherwise, a log level in
// capitals, the default health check by name, a list in another order.
func TestSettingsSameValues(t *testing.T) {
	svc := "[service a]\nbackend 127.0.0.1:3\naccept-proxy-protocol true\n"
	was := "log-level info\nadmin-addr 127.0.0.1:9\nxdp-iface lo\nxdp-iface eth0\n" + svc +
		"listen 127.0.0.1:2\nproxy-protocol-trusted 10.0.0.0/8\nproxy-protocol-trusted 2001:db8::1/128\n"
	now := "log-level INFO\nadmin-addr [::ffff:127.0.0.1]:9\nxdp-iface eth0\nxdp-iface lo\n" + svc +
		"listen [::ffff:127.0.0.1]:2\nhealth-check tcp\nproxy-protocol-trusted 2001:db8:0::1\nproxy-protocol-trusted 10.0.0.0/8\n"
	path := writeConf(t, was)
	a, err := Parse([]string{"--config", path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(now), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := Parse([]string{"--config", path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Settings.Changed(b.Settings); got != nil {
		t.Errorf("global settings changed: %q, want none", got)
	}
	if got := a.Services[0].Settings.Changed(b.Services[0].Settings); got != nil {
		t.Errorf("service a's settings changed: %q, want none", got)
	}
}

// TestSettingsHoldEveryFlag: a flag added later is compared by a reload
// without a list to update.
func TestSettingsHoldEveryFlag(t *testing.T) {
	cfg, err := Parse([]string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fs := newFlagSet()
	addGlobalFlags(fs, &globalVals{})
	addServiceFlags(fs, &serviceVals{})
	fs.VisitAll(func(f *pflag.Flag) {
		_, global := cfg.Settings[f.Name]
		_, service := cfg.Services[0].Settings[f.Name]
		if global == service {
			t.Errorf("--%s: in the global settings %v, in the service's %v; want it in exactly one", f.Name, global, service)
		}
	})
}

// TestPassiveFallInForce: --passive-fall is off where it cannot act (a TCP
// service without an active check, a UDP service) and kept where it acts;
// out of range it is refused wherever it is given. Service.Changed names
// it when its value and what is in force both change, not when it only
// says another number where it is off.
func TestPassiveFallInForce(t *testing.T) {
	tcp := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001"}
	udp := []string{"--proto", "udp", "--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001"}
	none := append(tcp, "--health-check", "none")
	udpChecked := append(udp, "--health-check", "send-expect", "--health-send", "ping", "--health-expect", "pong")
	parse := func(t *testing.T, args []string, fall string) Service {
		t.Helper()
		cfg, err := Parse(append(args[:len(args):len(args)], "--passive-fall", fall), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Services[0]
	}
	for _, c := range []struct {
		name string
		args []string
		want int
	}{
		{"tcp check", tcp, 5},
		{"no check", none, 0},
		{"udp", udp, 0},
		{"udp with a check", udpChecked, 0},
	} {
		if got := parse(t, c.args, "5").PassiveFall; got != c.want {
			t.Errorf("%s, --passive-fall 5: in force %d, want %d", c.name, got, c.want)
		}
	}
	for _, c := range []struct {
		name             string
		was, now         []string
		wasFall, nowFall string
		want             []string
	}{
		{"tcp check", tcp, tcp, "3", "5", []string{"passive-fall"}},
		{"no check", none, none, "3", "5", nil},
		{"udp", udp, udp, "3", "5", nil},
		{"udp with a check", udpChecked, udpChecked, "3", "5", nil},
		{"off, then written otherwise without a check", tcp, none, "0", "5", []string{"health-check"}},
		{"a check added", none, tcp, "3", "3", []string{"health-check"}},
		{"a check added, and the fall changed", none, tcp, "3", "5", []string{"health-check", "passive-fall"}},
		{"the check taken away, and the fall changed", tcp, none, "3", "5", []string{"health-check", "passive-fall"}},
	} {
		if got := parse(t, c.was, c.wasFall).Changed(parse(t, c.now, c.nowFall)); !slices.Equal(got, c.want) {
			t.Errorf("%s: changed %q, want %q", c.name, got, c.want)
		}
	}
	_, err := Parse(append(none, "--passive-fall", "1001"), io.Discard)
	var ue *UsageError
	if !errors.As(err, &ue) || len(ue.Problems) != 1 || !strings.Contains(ue.Problems[0], `--passive-fall "1001"`) {
		t.Fatalf("--passive-fall 1001 with no check: %v, want it refused", err)
	}
}

// TestUncheckedHealthSettings: under --health-check none the settings of
// the active check change nothing, so Service.Changed does not name them;
// where a check runs in either parse they are named.
func TestUncheckedHealthSettings(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001"}
	parse := func(t *testing.T, args ...string) Service {
		t.Helper()
		cfg, err := Parse(append(base[:len(base):len(base)], args...), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Services[0]
	}
	for _, c := range []struct {
		name     string
		was, now []string
		want     []string
	}{
		{"no check, interval and rise", []string{"--health-check", "none"}, []string{"--health-check", "none", "--health-interval", "5s", "--health-rise", "4"}, nil},
		{"no check, and a check", []string{"--health-check", "none"}, []string{"--health-interval", "5s"}, []string{"health-check", "health-interval"}},
		{"a check, interval", nil, []string{"--health-interval", "5s"}, []string{"health-interval"}},
		{"no check, and a timeout beside a real change", []string{"--health-check", "none"}, []string{"--health-check", "none", "--health-timeout", "3s", "--idle-timeout", "5m"}, []string{"idle-timeout"}},
	} {
		if got := parse(t, c.was...).Changed(parse(t, c.now...)); !slices.Equal(got, c.want) {
			t.Errorf("%s: changed %q, want %q", c.name, got, c.want)
		}
	}
}
