// Command report turns one run of bench/run.sh into bench/RESULTS.md and an
// SVG chart. It reads the run's directory:
//
//	meta.tsv                    key<TAB>value lines written by run.sh
//	raw/rROUND_SCENARIO_TARGET.json      one sluice-bench --json result (or
//	                            run.sh's redis-benchmark summary in the same
//	                            field names) per run
//	raw/rROUND_SCENARIO_TARGET.json.err  stderr of a run that failed
//
// and writes, per scenario, the median and min–max over the rounds of each
// figure for each target, with the ratio of each median to the best peer's
// (HAProxy, nginx, io.Copy; direct is the physical reference, not a peer),
// and the CPU steal the runs had: a round where either run of a pair had
// more than maxStealPct is left out of the pairing.
//
// Usage:
//
//	report --dir bench/out/RUN --md bench/RESULTS.md --svg bench/results.svg
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/sluice-lb/sluice/internal/loadgen"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "report: %v\n", err)
		os.Exit(1)
	}
}

func run(_ context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	dir := fs.String("dir", "", "run directory written by bench/run.sh (required)")
	mdPath := fs.String("md", "bench/RESULTS.md", "Markdown file to write")
	svgPath := fs.String("svg", "bench/results.svg", "SVG chart to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	run, err := load(*dir)
	if err != nil {
		return err
	}
	tables := run.tables()
	// The Markdown links the chart by a path relative to itself.
	rel, err := filepath.Rel(filepath.Dir(*mdPath), *svgPath)
	if err != nil {
		rel = *svgPath
	}
	var md strings.Builder
	run.writeMarkdown(&md, tables, filepath.ToSlash(rel))
	writeAlso(&md, filepath.Dir(*mdPath))
	if err := os.WriteFile(*mdPath, []byte(md.String()), 0o644); err != nil {
		return fmt.Errorf("write markdown: %w", err)
	}
	var svg strings.Builder
	writeSVG(&svg, run, tables)
	if err := os.WriteFile(*svgPath, []byte(svg.String()), 0o644); err != nil {
		return fmt.Errorf("write svg: %w", err)
	}
	writeSummary(stdout, tables)
	return nil
}

// also are measurements kept beside RESULTS.md by other scripts; the ones
// present are linked at the end.
var also = []struct{ file, what string }{
	{"TARGETS.md", "the performance targets of the issues against the figures of a full run"},
	{"SPLICE.md", "sluice's CPU per request for each --splice mode by message size (`bench/splice-modes.sh`)"},
	{"FLOOD.md", "a SYN flood from a denied range against the XDP firewall, with an allowed client's latency (`bench/flood.sh`)"},
	{"FLOOD-pinned.md", "the same with the flood generator on a CPU of its own and everything the server receives processed on the server's (`PIN=1 bench/flood.sh`)"},
}

func writeAlso(w *strings.Builder, dir string) {
	var have []string
	for _, a := range also {
		if _, err := os.Stat(filepath.Join(dir, a.file)); err == nil {
			have = append(have, fmt.Sprintf("- [%s](%s): %s\n", a.file, a.file, a.what))
		}
	}
	if len(have) > 0 {
		w.WriteString("## Also measured\n\n" + strings.Join(have, "") + "\n")
	}
}

// peers are the targets that sluice is compared with; direct is not one.
var peers = []string{"haproxy", "nginx", "iocopy"}

// targetOrder is the column and legend order.
var targetOrder = []string{"direct", "sluice", "haproxy", "nginx", "iocopy"}

var targetLabel = map[string]string{
	"direct":  "direct",
	"sluice":  "sluice",
	"haproxy": "HAProxy",
	"nginx":   "nginx",
	"iocopy":  "Go io.Copy",
}

func label(t string) string {
	if l, ok := targetLabel[t]; ok {
		return l
	}
	return t
}

// runData is everything read from a run directory.
type runData struct {
	meta    map[string]string
	notes   []string
	status  map[string]string // target -> "ok" or why it was skipped
	results map[key][]loadgen.Result
	roundOf map[key][]int    // the round of each result, in the same order
	errs    map[key][]string // first line of each failed run's stderr
	rounds  int
}

// key names one scenario on one target.
type key struct{ scenario, target string }

var rawName = regexp.MustCompile(`^r([0-9]+)_([a-z0-9-]+)_([a-z0-9-]+)\.json(\.err)?$`)

func load(dir string) (*runData, error) {
	rd := &runData{
		meta:    map[string]string{},
		status:  map[string]string{},
		results: map[key][]loadgen.Result{},
		roundOf: map[key][]int{},
		errs:    map[key][]string{},
	}
	if err := rd.readMeta(filepath.Join(dir, "meta.tsv")); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(dir, "raw"))
	if err != nil {
		return nil, fmt.Errorf("read raw results: %w", err)
	}
	for _, e := range ents {
		m := rawName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		round, _ := strconv.Atoi(m[1])
		rd.rounds = max(rd.rounds, round)
		k := key{m[2], m[3]}
		b, err := os.ReadFile(filepath.Join(dir, "raw", e.Name()))
		if err != nil {
			return nil, err
		}
		if m[4] != "" {
			if msg := firstLine(string(b)); msg != "" {
				rd.errs[k] = append(rd.errs[k], fmt.Sprintf("round %d: %s", round, msg))
			}
			continue
		}
		var r loadgen.Result
		if err := json.Unmarshal(b, &r); err != nil {
			rd.errs[k] = append(rd.errs[k], fmt.Sprintf("round %d: unreadable result: %v", round, err))
			continue
		}
		rd.results[k] = append(rd.results[k], r)
		rd.roundOf[k] = append(rd.roundOf[k], round)
	}
	if n, err := strconv.Atoi(rd.meta["rounds"]); err == nil {
		rd.rounds = n
	}
	return rd, nil
}

