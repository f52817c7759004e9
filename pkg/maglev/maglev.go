// Package maglev implements Maglev consistent hashing (Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016).
//
// # Algorithm
//
// A Table is a lookup array of M slots, M prime. Every usable backend (weight
// > 0) derives a permutation of the slots from its name alone:
//
//	offset = hash1(name) mod M
//	skip   = hash2(name) mod (M-1) + 1
//	perm_i = (offset + i*skip) mod M,  i = 0, 1, ..., M-1
//
// Because M is prime and 1 <= skip < M, every permutation visits every slot
// once. The backends then take turns until the table is full; a turn
// claims the next slot of that backend's permutation that is still empty.
// Turns are proportional to weight: a backend of weight w takes its j-th
// turn (j = 0, 1, ...) at time j/w, ties in name order. So every usable
// backend gets at least one slot, slot counts are proportional to weight to
// within a few slots (about 1 + U*w/W for U usable backends of total weight
// W), and with equal weights the order is exactly the paper's round robin.
// The schedule is periodic, so it is built once, in O(min(W, M) log U), and
// large weights cost nothing extra.
//
// Since a backend's permutation depends only on its name, and removing a
// backend removes its turns without reordering any other, removing one
// backend moves the keys that were on it and only a small collateral of
// the others: measured 0.1% to 0.6% of the remaining keys for 5 to 1000
// backends at M = 65537, equal or weighted (TestDisruption); changing one
// backend's weight moves 0.05% to 1.1% besides the keys it gains or loses.
// Making M much larger than the number of backends (the paper suggests at
// least 100 times) keeps both the spread and the disruption tight.
//
// Lookup is one index operation: slots[h mod M].
//
// # Determinism
//
// The name hashes are FNV-1a 64 followed by a fixed 64-bit finaliser with
// fixed seeds, and the population order is the byte-wise order of names, so
// every process, on every platform, given the same set of backends in any
// input order, maps every hash to the same backend name. Only integer
// arithmetic is used. The golden test pins the hash function: changing it
// reshuffles every deployed table and must be a deliberate decision.
//
// # Complexity
//
// New takes O(N log N) to validate and sort N backends, O(min(W, M) log U)
// to schedule turns, and an expected O(M log M) to populate (a turn late in
// the fill walks about M/empty slots). It allocates the 2-byte-per-slot
// table, and up to 2.2 bytes per slot plus O(N) of scratch. Lookup is O(1)
// and does not allocate. Preference is O(U) and does not allocate when dst
// has room for U more elements.
//
// Measured 2026-11-22 with go test -bench (Go 1.26.8, linux/amd64) on a
// 2-core Intel Xeon VM at 2.0 GHz shared with other builds, best of 8 runs:
// Lookup 6-7 ns; Preference 230 ns for 5 backends, 670 ns for 100, 1.5 us
// for 1000; New at M = 65537 3.4 ms for 100 equal backends, 3.8 ms for
// 1000, 2.4 ms for 100 weighted ones.
package maglev

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"
)

const (
	// DefaultSize is the default lookup-table size (a prime).
	DefaultSize = 65537

	// MaxSize is the largest table size New accepts: 2^24 slots, 32 MiB of
	// table. The largest prime below it is 16777213.
	MaxSize = 1 << 24

	// MaxBackends is the largest number of backends (including weight 0)
	// New accepts: slots hold 16-bit indices.
	MaxBackends = 1 << 16

	// MaxWeight is the largest weight New accepts.
	MaxWeight = 1<<31 - 1
)

// Backend is one entry of the input list. Name identifies it (the balancer
// passes "ip:port"); Weight >= 0; 0 means the backend gets no slots
// (excluded) but keeps its index.
type Backend struct {
	Name   string
	Weight int
}

// Table is an immutable Maglev lookup table. It is safe for concurrent use.
// The zero Table is empty: Lookup returns -1, Preference returns dst
// unchanged, Size and Len return 0.
type Table struct {
	// slots maps a slot to the input index of its backend; nil when no
	// backend is usable. len(slots) == size otherwise.
	slots []uint16
	// order maps a rank (position among the usable backends sorted by
	// name) to an input index.
	order []uint16
	// rank maps an input index to its rank; meaningful only for usable
	// backends.
	rank []uint16
	size int // table size in slots, as validated by New
	n    int // number of backends given to New
}

