package config

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/internal/balancer"
)

// checkOutcome holds for every command line and config file: a Config with
// at least one service, ErrHelp, or a *UsageError whose problems are each
// one non-empty line (sluice prints each as one line and exits 2).
func checkOutcome(t *testing.T, cfg Config, err error, input any) {
	t.Helper()
	var ue *UsageError
	switch {
	case err == nil:
		if len(cfg.Services) == 0 {
			t.Fatalf("%q: no error and no service", input)
		}
	case errors.Is(err, ErrHelp):
	case errors.As(err, &ue):
		if len(ue.Problems) == 0 {
			t.Fatalf("%q: usage error without a problem", input)
		}
		for _, p := range ue.Problems {
			if strings.TrimSpace(p) == "" || strings.ContainsAny(p, "\n\r") {
				t.Fatalf("%q: problem %q is not one line", input, p)
			}
		}
	default:
		t.Fatalf("%q: error of type %T: %v", input, err, err)
	}
}

// FuzzParseArgs: any command line, split at each space, gets a Config or a
// clear usage error, never a panic.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		"--listen 127.0.0.1:7000 --backend 127.0.0.1:7001 --backend 127.0.0.1:7002",
		"--listen 127.0.0.1:7000 --backend 127.0.0.1:7001,weight=3 --hash-key src-ip-port --splice never --pipe-size 1m",
		"--listen [::1]:7000 --backend [::1]:7001 --idle-timeout -1s --connect-retries 9",
		"--listen 127.0.0.1:99999 --backend x",
		"--proto udp --listen 127.0.0.1:5300 --backend 127.0.0.1:5301 --udp-max-sessions 0",
		"--listen 127.0.0.1:7000 --backend 127.0.0.1:7001 --accept-proxy-protocol --proxy-protocol-trusted 10.0.0.0/8",
		"--listen 127.0.0.1:7000 --backend 127.0.0.1:7001 --firewall-iface lo --deny 198.18.0.0/15 --rate-limit 100",
		"--help",
		"--workers 0 --max-conns -1 --log-level loud --log-format yaml",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, " ") // keeps empty args, tabs, CRs and newlines inside args
		cfg, err := parse(args, io.Discard, 20000, true)
		checkOutcome(t, cfg, err, args)
	})
}

// FuzzConfigFile: any config file gets a Config or a clear usage error.
func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		"workers 2\n[service db]\nlisten 127.0.0.1:6432\nbackend 127.0.0.1:5432\nbackend 127.0.0.1:5433 weight=2\n",
		"# comment\n\n[service a]\nlisten 127.0.0.1:1\nbackend 127.0.0.1:2\n[service a]\nlisten 127.0.0.1:3\n",
		"listen 127.0.0.1:1\n[service]\n[service x y]\nbackend\n",
		"[service u]\nproto udp\nlisten 127.0.0.1:5300\nbackend 127.0.0.1:5301\nudp-session-timeout 1m\n",
		"config other.conf\nhelp\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parse([]string{"--config", writeConf(t, string(data))}, io.Discard, 20000, true)
		checkOutcome(t, cfg, err, data)
	})
}

// FuzzBackendsFile: a backends file is taken whole, with valid, distinct
// addresses and weights in range, or refused with a one-line error.
func FuzzBackendsFile(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1:7001\n127.0.0.1:7002 weight=3 # comment\n[::1]:7003,weight=0\n",
		"127.0.0.1:7001\n127.0.0.1:7001\n",
		"10.0.0.1:0\n[fe80::1%eth0]:80\n10.0.0.1:80 weight=1001\n10.0.0.1:80 color=red\n",
		"::ffff:127.0.0.1:80\n[::ffff:127.0.0.1]:80\n127.0.0.1:80\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		specs, err := ReadBackendsFile(writeConf(t, string(data)))
		if err != nil {
			if msg := err.Error(); strings.TrimSpace(msg) == "" || strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error %q is not one line", msg)
			}
			return
		}
		seen := map[string]bool{}
		for _, sp := range specs {
			if !sp.Addr.IsValid() || sp.Addr.Port() == 0 || sp.Addr.Addr().Is4In6() || sp.Addr.Addr().Zone() != "" {
				t.Fatalf("bad address %v taken", sp.Addr)
			}
			if sp.Weight < 0 || sp.Weight > balancer.MaxWeight {
				t.Fatalf("weight %d of %v out of range", sp.Weight, sp.Addr)
			}
			if seen[sp.Addr.String()] {
				t.Fatalf("%v taken twice", sp.Addr)
			}
			seen[sp.Addr.String()] = true
		}
	})
}