func (rd *runData) readMeta(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read meta: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "\t")
		switch k {
		case "note":
			rd.notes = append(rd.notes, v)
		case "status":
			t, s, _ := strings.Cut(v, "\t")
			rd.status[t] = s
		default:
			rd.meta[k] = v
		}
	}
	return sc.Err()
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// metric is one figure of a scenario.
type metric struct {
	name   string // column header, with unit
	short  string // for the chart and the summary
	higher bool   // higher is better
	// value extracts the figure from a result; ok is false when it is
	// missing (no proxy measured, nothing completed).
	value func(r *loadgen.Result) (v float64, ok bool)
	// digits after the decimal point.
	digits int
	// ratio: compare with the best peer; chart: show in the SVG.
	ratio, chart bool
}

// scenario describes one scenario's table.
type scenario struct {
	key     string
	title   string
	what    func(meta map[string]string) string
	metrics []metric
}

func rate(r *loadgen.Result) (float64, bool) { return r.OpsPerSec, r.Ops > 0 }
func gbps(r *loadgen.Result) (float64, bool) { return r.Gbps, r.Gbps > 0 }
func lat(q func(l *loadgen.Latency) float64) func(r *loadgen.Result) (float64, bool) {
	return func(r *loadgen.Result) (float64, bool) {
		if r.Latency == nil || r.Latency.Count == 0 {
			return 0, false
		}
		return q(r.Latency), true
	}
}
func p50(l *loadgen.Latency) float64  { return l.P50 }
func p99(l *loadgen.Latency) float64  { return l.P99 }
func p999(l *loadgen.Latency) float64 { return l.P999 }

func proxy(q func(p *loadgen.ProxyResult) float64) func(r *loadgen.Result) (float64, bool) {
	return func(r *loadgen.Result) (float64, bool) {
		if r.Proxy == nil || r.Proxy.Error != "" {
			return 0, false
		}
		return q(r.Proxy), true
	}
}
func cpuPerGiB(p *loadgen.ProxyResult) float64 { return p.CPUSecPerGiB }

// machine extracts a figure of the whole machine's CPU cost.
func machine(q func(m *loadgen.MachineResult) float64) func(r *loadgen.Result) (float64, bool) {
	return func(r *loadgen.Result) (float64, bool) {
		if r.Machine == nil || r.Machine.Error != "" {
			return 0, false
		}
		v := q(r.Machine)
		return v, v > 0
	}
}
func machinePerGiB(m *loadgen.MachineResult) float64 { return m.CPUSecPerGiB }
func machinePerOp(m *loadgen.MachineResult) float64  { return m.CPUMicrosPerOp }
func cpuPerOp(p *loadgen.ProxyResult) float64        { return p.CPUMicrosPerOp }

