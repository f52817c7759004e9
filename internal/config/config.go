// Package config is the one place where sluice's command-line flags are
// declared, parsed and checked. Parse returns a Config whose every field is
// valid, or an error listing every problem found, one per line.
package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/tcpproxy"
)

// Config is sluice's whole configuration, plain data.
type Config struct {
	// Listen is the service's listening address.
	Listen netip.AddrPort
	// Backends is the static backend list (--backend).
	Backends []balancer.Backend
	// Workers is the number of event loops, each with its own listening
	// socket (SO_REUSEPORT) and OS thread.
	Workers int
	// MaxConns caps the client connections open at once across loops.
	MaxConns int
	// DrainTimeout bounds how long open connections may go on after
	// SIGTERM/SIGINT before they are reset.
	DrainTimeout time.Duration
	// Proxy is the per-connection behaviour.
	Proxy tcpproxy.Config
	// LogLevel is the minimum level logged.
	LogLevel zapcore.Level
	// LogFormat is "json" or "console".
	LogFormat string
}

// fdReserve is the file descriptors kept back from connections and pipes
// for listeners, epoll and eventfds, logs, and the admin endpoint.
const fdReserve = 256

// Default returns the defaults the flags start from. MaxConns 0 means "derive
// from the open-file limit" (see Parse).
func Default() Config {
	return Config{
		Workers:      runtime.NumCPU(),
		DrainTimeout: 30 * time.Second,
		Proxy:        tcpproxy.DefaultConfig(),
		LogLevel:     zapcore.InfoLevel,
		LogFormat:    "console",
	}
}

// ErrHelp is returned by Parse when --help was asked for; the usage has been
// written to the help writer.
var ErrHelp = errors.New("help requested")

// UsageError lists everything wrong with a command line. Each problem is
// one line naming the flag and the value.
type UsageError struct {
	Problems []string
}

func (e *UsageError) Error() string { return strings.Join(e.Problems, "\n") }

// Parse parses args (without the program name). On --help it writes the
// flag reference to help and returns ErrHelp. Any other problem comes back
// as a *UsageError.
func Parse(args []string, help io.Writer) (Config, error) {
	cfg := Default()
	fs := pflag.NewFlagSet("sluice", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}

	var (
		listen    string
		backends  []string
		hashKey   = cfg.Proxy.HashKey.String()
		spliceArg = cfg.Proxy.Splice.String()
		pipeSize  = byteSize(cfg.Proxy.Pool.PipeSize)
		logLevel  = cfg.LogLevel.String()
	)
	fs.StringVar(&listen, "listen", "", "address to accept client connections on, ip:port (required)")
	fs.StringArrayVar(&backends, "backend", nil, "backend as ip:port[,weight=N] (repeatable; weight 0-1000, default 1)")
	fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "event loops, each with its own thread and SO_REUSEPORT listener; defaults to the CPU count")
	fs.StringVar(&hashKey, "hash-key", hashKey, "what picks a client's backend: src-ip (all of a client's connections to one backend) or src-ip-port")
	fs.DurationVar(&cfg.Proxy.ConnectTimeout, "connect-timeout", cfg.Proxy.ConnectTimeout, "time allowed for each connect attempt to a backend")
	fs.IntVar(&cfg.Proxy.ConnectRetries, "connect-retries", cfg.Proxy.ConnectRetries, "further backends tried, in the client's hash preference order, after a failed connect")
	fs.DurationVar(&cfg.Proxy.IdleTimeout, "idle-timeout", cfg.Proxy.IdleTimeout, "close a connection after this long with no bytes in either direction; idle pooled database sessions count as idle too, so raise it if your pools keep connections idle longer")
	fs.IntVar(&cfg.MaxConns, "max-conns", 0, "client connections open at once; beyond it new ones wait in the accept queue (default: derived from the open-file limit)")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "on SIGTERM/SIGINT, time open connections get to finish before they are reset")
	fs.StringVar(&spliceArg, "splice", spliceArg, "byte moving: auto (read/write for small messages, splice(2) for bulk), always, or never (read/write only)")
	fs.Var(&pipeSize, "pipe-size", "capacity of each splice pipe, bytes (suffixes k, m); pipes are lent only while bytes are in flight")
	fs.StringVar(&logLevel, "log-level", logLevel, "minimum log level: debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log encoding: json or console")
	showHelp := fs.BoolP("help", "h", false, "show this help")

	if err := fs.Parse(args); err != nil {
		return cfg, &UsageError{Problems: []string{err.Error()}}
	}
	if *showHelp {
		fmt.Fprintf(help, "Usage: sluice --listen IP:PORT --backend IP:PORT [--backend IP:PORT ...] [flags]\n\n"+
			"sluice is a layer-4 TCP load balancer: it hashes each client's address to a backend\n"+
			"with Maglev consistent hashing and moves bytes with splice(2).\n\nFlags:\n%s", fs.FlagUsages())
		return cfg, ErrHelp
	}

	var probs []string
	bad := func(flag, value, format string, a ...any) {
		probs = append(probs, fmt.Sprintf("--%s %q: %s", flag, value, fmt.Sprintf(format, a...)))
	}
	if fs.NArg() > 0 {
		probs = append(probs, fmt.Sprintf("unexpected argument %q (flags are --name value)", fs.Arg(0)))
	}
	if listen == "" {
		probs = append(probs, "--listen is required (e.g. --listen 127.0.0.1:7000)")
	} else if ap, err := parseListen(listen); err != nil {
		bad("listen", listen, "%v", err)
	} else {
		cfg.Listen = ap
	}
	if len(backends) == 0 {
		probs = append(probs, "no backend: give at least one --backend ip:port")
	}
	seen := map[netip.AddrPort]bool{}
	for _, s := range backends {
		b, err := balancer.ParseBackend(s)
		if err != nil {
			bad("backend", s, "%v", err)
			continue
		}
		if seen[b.Addr] {
			bad("backend", s, "given twice")
			continue
		}
		seen[b.Addr] = true
		cfg.Backends = append(cfg.Backends, b)
	}
	if cfg.Workers < 1 || cfg.Workers > 256 {
		bad("workers", strconv.Itoa(cfg.Workers), "want 1 to 256")
	}
	if k, err := balancer.ParseHashKey(hashKey); err != nil {
		bad("hash-key", hashKey, "%v", err)
	} else {
		cfg.Proxy.HashKey = k
	}
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			bad(name, d.String(), "want a positive duration such as 5s or 2m")
		}
	}
	positive("connect-timeout", cfg.Proxy.ConnectTimeout)
	positive("idle-timeout", cfg.Proxy.IdleTimeout)
	positive("drain-timeout", cfg.DrainTimeout)
	if cfg.Proxy.ConnectRetries < 0 || cfg.Proxy.ConnectRetries > 16 {
		bad("connect-retries", strconv.Itoa(cfg.Proxy.ConnectRetries), "want 0 to 16")
	}
	if m, err := tcpproxy.ParseSpliceMode(spliceArg); err != nil {
		bad("splice", spliceArg, "%v", err)
	} else {
		cfg.Proxy.Splice = m
	}
	if pipeSize < 4<<10 || pipeSize > 16<<20 {
		bad("pipe-size", pipeSize.String(), "want 4k to 16m")
	}
	cfg.Proxy.Pool.PipeSize = int(pipeSize)
	if lvl, err := zapcore.ParseLevel(logLevel); err != nil || lvl < zapcore.DebugLevel || lvl > zapcore.ErrorLevel {
		bad("log-level", logLevel, "want debug, info, warn or error")
	} else {
		cfg.LogLevel = lvl
	}
	if cfg.LogFormat != "json" && cfg.LogFormat != "console" {
		bad("log-format", cfg.LogFormat, "want json or console")
	}
	if cfg.MaxConns < 0 {
		bad("max-conns", strconv.Itoa(cfg.MaxConns), "want a positive number, or leave it out to derive it from the open-file limit")
	} else if cfg.Workers >= 1 {
		if p := sizeFDs(&cfg, openFileLimit()); p != "" {
			probs = append(probs, p)
		}
	}
	if len(probs) > 0 {
		return cfg, &UsageError{Problems: probs}
	}
	return cfg, nil
}

