// Command sluice-bench is the load generator and the test backends of
// sluice. "sluice-bench serve" runs echo, sink, source and UDP echo
// backends; the other modes (stream, rr, connect, udp, idle) drive bounded
// load at a loopback target and print a table or, with --json, one JSON
// object. Run sluice-bench --help for the reference.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit statuses.
const (
	exitFailure = 1 // the run failed (target unreachable, port in use, …)
	exitUsage   = 2 // bad command line
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(report(err, os.Stderr))
}

// report prints err as one line on stderr and returns the exit status.
func report(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "sluice-bench: %v\n", err)
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

// usageError is a bad command line. Its message is one line that names the
// flag and the value.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// run is the whole program: main only adds the signals and the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("no mode given; want one of %s (see sluice-bench --help)", modeList)
	}
	mode, rest := args[0], args[1:]
	switch mode {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, topUsage)
		return nil
	case "serve":
		return runServe(ctx, rest, stdout)
	}
	m, ok := modes[mode]
	if !ok {
		return usagef("unknown mode %q; want one of %s (see sluice-bench --help)", mode, modeList)
	}
	return runLoad(ctx, m, rest, stdout)
}

const modeList = "serve, stream, rr, connect, udp, idle"

const topUsage = `sluice-bench: load generator and test backends for sluice.
Traffic goes only to loopback addresses (127.0.0.0/8, ::1) or to the benchmarking
ranges used inside test network namespaces (198.18.0.0/15, 2001:db8::/32).

Usage:
  sluice-bench serve   [--echo ADDR]... [--sink ADDR]... [--source ADDR]... [--udp-echo ADDR]...
                       run test backends until SIGINT/SIGTERM or --duration
  sluice-bench stream  --target ADDR   bulk throughput in Gbit/s (push to a sink,
                                       pull from a source, both against an echo)
  sluice-bench rr      --target ADDR   request/response over keep-alive connections
                                       to an echo, closed loop or at --rate
  sluice-bench connect --target ADDR   a new connection per request: conn/s, latency
  sluice-bench udp     --target ADDR   datagram request/response to a UDP echo: rate,
                                       loss, latency
  sluice-bench idle    --target ADDR   hold many idle connections; proxy RSS per conn

Every load mode is bounded by --duration, prints a table at the end (a
progress line each second when stdout is a terminal) or, with --json, one JSON
object. Bad options exit with status 2, failed runs with 1.

Run 'sluice-bench MODE --help' for the flags of a mode, with units.
`