// maxStealPct is the CPU steal, in percent of the CPUs' time, above which a
// run is left out of the paired rounds. Steal slows whatever runs while the
// hypervisor takes the CPUs, so a round where one target ran under it and
// the other did not compares the hypervisor, not the proxies. On the 2-core
// bench VM (2026-11-22) steal averaged about 1% over 16 hours since boot,
// yet went to 40–90% for minutes, and a run made then gave figures 3–4×
// worse; 10% lies well between the two.
const maxStealPct = 10

// steal is the share of the CPUs' time that the hypervisor stole during a
// run. A result without it (raw files older than the figure, redis-benchmark
// and idle runs, a failed read of /proc/stat) has none: unknown, not 0.
func steal(r *loadgen.Result) (float64, bool) {
	if r.Machine == nil || r.Machine.Error != "" || r.Machine.StealPct == nil {
		return 0, false
	}
	return *r.Machine.StealPct, true
}

// stealFigure is the steal column of a scenario's table, shown when any run
// of the scenario has the figure; it is not compared with a peer.
var stealFigure = metric{name: "steal %", short: "steal %", value: steal, digits: 1}

// rssPerConn is the idle figure, computed from the before and after VmRSS
// rather than read from rss_per_conn_kib, which the JSON omits when it is
// zero or below (memory the process already held).
func rssPerConn(r *loadgen.Result) (float64, bool) {
	p := r.Proxy
	if p == nil || p.Error != "" || r.Idle == nil || r.Idle.Opened == 0 || p.RSSBeforeKiB == 0 || p.RSSAfterKiB == 0 {
		return 0, false
	}
	return float64(p.RSSAfterKiB-p.RSSBeforeKiB) / float64(r.Idle.Opened), true
}

func bulkMetrics() []metric {
	return []metric{
		{name: "Gbit/s", short: "Gbit/s", higher: true, value: gbps, digits: 2, ratio: true, chart: true},
		{name: "proxy CPU s/GiB", short: "CPU s/GiB", value: proxy(cpuPerGiB), digits: 3, ratio: true, chart: true},
		{name: "machine CPU s/GiB", short: "machine s/GiB", value: machine(machinePerGiB), digits: 3, ratio: true},
	}
}

