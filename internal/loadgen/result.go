package loadgen

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result holds the figures of one run. Counts and rates cover the measured
// time only (warmup excluded). It is printed with WriteTable or encoded as
// JSON; the JSON names are part of the command-line interface.
type Result struct {
	Mode      Mode      `json:"mode"`
	Target    string    `json:"target"`
	Conns     int       `json:"conns"`
	Direction Direction `json:"direction,omitempty"`
	// SizeBytes is the chunk (stream), request (rr, connect, idle) or
	// datagram (udp) size.
	SizeBytes int `json:"size_bytes"`
	// WarmupS and ElapsedS are the warmup and the measured time in seconds.
	WarmupS  float64 `json:"warmup_s"`
	ElapsedS float64 `json:"elapsed_s"`
	// Ops counts completed requests (rr, connect: one connection each),
	// datagram replies in time (udp) or connections opened (idle); stream
	// counts completed writes and reads.
	Ops       uint64  `json:"ops"`
	OpsPerSec float64 `json:"ops_per_s"`
	// TargetRate is the open-loop rate asked for, per second; 0 for closed
	// loop.
	TargetRate float64 `json:"target_rate_per_s"`
	// Missed counts open-loop requests whose intended send time fell in the
	// measured time but that were not sent before it ended: the target (or
	// the generator) could not keep up.
	Missed uint64 `json:"missed"`
	// Errors counts failed operations (dial, I/O, wrong echo, and for udp
	// datagrams that could not be sent); FirstError is the first of them.
	Errors     uint64 `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// BytesSent and BytesReceived are payload bytes; Gbps is their sum in
	// gigabits (1e9 bits) per second.
	BytesSent     uint64  `json:"bytes_sent"`
	BytesReceived uint64  `json:"bytes_received"`
	Gbps          float64 `json:"gbit_per_s"`
	// Latency is the response time in microseconds: from the intended send
	// time in open loop, from the send in closed loop, from the start of
	// connect in connect mode.
	Latency *Latency `json:"latency_us,omitempty"`
	// SendLag is how late the generator sent open-loop requests, in
	// microseconds (it is included in Latency).
	SendLag *Latency `json:"send_lag_us,omitempty"`
	// UDP has the loss figures of udp mode.
	UDP *UDPResult `json:"udp,omitempty"`
	// Idle has the figures of idle mode.
	Idle *IdleResult `json:"idle,omitempty"`
	// SourceAddrs is the number of distinct source addresses used.
	SourceAddrs int `json:"source_addrs"`
	// Proxy is the cost measured on Config.ProxyPIDs.
	Proxy *ProxyResult `json:"proxy,omitempty"`
	// Machine is the whole machine's CPU cost (not in idle mode).
	Machine *MachineResult `json:"machine,omitempty"`
	// Env says where and when the run was made.
	Env Env `json:"env"`
}

// Latency is a latency distribution in microseconds.
type Latency struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

// UDPResult are the loss figures of udp mode over the measured time.
type UDPResult struct {
	// Sent is the number of requests sent; Replies those answered within
	// the timeout; Lost = Sent - Replies.
	Sent    uint64  `json:"sent"`
	Replies uint64  `json:"replies"`
	Lost    uint64  `json:"lost"`
	LossPct float64 `json:"loss_pct"`
	// Late counts replies that came after the timeout (they are lost too);
	// Stray counts replies that matched no request (duplicates, garbage).
	Late  uint64 `json:"late"`
	Stray uint64 `json:"stray"`
}

// IdleResult are the figures of idle mode.
type IdleResult struct {
	// Opened is the number of connections opened and proved with a round
	// trip; Failed those that could not be.
	Opened uint64 `json:"opened"`
	Failed uint64 `json:"failed"`
	// OpenS is the time taken to open them, HeldS the time they were held.
	OpenS  float64 `json:"open_s"`
	HeldS  float64 `json:"held_s"`
	Closed uint64  `json:"closed_by_peer"` // connections found closed at the end of the hold
}

// ProxyResult is the cost of the processes named by Config.ProxyPIDs.
type ProxyResult struct {
	PIDs []int `json:"pids"`
	// CPUSeconds is utime+stime summed over the PIDs during the measured
	// time (10 ms resolution).
	CPUSeconds float64 `json:"cpu_s"`
	// CPUSecPerGiB is CPUSeconds per GiB moved (stream).
	CPUSecPerGiB float64 `json:"cpu_s_per_gib,omitempty"`
	// CPUMicrosPerOp is CPU microseconds per request, connection or
	// datagram (rr, connect, udp).
	CPUMicrosPerOp float64 `json:"cpu_us_per_op,omitempty"`
	// RSSBeforeKiB and RSSAfterKiB are VmRSS summed over the PIDs before
	// the connections were opened and at the end of the hold (idle).
	RSSBeforeKiB int64 `json:"rss_before_kib,omitempty"`
	RSSAfterKiB  int64 `json:"rss_after_kib,omitempty"`
	// RSSPerConnKiB is (after - before) / opened connections (idle).
	RSSPerConnKiB float64 `json:"rss_per_conn_kib,omitempty"`
	// Error says why the figures above are missing (a process exited).
	Error string `json:"error,omitempty"`
}

// MachineResult is the busy CPU time of the whole machine during the
// measured time: the load generator, the proxy, the backends and anything
// else running. On loopback the kernel does part of a receiver's TCP work in
// the sender's context (the softirq that a send raises), so how the work of
// a chain splits between proxy and backends moves with timing; the machine's
// total does not. StealPct says how much of the CPUs' time the hypervisor
// took meanwhile.
type MachineResult struct {
	CPUSeconds     float64 `json:"cpu_s"`
	CPUSecPerGiB   float64 `json:"cpu_s_per_gib,omitempty"`
	CPUMicrosPerOp float64 `json:"cpu_us_per_op,omitempty"`
	// StealPct is the share of all the CPUs' time (busy, idle, iowait and
	// steal) that the hypervisor gave to other guests during the measured
	// time, in percent: time this machine's work could not run, which
	// slows every figure of the run. Nil when it was not measured.
	StealPct *float64 `json:"steal_pct,omitempty"`
	Error    string   `json:"error,omitempty"`
}

// Env describes the machine and the time of a run, as BENCHMARKING.md asks
// with every result.
type Env struct {
	Time      string `json:"time"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	CPU       string `json:"cpu"`
	NumCPU    int    `json:"num_cpu"`
}

