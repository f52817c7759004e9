package firewall

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strconv"
)

// Limits of the rule tables. The maps in bpf/firewall.c hold twice
// MaxPorts and MaxPrefixes: Update adds the new rules before it removes the
// old ones, so a map holds both sets for a while.
const (
	// MaxPorts is the most protected (protocol, port) pairs.
	MaxPorts = 1024
	// MaxPrefixes is the most prefixes per list (deny or allow) and family.
	MaxPrefixes = 65536
	// MaxRateLimit is the highest per-source rate, in packets per second.
	// The program counts time in whole nanoseconds per token, so the
	// relative rounding error of a rate r is at most r/2e9 (0.5 % here).
	MaxRateLimit = 10_000_000
	// DefaultRateSources is the default capacity of the per-source table.
	// The kernel allocates it up front, about 88 bytes a source: 5.8 MB
	// for the default (memlock in fdinfo, Linux 6.18, 2026-11-22).
	DefaultRateSources = 65536
	// MaxRateSources is the largest per-source table New accepts.
	MaxRateSources = 1 << 22
)

// Port is a protected transport port.
type Port struct {
	Proto string // "tcp" or "udp"
	Num   uint16 // 1 to 65535
}

// String returns the port as "tcp/443".
func (p Port) String() string { return p.Proto + "/" + strconv.Itoa(int(p.Num)) }

// Config is the firewall's rule set. It is plain data; the zero value
// protects nothing and so lets every packet through.
type Config struct {
	// Ports are the protected (protocol, port) pairs: the services' listen
	// ports plus extras. Packets to any other port pass unpoliced.
	Ports []Port
	// Deny drops packets from these source prefixes to protected ports.
	// Deny wins over Allow.
	Deny []netip.Prefix
	// Allow, when not empty, admits to protected ports only packets from
	// these source prefixes; empty admits every source not denied. A list
	// of only IPv4 prefixes therefore shuts out every IPv6 source.
	Allow []netip.Prefix
	// RateLimit is how many new flows per second one source may open to
	// the protected ports, counting TCP SYNs and UDP datagrams; a source
	// is an IPv4 address or an IPv6 /64. 0 turns the limit off.
	RateLimit uint32
	// RateBurst is how many flows a source may open at once before
	// RateLimit applies. 0 means RateLimit (one second's worth).
	RateBurst uint32
	// RateSources is how many sources the rate limiter tracks; beyond it
	// the least recently seen source is forgotten (and starts afresh with
	// a full bucket). Fixed by New: Update must be given the same value or
	// 0. 0 means DefaultRateSources.
	RateSources uint32
}

// DefaultConfig returns a Config that protects nothing, with the default
// table sizes.
func DefaultConfig() Config {
	return Config{RateSources: DefaultRateSources}
}

// Validate reports every problem with c, joined, or nil.
func (c Config) Validate() error {
	var errs []error
	if len(c.Ports) > MaxPorts {
		errs = append(errs, fmt.Errorf("%d protected ports, more than %d", len(c.Ports), MaxPorts))
	}
	for _, p := range c.Ports {
		if p.Proto != "tcp" && p.Proto != "udp" {
			errs = append(errs, fmt.Errorf("protected port %s: protocol %q is not tcp or udp", p, p.Proto))
		}
		if p.Num == 0 {
			errs = append(errs, fmt.Errorf("protected port %s: port 0", p))
		}
	}
	errs = append(errs, checkPrefixes("deny", c.Deny)...)
	errs = append(errs, checkPrefixes("allow", c.Allow)...)
	if c.RateLimit > MaxRateLimit {
		errs = append(errs, fmt.Errorf("rate limit %d/s above the maximum %d/s", c.RateLimit, MaxRateLimit))
	}
	if c.RateSources > MaxRateSources {
		errs = append(errs, fmt.Errorf("rate limiter table of %d sources above the maximum %d", c.RateSources, MaxRateSources))
	}
	if c.RateLimit == 0 && c.RateBurst != 0 {
		errs = append(errs, fmt.Errorf("rate burst %d without a rate limit", c.RateBurst))
	}
	return errors.Join(errs...)
}

func checkPrefixes(list string, ps []netip.Prefix) []error {
	var errs []error
	var n4, n6 int
	for _, p := range ps {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("%s prefix %q is not valid", list, p))
			continue
		}
		if unmapPrefix(p).Addr().Is4() {
			n4++
		} else {
			n6++
		}
	}
	if n4 > MaxPrefixes || n6 > MaxPrefixes {
		errs = append(errs, fmt.Errorf("%s list has %d IPv4 and %d IPv6 prefixes, more than %d of a family", list, n4, n6, MaxPrefixes))
	}
	return errs
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix (::ffff:198.18.0.0/111)
// into the IPv4 prefix it covers, and masks the host bits: the program sees
// IPv4 packets only with IPv4 sources.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// UnmapPrefixes returns ps with each IPv4-mapped prefix turned into the
// IPv4 prefix it covers, as the program applies them, for the user-space
// check of addresses from PROXY headers to match the program's.
func UnmapPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = unmapPrefix(p)
	}
	return out
}

// rules is a Config turned into the sets the maps hold.
type rules struct {
	ports map[firewallPortKey]struct{}
	deny  map[netip.Prefix]struct{} // masked, IPv4 unmapped
	allow map[netip.Prefix]struct{}
	conf  firewallRuleConfig
}

// clone returns a copy of r that shares no map with it.
func (r rules) clone() rules {
	return rules{
		ports: maps.Clone(r.ports),
		deny:  maps.Clone(r.deny),
		allow: maps.Clone(r.allow),
		conf:  r.conf,
	}
}

const (
	protoTCP = 6
	protoUDP = 17
)

// compile turns a valid Config into rules.
func compile(c Config) rules {
	r := rules{
		ports: make(map[firewallPortKey]struct{}, len(c.Ports)),
		deny:  prefixSet(c.Deny),
		allow: prefixSet(c.Allow),
	}
	for _, p := range c.Ports {
		k := firewallPortKey{Proto: protoTCP, Port: p.Num}
		if p.Proto == "udp" {
			k.Proto = protoUDP
		}
		r.ports[k] = struct{}{}
	}
	if len(r.allow) > 0 {
		r.conf.Flags |= firewallConfigFlagCONFIG_ALLOW_LIST
	}
	if c.RateLimit > 0 {
		burst := c.RateBurst
		if burst == 0 {
			burst = c.RateLimit
		}
		// Round to nearest; RateLimit <= MaxRateLimit keeps it >= 100.
		r.conf.RateIntervalNs = (1e9 + uint64(c.RateLimit)/2) / uint64(c.RateLimit)
		// At most (2^32-1) * 1e9 < 2^62: no overflow, here or when the
		// program adds it to the clock.
		r.conf.RateBurstNs = uint64(burst) * r.conf.RateIntervalNs
	}
	return r
}

func prefixSet(ps []netip.Prefix) map[netip.Prefix]struct{} {
	s := make(map[netip.Prefix]struct{}, len(ps))
	for _, p := range ps {
		s[unmapPrefix(p)] = struct{}{}
	}
	return s
}
