package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/loadgen"
)

// modeInfo describes one load mode on the command line.
type modeInfo struct {
	mode    loadgen.Mode
	summary string
	// flags lists the mode-specific flags, beyond the common ones.
	flags []string
}

var modes = map[string]modeInfo{
	"stream": {loadgen.Stream, `Bulk throughput over --conns connections opened before the clock starts:
push writes to a sink, pull reads from a source, both writes and reads at
once against an echo. Reports Gbit/s (both directions added), the whole
machine's busy CPU seconds per GiB moved (from /proc/stat: generator, proxy,
backends and kernel) and, with --proxy-pid, the proxy's.`,
		[]string{"direction", "chunk"}},
	"rr": {loadgen.RR, `Request/response over --conns keep-alive connections to an echo. Closed
loop by default (each connection sends its next request when the previous
one is answered); with --rate, open loop at that total rate, each connection
sending at fixed intended times, latency measured from the intended time (no
coordinated omission). Requests carry a sequence number that the echo must
return.`,
		[]string{"req-size", "resp-size", "rate", "requests"}},
	"connect": {loadgen.Connect, `A new TCP connection per request: connect, send --req-size bytes, read the
echo, close. --conns workers run concurrently. Latency runs from the start of
connect to the last byte of the echo.`,
		[]string{"req-size", "requests"}},
	"udp": {loadgen.UDP, `Datagram request/response to a UDP echo from --conns client sockets. Each
datagram carries a sequence number and its intended send time; replies are
matched by sequence number. A request without a reply within --timeout is
lost. Closed loop by default, or open loop at --rate.`,
		[]string{"size", "rate", "requests"}},
	"idle": {loadgen.Idle, `Open --conns connections through the target, do one echo round trip on each
to prove it is proxied, hold them for --duration (or until SIGINT), then close
them. With --proxy-pid, reports the proxy's resident memory (VmRSS, summed
over the pids) before opening and at the end of the hold, and the difference
per connection in KiB. --warmup does not apply.`,
		[]string{"req-size"}},
}

// loadFlags binds the flags of a load mode to a loadgen.Config.
type loadFlags struct {
	fs       *pflag.FlagSet
	cfg      loadgen.Config
	target   addrValue
	cidr     prefixValue
	respSize sizeValue
	json     bool
}

func newLoadFlags(info modeInfo) *loadFlags {
	name := string(info.mode)
	d := loadgen.DefaultConfig(info.mode)
	lf := &loadFlags{cfg: d}
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard) // errors are reported by run, as one line
	lf.fs = fs
	c := &lf.cfg

	fs.Var(&lf.target, "target", "`ADDR` to send load to, IP:PORT on loopback (required)")
	connsHelp := map[loadgen.Mode]string{
		loadgen.Stream:  "number of TCP connections",
		loadgen.RR:      "number of keep-alive TCP connections",
		loadgen.Connect: "number of concurrent workers, each opening one connection at a time",
		loadgen.UDP:     "number of client UDP sockets",
		loadgen.Idle:    "number of connections to open and hold",
	}[info.mode]
	fs.IntVar(&c.Conns, "conns", d.Conns, connsHelp)
	if info.mode == loadgen.Idle {
		fs.DurationVar(&c.Duration, "duration", d.Duration, "how long to hold the connections (e.g. 30s)")
	} else {
		fs.DurationVar(&c.Duration, "duration", d.Duration, "measured time, after --warmup (e.g. 5s, 500ms)")
		fs.DurationVar(&c.Warmup, "warmup", d.Warmup, "load before the measured time, excluded from all figures")
	}
	for _, f := range info.flags {
		switch f {
		case "direction":
			fs.Var((*directionValue)(&c.Direction), "direction", "push (to a sink), pull (from a source) or both (against an echo)")
		case "chunk":
			fs.Var((*sizeValue)(&c.Chunk), "chunk", "bytes per write and per read (suffixes K, M: KiB, MiB)")
		case "req-size":
			fs.Var((*sizeValue)(&c.ReqSize), "req-size", "request size in bytes (suffix K: KiB); the echo returns as many")
		case "resp-size":
			lf.respSize = sizeValue(d.ReqSize)
			fs.Var(&lf.respSize, "resp-size", "response size in bytes; the backend is an echo, so it must equal --req-size")
		case "size":
			fs.Var((*sizeValue)(&c.Size), "size", fmt.Sprintf("datagram payload in bytes, %d to %d", loadgen.MinUDPSize, loadgen.MaxUDPSize))
		case "rate":
			fs.Float64Var(&c.Rate, "rate", d.Rate, "open-loop rate in requests per second over all connections; 0 = closed loop")
		case "requests":
			fs.Int64Var(&c.Requests, "requests", d.Requests, "stop after this many measured requests in all; 0 = no limit")
		}
	}
	timeoutHelp := "limit for each connect (e.g. 5s)"
	if info.mode == loadgen.UDP {
		timeoutHelp = "a request without a reply after this long is lost"
	}
	fs.DurationVar(&c.Timeout, "timeout", d.Timeout, timeoutHelp)
	fs.Var(&lf.cidr, "source-cidr", "bind each client socket to the next address of the loopback range `CIDR`, round robin (e.g. 127.0.0.0/16)")
	fs.IntSliceVar(&c.ProxyPIDs, "proxy-pid", nil, "`PID` of the proxy, repeatable: CPU time (and RSS for idle) is measured on these")
	fs.BoolVar(&lf.json, "json", false, "print one JSON object with all figures instead of the table")
	return lf
}