// Preference tuning. Probing stops at whichever bound comes first; the rest
// of the usable backends follow in a rotated name order.
const (
	maxProbes = 32 // re-mixed slot probes after the first
	maxFound  = 8  // backends found by probing, including the first
	maxMisses = 8  // consecutive probes that found nothing new
)

// Fixed seeds. Changing any of them changes every table and every preference
// list; the golden tests catch it.
const (
	fnvOffset  = 14695981039346656037
	fnvPrime   = 1099511628211
	seedOffset = 0x243f6a8885a308d3
	seedSkip   = 0x13198a2e03707344
	seedProbe  = 0xa4093822299f31d0
	seedRotate = 0x082efa98ec4e6c89
	probeGamma = 0x9e3779b97f4a7c15 // odd; 2^64 divided by the golden ratio
)

// hashName is FNV-1a 64 of name.
func hashName(name string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= fnvPrime
	}
	return h
}

// mix is a bijective 64-bit finaliser (the SplitMix64 output function). It
// makes every output bit depend on every input bit, which FNV-1a alone does
// not for short, similar names such as "10.0.0.1:80" and "10.0.0.2:80".
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// New builds a table of the given prime size (0 means DefaultSize) for
// backends. The returned Table does not retain backends.
//
// It returns an error if size is not a prime in [2, MaxSize] or is smaller
// than the number of usable backends, if there are more than MaxBackends
// backends, or if a backend has an empty or duplicate name or a weight
// outside [0, MaxWeight]. Zero usable backends is not an error: the table is
// empty.
func New(backends []Backend, size int) (*Table, error) {
	if size == 0 {
		size = DefaultSize
	}
	if size < 2 || size > MaxSize {
		return nil, fmt.Errorf("table size %d out of range [2, %d]", size, MaxSize)
	}
	if !isPrime(size) {
		return nil, fmt.Errorf("table size %d is not prime", size)
	}
	if len(backends) > MaxBackends {
		return nil, fmt.Errorf("%d backends exceed the maximum of %d", len(backends), MaxBackends)
	}
	usable := 0
	for i, b := range backends {
		switch {
		case b.Name == "":
			return nil, fmt.Errorf("backend %d: empty name", i)
		case b.Weight < 0:
			return nil, fmt.Errorf("backend %d (%q): negative weight %d", i, b.Name, b.Weight)
		case b.Weight > MaxWeight:
			return nil, fmt.Errorf("backend %d (%q): weight %d exceeds the maximum of %d", i, b.Name, b.Weight, MaxWeight)
		case b.Weight > 0:
			usable++
		}
	}
	byName := make([]int, len(backends))
	for i := range byName {
		byName[i] = i
	}
	slices.SortFunc(byName, func(a, b int) int {
		return strings.Compare(backends[a].Name, backends[b].Name)
	})
	for k := 1; k < len(byName); k++ {
		a, b := byName[k-1], byName[k]
		if backends[a].Name == backends[b].Name {
			a, b = min(a, b), max(a, b)
			return nil, fmt.Errorf("duplicate backend name %q (backends %d and %d)", backends[a].Name, a, b)
		}
	}
	if size < usable {
		return nil, fmt.Errorf("table size %d is smaller than the number of usable backends (%d)", size, usable)
	}

	t := &Table{size: size, n: len(backends)}
	if usable == 0 {
		return t, nil
	}
	t.order = make([]uint16, 0, usable)
	t.rank = make([]uint16, len(backends))
	for _, i := range byName {
		if backends[i].Weight > 0 {
			t.rank[i] = uint16(len(t.order))
			t.order = append(t.order, uint16(i))
		}
	}
	t.slots = make([]uint16, size)
	t.populate(backends)
	return t, nil
}