func parseListen(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, fmt.Errorf("want ip:port or [ipv6]:port: %w", err)
	}
	if ap.Addr().Zone() != "" {
		return ap, errors.New("zoned IPv6 addresses are not supported")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// sizeFDs shares the open-file limit between connections (two sockets
// each) and splice pipes (two fds each): a connection count derived from the
// limit leaves a third of it for pipes; the pipe pools get what connections
// leave. It returns a problem line when --max-conns cannot fit.
func sizeFDs(cfg *Config, limit int) string {
	avail := limit - fdReserve - 4*cfg.Workers
	if cfg.MaxConns == 0 {
		cfg.MaxConns = avail / 3
		if cfg.MaxConns < 1 {
			return fmt.Sprintf("the open-file limit %d is too low to proxy anything; raise it (e.g. LimitNOFILE=)", limit)
		}
	} else if 2*cfg.MaxConns > avail {
		return fmt.Sprintf("--max-conns %q: needs %d file descriptors but the open-file limit is %d; lower it or raise the limit", strconv.Itoa(cfg.MaxConns), 2*cfg.MaxConns+fdReserve, limit)
	}
	pipes := (avail - 2*cfg.MaxConns) / 2 / cfg.Workers
	cfg.Proxy.Pool.MaxPipes = pipes
	if cfg.Proxy.Pool.MaxIdle > pipes {
		cfg.Proxy.Pool.MaxIdle = pipes
	}
	return ""
}

// openFileLimit returns the soft RLIMIT_NOFILE (the Go runtime raises it to
// the hard limit at start-up).
func openFileLimit() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<24 {
		return 1 << 20
	}
	return int(rl.Cur)
}

// byteSize is a pflag value for sizes in bytes with optional k/m/g suffixes
// (powers of 1024).
type byteSize int

func (b *byteSize) String() string {
	v := int(*b)
	switch {
	case v >= 1<<20 && v%(1<<20) == 0:
		return strconv.Itoa(v>>20) + "m"
	case v >= 1<<10 && v%(1<<10) == 0:
		return strconv.Itoa(v>>10) + "k"
	}
	return strconv.Itoa(v)
}

func (b *byteSize) Set(s string) error {
	mult := 1
	num := strings.ToLower(strings.TrimSpace(s))
	switch {
	case strings.HasSuffix(num, "k"):
		mult, num = 1<<10, num[:len(num)-1]
	case strings.HasSuffix(num, "m"):
		mult, num = 1<<20, num[:len(num)-1]
	case strings.HasSuffix(num, "g"):
		mult, num = 1<<30, num[:len(num)-1]
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n > (1<<31)/mult {
		return fmt.Errorf("want a size in bytes such as 65536, 256k or 1m")
	}
	*b = byteSize(n * mult)
	return nil
}

func (b *byteSize) Type() string { return "bytes" }
