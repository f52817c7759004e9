package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestMain lets the test binary act as sluice itself when re-executed with
// SLUICE_MAIN=1, so the tests can check exit codes and output.
func TestMain(m *testing.M) {
	if os.Getenv("SLUICE_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func sluice(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "SLUICE_MAIN=1")
	return cmd
}

func TestBadInvocationExits2WithOneLine(t *testing.T) {
	cases := [][]string{
		{"--bogus"},
		{"--listen", "127.0.0.1:7000"},
		{"--listen", "nowhere", "--backend", "127.0.0.1:1"},
		{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:1", "--idle-timeout", "-1s"},
		{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:99999"},
		{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:1", "--workers", "many"},
		// Caught by the config check, not when the second attach fails.
		{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:1", "--xdp-iface", "sluice-nx0", "--xdp-iface", "sluice-nx0"},
	}
	for _, args := range cases {
		var stderr bytes.Buffer
		cmd := sluice(args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want status 2", args, err)
			continue
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		// One problem line plus the pointer to --help.
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "sluice: ") || strings.Contains(stderr.String(), "goroutine") {
			t.Errorf("%v: stderr %q", args, stderr.String())
		}
	}
}

// TestHealthTLSProblemsExit2: a check that cannot run over TLS, or a TLS
// file that cannot be used, is one line naming the flags (and the file),
// and exit status 2, before anything starts.
func TestHealthTLSProblemsExit2(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--health-check", "postgres", "--health-tls"}, "--health-tls with --health-check postgres"},
		{[]string{"--health-check", "mysql", "--health-tls"}, "--health-tls with --health-check mysql"},
		{[]string{"--proto", "udp", "--health-tls"}, "--health-tls with --proto udp"},
		{[]string{"--health-tls", "--health-tls-ca", "/nonexistent/ca.pem"}, `--health-tls-ca "/nonexistent/ca.pem": open /nonexistent/ca.pem: no such file`},
		{[]string{"--health-tls", "--health-tls-cert", "/nonexistent/c.pem"}, `--health-tls-cert "/nonexistent/c.pem": needs --health-tls-key`},
		{[]string{"--health-timeout", "2h"}, `--health-timeout "2h0m0s": want 1ms to 10m0s`},
	} {
		var stderr bytes.Buffer
		cmd := sluice(append(append([]string{}, base...), tc.args...)...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want status 2", tc.args, err)
			continue
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "sluice: "+tc.want) {
			t.Errorf("%v: stderr %q, want one line starting %q", tc.args, stderr.String(), "sluice: "+tc.want)
		}
	}
}

// TestSizingProblemsExit2: with an open-file limit of 20000, a connection
// or session count that cannot fit, or whose doubling would wrap, is one
// line naming the flag and the value, and exit status 2; before, the
// wrapped counts started (one with a negative pipe count, so no splice),
// and too many UDP sessions blamed the limit alone. A global setting
// inside a service section is named as such.
func TestSizingProblemsExit2(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	if err := os.WriteFile(conf, []byte("[service a]\nlisten 127.0.0.1:0\nbackend 127.0.0.1:1\nworkers 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tcp := []string{"--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1"}
	cases := []struct {
		args []string
		want string // the problem line
	}{
		{append(tcp, "--max-conns", "4611686018427387904"), `sluice: --max-conns "4611686018427387904": want 1 to 8388608, or 0 (the default) to derive it from the open-file limit`},
		{append(tcp, "--max-conns", "9223372036854775807"), `sluice: --max-conns "9223372036854775807": want 1 to 8388608, or 0 (the default) to derive it from the open-file limit`},
		{append(tcp, "--workers", "1", "--max-conns", "10000"), `sluice: --max-conns "10000": needs 20260 file descriptors (two per connection) but the open-file limit is 20000; lower it to at most 9870 or raise the limit (e.g. LimitNOFILE=)`},
		{[]string{"--proto", "udp", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1", "--workers", "1", "--udp-max-sessions", "100000"},
			`sluice: --udp-max-sessions "100000": needs 100263 file descriptors (one per session, at least one per loop, 263 for listeners, loops and a connection) but the open-file limit is 20000; lower it to at most 19737 or raise the limit (e.g. LimitNOFILE=)`},
		{[]string{"--config", conf}, "sluice: " + conf + `:4: "workers" is a global setting: put it before the first [service NAME] section`},
	}
	for _, tc := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		// sh's ulimit sets the hard limit too, which the Go runtime would
		// otherwise raise the soft one to.
		cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", `ulimit -n 20000 && exec "$0" "$@"`, os.Args[0]}, tc.args...)...)
		cmd.Env = append(os.Environ(), "SLUICE_MAIN=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want status 2 (stderr %q)", tc.args, err, stderr.String())
			continue
		}
		if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 2 || lines[0] != tc.want {
			t.Errorf("%v: stderr %q, want the line %q and the pointer to --help", tc.args, stderr.String(), tc.want)
		}
	}
}

func TestHelpExits0(t *testing.T) {
	out, err := sluice("--help").Output()
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(string(out), "--idle-timeout") {
		t.Fatalf("help output %q", out)
	}
}

// TestServeAndSIGTERM runs the real binary, proxies a round trip, and checks
// that SIGTERM makes it drain and exit 0.
func TestServeAndSIGTERM(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	// Port 0, and the address sluice logs it bound: a port found free
	// and passed on could be taken before sluice binds it.
	cmd := sluice("--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--log-format", "json")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := bufio.NewScanner(stderr)
	var lines []string
	var addr string
	for addr == "" && logs.Scan() {
		lines = append(lines, logs.Text())
		var line struct{ Msg, Listen string }
		if json.Unmarshal(logs.Bytes(), &line) == nil && line.Msg == "service" {
			addr = line.Listen
		}
	}
	if addr == "" {
		t.Fatalf("no service line with its listening address in %q", lines)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v (logs %q)", err, lines)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("round trip: %q %v", buf, err)
	}
	c.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	rest, _ := io.ReadAll(stderr)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v (logs %s)", err, rest)
	}
	if !strings.Contains(string(rest), "sluice stopped") {
		t.Fatalf("no shutdown line in %s", rest)
	}
}
