// Package balancer holds a service's backends and chooses one per
// connection by Maglev consistent hashing of the client address.
//
// The usable backends are published as an immutable Snapshot behind an
// atomic pointer: event loops load it once per new connection without a
// lock, and a membership or health change builds a whole new Snapshot and
// swaps it in (see Service). Only the keys of a backend that leaves the table
// move; established connections keep their backend.
package balancer

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/sluice-lb/sluice/pkg/maglev"
)

// MaxWeight bounds a backend's weight, the ratio between the largest and
// smallest share a backend can be given.
const MaxWeight = 1000

// Spec is a configured backend: an address and a weight.
type Spec struct {
	// Addr is the backend's address; an IPv4 address is never stored in
	// IPv4-mapped IPv6 form.
	Addr netip.AddrPort
	// Weight is the backend's relative share of new connections (1 to
	// MaxWeight; 0 keeps it configured but sends it nothing).
	Weight int
}

// String returns "ip:port" with IPv6 addresses bracketed.
func (b Spec) String() string { return b.Addr.String() }

// ParseSpec parses the backend syntax shared by --backend and backend
// files: "ADDR" or "ADDR,weight=N" (or "ADDR weight=N"), where ADDR is
// "ip:port" ("[ip6]:port" for IPv6) and N is 0 to MaxWeight (default 1).
func ParseSpec(s string) (Spec, error) {
	s = strings.TrimSpace(s)
	addrPart, opts, _ := strings.Cut(strings.Join(strings.Fields(s), ","), ",")
	b := Spec{Weight: 1}
	ap, err := ParseAddr(addrPart)
	if err != nil {
		return b, err
	}
	b.Addr = ap
	if opts == "" {
		return b, nil
	}
	for _, opt := range strings.Split(opts, ",") {
		if opt == "" {
			continue
		}
		k, v, ok := strings.Cut(opt, "=")
		if !ok || k != "weight" {
			return b, fmt.Errorf("unknown option %q (want weight=N)", opt)
		}
		w, err := strconv.Atoi(v)
		if err != nil || w < 0 || w > MaxWeight {
			return b, fmt.Errorf("weight %q: want a whole number from 0 to %d", v, MaxWeight)
		}
		b.Weight = w
	}
	return b, nil
}

// ParseAddr parses a backend address, "ip:port" ("[ip6]:port" for IPv6),
// as ParseSpec does: port 0 and zoned IPv6 addresses are refused, and an
// IPv4-mapped IPv6 address is returned as IPv4. Every backend's address
// passes it, so an address it refuses names no backend.
func ParseAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, fmt.Errorf("want ip:port or [ipv6]:port: %w", err)
	}
	if ap.Port() == 0 {
		return ap, errors.New("port 0 is not a valid backend port")
	}
	if ap.Addr().Zone() != "" {
		return ap, errors.New("zoned IPv6 addresses are not supported")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// HashKey says which part of the client address is hashed.
type HashKey int

const (
	// HashSrcIP hashes the client IP only: every connection of a client
	// goes to the same backend.
	HashSrcIP HashKey = iota
	// HashSrcIPPort hashes the client IP and port: a client's connections
	// spread over the backends.
	HashSrcIPPort
)

// ParseHashKey parses "src-ip" or "src-ip-port".
func ParseHashKey(s string) (HashKey, error) {
	switch s {
	case "src-ip":
		return HashSrcIP, nil
	case "src-ip-port":
		return HashSrcIPPort, nil
	}
	return 0, fmt.Errorf("want src-ip or src-ip-port")
}

func (k HashKey) String() string {
	if k == HashSrcIPPort {
		return "src-ip-port"
	}
	return "src-ip"
}

// Hash returns the key hash of a client address. It depends on nothing but
// the address (no per-process seed), so every sluice process maps a client
// to the same backend given the same backend set. IPv4 and IPv4-mapped IPv6
// addresses hash alike.
func (k HashKey) Hash(ip netip.Addr, port uint16) uint64 {
	ip = ip.Unmap()
	var h uint64
	if ip.Is4() {
		a := ip.As4()
		h = mix(uint64(a[0])<<24 | uint64(a[1])<<16 | uint64(a[2])<<8 | uint64(a[3]) | 4<<32)
	} else {
		a := ip.As16()
		var hi, lo uint64
		for i := 0; i < 8; i++ {
			hi = hi<<8 | uint64(a[i])
			lo = lo<<8 | uint64(a[8+i])
		}
		h = mix(hi ^ mix(lo^0x9e3779b97f4a7c15))
	}
	if k == HashSrcIPPort {
		h = mix(h ^ uint64(port)<<1 ^ 0xc2b2ae3d27d4eb4f)
	}
	return h
}

// mix is the 64-bit finaliser of MurmurHash3: a bijection whose output bits
// each depend on every input bit.
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb93fe53e87ec
	x ^= x >> 33
	return x
}

