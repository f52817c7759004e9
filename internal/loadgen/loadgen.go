// Package loadgen drives bounded load at a TCP or UDP target on loopback and
// measures it: stream throughput, keep-alive request/response, a connection
// per request, UDP request/response and many idle connections.
//
// Run owns every goroutine, socket and timer it creates and returns only
// after all of them are gone. Every run is bounded by Config.Duration (plus
// warmup and a short drain) and stops by itself; cancelling the context stops
// it early with the figures measured so far. Source addresses must be
// loopback addresses, and targets loopback addresses or addresses of the
// benchmarking ranges 198.18.0.0/15 and 2001:db8::/32 (which tests put in
// network namespaces they create): this package is for benchmarking a proxy
// on the same machine, never for sending traffic elsewhere.
//
// Latencies are recorded in HDR histograms (1 ns to 60 s, 3 significant
// digits) and reported in microseconds. Open-loop runs send at fixed
// intended times and measure latency from the intended time, so a stall of
// the target shows up in the figures instead of slowing the generator down
// (no coordinated omission). Workers pace themselves with a timerfd in the Go
// netpoller, not time.Sleep, whose wake-ups are up to a millisecond late when
// the runtime is idle; the remaining lateness of the generator is reported as
// SendLag.
package loadgen

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Mode is the kind of load.
type Mode string

// The modes.
const (
	// Stream moves bulk data over Conns connections (see Direction).
	Stream Mode = "stream"
	// RR sends requests of ReqSize bytes over Conns keep-alive connections
	// to an echo and waits for each echo before the next request.
	RR Mode = "rr"
	// Connect opens a new connection for each request: connect, send
	// ReqSize bytes, read the echo, close.
	Connect Mode = "connect"
	// UDP sends datagrams of Size bytes to a UDP echo and matches the
	// replies by sequence number.
	UDP Mode = "udp"
	// Idle opens Conns connections, proves each with one echo round trip,
	// holds them for Duration and closes them.
	Idle Mode = "idle"
)

// Direction is the way data flows in Stream mode.
type Direction string

// The directions of a stream.
const (
	// Push writes to the target (a sink).
	Push Direction = "push"
	// Pull reads from the target (a source).
	Pull Direction = "pull"
	// Both writes and reads at once (against an echo).
	Both Direction = "both"
)

// Config is one run. DefaultConfig gives the defaults of each mode; Run
// checks the config with Validate.
type Config struct {
	// Mode is the kind of load.
	Mode Mode
	// Target is the address load is sent to: a loopback address or one of
	// the benchmarking ranges 198.18.0.0/15 and 2001:db8::/32.
	Target netip.AddrPort
	// Conns is the number of connections (Stream, RR, Idle), of concurrent
	// workers (Connect) or of client sockets (UDP).
	Conns int
	// Duration is the measured time after Warmup; for Idle, the time the
	// connections are held. It must be positive: every run is bounded.
	Duration time.Duration
	// Warmup runs load before the measured time; nothing done in it counts.
	Warmup time.Duration
	// Direction is the flow of Stream mode.
	Direction Direction
	// Chunk is the size in bytes of each write and read of Stream mode.
	Chunk int
	// ReqSize is the request size in bytes of RR, Connect and the round
	// trip of Idle. The echo returns as many bytes.
	ReqSize int
	// Size is the UDP payload in bytes, at least 16 (sequence number and
	// intended send time) and at most 65507.
	Size int
	// Rate is the target rate in requests (datagrams) per second over all
	// connections, for RR and UDP; 0 means closed loop: each connection sends
	// the next request as soon as the previous one is answered.
	Rate float64
	// Requests stops RR, Connect and UDP after this many measured requests
	// in all; 0 means no limit.
	Requests int64
	// Timeout bounds each dial and each wait for a reply (TCP). For UDP it
	// is the time after which a request without reply counts as lost.
	Timeout time.Duration
	// SourceCIDR, if valid, binds each client socket to the next address of
	// this loopback prefix, round robin, so that a target balancing on the
	// client address sees many clients.
	SourceCIDR netip.Prefix
	// ProxyPIDs are processes whose CPU time (all modes) and resident memory
	// (Idle) are measured as the proxy's cost.
	ProxyPIDs []int
	// Progress, if set, is called about once a second from one goroutine
	// with live figures; it must return quickly.
	Progress func(Progress)
}

// DefaultConfig returns the defaults of mode m, with no target.
func DefaultConfig(m Mode) Config {
	c := Config{
		Mode:      m,
		Conns:     1,
		Duration:  5 * time.Second,
		Direction: Push,
		Chunk:     128 << 10,
		ReqSize:   64,
		Size:      64,
		Timeout:   5 * time.Second,
	}
	switch m {
	case RR:
		c.Conns = 50
	case Connect:
		c.Conns = 4
	case UDP:
		c.Timeout = time.Second
	case Idle:
		c.Conns = 1000
		c.Duration = 10 * time.Second
	}
	return c
}

// Limits of the configuration.
const (
	MaxConns     = 100_000
	MaxChunk     = 64 << 20
	MaxReqSize   = 16 << 20
	MinUDPSize   = 16
	MaxUDPSize   = 65507
	MaxRate      = 10_000_000
	MaxDuration  = 24 * time.Hour
	maxOpenProcs = 64 // concurrent dials while opening connections
)