// populate fills t.slots. On entry t.order is the usable backends by name
// and len(t.slots) is a prime >= len(t.order).
func (t *Table) populate(backends []Backend) {
	m := uint32(len(t.slots))
	// pos is each rank's next slot of its permutation to try, skip its step.
	pos := make([]uint32, len(t.order))
	skip := make([]uint32, len(t.order))
	skip2 := make([]uint32, len(t.order)) // 2*skip mod m
	for r, i := range t.order {
		h := hashName(backends[i].Name)
		pos[r] = uint32(mix(h^seedOffset) % uint64(m))
		skip[r] = 1
		if m > 2 {
			skip[r] = uint32(mix(h^seedSkip)%uint64(m-1)) + 1
		}
		skip2[r] = next(skip[r], skip[r], m)
	}

	// Every turn claims exactly one empty slot (a permutation visits every
	// slot and passes a slot only once it is taken), so the first m turns
	// of the schedule, repeated as needed, fill the table.
	seq := t.schedule(backends)
	filled := make([]uint64, (m+63)/64)
	slots, order := t.slots, t.order
	for n := uint32(0); n < m; {
		for _, r := range seq {
			p := claim(filled, pos[r], skip[r], skip2[r], m)
			slots[p] = order[r]
			pos[r] = next(p, skip[r], m)
			if n++; n == m {
				break
			}
		}
	}
}

// claim marks and returns the first empty slot in filled (a bitset of m
// slots) among p, p+k, p+2k, ... mod m; k2 = 2k mod m. There must be one.
//
// It tests two slots per iteration: p+k and p+2k both come from p, so the
// two dependency chains of the wrap-around arithmetic run side by side
// (measured about 25% faster than one step per iteration). The slots are
// visited in the same order either way. With m = 2, k2 is 0 and the loop
// alternates between the two slots, one of which is empty.
func claim(filled []uint64, p, k, k2, m uint32) uint32 {
	for filled[p/64]&(1<<(p%64)) != 0 {
		p1 := next(p, k, m)
		if filled[p1/64]&(1<<(p1%64)) == 0 {
			p = p1
			break
		}
		p = next(p, k2, m)
	}
	filled[p/64] |= 1 << (p % 64)
	return p
}

// next returns (p + k) mod m for p, k < m <= 2^24. It is branch-free (the
// branch would be mispredicted about half the time): q = p+k-m is in
// (-m, m), and when it is negative its sign bit selects adding m back.
func next(p, k, m uint32) uint32 {
	q := int32(p + k - m)
	return uint32(q + int32(m)&(q>>31))
}

// turn is a heap entry of schedule: the next turn of rank is its j-th
// (counting from 0), due at time j/w.
type turn struct {
	j, w uint64
	rank uint16
}

// before reports whether a's turn comes before b's: earlier time, then lower
// rank. j <= len(t.slots) < 2^24 and w < 2^31, so the products are exact.
func (a turn) before(b turn) bool {
	x, y := a.j*b.w, b.j*a.w
	return x < y || x == y && a.rank < b.rank
}

