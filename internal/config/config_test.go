package config

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/balancer"
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
		{"negative duration", append(base, "--idle-timeout", "-5s"), []string{"--idle-timeout", "-5s"}},
		{"zero connect timeout", append(base, "--connect-timeout", "0s"), []string{"--connect-timeout", "0s"}},
		{"bad duration", append(base, "--drain-timeout", "soon"), []string{"--drain-timeout", "soon"}},
		{"bad workers", append(base, "--workers", "0"), []string{"--workers", "0"}},
		{"bad retries", append(base, "--connect-retries", "-1"), []string{"--connect-retries", "-1"}},
		{"bad hash key", append(base, "--hash-key", "dst"), []string{"--hash-key", "dst"}},
		{"bad splice", append(base, "--splice", "sometimes"), []string{"--splice", "sometimes"}},
		{"bad pipe size", append(base, "--pipe-size", "12q"), []string{"--pipe-size", "12q"}},
		{"tiny pipe", append(base, "--pipe-size", "100"), []string{"--pipe-size", "100"}},
		{"bad log level", append(base, "--log-level", "loud"), []string{"--log-level", "loud"}},
		{"bad log format", append(base, "--log-format", "xml"), []string{"--log-format", "xml"}},
		{"negative max conns", append(base, "--max-conns", "-3"), []string{"--max-conns", "-3"}},
		{"max conns over fd limit", append(base, "--max-conns", "100000000"), []string{"--max-conns", "100000000", "open-file limit"}},
		{"stray argument", append(base, "extra"), []string{`"extra"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, io.Discard)
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
