// Package balancer holds a service's backends and chooses one per
// connection by Maglev consistent hashing of the client address.
//
// The backend set is published as an immutable Snapshot behind an atomic
// pointer: event loops load it once per new connection without a lock, and a
// membership change builds a whole new Snapshot and swaps it in.
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

// MaxWeight bounds a backend's weight: a weight of w takes w Maglev turns per
// round, so very large weights only slow the table build.
const MaxWeight = 1000

// Backend is one backend address. Values in a Snapshot are never modified.
type Backend struct {
	// Addr is the backend's address; an IPv4 address is never stored in
	// IPv4-mapped IPv6 form.
	Addr netip.AddrPort
	// Weight is the backend's relative share of new connections (1 to
	// MaxWeight; 0 keeps it in the set but sends it nothing).
	Weight int
}

// String returns "ip:port" with IPv6 addresses bracketed.
func (b Backend) String() string { return b.Addr.String() }

// ParseBackend parses the backend syntax shared by --backend and backend
// files: "ADDR" or "ADDR,weight=N", where ADDR is "ip:port" ("[ip6]:port"
// for IPv6) and N is 0 to MaxWeight (default 1).
func ParseBackend(s string) (Backend, error) {
	s = strings.TrimSpace(s)
	addrPart, opts, _ := strings.Cut(s, ",")
	b := Backend{Weight: 1}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(addrPart))
	if err != nil {
		return b, fmt.Errorf("want ip:port or [ipv6]:port: %w", err)
	}
	if ap.Port() == 0 {
		return b, errors.New("port 0 is not a valid backend port")
	}
	if ap.Addr().Zone() != "" {
		return b, errors.New("zoned IPv6 addresses are not supported")
	}
	b.Addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if opts == "" {
		return b, nil
	}
	for _, opt := range strings.Split(opts, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(opt), "=")
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

// Snapshot is an immutable backend set with its Maglev table. Safe for
// concurrent use.
type Snapshot struct {
	// Backends is the set, in the order given; indices are those of the
	// Maglev table.
	Backends []Backend
	table    *maglev.Table
}

// NewSnapshot builds the Maglev table for backends (copied) with tableSize
// slots (a prime; 0 means maglev.DefaultSize).
func NewSnapshot(backends []Backend, tableSize int) (*Snapshot, error) {
	in := make([]maglev.Backend, len(backends))
	for i, b := range backends {
		in[i] = maglev.Backend{Name: b.Addr.String(), Weight: b.Weight}
	}
	t, err := maglev.New(in, tableSize)
	if err != nil {
		return nil, fmt.Errorf("build maglev table: %w", err)
	}
	return &Snapshot{Backends: append([]Backend(nil), backends...), table: t}, nil
}

// Pick returns the index of the backend for key hash h, or -1 when no
// backend has weight.
func (s *Snapshot) Pick(h uint64) int { return s.table.Lookup(h) }

// Preference appends to dst the backend indices in h's failover order, Pick
// first; it does not allocate when dst has room for every backend.
func (s *Snapshot) Preference(h uint64, dst []int) []int { return s.table.Preference(h, dst) }

// Pool publishes the current Snapshot of a service. Safe for concurrent use.
type Pool struct {
	cur atomic.Pointer[Snapshot]
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
