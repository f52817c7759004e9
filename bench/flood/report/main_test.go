package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixture returns a temporary run directory and a func that writes a file
// into it.
func fixture(t *testing.T) (string, func(name, s string)) {
	dir := t.TempDir()
	return dir, func(name, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// report runs the command on dir and returns what it wrote.
func report(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "FLOOD.md")
	if err := run([]string{"--dir", dir, "--out", out}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want stats
		text string
	}{
		{[]float64{3}, stats{3, 3, 3}, "3.0"},
		{[]float64{5, 1, 3}, stats{3, 1, 5}, "3.0 (1.0–5.0)"},
		{[]float64{4, 1, 2, 3}, stats{2.5, 1, 4}, "2.5 (1.0–4.0)"},
	} {
		got := summarize(tc.in)
		if got != tc.want || got.format(1) != tc.text {
			t.Errorf("summarize(%v) = %+v %q, want %+v %q", tc.in, got, got.format(1), tc.want, tc.text)
		}
	}
}

func TestReport(t *testing.T) {
	dir, write := fixture(t)
	write("meta.tsv", "date\t2026-11-22T01:00:00Z\nkernel\t6.18\nxdp\tnative\n")
	head := "round\tfw\tflood\twall_s\tsl_utime\tsl_stime\tdenied\tdenied_s\tpassed\ttcp_insegs\tsyncookies\tlisten_drops\tcpu_user\tcpu_sys\tcpu_softirq\tcpu_idle\tcpu_total\tveth_drops\tidle_before\tperf_user_ms\tperf_sys_ms\tflood_sent\tflood_s\tflood_cpu\trr\n"
	rows := ""
	for _, r := range []struct{ round, fw, flood, denied, sent, p99, utime string }{
		{"1", "on", "none", "0", "0", "100", "10"},
		{"1", "on", "100000", "1000000", "1000000", "110", "10"},
		{"2", "on", "100000", "1000000", "1000000", "130", "30"},
		{"2", "on", "none", "0", "0", "100", "10"},
		{"3", "on", "none", "0", "0", "100", "10"},
		{"3", "on", "100000", "1000000", "1000000", "900", "10"},
		{"1", "off", "none", "0", "0", "100", "10"},
		{"1", "off", "100000", "0", "1000000", "500", "10"},
	} {
		rr := "raw/" + r.round + r.fw + r.flood + ".json"
		lag := "20"
		if r.round == "3" {
			lag = "5000" // starved: round 3 is no baseline
		}
		write(rr, `{"ops_per_s":2000,"errors":0,"send_lag_us":{"p99":`+lag+`},"latency_us":{"p50":50,"p99":`+r.p99+`,"p99_9":900}}`)
		rows += strings.Join([]string{r.round, r.fw, r.flood, "10", r.utime, "100", r.denied, "10", "5", "20000", "0", "0",
			"1", "1", "1", "1", "4", "0", "90", "-1", "-1", r.sent, "10", "500", rr}, "\t") + "\n"
	}
	write("phases.tsv", head+rows)
	md := report(t, dir)
	if strings.Contains(md, "(perf)") {
		t.Errorf("perf rows in a report of a run without perf:\n%s", md)
	}
	if strings.Contains(md, "NAPI") {
		t.Errorf("a NAPI row in a report of a run without the napi_cpu column:\n%s", md)
	}
	for _, want := range []string{
		"## flood\n",
		"| firewall, no flood (3) | firewall, flood 100k/s (3) | no firewall, no flood (1) | no firewall, flood 100k/s (1) |",
		"| dropped by XDP /s | 0 | 100000 | 0 | 0 |",
		"| allowed p99 µs | 100 | 130 (110–900) | 100 | 500 |",
		"| client send lag p99 µs | 20 (20–5000) | 20 (20–5000) | 20 | 20 |",
		// Rounds: 1.10, 1.30, 9.00; the median 1.30 misses the target.
		"**firewall, flood 100k/s** against the same round's no-flood phase (3 rounds): allowed p99 × 1.30 (1.10–9.00) (target ≤ 1.20: **not met**)",
		"round 3: 100 → 900 µs (×9.00; client send lag p99 5000 → 5000 µs)",
		"**no firewall, flood 100k/s** against the same round's no-flood phase (1 round): allowed p99 × 5.00;",
		"(native)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestReportPinned reads a run made with PIN=1: the NAPI threads' CPU is a
// row, and the method says where everything ran.
func TestReportPinned(t *testing.T) {
	dir, write := fixture(t)
	write("meta.tsv", "xdp\tnative\npin\tserver side on CPU 0, flood on CPU 1\n")
	head := "round\tfw\tflood\twall_s\tsl_utime\tsl_stime\tdenied\tdenied_s\tpassed\ttcp_insegs\tsyncookies\tlisten_drops\tcpu_user\tcpu_sys\tcpu_softirq\tcpu_idle\tcpu_total\tveth_drops\tidle_before\tperf_user_ms\tperf_sys_ms\tflood_sent\tflood_s\tflood_cpu\tnapi_cpu\trr\n"
	rows := ""
	for _, r := range []struct{ flood, napi string }{{"none", "20"}, {"100000", "150"}} {
		rr := "raw/" + r.flood + ".json"
		write(rr, `{"ops_per_s":2000,"errors":0,"send_lag_us":{"p99":20},"latency_us":{"p50":50,"p99":100,"p99_9":900}}`)
		// 10 s per phase: 20 ticks are 2% of a CPU, 150 ticks 15%.
		rows += strings.Join([]string{"1", "on", r.flood, "10", "10", "100", "0", "10", "5", "20000", "0", "0",
			"1", "1", "1", "1", "4", "0", "90", "-1", "-1", "0", "10", "500", r.napi, rr}, "\t") + "\n"
	}
	write("phases.tsv", head+rows)
	md := report(t, dir)
	for _, want := range []string{
		"| server receive (NAPI thread) CPU % | 2.0 | 15.0 |",
		"CPUs (server side on CPU 0, flood on CPU 1)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "The flood generator shares the two cores") {
		t.Errorf("a pinned run described as unpinned:\n%s", md)
	}
}
