package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := sluice("--listen", addr, "--backend", echo.Addr().String(), "--log-format", "json")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := bufio.NewScanner(stderr)
	var lines []string
	for logs.Scan() {
		lines = append(lines, logs.Text())
		if strings.Contains(logs.Text(), "sluice started") {
			break
		}
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
