package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluice-lb/sluice/internal/loadgen"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

const serveUsage = `Usage: sluice-bench serve [--echo ADDR]... [--sink ADDR]... [--source ADDR]... [--udp-echo ADDR]...

Run test backends, any number of each, until SIGINT or SIGTERM (or
--duration), then print a table per listener (connections accepted, bytes in
and out; datagrams for UDP) and exit 0. ADDR is IP:PORT, like 127.0.0.1:7001;
port 0 picks a free port. Once every listener is bound, a line per listener
("echo tcp 127.0.0.1:7001") and then a line "ready" are printed on stdout
(not with --json), and the same lines are written to --ready-file, which
appears atomically.

The TCP echo answers small messages with read/write and moves connections
that send bulk data to splice; when the client shuts down its write side, the
echo finishes writing what it got and then shuts down its own. The sink reads
and discards; the source writes a fixed pattern until the peer closes.

Flags:
`

type serveFlags struct {
	fs        *pflag.FlagSet
	echo      []string
	sink      []string
	source    []string
	udpEcho   []string
	duration  time.Duration
	readyFile string
	json      bool
}

func newServeFlags() *serveFlags {
	sf := &serveFlags{}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.StringArrayVar(&sf.echo, "echo", nil, "TCP echo on `ADDR` (repeatable)")
	fs.StringArrayVar(&sf.sink, "sink", nil, "TCP sink on `ADDR`: reads and discards (repeatable)")
	fs.StringArrayVar(&sf.source, "source", nil, "TCP source on `ADDR`: writes until the peer closes (repeatable)")
	fs.StringArrayVar(&sf.udpEcho, "udp-echo", nil, "UDP echo on `ADDR` (repeatable)")
	fs.DurationVar(&sf.duration, "duration", 0, "stop after this long (e.g. 60s); 0 = until SIGINT or SIGTERM")
	fs.StringVar(&sf.readyFile, "ready-file", "", "write the listeners and \"ready\" to the file `PATH` once all are bound; removed at exit")
	fs.BoolVar(&sf.json, "json", false, "print the final table as one JSON object, and no ready lines")
	sf.fs = fs
	return sf
}

// listenerSpec is one listener asked for on the command line.
type listenerSpec struct {
	flag string
	cfg  testsrv.Config
}

// ServeListener is one listener's line of the final report; its JSON names
// are part of the command-line interface.
type ServeListener struct {
	Kind         string `json:"kind"`
	Network      string `json:"network"`
	Addr         string `json:"addr"`
	Accepted     uint64 `json:"accepted"`
	BytesIn      uint64 `json:"bytes_in"`
	BytesOut     uint64 `json:"bytes_out"`
	DatagramsIn  uint64 `json:"datagrams_in"`
	DatagramsOut uint64 `json:"datagrams_out"`
	Errors       uint64 `json:"errors"`
	RemoteIPs    int    `json:"remote_ips"`
}

// ServeReport is the JSON object printed by serve --json.
type ServeReport struct {
	Mode      string          `json:"mode"`
	ElapsedS  float64         `json:"elapsed_s"`
	Listeners []ServeListener `json:"listeners"`
}

func runServe(ctx context.Context, args []string, stdout io.Writer) error {
	sf := newServeFlags()
	if err := sf.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, serveUsage+sf.fs.FlagUsagesWrapped(100))
			return nil
		}
		return flagError(sf.fs, "serve", err)
	}
	if sf.fs.NArg() > 0 {
		return usagef("serve: unexpected argument %q (flags start with --)", sf.fs.Arg(0))
	}
	if sf.duration < 0 {
		return usagef("--duration %v: must not be negative", sf.duration)
	}
	var specs []listenerSpec
	for _, group := range []struct {
		flag    string
		addrs   []string
		kind    testsrv.Kind
		network string
	}{
		{"echo", sf.echo, testsrv.Echo, "tcp"},
		{"sink", sf.sink, testsrv.Sink, "tcp"},
		{"source", sf.source, testsrv.Source, "tcp"},
		{"udp-echo", sf.udpEcho, testsrv.Echo, "udp"},
	} {
		for _, a := range group.addrs {
			ap, err := parseAddr(a)
			if err != nil {
				return usagef("--%s %q: %v", group.flag, a, err)
			}
			specs = append(specs, listenerSpec{flag: group.flag, cfg: testsrv.Config{Kind: group.kind, Network: group.network, Addr: ap.String()}})
		}
	}
	if len(specs) == 0 {
		return usagef("serve: give at least one of --echo, --sink, --source, --udp-echo ADDR")
	}

	if sf.readyFile != "" {
		// A stale file from an earlier run must not signal readiness.
		if err := os.Remove(sf.readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale ready file: %w", err)
		}
		defer os.Remove(sf.readyFile)
	}
	if sf.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, sf.duration)
		defer cancel()
	}

	servers := make([]*testsrv.Server, 0, len(specs))
	closeAll := func() {
		for _, s := range servers {
			s.Close()
		}
	}
	for _, sp := range specs {
		s, err := testsrv.Start(ctx, sp.cfg)
		if err != nil {
			closeAll()
			return fmt.Errorf("--%s: %w", sp.flag, err)
		}
		servers = append(servers, s)
	}
	start := time.Now()

	var ready strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&ready, "%s %s %s\n", kindName(s), s.Network(), s.Addr())
	}
	ready.WriteString("ready\n")
	if sf.readyFile != "" {
		if err := writeFileAtomic(sf.readyFile, ready.String()); err != nil {
			closeAll()
			return fmt.Errorf("write ready file: %w", err)
		}
	}
	if !sf.json {
		io.WriteString(stdout, ready.String())
	}

	<-ctx.Done()
	closeAll()

	rep := ServeReport{Mode: "serve", ElapsedS: time.Since(start).Seconds()}
	for _, s := range servers {
		st := s.Stats()
		rep.Listeners = append(rep.Listeners, ServeListener{
			Kind: kindName(s), Network: s.Network(), Addr: s.Addr().String(),
			Accepted: st.Accepted, BytesIn: st.BytesIn, BytesOut: st.BytesOut,
			DatagramsIn: st.DatagramsIn, DatagramsOut: st.DatagramsOut,
			Errors: st.Errors, RemoteIPs: st.RemoteIPs,
		})
	}
	if sf.json {
		return json.NewEncoder(stdout).Encode(rep)
	}
	return writeServeTable(stdout, rep)
}

func kindName(s *testsrv.Server) string {
	if strings.HasPrefix(s.Network(), "udp") {
		return "udp-echo"
	}
	return s.Kind().String()
}

func writeServeTable(w io.Writer, rep ServeReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "kind\taddress\taccepted\tbytes in\tbytes out\tdgrams in\tdgrams out\tclients\terrors\t\n")
	for _, l := range rep.Listeners {
		acc, din, dout := fmt.Sprint(l.Accepted), "-", "-"
		if l.Network[:3] == "udp" {
			acc, din, dout = "-", fmt.Sprint(l.DatagramsIn), fmt.Sprint(l.DatagramsOut)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t\n", l.Kind, l.Addr, acc,
			loadgen.FormatBytes(l.BytesIn), loadgen.FormatBytes(l.BytesOut), din, dout, l.RemoteIPs, l.Errors)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "served for %.1f s\n", rep.ElapsedS)
	return err
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it, so that path appears complete or not at all.
func writeFileAtomic(path, data string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}
