// Command report turns the raw output of bench/flood.sh (phases.tsv, the
// allowed client's JSON per phase, meta.tsv) into the "## flood" section of
// bench/FLOOD.md.
//
// Usage:
//
//	report --dir bench/out/flood-RUN [--out bench/FLOOD.md]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "flood report: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	dir := fs.String("dir", "", "output directory of one bench/flood.sh run (required)")
	out := fs.String("out", "bench/FLOOD.md", "markdown file to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	meta, err := readMeta(filepath.Join(*dir, "meta.tsv"))
	if err != nil {
		return err
	}
	phases, err := readPhases(*dir)
	if err != nil {
		return err
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	if err := write(f, meta, phases, filepath.Base(*dir)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// meta is meta.tsv: key, value lines; a key may repeat.
type meta map[string][]string

func (m meta) get(k string) string {
	if v := m[k]; len(v) > 0 {
		return v[0]
	}
	return "?"
}

func readMeta(path string) (meta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := meta{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, ok := strings.Cut(line, "\t")
		if ok {
			m[k] = append(m[k], v)
		}
	}
	return m, nil
}

// phase is one line of phases.tsv with the allowed client's result.
type phase struct {
	round    int
	fw       bool    // the XDP firewall was attached
	flood    string  // "none", or the flood's rate in SYNs/s, "0" for flat out
	wallS    float64 // between the snapshots around the rr run
	utime    float64 // sluice, s, from /proc/PID/stat
	stime    float64
	perfUser float64 // sluice, s, from perf samples; -1 without perf
	perfSys  float64
	denied   float64 // XDP drops of denied sources
	deniedS  float64 // time between the two reads of denied
	tcpIn    float64 // segments the server namespace's TCP stack received
	cookies  float64 // SYN cookies sent
	cpuBusy  float64 // machine ticks not idle
	cpuSoft  float64 // machine softirq ticks
	cpuTotal float64
	vethDrop float64 // client veth transmit drops: the server end's ring was full
	idle     float64 // % of the machine idle in the second before the phase
	sent     float64 // flood SYNs sent
	floodS   float64
	floodCPU float64 // generator ticks
	napiCPU  float64 // the server veth end's NAPI threads, s; -1 when not pinned (older runs: absent)
	rr       rrResult
}

// rrResult is the part of sluice-bench rr --json read here.
type rrResult struct {
	OpsPerSec  float64 `json:"ops_per_s"`
	TargetRate float64 `json:"target_rate_per_s"`
	Errors     uint64  `json:"errors"`
	Missed     uint64  `json:"missed"`
	SendLag    *struct {
		P99 float64 `json:"p99"`
	} `json:"send_lag_us"`
	Latency *struct {
		P50  float64 `json:"p50"`
		P99  float64 `json:"p99"`
		P999 float64 `json:"p99_9"`
	} `json:"latency_us"`
}

func readPhases(dir string) ([]phase, error) {
	b, err := os.ReadFile(filepath.Join(dir, "phases.tsv"))
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 2 {
		return nil, errors.New("phases.tsv has no phases")
	}
	col := map[string]int{}
	for i, h := range strings.Split(lines[0], "\t") {
		col[h] = i
	}
	var ps []phase
	for n, line := range lines[1:] {
		f := strings.Split(line, "\t")
		if len(f) != len(col) {
			return nil, fmt.Errorf("phases.tsv line %d: %d fields, want %d", n+2, len(f), len(col))
		}
		var errs []error
		num := func(name string) float64 {
			v, err := strconv.ParseFloat(f[col[name]], 64)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %v", name, err))
			}
			return v
		}
		clk := 100.0 // utime and stime are in 1/100 s on Linux (CLK_TCK)
		p := phase{
			round:    int(num("round")),
			fw:       f[col["fw"]] == "on",
			flood:    f[col["flood"]],
			wallS:    num("wall_s"),
			utime:    num("sl_utime") / clk,
			stime:    num("sl_stime") / clk,
			denied:   num("denied"),
			deniedS:  num("denied_s"),
			tcpIn:    num("tcp_insegs"),
			cookies:  num("syncookies"),
			cpuTotal: num("cpu_total"),
			cpuSoft:  num("cpu_softirq"),
			vethDrop: num("veth_drops"),
			idle:     num("idle_before"),
			sent:     num("flood_sent"),
			floodS:   num("flood_s"),
			floodCPU: num("flood_cpu") / clk,
			perfUser: num("perf_user_ms") / 1000,
			perfSys:  num("perf_sys_ms") / 1000,
		}
		p.cpuBusy = p.cpuTotal - num("cpu_idle")
		p.napiCPU = -1
		if _, ok := col["napi_cpu"]; ok {
			if v := num("napi_cpu"); v >= 0 {
				p.napiCPU = v / clk
			}
		}
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("phases.tsv line %d: %w", n+2, err)
		}
		rb, err := os.ReadFile(filepath.Join(dir, f[col["rr"]]))
		if err == nil {
			err = json.Unmarshal(rb, &p.rr)
		}
		if err != nil || p.rr.Latency == nil {
			return nil, fmt.Errorf("phases.tsv line %d: allowed client result %s: %v", n+2, f[col["rr"]], err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// figure is a per-phase value and how to print it.
type figure struct {
	head string
	val  func(p phase) float64
	prec int
}

var figures = []figure{
	{"flood SYNs sent /s", func(p phase) float64 { return div(p.sent, p.floodS) }, 0},
	{"dropped by XDP /s", func(p phase) float64 { return div(p.denied, p.deniedS) }, 0},
	{"segments into server TCP /s", func(p phase) float64 { return div(p.tcpIn, p.wallS) }, 0},
	{"SYN cookies /s", func(p phase) float64 { return div(p.cookies, p.wallS) }, 0},
	{"sluice user CPU ms/s (perf)", func(p phase) float64 { return 1000 * div(p.perfUser, p.wallS) }, 1},
	{"sluice system CPU ms/s (perf)", func(p phase) float64 { return 1000 * div(p.perfSys, p.wallS) }, 1},
	{"sluice user CPU ms/s (/proc)", func(p phase) float64 { return 1000 * div(p.utime, p.wallS) }, 1},
	{"sluice system CPU ms/s (/proc)", func(p phase) float64 { return 1000 * div(p.stime, p.wallS) }, 1},
	{"flood generator CPU %", func(p phase) float64 { return 100 * div(p.floodCPU, p.floodS) }, 0},
	{"server receive (NAPI thread) CPU %", func(p phase) float64 { return 100 * div(p.napiCPU, p.wallS) }, 1},
	{"veth ring full, drops /s", func(p phase) float64 { return div(p.vethDrop, p.wallS) }, 0},
	{"machine busy %", func(p phase) float64 { return 100 * div(p.cpuBusy, p.cpuTotal) }, 0},
	{"machine softirq %", func(p phase) float64 { return 100 * div(p.cpuSoft, p.cpuTotal) }, 1},
	{"allowed req/s", func(p phase) float64 { return p.rr.OpsPerSec }, 0},
	{"allowed p50 µs", func(p phase) float64 { return p.rr.Latency.P50 }, 0},
	{"allowed p99 µs", func(p phase) float64 { return p.rr.Latency.P99 }, 0},
	{"allowed p99.9 µs", func(p phase) float64 { return p.rr.Latency.P999 }, 0},
	{"allowed errors", func(p phase) float64 { return float64(p.rr.Errors) }, 0},
	{"client send lag p99 µs", func(p phase) float64 { return p.sendLag() }, 0},
	{"machine idle before %", func(p phase) float64 { return p.idle }, 0},
}

// user is sluice's user CPU in seconds: from perf when it sampled, else
// from /proc.
func (p phase) user() float64 {
	if p.perfUser >= 0 {
		return p.perfUser
	}
	return p.utime
}

func (p phase) sendLag() float64 {
	if p.rr.SendLag == nil {
		return 0
	}
	return p.rr.SendLag.P99
}

func div(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// stats is a median with min and max.
type stats struct{ med, lo, hi float64 }

func summarize(vs []float64) stats {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return stats{med, s[0], s[n-1]}
}

func (s stats) format(prec int) string {
	m := strconv.FormatFloat(s.med, 'f', prec, 64)
	if s.lo == s.hi {
		return m
	}
	return fmt.Sprintf("%s (%s–%s)", m, strconv.FormatFloat(s.lo, 'f', prec, 64), strconv.FormatFloat(s.hi, 'f', prec, 64))
}

// group is the phases of one (firewall, flood) setting.
type group struct {
	fw    bool
	flood string
}

func (g group) has(p phase) bool { return p.fw == g.fw && p.flood == g.flood }

func (g group) String() string {
	fw := "firewall"
	if !g.fw {
		fw = "no firewall"
	}
	return fw + ", " + floodName(g.flood)
}

func floodName(f string) string {
	switch f {
	case "none":
		return "no flood"
	case "0":
		return "flood flat out"
	}
	n, _ := strconv.Atoi(f)
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("flood %dk/s", n/1000)
	}
	return "flood " + f + "/s"
}

// groupsOf lists the settings present: with the firewall first, no flood
// first, then the floods in the order of the first round.
func groupsOf(ps []phase) []group {
	var gs []group
	for _, fw := range []bool{true, false} {
		if slices.ContainsFunc(ps, func(p phase) bool { return p.fw == fw && p.flood == "none" }) {
			gs = append(gs, group{fw, "none"})
		}
		for _, p := range ps {
			g := group{fw, p.flood}
			if p.fw == fw && p.flood != "none" && !slices.Contains(gs, g) {
				gs = append(gs, g)
			}
		}
	}
	return gs
}

func write(w io.Writer, m meta, ps []phase, run string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## flood\n\n")
	fmt.Fprintf(&b, "Measured %s on Linux %s, %s, %s; run `%s` of `bench/flood.sh` (%s). "+
		"**The machine was shared** with other engineers' builds and tests (load average %s at the start, %s at the end): "+
		"compare the rows of this table with each other, not with other runs.\n\n",
		m.get("date"), m.get("kernel"), m.get("cpu"), m.get("go"), run, m.get("settings"), m.get("loadavg"), m.get("loadavg_end"))

	present := groupsOf(ps)
	// Figures as rows, settings as columns: the table stays narrow.
	b.WriteString("| median (min–max) over rounds |")
	for _, g := range present {
		fmt.Fprintf(&b, " %s (%d) |", g, count(ps, g))
	}
	b.WriteString("\n|---|")
	for range present {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	perf := !slices.ContainsFunc(ps, func(p phase) bool { return p.perfUser < 0 })
	napi := !slices.ContainsFunc(ps, func(p phase) bool { return p.napiCPU < 0 })
	for _, f := range figures {
		if !perf && strings.HasSuffix(f.head, "(perf)") {
			continue
		}
		if !napi && strings.Contains(f.head, "NAPI") {
			continue
		}
		fmt.Fprintf(&b, "| %s |", f.head)
		for _, g := range present {
			var vs []float64
			for _, p := range ps {
				if g.has(p) {
					vs = append(vs, f.val(p))
				}
			}
			fmt.Fprintf(&b, " %s |", summarize(vs).format(f.prec))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	writeVerdict(&b, ps)
	writeMethod(&b, m)
	_, err := io.WriteString(w, b.String())
	return err
}

func count(ps []phase, g group) int {
	n := 0
	for _, p := range ps {
		if g.has(p) {
			n++
		}
	}
	return n
}

// writeVerdict compares, round by round, each flood phase with the
// no-flood phase of the same round, against the targets of the issue. Every
// round counts; the client's send lag in each baseline is shown, since on a
// shared machine other people's work can starve the load generator itself.
func writeVerdict(b *strings.Builder, ps []phase) {
	for _, g := range groupsOf(ps) {
		if g.flood == "none" {
			continue
		}
		var ratios, rises, base []float64
		var per []string
		for _, f := range ps {
			if !g.has(f) {
				continue
			}
			i := slices.IndexFunc(ps, func(n phase) bool { return n.fw == g.fw && n.flood == "none" && n.round == f.round })
			if i < 0 {
				continue
			}
			n := ps[i]
			ratio := div(f.rr.Latency.P99, n.rr.Latency.P99)
			ratios = append(ratios, ratio)
			rises = append(rises, 1000*(div(f.user(), f.wallS)-div(n.user(), n.wallS)))
			base = append(base, 1000*div(n.user(), n.wallS))
			per = append(per, fmt.Sprintf("round %d: %.0f → %.0f µs (×%.2f; client send lag p99 %.0f → %.0f µs)",
				f.round, n.rr.Latency.P99, f.rr.Latency.P99, ratio, n.sendLag(), f.sendLag()))
		}
		if len(ratios) == 0 {
			continue
		}
		r, u := summarize(ratios), summarize(rises)
		fmt.Fprintf(b, "- **%s** against the same round's no-flood phase (%d round%s): allowed p99 × %s",
			g, len(ratios), plural(len(ratios)), r.format(2))
		if g.fw {
			fmt.Fprintf(b, " (target ≤ 1.20: %s)", met(r.med <= 1.2+1e-9))
		}
		fmt.Fprintf(b, "; sluice user CPU %+.1f ms/s", u.med)
		if u.lo != u.hi {
			fmt.Fprintf(b, " (%+.1f to %+.1f)", u.lo, u.hi)
		}
		if g.fw {
			// The measurement's own noise: 10 % of the value, or, from
			// /proc, two 10 ms ticks over the phase.
			noise := 0.1 * summarize(base).med
			if ps[0].perfUser < 0 {
				noise = max(noise, 2*10/ps[0].wallS)
			}
			fmt.Fprintf(b, " (target: no rise beyond the noise, %.1f ms/s: %s)", noise, met(u.med <= noise))
		}
		fmt.Fprintf(b, ". %s.\n", strings.Join(per, "; "))
	}
	b.WriteString("\n")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

func writeMethod(b *strings.Builder, m meta) {
	fmt.Fprintf(b, "Method: two network namespaces joined by a veth pair, addresses from 198.18.0.0/15 only. "+
		"sluice (`--listen 198.18.0.1:7000`, two `sluice-bench serve --echo` backends, `--deny-cidr 198.18.0.128/25`) "+
		"runs in one with the XDP firewall on its veth end (%s); in the other, the allowed client "+
		"(`sluice-bench rr` from 198.18.0.2, open loop at a fixed rate, latency from the intended send time) "+
		"and the flood (`bench/flood/synflood`: SYNs to port 7000 through a raw socket, sources cycled through the denied /25 "+
		"with random ports and sequence numbers, or hping3 with `-a`). "+
		"Each round measures the allowed client without a flood and under each flood rate, the order reversing from round to round; "+
		"the no-firewall column is the same sluice without `--xdp-iface`. "+
		"Drops per second are the deltas of `sluice_firewall_packets_total{verdict=\"denied\"}` over each measured phase; "+
		"sluice's CPU is measured over the same time (below); "+
		"segments into TCP and SYN cookies are the server namespace's `Tcp InSegs` and `TcpExt SyncookiesSent`; "+
		"machine CPU is from `/proc/stat`; the veth ring drops are the client end's transmit drops (`ip -s link`), "+
		"packets lost because the server end's XDP receive ring, which the flood shares with the allowed client, was full. "+
		"sluice's user and system CPU come from perf (`perf record -e cpu-clock:u -e cpu-clock:k -c 250000 -p PID`: a sample per 250 µs of CPU in each mode, counted) "+
		"and, for comparison, from fields 14 and 15 of `/proc/PID/stat`, whose split this kernel (tick accounting) samples at the 250 Hz tick and then scales, "+
		"so that over a few seconds at these small values it is noisy and can even stand still; the verdicts use perf when it ran. ",
		strings.TrimSpace(m.get("xdp")))
	if pin := m.get("pin"); pin != "?" && pin != "none" {
		fmt.Fprintf(b, "CPUs (%s): sluice, its backends and the allowed client run on CPU 0 and the flood generator on CPU 1, "+
			"as if the attacker were another machine. The server's veth end has GRO on and threaded NAPI, its NAPI thread pinned to CPU 0, "+
			"and the client end has TSO off, so that everything the server receives, flood and allowed client alike, "+
			"is processed on the server's CPU, with or without the firewall, as a NIC's receive queue is served by the receiving host; "+
			"its CPU is the NAPI thread row. On veth that processing is dearer than XDP on a NIC's own buffers: packets arrive as skbs, "+
			"and veth copies one into a fresh page before running XDP when it lacks XDP's 256 bytes of headroom, as socket-made packets do.\n", pin)
	} else {
		b.WriteString("The flood generator shares the two cores with everything else, so part of what the allowed client feels under the flood " +
			"is CPU taken by the generator itself (and, with native XDP on veth, the drops run in the sender's softirq).\n")
	}
}
