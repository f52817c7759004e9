// Package tcpproxy proxies TCP connections on an event loop: it accepts on
// the loop's own listening socket, connects to a backend chosen by the
// balancer without blocking, and moves bytes in both directions with
// splice(2) or, for small reads, with read/write through a loop-owned
// buffer.
//
// A Proxy belongs to one loop.Loop; all its methods except Stats and the
// Limiter's run on that loop's goroutine (reach them with Loop.Submit).
package tcpproxy

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/splice"
)

// SpliceMode selects how bytes are moved.
type SpliceMode int

const (
	// SpliceAuto reads small messages with read/write through the loop's
	// buffer and switches a direction to splice(2) once a read fills the
	// buffer, i.e. for bulk transfers.
	SpliceAuto SpliceMode = iota
	// SpliceAlways splices every byte (read/write only when no pipe is free).
	SpliceAlways
	// SpliceNever never splices: read/write through the loop's buffer.
	SpliceNever
)

// ParseSpliceMode parses "auto", "always" or "never".
func ParseSpliceMode(s string) (SpliceMode, error) {
	switch s {
	case "auto":
		return SpliceAuto, nil
	case "always":
		return SpliceAlways, nil
	case "never":
		return SpliceNever, nil
	}
	return 0, fmt.Errorf("want auto, always or never")
}

func (m SpliceMode) String() string {
	switch m {
	case SpliceAlways:
		return "always"
	case SpliceNever:
		return "never"
	}
	return "auto"
}

// Config is the per-service proxy behaviour. All durations are finite and
// positive once validated.
type Config struct {
	// ConnectTimeout bounds each connect attempt to a backend.
	ConnectTimeout time.Duration
	// ConnectRetries is how many further backends, in the key's Maglev
	// preference order, are tried after a failed connect.
	ConnectRetries int
	// IdleTimeout closes a connection after this long with no byte moved
	// in either direction.
	IdleTimeout time.Duration
	// HashKey selects the part of the client address that is hashed.
	HashKey balancer.HashKey
	// Splice selects the byte-moving strategy.
	Splice SpliceMode
	// Pool sizes the per-loop pipe pool.
	Pool splice.PoolConfig
	// Backlog is the listen(2) backlog of each loop's listening socket.
	Backlog int
	// BalanceFactor bounds each backend's open connections to
	// ceil(factor × its weighted share of the service's); 0 is off.
	BalanceFactor float64
	// SendProxy is the PROXY protocol version (1 or 2) sent to backends
	// ahead of the client's bytes; 0 sends none.
	SendProxy int
	// AcceptProxy requires a PROXY header (v1 or v2) from each client, as
	// sent by an upstream balancer; the address it carries becomes the
	// client address for hashing and PROXY headers sent on.
	AcceptProxy bool
	// TrustedProxies are the peers allowed to send a PROXY header; a
	// connection from any other peer is closed. Required with AcceptProxy.
	TrustedProxies []netip.Prefix
	// MaxHeader caps a client's PROXY header in bytes (v2 with TLVs).
	MaxHeader int
	// ProxiedRules, when set, are checked against the client addresses
	// that accepted PROXY headers claim.
	ProxiedRules *SourceRules
	// AccessLog logs one line per closed connection when set.
	AccessLog bool
	// AccessLogSample is the fraction of connections logged, 0 to 1.
	AccessLogSample float64
}

// DefaultConfig returns the defaults the flags start from.
func DefaultConfig() Config {
	return Config{
		ConnectTimeout:  3 * time.Second,
		ConnectRetries:  2,
		IdleTimeout:     time.Hour,
		HashKey:         balancer.HashSrcIP,
		Splice:          SpliceAuto,
		Pool:            splice.DefaultPoolConfig(),
		Backlog:         4096,
		MaxHeader:       512,
		AccessLogSample: 1,
	}
}
