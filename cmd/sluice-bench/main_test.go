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
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sluice-lb/sluice/internal/loadgen"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestMain lets the test binary act as sluice-bench itself when re-executed
// with SLUICE_BENCH_MAIN=1, so that exit statuses can be checked.
func TestMain(m *testing.M) {
	if os.Getenv("SLUICE_BENCH_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func TestBadCommandLines(t *testing.T) {
	const tgt = "127.0.0.1:9"
	for _, tc := range []struct {
		args []string
		want []string // substrings of the one line: the flag and the value
	}{
		{nil, []string{"no mode"}},
		{[]string{"frob"}, []string{"unknown mode", `"frob"`}},
		{[]string{"rr", "--bogus"}, []string{"--bogus"}},
		{[]string{"rr", "--target", tgt, "--conns", "0"}, []string{"--conns", "0"}},
		{[]string{"rr", "--target", tgt, "--conns", "lots"}, []string{"--conns", `"lots"`}},
		{[]string{"rr", "--target", tgt, "--duration", "-1s"}, []string{"--duration", "-1s"}},
		{[]string{"rr", "--target", tgt, "--duration", "5"}, []string{"--duration", `"5"`, "unit"}},
		{[]string{"rr", "--target", "nowhere"}, []string{"--target", `"nowhere"`}},
		{[]string{"rr", "--target", "8.8.8.8:53"}, []string{"--target", "8.8.8.8:53", "loopback"}},
		{[]string{"rr", "--target", "127.0.0.1:70000"}, []string{"--target", "70000"}},
		{[]string{"rr"}, []string{"--target", "required"}},
		{[]string{"rr", "--target", tgt, "--rate", "-5"}, []string{"--rate", "-5"}},
		{[]string{"rr", "--target", tgt, "--req-size", "12Q"}, []string{"--req-size", `"12Q"`}},
		{[]string{"rr", "--target", tgt, "--resp-size", "100"}, []string{"--resp-size", "100", "--req-size"}},
		{[]string{"rr", "--target", tgt, "--source-cidr", "10.0.0.0/8"}, []string{"--source-cidr", "10.0.0.0/8", "loopback"}},
		{[]string{"rr", "--target", tgt, "--source-cidr", "127.0.0.0/33"}, []string{"--source-cidr", `"127.0.0.0/33"`}},
		{[]string{"rr", "--target", tgt, "--proxy-pid", "-3"}, []string{"--proxy-pid", "-3"}},
		{[]string{"rr", "--target", tgt, "stray"}, []string{`"stray"`}},
		{[]string{"stream", "--target", tgt, "--direction", "up"}, []string{"--direction", `"up"`}},
		{[]string{"stream", "--target", tgt, "--chunk", "0"}, []string{"--chunk", "0"}},
		{[]string{"udp", "--target", tgt, "--size", "65508"}, []string{"--size", "65508"}},
		{[]string{"idle", "--target", tgt, "--conns", "-1"}, []string{"--conns", "-1"}},
		{[]string{"connect", "--target", tgt, "--timeout", "0s"}, []string{"--timeout", "0s"}},
		{[]string{"serve"}, []string{"--echo"}},
		{[]string{"serve", "--echo", "localhost"}, []string{"--echo", `"localhost"`}},
		{[]string{"serve", "--sink", "127.0.0.1:0", "--duration", "-1s"}, []string{"--duration", "-1s"}},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), tc.args, &stdout, &stderr)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: run = %v, want a usage error", tc.args, err)
			continue
		}
		code := report(err, &stderr)
		line := stderr.String()
		if code != exitUsage || strings.Count(line, "\n") != 1 || !strings.HasPrefix(line, "sluice-bench: ") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and one line", tc.args, code, line)
		}
		for _, w := range tc.want {
			if !strings.Contains(line, w) {
				t.Errorf("%q: %q does not name %s", tc.args, line, w)
			}
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: wrote %q to stdout", tc.args, stdout.String())
		}
	}
}

