package main

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/internal/loadgen"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want stat
	}{
		{[]float64{3}, stat{1, 3, 3, 3}},
		{[]float64{5, 1, 3}, stat{3, 3, 1, 5}},
		{[]float64{4, 1, 2, 3}, stat{4, 2.5, 1, 4}},
	} {
		got, ok := summarize(tc.in)
		if !ok || got != tc.want {
			t.Errorf("summarize(%v) = %+v, %v; want %+v", tc.in, got, ok, tc.want)
		}
	}
	if _, ok := summarize(nil); ok {
		t.Error("summarize(nil) reported a figure")
	}
}

// writeRun lays out a run directory as bench/run.sh does.
func writeRun(tb testing.TB, results map[string]loadgen.Result, errs map[string]string) string {
	tb.Helper()
	dir := tb.TempDir()
	raw := filepath.Join(dir, "raw")
	if err := os.Mkdir(raw, 0o755); err != nil {
		tb.Fatal(err)
	}
	meta := "date\t2026-11-22T00:00:00Z\nkernel\t6.0\nrounds\t3\nduration\t5\nsmoke\t0\n" +
		"status\tsluice\tok\nnote\tsluice udp: skipped, not supported\n"
	if err := os.WriteFile(filepath.Join(dir, "meta.tsv"), []byte(meta), 0o644); err != nil {
		tb.Fatal(err)
	}
	for name, r := range results {
		b, err := json.Marshal(r)
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(raw, name), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	for name, e := range errs {
		if err := os.WriteFile(filepath.Join(raw, name), []byte(e), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// renderRun runs the report on dir and returns the RESULTS.md it wrote, the
// summary it printed and the path of its chart.
func renderRun(tb testing.TB, dir string) (md, summary, svg string) {
	tb.Helper()
	out := tb.TempDir()
	mdPath := filepath.Join(out, "RESULTS.md")
	svg = filepath.Join(out, "results.svg")
	var stdout strings.Builder
	if err := run(context.Background(), []string{"--dir", dir, "--md", mdPath, "--svg", svg}, &stdout); err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(mdPath)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b), stdout.String(), svg
}

func bulk(gbps, cpu float64) loadgen.Result {
	return loadgen.Result{Mode: loadgen.Stream, Ops: 1, Gbps: gbps, Proxy: &loadgen.ProxyResult{CPUSecPerGiB: cpu}}
}

func TestTablesMedianAndRatioToBestPeer(t *testing.T) {
	res := map[string]loadgen.Result{}
	for i, v := range []float64{10, 12, 11} {
		res[fmt.Sprintf("r%d_bulk_sluice.json", i+1)] = bulk(v, 0.3)
		res[fmt.Sprintf("r%d_bulk_haproxy.json", i+1)] = bulk(v-2, 0.25) // best CPU
		res[fmt.Sprintf("r%d_bulk_iocopy.json", i+1)] = bulk(v+4, 0.5)   // best Gbit/s
		r := bulk(v*3, 0)
		r.Proxy = nil
		res[fmt.Sprintf("r%d_bulk_direct.json", i+1)] = r
	}
	dir := writeRun(t, res, map[string]string{"r2_bulk_nginx.json.err": "sluice-bench: connection refused\n"})
	rd, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tables := rd.tables()
	if len(tables) != 1 || tables[0].sc.key != "bulk" {
		t.Fatalf("want one bulk table, got %d", len(tables))
	}
	tb := tables[0]
	if tb.best[0] != "iocopy" || tb.best[1] != "haproxy" {
		t.Fatalf("best peers %v, want iocopy for Gbit/s and haproxy for CPU", tb.best)
	}
	s := tb.cells["sluice"]
	if s[0].stat != (stat{3, 11, 10, 12}) {
		t.Errorf("sluice Gbit/s %+v", s[0].stat)
	}
	if got := s[0].ratio; got != 11.0/15 {
		t.Errorf("sluice Gbit/s ratio %v, want %v", got, 11.0/15)
	}
	if got := s[1].ratio; got != 0.3/0.25 {
		t.Errorf("sluice CPU ratio %v, want %v", got, 0.3/0.25)
	}
	// Paired by round: sluice's Gbit/s (10, 12, 11) against io.Copy's
	// (14, 16, 15) wins none; its CPU 0.3 against HAProxy's 0.25 none.
	if s[0].won != 0 || s[0].paired != 3 || s[1].won != 0 || s[1].paired != 3 {
		t.Errorf("sluice rounds ahead %d/%d and %d/%d, want 0/3 and 0/3", s[0].won, s[0].paired, s[1].won, s[1].paired)
	}
	if d := tb.cells["direct"]; d[1].ok {
		t.Error("direct has a proxy CPU figure")
	}
	if len(tb.failed["nginx"]) != 1 || tb.runs["nginx"] != 0 {
		t.Errorf("nginx failure not kept: %v", tb.failed["nginx"])
	}
}

// The machine's CPU is a figure of its own, compared with the best peer's
// like the proxy's; a result without it (redis-benchmark's) has none.
func TestMachineCPUFigure(t *testing.T) {
	res := map[string]loadgen.Result{}
	for i, m := range []float64{0.7, 0.8, 0.75} {
		s := bulk(10, 0.3)
		s.Machine = &loadgen.MachineResult{CPUSeconds: 3, CPUSecPerGiB: m}
		h := bulk(10, 0.25)
		h.Machine = &loadgen.MachineResult{CPUSeconds: 3, CPUSecPerGiB: m + 0.05}
		res[fmt.Sprintf("r%d_bulk_sluice.json", i+1)] = s
		res[fmt.Sprintf("r%d_bulk_haproxy.json", i+1)] = h
		n := bulk(9, 0.6)
		n.Machine = &loadgen.MachineResult{Error: "read machine cpu time: gone"}
		res[fmt.Sprintf("r%d_bulk_nginx.json", i+1)] = n
	}
	rd, err := load(writeRun(t, res, nil))
	if err != nil {
		t.Fatal(err)
	}
	tb := rd.tables()[0]
	const mi = 2
	if tb.sc.metrics[mi].name != "machine CPU s/GiB" {
		t.Fatalf("metric %d is %q", mi, tb.sc.metrics[mi].name)
	}
	if tb.best[mi] != "haproxy" || tb.cells["nginx"][mi].ok {
		t.Fatalf("best %q; nginx's failed figure counted: %v", tb.best[mi], tb.cells["nginx"][mi].ok)
	}
	c := tb.cells["sluice"][mi]
	if want := 0.75 / 0.8; c.ratio != want || c.roundsAhead() != "3 of 3" {
		t.Errorf("ratio %v, rounds ahead %q; want %v and 3 of 3", c.ratio, c.roundsAhead(), want)
	}
}

// The rounds are paired: a target can be ahead on the median of the
// rounds yet behind in most rounds taken one by one.
func TestRoundsAheadArePaired(t *testing.T) {
	run := func(sluice, peer []float64, drop ...string) cell {
		t.Helper()
		res := map[string]loadgen.Result{}
		for i := range sluice {
			res[fmt.Sprintf("r%d_bulk_sluice.json", i+1)] = bulk(sluice[i], 1)
			res[fmt.Sprintf("r%d_bulk_haproxy.json", i+1)] = bulk(peer[i], 1)
		}
		for _, d := range drop {
			delete(res, d)
		}
		rd, err := load(writeRun(t, res, nil))
		if err != nil {
			t.Fatal(err)
		}
		return rd.tables()[0].cells["sluice"][0]
	}
	// Median 30 against 21 (×1.43), yet behind in rounds 1 and 2.
	c := run([]float64{20, 30, 40}, []float64{21, 31, 9})
	if c.ratio <= 1 || c.roundsAhead() != "1 of 3" {
		t.Errorf("ratio %.2f, rounds ahead %q; want above 1 and \"1 of 3\"", c.ratio, c.roundsAhead())
	}
	// A round where one target failed is not paired; equal figures tie.
	c = run([]float64{20, 30, 40}, []float64{19, 30, 9}, "r3_bulk_haproxy.json")
	if c.roundsAhead() != "1 of 2 (1 tied)" {
		t.Errorf("rounds ahead %q, want \"1 of 2 (1 tied)\"", c.roundsAhead())
	}
	// Lower is better for CPU: 0.2 against 0.3 wins every round.
	res := map[string]loadgen.Result{}
	for i := 1; i <= 2; i++ {
		res[fmt.Sprintf("r%d_bulk_sluice.json", i)] = bulk(10, 0.2)
		res[fmt.Sprintf("r%d_bulk_haproxy.json", i)] = bulk(10, 0.3)
	}
	rd, err := load(writeRun(t, res, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := rd.tables()[0].cells["sluice"][1].roundsAhead(); got != "2 of 2" {
		t.Errorf("CPU rounds ahead %q, want \"2 of 2\"", got)
	}
	if got := (cell{}).roundsAhead(); got != "–" {
		t.Errorf("no paired round: %q, want –", got)
	}
}

// A round where either run of a pair had more than maxStealPct of its
// CPUs' time stolen is left out of rounds ahead, and said to be; a run
// whose steal is unknown is paired as before.
func TestStealLeftOutOfRoundsAhead(t *testing.T) {
	stolen := func(gbps, cpu, pct float64) loadgen.Result {
		r := bulk(gbps, cpu)
		r.Machine = &loadgen.MachineResult{CPUSeconds: 3, CPUSecPerGiB: 2*cpu + 0.1, StealPct: &pct}
		return r
	}
	res := map[string]loadgen.Result{}
	for i, st := range [][2]float64{{0.5, 0.4}, {0.7, 40}, {0.2, 0.3}} {
		res[fmt.Sprintf("r%d_bulk_sluice.json", i+1)] = stolen(12, 0.25, st[0])
		res[fmt.Sprintf("r%d_bulk_haproxy.json", i+1)] = stolen(10, 0.3, st[1])
		d := bulk(30, 0) // no machine figures: steal unknown
		d.Proxy = nil
		res[fmt.Sprintf("r%d_bulk_direct.json", i+1)] = d
	}
	dir := writeRun(t, res, nil)
	rd, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tb := rd.tables()[0]
	for i, c := range tb.cells["sluice"] {
		if got := c.roundsAhead(); got != "2 of 2 (1 left out: steal)" {
			t.Errorf("%s: rounds ahead %q, want \"2 of 2 (1 left out: steal)\"", tb.sc.metrics[i].name, got)
		}
	}
	// Direct's unknown steal leaves rounds 1 and 3 paired.
	if got := tb.cells["direct"][0].roundsAhead(); got != "2 of 2 (1 left out: steal)" {
		t.Errorf("direct, steal unknown: rounds ahead %q, want \"2 of 2 (1 left out: steal)\"", got)
	}
	if got := (cell{won: 1, paired: 2, tied: 1, stolen: 1}).roundsAhead(); got != "1 of 2 (1 tied, 1 left out: steal)" {
		t.Errorf("tied and stolen: %q", got)
	}
	if got := (cell{stolen: 3}).roundsAhead(); got != "– (3 left out: steal)" {
		t.Errorf("every round stolen: %q", got)
	}

	text, summary, _ := renderRun(t, dir)
	for _, want := range []string{
		"| bulk | Gbit/s ↑ | 12.00 | 10.00 (HAProxy) | 1.20 | 2 of 2 (1 left out: steal) |\n",
		"max 40.0% (bulk on HAProxy, round 2) over the 6 runs that measured it; 1 above 10%,",
		"median 0.5%,",
		" | errors | steal % |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
		"| sluice | 3 | 12.00 | 1.20 | 0.250 | 0.83 | 0.600 | 0.86 | 0 | 0.5 (0.2–0.7) |\n",
		"| HAProxy | 3 | **10.00** | 1.00 | **0.300** | 1.00 | **0.700** | 1.00 | 0 | 0.4 (0.3–40.0) |\n",
		"| direct | 3 | 30.00 | 3.00 | – | – | – | – | 0 | – |\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("RESULTS.md lacks %q:\n%s", want, text)
		}
	}
	if !strings.Contains(summary, "rounds ahead: 2 of 2 (1 left out: steal)") {
		t.Errorf("summary does not say a round was left out:\n%s", summary)
	}
}

// Raw results from before the steal figure (or without it: redis, idle)
// render as they did: no steal column, line or note.
func TestRunWritesMarkdownAndValidSVG(t *testing.T) {
	res := map[string]loadgen.Result{
		"r1_rr_sluice.json": {Mode: loadgen.RR, Ops: 100, OpsPerSec: 50000,
			Latency: &loadgen.Latency{Count: 100, P50: 100, P99: 400}, Proxy: &loadgen.ProxyResult{CPUMicrosPerOp: 10},
			Machine: &loadgen.MachineResult{CPUSeconds: 2, CPUMicrosPerOp: 40}},
		"r1_rr_nginx.json": {Mode: loadgen.RR, Ops: 100, OpsPerSec: 40000,
			Latency: &loadgen.Latency{Count: 100, P50: 120, P99: 500}, Proxy: &loadgen.ProxyResult{CPUMicrosPerOp: 12}},
		"r1_idle_sluice.json": {Mode: loadgen.Idle, Idle: &loadgen.IdleResult{Opened: 6000},
			Proxy: &loadgen.ProxyResult{RSSBeforeKiB: 10000, RSSAfterKiB: 13000}},
		"r1_idle_iocopy.json": {Mode: loadgen.Idle, Idle: &loadgen.IdleResult{Opened: 3000, Failed: 64}, Errors: 64,
			FirstError: "connection reset | by peer", Proxy: &loadgen.ProxyResult{RSSBeforeKiB: 5000, RSSAfterKiB: 50000}},
	}
	text, summary, svg := renderRun(t, writeRun(t, res, nil))
	for _, want := range []string{
		"| rr | req/s ↑ | 50000 | 40000 (nginx) | 1.25 | 1 of 1 |\n",
		"| sluice | 1 | 50000 | 1.25 |",
		"| idle | RSS KiB/conn ↓ | 0.50 | 15.00 (Go io.Copy) | 0.03 | 1 of 1 |\n",
		"- Go io.Copy: 64 errors, first: `connection reset | by peer`",
		"](results.svg)",
		"sluice udp: skipped",
		"| target | runs | req/s ↑ | ×best | p50 µs ↓ | ×best | p99 µs ↓ | ×best | proxy CPU µs/req ↓ | ×best | machine CPU µs/req ↓ | ×best | errors |\n" +
			"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" +
			"| sluice | 1 | 50000 | 1.25 | 100 | 0.83 | 400 | 0.80 | 10.00 | 0.83 | 40.00 | – | 0 |\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("RESULTS.md lacks %q", want)
		}
	}
	if strings.Contains(text, "steal") || strings.Contains(summary, "steal") {
		t.Errorf("steal shown for results without it:\n%s\n%s", text, summary)
	}
	if strings.Contains(text, "SMOKE") {
		t.Error("a run with smoke 0 is marked as a smoke run")
	}
	if !strings.Contains(summary, "rr       req/s") {
		t.Errorf("summary lacks the rr line:\n%s", summary)
	}

	f, err := os.Open(svg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := xml.NewDecoder(f)
	rects := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	// Background, legend squares and at least one bar per charted figure.
	if rects < 8 {
		t.Errorf("SVG has %d rects, want a chart", rects)
	}
}

func TestRunNeedsDir(t *testing.T) {
	if err := run(context.Background(), nil, io.Discard); err == nil {
		t.Error("run without --dir succeeded")
	}
}