// Snapshot is an immutable set of usable backends with their Maglev table.
// Safe for concurrent use; the *Backend values it holds are shared and have
// atomic counters.
type Snapshot struct {
	// Backends are the usable backends; indices are those of the table.
	Backends []*Backend
	table    *maglev.Table
	weight   int // sum of the backends' weights
	// members are every member of the service when the snapshot was
	// made, usable or not (down, drained, weight 0), by address; nil for
	// a snapshot of fixed backends, whose members are Backends.
	members map[netip.AddrPort]*Backend
}

// Member returns the member of the service at addr when s was made,
// whether or not it was usable (a UDP session keeps a member that is
// drained or down, as a TCP connection does), or nil. A backend that left
// and came back is a new *Backend, with counters of its own.
func (s *Snapshot) Member(addr netip.AddrPort) *Backend {
	if s.members == nil {
		for _, b := range s.Backends {
			if b.Addr == addr {
				return b
			}
		}
		return nil
	}
	return s.members[addr]
}

// NewSnapshot builds the Maglev table for backends with tableSize slots (a
// prime; 0 means maglev.DefaultSize).
func NewSnapshot(backends []*Backend, tableSize int) (*Snapshot, error) {
	in := make([]maglev.Backend, len(backends))
	w := 0
	for i, b := range backends {
		in[i] = maglev.Backend{Name: b.Addr.String(), Weight: b.Weight}
		w += b.Weight
	}
	t, err := maglev.New(in, tableSize)
	if err != nil {
		return nil, fmt.Errorf("build maglev table: %w", err)
	}
	return &Snapshot{Backends: backends, table: t, weight: w}, nil
}

// Pick returns the index of the backend for key hash h, or -1 when no
// backend is usable.
func (s *Snapshot) Pick(h uint64) int { return s.table.Lookup(h) }

// Preference appends to dst the backend indices in h's failover order, Pick
// first; it does not allocate when dst has room for every backend.
func (s *Snapshot) Preference(h uint64, dst []int) []int { return s.table.Preference(h, dst) }

// PickBounded is Pick with bounded loads (Mirrokni, Thorup and
// Zadimoghaddam, "Consistent Hashing with Bounded Loads"): no backend may
// hold more than ceil(factor × its weighted share of the open connections,
// the new one included). A key whose first choice is full walks its
// preference order to the first backend under its cap; if all are full
// (possible only transiently) the first choice is used. scratch is reused
// for the preference list. factor <= 0 is plain Pick.
func (s *Snapshot) PickBounded(h uint64, factor float64, total int64, scratch *[]int) int {
	i := s.table.Lookup(h)
	if i < 0 || factor <= 0 {
		return i
	}
	if s.Backends[i].Active.Load() < s.capOf(s.Backends[i], factor, total) {
		return i
	}
	*scratch = s.table.Preference(h, (*scratch)[:0])
	for _, j := range (*scratch)[1:] {
		if s.Backends[j].Active.Load() < s.capOf(s.Backends[j], factor, total) {
			return j
		}
	}
	return i
}

// capOf is the bounded-load cap of b with total connections open before the
// new one.
func (s *Snapshot) capOf(b *Backend, factor float64, total int64) int64 {
	share := factor * float64(total+1) * float64(b.Weight) / float64(s.weight)
	c := int64(share)
	if float64(c) < share {
		c++
	}
	return c
}

// Pool publishes the current Snapshot of a service. Safe for concurrent use.
type Pool struct {
	cur atomic.Pointer[Snapshot]
	// Open counts the connections (or UDP sessions) open to any backend of
	// the service, for bounded loads.
	Open atomic.Int64
}

// NewPool returns a pool publishing s.
func NewPool(s *Snapshot) *Pool {
	p := &Pool{}
	p.cur.Store(s)
	return p
}

// Load returns the current snapshot.
func (p *Pool) Load() *Snapshot { return p.cur.Load() }

// Store publishes s; connections already made keep their backend.
func (p *Pool) Store(s *Snapshot) { p.cur.Store(s) }