var scenarios = []scenario{
	{key: "bulk", title: "bulk: one stream",
		what: func(m map[string]string) string {
			return fmt.Sprintf("1 TCP connection pushing 128 KiB writes to a sink for %s s (after %s s warmup): `sluice-bench stream --conns 1 --direction push`.", m["duration"], m["warmup"])
		}, metrics: bulkMetrics()},
	{key: "bulk4", title: "bulk4: four streams",
		what: func(m map[string]string) string {
			return fmt.Sprintf("4 TCP connections pushing to a sink for %s s: `sluice-bench stream --conns 4 --direction push`.", m["duration"])
		}, metrics: bulkMetrics()},
	{key: "pull", title: "pull: one stream from a source",
		what: func(m map[string]string) string {
			return fmt.Sprintf("1 TCP connection reading from a source for %s s: `sluice-bench stream --direction pull`.", m["duration"])
		}, metrics: bulkMetrics()},
	{key: "rr", title: "rr: request/response, closed loop",
		what: func(m map[string]string) string {
			return fmt.Sprintf("%s keep-alive connections from distinct loopback source addresses, 64-byte request and echo, each sending its next request when the answer is in, %s s: `sluice-bench rr`.", m["rr_conns"], m["duration"])
		}, metrics: []metric{
			{name: "req/s", short: "req/s", higher: true, value: rate, ratio: true, chart: true},
			{name: "p50 µs", short: "p50", value: lat(p50), ratio: true},
			{name: "p99 µs", short: "p99", value: lat(p99), ratio: true, chart: true},
			{name: "proxy CPU µs/req", short: "CPU µs/req", value: proxy(cpuPerOp), digits: 2, ratio: true, chart: true},
			{name: "machine CPU µs/req", short: "machine µs/req", value: machine(machinePerOp), digits: 2, ratio: true},
		}},
	{key: "rr-open", title: "rr-open: request/response at a fixed rate",
		what: func(m map[string]string) string {
			return fmt.Sprintf("The same %s connections in open loop at %s req/s in all (60%% of the lowest closed-loop proxy rate of round 1 unless set), latency from the intended send time (no coordinated omission): `sluice-bench rr --rate`.", m["rr_conns"], orDash(m["rr_open_rate"]))
		}, metrics: []metric{
			{name: "req/s done", short: "req/s", higher: true, value: rate},
			{name: "p50 µs", short: "p50", value: lat(p50), ratio: true},
			{name: "p99 µs", short: "p99", value: lat(p99), ratio: true, chart: true},
			{name: "p99.9 µs", short: "p99.9", value: lat(p999), ratio: true},
			{name: "proxy CPU µs/req", short: "CPU µs/req", value: proxy(cpuPerOp), digits: 2, ratio: true},
		}},
	{key: "connect", title: "connect: a new connection per request",
		what: func(m map[string]string) string {
			return fmt.Sprintf("%s workers, each connecting, sending 64 bytes, reading the echo and closing, %s s: `sluice-bench connect`.", m["connect_conns"], m["duration"])
		}, metrics: []metric{
			{name: "conn/s", short: "conn/s", higher: true, value: rate, ratio: true, chart: true},
			{name: "p99 µs", short: "p99", value: lat(p99), ratio: true},
			{name: "proxy CPU µs/conn", short: "CPU µs/conn", value: proxy(cpuPerOp), digits: 2, ratio: true, chart: true},
			{name: "machine CPU µs/conn", short: "machine µs/conn", value: machine(machinePerOp), digits: 2, ratio: true},
		}},
	{key: "idle", title: "idle: connections held open",
		what: func(m map[string]string) string {
			return fmt.Sprintf("%s connections opened through the proxy (one echo round trip each), held %s s; the proxy's VmRSS (summed over its processes) after minus before, divided by the connections held: `sluice-bench idle`. "+
				"Opening gives up after 64 failed connections, so a proxy that runs out of file descriptors shows fewer connections held "+
				"(the io.Copy proxy keeps two pipes per connection for its life: 6 descriptors per connection against an open-file limit of %s).", m["idle_conns"], m["idle_hold"], orDash(m["nofile"]))
		}, metrics: []metric{
			{name: "connections held", short: "held", higher: true, value: func(r *loadgen.Result) (float64, bool) {
				if r.Idle == nil {
					return 0, false
				}
				return float64(r.Idle.Opened), true
			}},
			{name: "RSS KiB/conn", short: "RSS KiB/conn", value: rssPerConn, digits: 2, ratio: true, chart: true},
		}},
	{key: "redis", title: "redis: a real client",
		what: func(m map[string]string) string {
			return fmt.Sprintf("`redis-benchmark -t get -c %s -n %s` against one redis-server; proxy CPU from /proc/PID/stat around the run.", m["redis_clients"], m["redis_requests"])
		}, metrics: []metric{
			{name: "req/s", short: "req/s", higher: true, value: rate, ratio: true, chart: true},
			{name: "p50 µs", short: "p50", value: lat(p50), ratio: true},
			{name: "p99 µs", short: "p99", value: lat(p99), ratio: true},
			{name: "proxy CPU µs/req", short: "CPU µs/req", value: proxy(cpuPerOp), digits: 2, ratio: true, chart: true},
		}},
	{key: "udp", title: "udp: datagram request/response",
		what: func(m map[string]string) string {
			return fmt.Sprintf("%s client sockets from distinct source addresses, 64-byte datagrams to a UDP echo, closed loop, %s s: `sluice-bench udp`. HAProxy 2.6 and the io.Copy proxy have no UDP.", m["udp_conns"], m["duration"])
		}, metrics: []metric{
			{name: "datagrams/s", short: "dgram/s", higher: true, value: rate, ratio: true, chart: true},
			{name: "p99 µs", short: "p99", value: lat(p99), ratio: true, chart: true},
			{name: "loss %", short: "loss %", value: func(r *loadgen.Result) (float64, bool) {
				if r.UDP == nil {
					return 0, false
				}
				return r.UDP.LossPct, true
			}, digits: 3},
			{name: "proxy CPU µs/dgram", short: "CPU µs/dgram", value: proxy(cpuPerOp), digits: 2, ratio: true},
			{name: "machine CPU µs/dgram", short: "machine µs/dgram", value: machine(machinePerOp), digits: 2, ratio: true},
		}},
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// stat is one figure of one target over the rounds.
type stat struct {
	n                int
	median, min, max float64
}

func summarize(vs []float64) (stat, bool) {
	if len(vs) == 0 {
		return stat{}, false
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{n: len(s), median: m, min: s[0], max: s[len(s)-1]}, true
}

// cell is one metric of one target in a table.
type cell struct {
	ok    bool
	stat  stat
	ratio float64 // median / best peer's median; 0 when there is none
	// won of paired: in how many of the rounds that measured both this
	// target and the best peer this target did better than the peer in
	// the same round. Targets run back to back within a round, so this
	// pairing cancels the machine's slow drifts that medians over the
	// rounds keep.
	// tied counts the paired rounds with equal figures (latency
	// percentiles are quantised, so ties happen).
	// stolen counts the rounds that measured both but are not paired
	// because either run had more than maxStealPct of steal.
	won, tied, paired, stolen int
}

// roundsAhead is "won of paired", or "–" when no round measured both, with
// the ties and the rounds left out for steal when there are any.
func (c cell) roundsAhead() string {
	s := "–"
	if c.paired > 0 {
		s = fmt.Sprintf("%d of %d", c.won, c.paired)
	}
	var notes []string
	if c.tied > 0 {
		notes = append(notes, fmt.Sprintf("%d tied", c.tied))
	}
	if c.stolen > 0 {
		notes = append(notes, fmt.Sprintf("%d left out: steal", c.stolen))
	}
	if len(notes) > 0 {
		s += " (" + strings.Join(notes, ", ") + ")"
	}
	return s
}

// table is one scenario's figures.
type table struct {
	sc      scenario
	targets []string          // rows, in targetOrder, those with any result or error
	cells   map[string][]cell // target -> one cell per metric
	runs    map[string]int
	errors  map[string]uint64 // target -> errors counted by the load generator
	first   map[string]string // target -> its first error message
	failed  map[string][]string
	best    []string // per metric: the best peer, "" when none
	// steal is each target's CPU steal over its runs, for the targets
	// with any run that measured it.
	steal map[string]stat
}

func (rd *runData) tables() []table {
	var out []table
	for _, sc := range scenarios {
		t := table{sc: sc, cells: map[string][]cell{}, runs: map[string]int{}, errors: map[string]uint64{},
			first: map[string]string{}, failed: map[string][]string{}, best: make([]string, len(sc.metrics)), steal: map[string]stat{}}
		for _, tg := range rd.targetList() {
			k := key{sc.key, tg}
			rs, es := rd.results[k], rd.errs[k]
			if len(rs) == 0 && len(es) == 0 {
				continue
			}
			t.targets = append(t.targets, tg)
			t.runs[tg] = len(rs)
			t.failed[tg] = es
			cells := make([]cell, len(sc.metrics))
			for i, m := range sc.metrics {
				cells[i].stat, cells[i].ok = figure(rs, m)
			}
			if st, ok := figure(rs, stealFigure); ok {
				t.steal[tg] = st
			}
			for j := range rs {
				t.errors[tg] += rs[j].Errors
				if t.first[tg] == "" && rs[j].FirstError != "" {
					t.first[tg] = rs[j].FirstError
				}
			}
			t.cells[tg] = cells
		}
		if len(t.targets) == 0 {
			continue
		}
		for i, m := range sc.metrics {
			if !m.ratio {
				continue
			}
			best, bv := "", 0.0
			for _, p := range peers {
				c, ok := t.cells[p]
				if !ok || !c[i].ok {
					continue
				}
				v := c[i].stat.median
				if best == "" || m.higher && v > bv || !m.higher && v < bv {
					best, bv = p, v
				}
			}
			t.best[i] = best
			if best == "" || bv == 0 {
				continue
			}
			peer := rd.byRound(key{sc.key, best}, m)
			peerSteal := rd.byRound(key{sc.key, best}, stealFigure)
			for _, tg := range t.targets {
				c := t.cells[tg]
				if !c[i].ok {
					continue
				}
				c[i].ratio = c[i].stat.median / bv
				// A run whose steal is unknown is paired: 0 from
				// the map is below the limit.
				st := rd.byRound(key{sc.key, tg}, stealFigure)
				for r, v := range rd.byRound(key{sc.key, tg}, m) {
					pv, ok := peer[r]
					if !ok {
						continue
					}
					if st[r] > maxStealPct || peerSteal[r] > maxStealPct {
						c[i].stolen++
						continue
					}
					c[i].paired++
					switch {
					case v == pv:
						c[i].tied++
					case m.higher == (v > pv):
						c[i].won++
					}
				}
			}
		}
		out = append(out, t)
	}
	return out
}

// figure summarizes metric m over the results rs that have it.
func figure(rs []loadgen.Result, m metric) (stat, bool) {
	var vs []float64
	for j := range rs {
		if v, ok := m.value(&rs[j]); ok {
			vs = append(vs, v)
		}
	}
	return summarize(vs)
}

// byRound returns metric m of k's results by round.
func (rd *runData) byRound(k key, m metric) map[int]float64 {
	out := map[int]float64{}
	for j := range rd.results[k] {
		if v, ok := m.value(&rd.results[k][j]); ok {
			out[rd.roundOf[k][j]] = v
		}
	}
	return out
}

// targetList is targetOrder followed by any other target seen.
func (rd *runData) targetList() []string {
	seen := map[string]bool{}
	var out []string
	for _, t := range targetOrder {
		seen[t] = true
		out = append(out, t)
	}
	var extra []string
	for k := range rd.results {
		if !seen[k.target] {
			seen[k.target] = true
			extra = append(extra, k.target)
		}
	}
	for k := range rd.errs {
		if !seen[k.target] {
			seen[k.target] = true
			extra = append(extra, k.target)
		}
	}
	sort.Strings(extra)
	return append(out, extra...)
}

// num formats v with the metric's digits, or a magnitude-based default.
func num(v float64, digits int) string {
	if digits == 0 {
		switch {
		case v >= 100:
			return strconv.FormatFloat(v, 'f', 0, 64)
		case v >= 10:
			return strconv.FormatFloat(v, 'f', 1, 64)
		default:
			return strconv.FormatFloat(v, 'f', 2, 64)
		}
	}
	return strconv.FormatFloat(v, 'f', digits, 64)
}

func arrow(m metric) string {
	if m.higher {
		return "↑"
	}
	return "↓"
}

func (rd *runData) isSmoke() bool { return rd.meta["smoke"] == "1" }

func (rd *runData) writeMarkdown(w *strings.Builder, tables []table, svgRel string) {
	m := rd.meta
	fmt.Fprintf(w, "# sluice benchmark results\n\n")
	if rd.isSmoke() {
		fmt.Fprintf(w, "> **SMOKE RUN** — short settings (%s round(s), %s s per run, %s idle connections) on a machine shared with other work: "+
			"these figures only show that the harness works end to end. They are not measurements; run `make bench` with the defaults on a quiet machine for those.\n\n",
			m["rounds"], m["duration"], m["idle_conns"])
	}
	fmt.Fprintf(w, "| | |\n|---|---|\n")
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "| %s | %s |\n", k, v)
		}
	}
	row("date", m["date"])
	row("kernel", m["kernel"])
	row("Go", m["go"])
	row("CPU", m["cpu"])
	row("sluice", "commit "+m["sluice"]+", `--workers 2`, other flags default")
	row("HAProxy", m["haproxy"]+tunedNote(m["haproxy"], "; nbthread 2, splice both ways, tune.pipesize 524288, balance source + hash-type consistent"))
	row("nginx", m["nginx"]+tunedNote(m["nginx"], "; stream module, 2 workers, hash $remote_addr consistent"))
	row("Go io.Copy", "bench/iocopy: a goroutine pair per connection, io.Copy both ways (splice via the runtime), FNV hash of the client IP")
	row("redis", m["redis"])
	row("rounds", fmt.Sprintf("%s; each scenario runs on each target in turn, target order rotated every round", m["rounds"]))
	row("per run", fmt.Sprintf("%s s measured after %s s warmup", m["duration"], m["warmup"]))
	row("run id", fmt.Sprintf("`%s` (raw JSON in bench/out/%s/raw, not committed)", m["run_id"], m["run_id"]))
	fmt.Fprintf(w, "\n")
	fmt.Fprintf(w, "Everything runs on this one machine: the load generator, the proxy and the backends (`sluice-bench serve`, redis-server) share its CPUs, "+
		"so absolute figures move from run to run; compare the **ratios** within this run. "+
		"Each cell is the **median** over the rounds with (min–max); **×best** is the median divided by the best peer's median "+
		"(best of HAProxy, nginx and io.Copy for that figure; ↑ higher is better, ↓ lower is better, so ×best above 1 wins for ↑ figures and loses for ↓ ones). "+
		"*direct* is the client talking to the backend with no proxy: the physical reference, never a peer. "+
		"Proxy CPU is utime+stime from /proc/PID/stat summed over all the proxy's processes over the measured time (10 ms resolution); "+
		"RSS is VmRSS from /proc/PID/status summed the same way. "+
		"Machine CPU is the busy time of all CPUs from /proc/stat over the measured time (generator, proxy, backends and kernel): "+
		"on loopback a sender's softirq does part of its receiver's TCP work, so the split between proxy and backends moves with timing while the machine's total does not. How each scenario is run: [bench/README.md](README.md).\n\n")
	fmt.Fprintf(w, "![ratio of each target's median to the best peer's, per scenario](%s)\n\n", svgRel)

	// Summary: sluice against the best peer.
	fmt.Fprintf(w, "## sluice against the best peer\n\n"+
		"**rounds ahead** pairs the rounds: in how many of them sluice did better than that peer in the same round "+
		"(the targets run back to back within a round, so the pairing cancels the machine's slower drifts).\n\n"+
		"| scenario | figure | sluice | best peer | ×best | rounds ahead |\n|---|---|---:|---:|---:|---:|\n")
	for _, t := range tables {
		sc, ok := t.cells["sluice"]
		for i, mt := range t.sc.metrics {
			if !mt.ratio || t.best[i] == "" {
				continue
			}
			bp := t.cells[t.best[i]][i].stat.median
			sv, rt, ra := "–", "–", "–"
			if ok && sc[i].ok {
				sv = num(sc[i].stat.median, mt.digits)
				if sc[i].ratio > 0 {
					rt = fmt.Sprintf("%.2f", sc[i].ratio)
				}
				ra = sc[i].roundsAhead()
			}
			fmt.Fprintf(w, "| %s | %s %s | %s | %s (%s) | %s | %s |\n", t.sc.key, mt.name, arrow(mt), sv, num(bp, mt.digits), label(t.best[i]), rt, ra)
		}
	}
	fmt.Fprintf(w, "\n")
	if line := rd.stealLine(tables); line != "" {
		fmt.Fprintf(w, "%s\n\n", line)
	}

	for _, t := range tables {
		fmt.Fprintf(w, "## %s\n\n%s\n\n", t.sc.title, t.sc.what(m))
		fmt.Fprintf(w, "| target | runs |")
		align := "|---|---:|"
		for _, mt := range t.sc.metrics {
			fmt.Fprintf(w, " %s %s |", mt.name, arrow(mt))
			align += "---:|"
			if mt.ratio {
				fmt.Fprintf(w, " ×best |")
				align += "---:|"
			}
		}
		fmt.Fprintf(w, " errors |")
		align += "---:|"
		if len(t.steal) > 0 {
			fmt.Fprintf(w, " %s |", stealFigure.name)
			align += "---:|"
		}
		fmt.Fprintf(w, "\n%s\n", align)
		for _, tg := range t.targets {
			fmt.Fprintf(w, "| %s | %d |", label(tg), t.runs[tg])
			for i, mt := range t.sc.metrics {
				c := t.cells[tg][i]
				v := "–"
				if c.ok {
					v = num(c.stat.median, mt.digits)
					if t.best[i] == tg {
						v = "**" + v + "**"
					}
					v += spread(c.stat, mt.digits)
				}
				fmt.Fprintf(w, " %s |", v)
				if mt.ratio {
					r := "–"
					if c.ok && c.ratio > 0 {
						r = fmt.Sprintf("%.2f", c.ratio)
					}
					fmt.Fprintf(w, " %s |", r)
				}
			}
			fmt.Fprintf(w, " %d |", t.errors[tg])
			if len(t.steal) > 0 {
				v := "–"
				if st, ok := t.steal[tg]; ok {
					v = num(st.median, stealFigure.digits) + spread(st, stealFigure.digits)
				}
				fmt.Fprintf(w, " %s |", v)
			}
			fmt.Fprintf(w, "\n")
		}
		var problems []string
		for _, tg := range t.targets {
			if t.errors[tg] > 0 && t.first[tg] != "" {
				problems = append(problems, fmt.Sprintf("%s: %d errors, first: `%s`", label(tg), t.errors[tg], mdCode(t.first[tg])))
			}
			for _, e := range t.failed[tg] {
				problems = append(problems, fmt.Sprintf("%s failed, %s", label(tg), mdCode(e)))
			}
		}
		if len(problems) > 0 {
			fmt.Fprintf(w, "\n")
			for _, p := range problems {
				fmt.Fprintf(w, "- %s\n", p)
			}
		}
		fmt.Fprintf(w, "\n")
	}

	// Skipped targets and scenarios are among the notes (run.sh notes them).
	if len(rd.notes) > 0 {
		fmt.Fprintf(w, "## Notes from the run\n\n")
		seen := map[string]bool{}
		for _, n := range rd.notes {
			if !seen[n] {
				seen[n] = true
				fmt.Fprintf(w, "- %s\n", mdCode(n))
			}
		}
		fmt.Fprintf(w, "\n")
	}
}