// ConfigError is one problem of a Config, named by the field's flag name
// ("conns", "target", …).
type ConfigError struct {
	Field  string
	Value  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s %s: %s", e.Field, e.Value, e.Reason)
}

// Validate reports every problem of c as *ConfigError values joined with
// errors.Join, in a fixed order, or nil.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, value, reason string) {
		errs = append(errs, &ConfigError{Field: field, Value: value, Reason: reason})
	}
	switch c.Mode {
	case Stream, RR, Connect, UDP, Idle:
	default:
		bad("mode", strconv.Quote(string(c.Mode)), "unknown mode")
	}
	if !c.Target.IsValid() {
		bad("target", strconv.Quote(c.Target.String()), "want IP:PORT")
	} else if !targetAllowed(c.Target.Addr()) {
		bad("target", c.Target.String(), "not a loopback address or a benchmarking address (only 127.0.0.0/8, ::1, 198.18.0.0/15 and 2001:db8::/32 are allowed)")
	} else if c.Target.Port() == 0 {
		bad("target", c.Target.String(), "port 0")
	}
	if c.Conns < 1 || c.Conns > MaxConns {
		bad("conns", strconv.Itoa(c.Conns), fmt.Sprintf("want 1 to %d", MaxConns))
	}
	if c.Duration <= 0 || c.Duration > MaxDuration {
		bad("duration", c.Duration.String(), "want more than 0, at most 24h")
	}
	if c.Warmup < 0 || c.Warmup > MaxDuration {
		bad("warmup", c.Warmup.String(), "want 0 to 24h")
	}
	switch c.Direction {
	case Push, Pull, Both:
	default:
		bad("direction", strconv.Quote(string(c.Direction)), "want push, pull or both")
	}
	if c.Chunk < 1 || c.Chunk > MaxChunk {
		bad("chunk", strconv.Itoa(c.Chunk), fmt.Sprintf("want 1 to %d bytes", MaxChunk))
	}
	if c.ReqSize < 1 || c.ReqSize > MaxReqSize {
		bad("req-size", strconv.Itoa(c.ReqSize), fmt.Sprintf("want 1 to %d bytes", MaxReqSize))
	}
	if c.Size < MinUDPSize || c.Size > MaxUDPSize {
		bad("size", strconv.Itoa(c.Size), fmt.Sprintf("want %d to %d bytes", MinUDPSize, MaxUDPSize))
	}
	if c.Rate < 0 || c.Rate > MaxRate || c.Rate != c.Rate {
		bad("rate", strconv.FormatFloat(c.Rate, 'g', -1, 64), fmt.Sprintf("want 0 (closed loop) to %d per second", MaxRate))
	} else if c.Rate > 0 && c.Mode != RR && c.Mode != UDP {
		bad("rate", strconv.FormatFloat(c.Rate, 'g', -1, 64), "only rr and udp have an open-loop rate")
	}
	if c.Requests < 0 {
		bad("requests", strconv.FormatInt(c.Requests, 10), "must not be negative")
	}
	if c.Timeout <= 0 || c.Timeout > time.Hour {
		bad("timeout", c.Timeout.String(), "want more than 0, at most 1h")
	}
	if c.SourceCIDR.IsValid() {
		if err := checkSourceCIDR(c.SourceCIDR, c.Target); err != "" {
			bad("source-cidr", c.SourceCIDR.String(), err)
		}
	}
	for _, pid := range c.ProxyPIDs {
		if pid <= 0 {
			bad("proxy-pid", strconv.Itoa(pid), "want a process id")
		}
	}
	return errors.Join(errs...)
}

// targetAllowed reports whether load may be sent to a: a loopback address,
// or an address of 198.18.0.0/15 (the benchmarking range of RFC 2544) or
// 2001:db8::/32 (the IPv6 documentation range). Neither is routed on the
// Internet; tests put them in network namespaces they create themselves.
// An IPv4-mapped IPv6 address counts as its IPv4 address.
func targetAllowed(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() ||
		netip.MustParsePrefix("198.18.0.0/15").Contains(a) ||
		netip.MustParsePrefix("2001:db8::/32").Contains(a)
}

func checkSourceCIDR(p netip.Prefix, target netip.AddrPort) string {
	a := p.Addr()
	switch {
	case a.Is4() || a.Is4In6():
		if a.Is4In6() {
			return "write IPv4 prefixes without ::ffff:"
		}
		if p.Bits() < 8 || !a.IsLoopback() {
			return "not inside the loopback range 127.0.0.0/8"
		}
		if target.IsValid() && !target.Addr().Unmap().Is4() {
			return "IPv4 source range for an IPv6 target"
		}
	default:
		if p.Masked() != netip.MustParsePrefix("::1/128") {
			return "not a loopback range (IPv6 has only ::1/128)"
		}
		if target.IsValid() && target.Addr().Unmap().Is4() {
			return "IPv6 source range for an IPv4 target"
		}
	}
	return ""
}

// Progress is a live view of a run, passed to Config.Progress.
type Progress struct {
	// Elapsed is the time since the load started, warmup included.
	Elapsed time.Duration
	// Warmup is true while the run is still warming up.
	Warmup bool
	// Ops, Bytes (both directions) and Errors are totals since the start,
	// warmup included.
	Ops    uint64
	Bytes  uint64
	Errors uint64
	// OpsPerSec and Gbps are rates over the last interval.
	OpsPerSec float64
	Gbps      float64
	// Open is the number of connections open now (Idle mode).
	Open int64
}