// TestExitStatus runs the real main in a child process.
func TestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		code  int
		lines int // on stderr
	}{
		{[]string{"rr", "--conns", "0", "--target", "127.0.0.1:9"}, exitUsage, 1},
		{[]string{"--help"}, 0, 0},
		{[]string{"udp", "--help"}, 0, 0},
		// Nothing listens on port 9 of 127.0.0.1 here: a failed run.
		{[]string{"stream", "--target", "127.0.0.1:9", "--duration", "100ms"}, exitFailure, 1},
	} {
		cmd := exec.Command(os.Args[0], tc.args...)
		cmd.Env = append(os.Environ(), "SLUICE_BENCH_MAIN=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || strings.Count(stderr.String(), "\n") != tc.lines || strings.Contains(stderr.String(), "goroutine") {
			t.Errorf("%q: exit %d, stderr %q; want %d and %d lines", tc.args, code, stderr.String(), tc.code, tc.lines)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"serve", "stream", "rr", "connect", "udp", "idle"} {
		if !strings.Contains(out.String(), "sluice-bench "+m) {
			t.Errorf("top-level help does not list %s", m)
		}
	}
	common := []string{"--target", "--conns", "--duration", "--timeout", "--source-cidr", "--proxy-pid", "--json"}
	for mode, extra := range map[string][]string{
		"stream":  {"--direction", "--chunk", "--warmup", "bytes"},
		"rr":      {"--req-size", "--resp-size", "--rate", "--requests", "--warmup", "per second"},
		"connect": {"--req-size", "--requests", "--warmup"},
		"udp":     {"--size", "--rate", "--requests", "lost", "per second"},
		"idle":    {"--req-size", "KiB", "hold"},
		"serve":   {"--echo", "--sink", "--source", "--udp-echo", "--ready-file", "--duration", "--json"},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), []string{mode, "--help"}, &out, io.Discard); err != nil {
			t.Fatalf("%s --help: %v", mode, err)
		}
		want := extra
		if mode != "serve" {
			want = append(want, common...)
		}
		for _, w := range want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s --help lacks %q", mode, w)
			}
		}
	}
}

func TestJSON(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	udp := testsrv.StartTB(t, testsrv.Echo, "udp")
	sink := testsrv.StartTB(t, testsrv.Sink, "tcp")
	for _, tc := range []struct {
		args []string
		keys []string
	}{
		{[]string{"rr", "--target", echo.Addr().String(), "--conns", "4", "--proxy-pid", strconv.Itoa(os.Getpid())},
			[]string{"latency_us", "ops_per_s", "proxy", "env"}},
		{[]string{"stream", "--target", sink.Addr().String(), "--chunk", "64K"},
			[]string{"gbit_per_s", "bytes_sent", "direction"}},
		{[]string{"udp", "--target", udp.Addr().String(), "--rate", "1000"},
			[]string{"udp", "latency_us", "send_lag_us", "missed"}},
	} {
		var stdout bytes.Buffer
		args := append(tc.args, "--duration", "200ms", "--json")
		if err := run(context.Background(), args, &stdout, io.Discard); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		var obj map[string]any
		dec := json.NewDecoder(&stdout)
		if err := dec.Decode(&obj); err != nil {
			t.Fatalf("%q: not JSON: %v", args, err)
		}
		if dec.More() {
			t.Fatalf("%q: more than one JSON value", args)
		}
		if obj["mode"] != args[0] || obj["errors"] != float64(0) || obj["ops"] == float64(0) || obj["elapsed_s"] == float64(0) {
			t.Fatalf("%q: %v", args, obj)
		}
		for _, k := range tc.keys {
			if _, ok := obj[k]; !ok {
				t.Errorf("%q: no %q in %v", args, k, obj)
			}
		}
		// The steal share of the machine's CPUs is a figure of every mode
		// but idle: the bench report reads it to flag and drop runs made
		// while the hypervisor took the CPUs.
		if m, _ := obj["machine"].(map[string]any); m == nil || m["steal_pct"] == nil {
			t.Errorf("%q: no machine.steal_pct in %v", args, obj)
		}
	}
}

// TestTableNoProgressOnPipe: the table is printed and, stdout not being a
// terminal, no progress line.
func TestTableNoProgressOnPipe(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if isTerminal(w) {
		t.Fatal("a pipe is a terminal")
	}
	args := []string{"connect", "--target", echo.Addr().String(), "--duration", "1200ms"}
	errc := make(chan error, 1)
	go func() {
		errc <- run(context.Background(), args, w, io.Discard)
		w.Close()
	}()
	out, _ := io.ReadAll(r)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if bytes.ContainsAny(out, "\r\033") || !bytes.Contains(out, []byte("conn/s")) || !bytes.Contains(out, []byte("p99.9")) ||
		!bytes.Contains(out, []byte("machine steal")) {
		t.Fatalf("output:\n%s", out)
	}
}