// spread is " (min–max)" of s, or "" when there is a single value.
func spread(s stat, digits int) string {
	if s.n > 1 && s.min != s.max {
		return fmt.Sprintf(" (%s–%s)", num(s.min, digits), num(s.max, digits))
	}
	return ""
}

// stealLine says the median and the largest CPU steal over the runs of the
// tables that measured it, and which run had the largest; "" when none did.
func (rd *runData) stealLine(tables []table) string {
	var (
		vs       []float64
		top      float64
		where    string
		over     int
		topRound int
	)
	for _, t := range tables {
		for _, tg := range t.targets {
			k := key{t.sc.key, tg}
			for j := range rd.results[k] {
				v, ok := steal(&rd.results[k][j])
				if !ok {
					continue
				}
				vs = append(vs, v)
				if v > maxStealPct {
					over++
				}
				r := rd.roundOf[k][j]
				if len(vs) == 1 || v > top || v == top && r < topRound {
					top, topRound, where = v, r, fmt.Sprintf("%s on %s, round %d", t.sc.key, label(tg), r)
				}
			}
		}
	}
	st, ok := summarize(vs)
	if !ok {
		return ""
	}
	runs := fmt.Sprintf("the %d runs that measured it", st.n)
	if st.n == 1 {
		runs = "the one run that measured it"
	}
	above := "none"
	if over > 0 {
		above = fmt.Sprintf("%d", over)
	}
	return fmt.Sprintf("**CPU steal** (the share of the CPUs' time that the hypervisor gave to other guests during a run's measured time, from /proc/stat): "+
		"median %s%%, max %s%% (%s) over %s; %s above %d%%, the limit past which a round is left out of **rounds ahead** when either run of the pair is above it.",
		num(st.median, stealFigure.digits), num(top, stealFigure.digits), where, runs, above, maxStealPct)
}

func tunedNote(version, note string) string {
	if version == "" {
		return ""
	}
	return note
}

// mdCode keeps a one-line message from breaking a Markdown list item or a
// code span in it.
func mdCode(s string) string {
	s = strings.ReplaceAll(s, "`", "'")
	return strings.ReplaceAll(s, "\n", " ")
}

// writeSummary prints sluice's ratios to the best peer, one line each.
func writeSummary(w io.Writer, tables []table) {
	fmt.Fprintf(w, "sluice ÷ best peer (median; ↑ higher is better, ↓ lower is better):\n")
	for _, t := range tables {
		sc, ok := t.cells["sluice"]
		if !ok {
			continue
		}
		for i, mt := range t.sc.metrics {
			if !mt.ratio || !sc[i].ok || sc[i].ratio == 0 {
				continue
			}
			fmt.Fprintf(w, "  %-8s %-20s %s %6.2f  (sluice %s, %s %s; rounds ahead: %s)\n", t.sc.key, mt.name, arrow(mt), sc[i].ratio,
				num(sc[i].stat.median, mt.digits), label(t.best[i]), num(t.cells[t.best[i]][i].stat.median, mt.digits), sc[i].roundsAhead())
		}
	}
}