func currentEnv(t time.Time) Env {
	e := Env{
		Time:      t.UTC().Format(time.RFC3339),
		GoVersion: runtime.Version(),
		NumCPU:    runtime.NumCPU(),
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return e
}

// newHist returns a histogram of nanoseconds, 1 ns to 60 s, 3 digits.
func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(60*time.Second), 3)
}

// record adds d to h, clamped to the histogram's range.
func record(h *hdrhistogram.Histogram, d time.Duration) {
	v := int64(d)
	if v < 1 {
		v = 1
	}
	if hi := h.HighestTrackableValue(); v > hi {
		v = hi
	}
	_ = h.RecordValue(v) // cannot fail: v is in range
}

func latencyOf(h *hdrhistogram.Histogram) *Latency {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	return &Latency{
		Count: uint64(h.TotalCount()),
		Mean:  h.Mean() / 1e3,
		P50:   us(h.ValueAtQuantile(50)),
		P90:   us(h.ValueAtQuantile(90)),
		P99:   us(h.ValueAtQuantile(99)),
		P999:  us(h.ValueAtQuantile(99.9)),
		Max:   us(h.Max()),
	}
}

// WriteTable prints r as a two-column table for people.
func (r Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }

	what := string(r.Mode)
	if r.Direction != "" {
		what += " " + string(r.Direction)
	}
	row("mode", "%s", what)
	row("target", "%s", r.Target)
	row("conns", "%d", r.Conns)
	row("size", "%s", FormatBytes(uint64(r.SizeBytes)))
	if r.Mode != Idle {
		row("time", "%.3f s measured (+ %.3f s warmup)", r.ElapsedS, r.WarmupS)
	}
	switch r.Mode {
	case Stream:
		row("throughput", "%.3f Gbit/s", r.Gbps)
		row("sent", "%s", FormatBytes(r.BytesSent))
		row("received", "%s", FormatBytes(r.BytesReceived))
	case RR, Connect:
		unit := "req/s"
		if r.Mode == Connect {
			unit = "conn/s"
		}
		row("rate", "%.0f %s (%d done)", r.OpsPerSec, unit, r.Ops)
		if r.TargetRate > 0 {
			row("target rate", "%.0f %s (%d missed)", r.TargetRate, unit, r.Missed)
		}
	case UDP:
		row("rate", "%.0f replies/s", r.OpsPerSec)
		if r.TargetRate > 0 {
			row("target rate", "%.0f datagrams/s (%d missed)", r.TargetRate, r.Missed)
		}
		if u := r.UDP; u != nil {
			row("sent", "%d", u.Sent)
			row("lost", "%d (%.3f%%; %d late, %d stray)", u.Lost, u.LossPct, u.Late, u.Stray)
		}
	case Idle:
		if i := r.Idle; i != nil {
			row("opened", "%d in %.3f s (%d failed)", i.Opened, i.OpenS, i.Failed)
			row("held", "%.3f s (%d closed by peer)", i.HeldS, i.Closed)
		}
	}
	if l := r.Latency; l != nil {
		row("latency µs", "p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (mean %s, n=%d)",
			fmtUS(l.P50), fmtUS(l.P90), fmtUS(l.P99), fmtUS(l.P999), fmtUS(l.Max), fmtUS(l.Mean), l.Count)
	}
	if l := r.SendLag; l != nil {
		row("send lag µs", "p50 %s  p99 %s  max %s  (generator lateness, included above)",
			fmtUS(l.P50), fmtUS(l.P99), fmtUS(l.Max))
	}
	row("errors", "%d", r.Errors)
	if r.FirstError != "" {
		row("first error", "%s", r.FirstError)
	}
	if r.SourceAddrs > 0 {
		row("source addrs", "%d", r.SourceAddrs)
	}
	if p := r.Proxy; p != nil {
		row("proxy pids", "%v", p.PIDs)
		costRows(row, "proxy", "", p.Error, p.CPUSeconds, p.CPUSecPerGiB, p.CPUMicrosPerOp)
		if r.Mode == Idle {
			row("proxy rss", "%d KiB before, %d KiB after", p.RSSBeforeKiB, p.RSSAfterKiB)
			row("proxy rss/conn", "%.2f KiB", p.RSSPerConnKiB)
		}
	}
	if m := r.Machine; m != nil {
		costRows(row, "machine", " (all processes and the kernel)", m.Error, m.CPUSeconds, m.CPUSecPerGiB, m.CPUMicrosPerOp)
		if m.StealPct != nil {
			row("machine steal", "%.1f%% of the CPUs' time (taken by the hypervisor)", *m.StealPct)
		}
	}
	row("env", "%s, kernel %s, %s, %d cpus, %s", r.Env.Time, r.Env.Kernel, r.Env.GoVersion, r.Env.NumCPU, r.Env.CPU)
	return tw.Flush()
}

// costRows prints the CPU figures of who; a figure of 0 does not apply.
func costRows(row func(k, format string, a ...any), who, what, errMsg string, sec, perGiB, perOp float64) {
	if errMsg != "" {
		row(who+" error", "%s", errMsg)
	}
	row(who+" cpu", "%.2f s"+what, sec)
	if perGiB > 0 {
		row(who+" cpu/GiB", "%.3f s", perGiB)
	}
	if perOp > 0 {
		row(who+" cpu/op", "%.2f µs", perOp)
	}
}

func fmtUS(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// FormatBytes formats n with a binary unit: 512 B, 64 KiB, 1.5 MiB.
func FormatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, exp := float64(n), 0
	for v >= unit && exp < 5 {
		v /= unit
		exp++
	}
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + " " + []string{"", "KiB", "MiB", "GiB", "TiB", "PiB"}[exp]
}