func TestServe(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"serve", "--echo", "127.0.0.1:0", "--sink", "127.0.0.1:0",
			"--source", "127.0.0.1:0", "--udp-echo", "127.0.0.1:0", "--echo", "127.0.0.1:0", "--ready-file", ready}, pw, io.Discard)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	addrs := map[string][]string{}
	var head []string
	for sc.Scan() && sc.Text() != "ready" {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			t.Fatalf("listener line %q", sc.Text())
		}
		addrs[f[0]] = append(addrs[f[0]], f[2])
		head = append(head, sc.Text())
	}
	if len(addrs["echo"]) != 2 || len(addrs["sink"]) != 1 || len(addrs["source"]) != 1 || len(addrs["udp-echo"]) != 1 {
		t.Fatalf("listeners %v", addrs)
	}
	b, err := os.ReadFile(ready)
	if err != nil || string(b) != strings.Join(head, "\n")+"\nready\n" {
		t.Fatalf("ready file %q, %v", b, err)
	}

	// One round trip each on the TCP and the UDP echo.
	c, err := net.Dial("tcp", addrs["echo"][0])
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "hello" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	u, err := net.Dial("udp", addrs["udp-echo"][0])
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("ping"))
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, err := u.Read(buf)
	u.Close()
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("udp echo: %q, %v", buf[:n], err)
	}

	cancel() // as SIGINT would
	var table []string
	for sc.Scan() {
		table = append(table, sc.Text())
	}
	if err := <-errc; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if len(table) != 7 { // header, 5 listeners, "served for"
		t.Fatalf("table:\n%s", strings.Join(table, "\n"))
	}
	first := strings.Fields(table[1]) // the first echo: 1 accepted, 5 B each way
	if first[0] != "echo" || first[2] != "1" || first[3] != "5" || first[5] != "5" {
		t.Fatalf("echo row %q", table[1])
	}
	udpRow := strings.Fields(table[5]) // listeners are grouped: echo, sink, source, udp-echo
	if udpRow[0] != "udp-echo" || udpRow[2] != "-" || udpRow[7] != "1" || udpRow[8] != "1" {
		t.Fatalf("udp row %q", table[5])
	}
	if _, err := os.Stat(ready); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ready file left behind: %v", err)
	}
}

func TestServeJSON(t *testing.T) {
	var stdout bytes.Buffer
	err := run(context.Background(), []string{"serve", "--echo", "127.0.0.1:0", "--udp-echo", "[::1]:0", "--duration", "50ms", "--json"}, &stdout, io.Discard)
	if err != nil {
		if strings.Contains(err.Error(), "::1") {
			t.Skip("no IPv6 loopback:", err)
		}
		t.Fatal(err)
	}
	var rep ServeReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout.String())
	}
	if rep.Mode != "serve" || len(rep.Listeners) != 2 || rep.Listeners[1].Kind != "udp-echo" || !strings.HasPrefix(rep.Listeners[1].Addr, "[::1]:") {
		t.Fatalf("report %+v", rep)
	}
}

func TestServePortInUse(t *testing.T) {
	s := testsrv.StartTB(t, testsrv.Echo, "tcp")
	err := run(context.Background(), []string{"serve", "--sink", "127.0.0.1:0", "--echo", s.Addr().String(), "--duration", "1s"}, io.Discard, io.Discard)
	var ue *usageError
	if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "--echo") {
		t.Fatalf("serve on a busy port: %v, want a run error naming --echo", err)
	}
}

func TestSizeValue(t *testing.T) {
	for in, want := range map[string]int{"64": 64, "64B": 64, "16K": 16 << 10, "16kib": 16 << 10, "1M": 1 << 20, "2MiB": 2 << 20, "1G": 1 << 30} {
		var v sizeValue
		if err := v.Set(in); err != nil || int(v) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, v, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5K", "K", "9G", "12Q"} {
		var v sizeValue
		if err := v.Set(in); err == nil {
			t.Errorf("Set(%q) = %d, want an error", in, v)
		}
	}
}

func TestProgress(t *testing.T) {
	if f, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0); err == nil {
		if !isTerminal(f) {
			t.Error("a pty is not a terminal")
		}
		f.Close()
	}
	var out bytes.Buffer
	p := progressPrinter(&out, loadgen.RR)
	p(loadgen.Progress{Elapsed: 2 * time.Second, Ops: 1000, OpsPerSec: 500, Warmup: true})
	p(loadgen.Progress{Elapsed: 3 * time.Second, Ops: 1600, OpsPerSec: 600})
	if got := out.String(); !strings.HasPrefix(got, "\r\033[K") || strings.Count(got, "\r") != 2 ||
		!strings.Contains(got, "(warmup)") || !strings.Contains(got, "600 ops/s") || strings.Contains(got, "\n") {
		t.Fatalf("progress %q", got)
	}
}