func modeUsage(info modeInfo, fs *pflag.FlagSet) string {
	return fmt.Sprintf("Usage: sluice-bench %s --target ADDR [flags]\n\n%s\n\nFlags:\n%s",
		info.mode, info.summary, fs.FlagUsagesWrapped(100))
}

// runLoad parses the flags of a load mode, runs it and prints the result.
func runLoad(ctx context.Context, info modeInfo, args []string, stdout io.Writer) error {
	lf := newLoadFlags(info)
	if err := lf.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, modeUsage(info, lf.fs))
			return nil
		}
		return flagError(lf.fs, string(info.mode), err)
	}
	if lf.fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q (flags start with --)", info.mode, lf.fs.Arg(0))
	}
	if !lf.fs.Changed("target") {
		return usagef("%s: --target is required, e.g. --target 127.0.0.1:7000", info.mode)
	}
	if lf.fs.Lookup("resp-size") != nil && int(lf.respSize) != lf.cfg.ReqSize && lf.fs.Changed("resp-size") {
		return usagef("--resp-size %d: the backend is an echo, so it must equal --req-size %d", int(lf.respSize), lf.cfg.ReqSize)
	}
	cfg := lf.cfg
	cfg.Target = netip.AddrPort(lf.target)
	cfg.SourceCIDR = netip.Prefix(lf.cidr)
	if err := cfg.Validate(); err != nil {
		return configError(err)
	}
	tty := !lf.json && isTerminal(stdout)
	if tty {
		cfg.Progress = progressPrinter(stdout, cfg.Mode)
	}
	res, err := loadgen.Run(ctx, cfg)
	if tty {
		fmt.Fprint(stdout, "\r\033[K")
	}
	if err != nil {
		return err
	}
	if lf.json {
		return json.NewEncoder(stdout).Encode(res)
	}
	return res.WriteTable(stdout)
}

// configError turns the first problem reported by Validate into a usage
// error naming its flag.
func configError(err error) error {
	var ce *loadgen.ConfigError
	if errors.As(err, &ce) {
		return usagef("--%s %s: %s", ce.Field, ce.Value, ce.Reason)
	}
	return usagef("%v", err)
}

// flagError rewrites a pflag parse error as one line naming the flag and
// the value.
func flagError(fs *pflag.FlagSet, mode string, err error) error {
	var (
		inv *pflag.InvalidValueError
		ne  *pflag.NotExistError
		vr  *pflag.ValueRequiredError
	)
	switch {
	case errors.As(err, &inv):
		f := inv.GetFlag()
		return usagef("--%s %q: %s", f.Name, inv.GetValue(), valueHint(f.Value.Type(), inv.Unwrap()))
	case errors.As(err, &ne):
		return usagef("%s: unknown flag --%s (see sluice-bench %s --help)", mode, ne.GetSpecifiedName(), mode)
	case errors.As(err, &vr):
		return usagef("%s: flag --%s needs a value", mode, vr.GetSpecifiedName())
	}
	return usagef("%s: %s", mode, strings.ReplaceAll(err.Error(), "\n", " "))
}

// valueHint says what a flag of the given pflag type wants.
func valueHint(typ string, cause error) string {
	switch typ {
	case "int", "int64":
		return "want a whole number"
	case "float64":
		return "want a number"
	case "duration":
		return "want a duration with a unit, like 5s, 500ms or 1m"
	case "intSlice":
		return "want a process id (repeat the flag for more)"
	}
	if cause != nil {
		return cause.Error()
	}
	return "invalid value"
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressPrinter returns a loadgen.Progress callback that rewrites one
// line on a terminal.
func progressPrinter(w io.Writer, m loadgen.Mode) func(loadgen.Progress) {
	return func(p loadgen.Progress) {
		phase := ""
		if p.Warmup {
			phase = " (warmup)"
		}
		var line string
		switch m {
		case loadgen.Stream:
			line = fmt.Sprintf("%5.0fs%s  %7.2f Gbit/s  %s moved  %d errors", p.Elapsed.Seconds(), phase, p.Gbps, loadgen.FormatBytes(p.Bytes), p.Errors)
		case loadgen.Idle:
			line = fmt.Sprintf("%5.0fs  %d connections open", p.Elapsed.Seconds(), p.Open)
		default:
			line = fmt.Sprintf("%5.0fs%s  %9.0f ops/s  %d done  %d errors", p.Elapsed.Seconds(), phase, p.OpsPerSec, p.Ops, p.Errors)
		}
		fmt.Fprintf(w, "\r\033[K%s", line)
	}
}