// schedule returns the order of turns, as ranks, to be repeated until the
// table is full. Rank r's j-th turn (j = 0, 1, ...) is due at time j/w_r,
// ties going to the lower rank. So every backend takes its first turn at
// time 0 (one slot each is guaranteed, since size >= usable backends),
// turns are proportional to weight, and removing a backend removes its
// turns without reordering anyone else's, which is what keeps the
// collateral disruption as low as in the unweighted algorithm. With equal
// weights the schedule is one turn per backend in name order: the paper's
// round robin.
//
// Within each unit of time rank r has exactly w_r turns in the same order,
// so the schedule is periodic with period W = sum(w_r); weights are first
// divided by their gcd to make W small. The result is one period if W <= m,
// else the first m turns. Built with a heap: O(min(W, m) log U).
func (t *Table) schedule(backends []Backend) []uint16 {
	g := uint64(0)
	for _, i := range t.order {
		g = gcd(g, uint64(backends[i].Weight))
	}
	h := make([]turn, len(t.order))
	var total uint64 // <= 2^16 * 2^31
	for r, i := range t.order {
		h[r] = turn{w: uint64(backends[i].Weight) / g, rank: uint16(r)}
		total += h[r].w
	}
	// All entries are due at time 0 and sorted by rank: already a heap.
	seq := make([]uint16, min(total, uint64(len(t.slots))))
	for k := range seq {
		seq[k] = h[0].rank
		h[0].j++
		// Sift the root down.
		for p := 0; ; {
			c := 2*p + 1
			if c >= len(h) {
				break
			}
			if c+1 < len(h) && h[c+1].before(h[c]) {
				c++
			}
			if !h[c].before(h[p]) {
				break
			}
			h[p], h[c] = h[c], h[p]
			p = c
		}
	}
	return seq
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// isPrime reports whether n is prime, by trial division; n <= MaxSize, so at
// most about 2000 divisions.
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := 3; d*d <= n; d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Lookup returns the index (into the slice given to New) of the backend for
// hash h, or -1 if the table is empty. h should be well mixed: it is reduced
// modulo Size without further hashing. It does not allocate.
func (t *Table) Lookup(h uint64) int {
	if len(t.slots) == 0 {
		return -1
	}
	return int(t.slots[h%uint64(len(t.slots))])
}

// Preference appends to dst, and returns, the distinct usable backend
// indices in h's preference order. The first is always Lookup(h). Then come
// the backends of slots probed at re-mixed hashes of (h, i), i = 1, 2, ...,
// skipping ones already listed, so a key's fallbacks are weighted like its
// primary and keys that share a primary spread their fallbacks over the
// other backends. Probing stops when every usable backend is listed, after
// 32 probes, after 8 backends, or after 8 probes in a row found nothing
// new; the backends not yet listed then follow in name order, rotated by a
// hash of h. The result lists every usable backend exactly once, depends
// only on h and the backend set (not its order), and is empty for an empty
// table.
//
// It does not allocate when cap(dst)-len(dst) >= the number of usable
// backends.
func (t *Table) Preference(h uint64, dst []int) []int {
	u := len(t.order)
	if u == 0 || len(t.slots) == 0 {
		return dst
	}
	m := uint64(len(t.slots))
	var found [maxFound + 1]int // ranks, in the order found; one spare
	first := t.slots[h%m]
	dst = append(dst, int(first))
	found[0] = int(t.rank[first])
	nf := 1
	// seen has bit r%64 set for every found rank r: a clear bit means new
	// without scanning found, and with u <= 64 a set bit means found.
	seen := uint64(1) << (found[0] % 64)
	base := h ^ seedProbe
	misses := 0
	for i := uint64(1); i <= maxProbes && nf < u && nf < maxFound && misses < maxMisses; i++ {
		// Multiply-shift maps the hash onto [0, m) as evenly as a modulo
		// would, without a division.
		s, _ := bits.Mul64(mix(base+i*probeGamma), m)
		idx := t.slots[s]
		r := int(t.rank[idx])
		bit := uint64(1) << (r % 64)
		if seen&bit != 0 && (u <= 64 || slices.Contains(found[:nf], r)) {
			misses++
			continue
		}
		seen |= bit
		misses = 0
		found[nf] = r
		nf++
		dst = append(dst, int(idx))
	}
	if nf == u {
		return dst
	}

	// Append the rest in rank order from start, wrapping at u: turn the
	// found ranks into offsets from start, sort them, and copy the runs of
	// ranks between them.
	start := int(mix(h^seedRotate) % uint64(u))
	for n := range found[:nf] {
		off := found[n] - start
		if off < 0 {
			off += u
		}
		j := n // insertion sort; nf <= maxFound
		for ; j > 0 && found[j-1] > off; j-- {
			found[j] = found[j-1]
		}
		found[j] = off
	}
	found[nf] = u // sentinel: the last run ends at offset u
	w := len(dst)
	dst = slices.Grow(dst, u-nf)[:w+u-nf]
	lo := 0
	for _, hi := range found[:nf+1] {
		// Offsets [lo, hi) are ranks [start+lo, start+hi) mod u.
		a, b := start+lo, start+hi
		if a < u {
			for _, i := range t.order[a:min(b, u)] {
				dst[w] = int(i)
				w++
			}
		}
		if b > u {
			for _, i := range t.order[max(a, u)-u : b-u] {
				dst[w] = int(i)
				w++
			}
		}
		lo = hi + 1
	}
	return dst
}

// Size returns the number of slots: the validated size given to New.
func (t *Table) Size() int { return t.size }

// Len returns the number of backends given to New, including those of
// weight 0.
func (t *Table) Len() int { return t.n }
