package maglev

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

// newTable builds a table or fails the test.
func newTable(tb testing.TB, backends []Backend, size int) *Table {
	tb.Helper()
	t, err := New(backends, size)
	if err != nil {
		tb.Fatalf("New(%d backends, %d): %v", len(backends), size, err)
	}
	return t
}

// equal returns n backends "10.0.0.x:80"-style with weight 1.
func equal(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Name: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1), Weight: 1}
	}
	return bs
}

// weighted returns backends with the given weights.
func weighted(ws ...int) []Backend {
	bs := equal(len(ws))
	for i, w := range ws {
		bs[i].Weight = w
	}
	return bs
}

// slotNames returns the backend name of every slot of t.
func slotNames(tb testing.TB, t *Table, bs []Backend) []string {
	tb.Helper()
	names := make([]string, t.Size())
	for s := range names {
		i := t.Lookup(uint64(s))
		if i < 0 || i >= len(bs) {
			tb.Fatalf("Lookup(%d) = %d, want [0, %d)", s, i, len(bs))
		}
		names[s] = bs[i].Name
	}
	return names
}

// slotCounts returns how many slots each input index owns.
func slotCounts(tb testing.TB, t *Table) []int {
	tb.Helper()
	counts := make([]int, t.Len())
	for s := 0; s < t.Size(); s++ {
		counts[t.Lookup(uint64(s))]++
	}
	return counts
}

func without(bs []Backend, i int) []Backend {
	return slices.Delete(slices.Clone(bs), i, i+1)
}

func shuffled(bs []Backend, seed uint64) []Backend {
	out := slices.Clone(bs)
	r := rand.New(rand.NewPCG(seed, 0))
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestSpread(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
		size     int
	}{
		{"5 equal", equal(5), 0},
		{"10 equal small table", equal(10), 1009},
		{"weights 1-5", weighted(1, 2, 3, 4, 5), 0},
		{"weights with zeros", weighted(3, 0, 1, 0, 2), 0},
		{"weights 1-10", weighted(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0},
		{"skewed", weighted(1000, 1, 1), 0},
		{"huge weights", weighted(MaxWeight, MaxWeight-1, MaxWeight/2), 0},
	}
	const keys = 10000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := newTable(t, tt.backends, tt.size)
			m := tab.Size()
			total, usable := 0, 0
			for _, b := range tt.backends {
				total += b.Weight
				if b.Weight > 0 {
					usable++
				}
			}

			counts := slotCounts(t, tab)
			sum := 0
			for i, b := range tt.backends {
				sum += counts[i]
				want := float64(b.Weight) / float64(total)
				got := float64(counts[i]) / float64(m)
				switch {
				case b.Weight == 0 && counts[i] != 0:
					t.Errorf("%s (weight 0) has %d slots", b.Name, counts[i])
				case b.Weight > 0 && counts[i] < 1:
					t.Errorf("%s (weight %d) has no slot", b.Name, b.Weight)
				case math.Abs(got-want) > float64(usable+1)/float64(m):
					t.Errorf("%s (weight %d): %d slots = %.5f, want %.5f", b.Name, b.Weight, counts[i], got, want)
				}
			}
			if sum != m {
				t.Errorf("slot counts sum to %d, want %d", sum, m)
			}

			hits := make([]int, len(tt.backends))
			r := rand.New(rand.NewPCG(1, 2))
			for range keys {
				hits[tab.Lookup(r.Uint64())]++
			}
			for i, b := range tt.backends {
				want := float64(b.Weight) / float64(total)
				got := float64(hits[i]) / keys
				if math.Abs(got-want) > 0.015 {
					t.Errorf("%s (weight %d): %.4f of keys, want %.4f ± 0.015", b.Name, b.Weight, got, want)
				}
			}
		})
	}
}

// TestEqualWeightsExact checks the round-robin property: with equal weights
// every backend owns floor(M/N) or ceil(M/N) slots.
func TestEqualWeightsExact(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 100, 1000} {
		tab := newTable(t, equal(n), 0)
		lo := tab.Size() / n
		for i, c := range slotCounts(t, tab) {
			if c != lo && c != lo+1 {
				t.Errorf("n=%d: backend %d owns %d slots, want %d or %d", n, i, c, lo, lo+1)
			}
		}
	}
}

// moved compares two tables slot by slot (every slot, so the whole key
// space) by name and returns the fraction of slots that changed owner among
// those whose owner in before is not skip and whose owner in after is not
// skip. Those are the keys that had no reason to move.
func moved(tb testing.TB, before, after []string, skip string) float64 {
	tb.Helper()
	n, changed := 0, 0
	for s := range before {
		if before[s] == skip || after[s] == skip {
			continue
		}
		n++
		if before[s] != after[s] {
			changed++
		}
	}
	return float64(changed) / float64(n)
}

func TestDisruption(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
		size     int
	}{
		{"5 equal", equal(5), 0},
		{"10 equal", equal(10), 0},
		{"100 equal", equal(100), 0},
		{"1000 equal", equal(1000), 0},
		{"weights 1-10", weighted(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0},
		{"weights 1,100", weighted(1, 100, 1, 100, 1, 100), 0},
	}
	const limit = 0.01
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			full := newTable(t, tt.backends, tt.size)
			fullNames := slotNames(t, full, tt.backends)
			n := len(tt.backends)
			worst := 0.0
			for _, r := range []int{0, n / 2, n - 1} {
				gone := tt.backends[r].Name
				rest := without(tt.backends, r)
				restNames := slotNames(t, newTable(t, rest, tt.size), rest)

				// Removal: keys not on the removed backend stay.
				if f := moved(t, fullNames, restNames, gone); f >= limit {
					t.Errorf("removing %s moved %.3f%% of the other keys, want < %.0f%%", gone, 100*f, 100*limit)
				} else {
					worst = max(worst, f)
				}
				// Addition is the same pair of tables the other way round:
				// keys not taken by the added backend stay.
				if f := moved(t, restNames, fullNames, gone); f >= limit {
					t.Errorf("adding %s moved %.3f%% of the other keys, want < %.0f%%", gone, 100*f, 100*limit)
				}
				// Nothing is moved onto the removed backend, obviously, and
				// its keys all go somewhere.
				for s := range fullNames {
					if restNames[s] == gone {
						t.Fatalf("slot %d still on removed %s", s, gone)
					}
				}
			}
			t.Logf("worst collateral on removal: %.3f%%", 100*worst)
		})
	}
}

// TestDisruptionWeightChange changes one backend's weight: keys move to it
// (or from it) and few others move.
func TestDisruptionWeightChange(t *testing.T) {
	const limit = 0.02
	for _, n := range []int{5, 10, 100} {
		bs := equal(n)
		before := slotNames(t, newTable(t, bs, 0), bs)
		for _, w := range []int{2, 10} {
			cs := slices.Clone(bs)
			cs[n/2].Weight = w
			after := slotNames(t, newTable(t, cs, 0), cs)
			f := moved(t, before, after, bs[n/2].Name)
			if f >= limit {
				t.Errorf("%d backends, weight 1 -> %d: %.3f%% of the other keys moved, want < %.0f%%", n, w, 100*f, 100*limit)
			}
			t.Logf("%d backends, weight 1 -> %d: collateral %.3f%%", n, w, 100*f)
		}
	}
}

// TestWeightZeroIsRemoval checks that a weight-0 backend is excluded exactly
// as if it were absent, keeping its index.
func TestWeightZeroIsRemoval(t *testing.T) {
	bs := equal(8)
	zeroed := slices.Clone(bs)
	zeroed[3].Weight = 0
	got := slotNames(t, newTable(t, zeroed, 1021), zeroed)
	rest := without(bs, 3)
	want := slotNames(t, newTable(t, rest, 1021), rest)
	if !slices.Equal(got, want) {
		t.Error("table with a weight-0 backend differs from the table without it")
	}
}

func TestDeterministicOrder(t *testing.T) {
	for _, bs := range [][]Backend{equal(50), weighted(5, 0, 3, 1, 1, 9, 0, 2)} {
		want := slotNames(t, newTable(t, bs, 4099), bs)
		wantPref := prefNames(t, newTable(t, bs, 4099), bs, 1000)
		for seed := range uint64(10) {
			sh := shuffled(bs, seed)
			tab := newTable(t, sh, 4099)
			if got := slotNames(t, tab, sh); !slices.Equal(got, want) {
				t.Fatalf("seed %d: shuffled input maps slots to different names", seed)
			}
			if got := prefNames(t, tab, sh, 1000); !slices.Equal(got, wantPref) {
				t.Fatalf("seed %d: shuffled input gives different preference lists", seed)
			}
		}
	}
}

// prefNames renders the preference lists of keys 0..keys-1 by name.
func prefNames(tb testing.TB, t *Table, bs []Backend, keys int) []string {
	tb.Helper()
	out := make([]string, keys)
	var dst []int
	for k := range out {
		dst = t.Preference(mix(uint64(k)), dst[:0])
		var sb strings.Builder
		for _, i := range dst {
			sb.WriteString(bs[i].Name)
			sb.WriteByte(' ')
		}
		out[k] = sb.String()
	}
	return out
}

// TestGolden pins the hash functions and the population order. If it fails,
// every table in a mixed-version deployment would disagree: change the
// expectations only on purpose.
func TestGolden(t *testing.T) {
	bs := []Backend{
		{"10.0.0.1:80", 1}, {"10.0.0.2:80", 1}, {"10.0.0.3:80", 2},
		{"10.0.0.4:80", 1}, {"10.0.0.5:80", 0},
	}
	tab := newTable(t, bs, 0)
	golden := []struct {
		h    uint64
		name string
	}{
		{0, "10.0.0.3:80"},
		{1, "10.0.0.1:80"},
		{12345, "10.0.0.3:80"},
		{65536, "10.0.0.2:80"},
		{1 << 63, "10.0.0.2:80"},
		{0xdeadbeefcafef00d, "10.0.0.1:80"},
	}
	for _, g := range golden {
		if got := bs[tab.Lookup(g.h)].Name; got != g.name {
			t.Errorf("Lookup(%#x) = %s, want %s", g.h, got, g.name)
		}
	}
	// A digest of the whole table, by name.
	d := uint64(fnvOffset)
	for _, name := range slotNames(t, tab, bs) {
		d = mix(d ^ hashName(name))
	}
	if want := uint64(0xd9fc37b938088cd8); d != want {
		t.Errorf("table digest = %#x, want %#x", d, want)
	}
	var got []string
	for _, i := range tab.Preference(0xdeadbeefcafef00d, nil) {
		got = append(got, bs[i].Name)
	}
	if want := []string{"10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.2:80"}; !slices.Equal(got, want) {
		t.Errorf("Preference(0xdeadbeefcafef00d) = %q, want %q", got, want)
	}
	// A digest of the preference lists of 1000 keys over 20 backends, more
	// than probing finds.
	many := equal(20)
	d = uint64(fnvOffset)
	for _, p := range prefNames(t, newTable(t, many, 1021), many, 1000) {
		d = mix(d ^ hashName(p))
	}
	if want := uint64(0xcd08cda218c8ce43); d != want {
		t.Errorf("preference digest = %#x, want %#x", d, want)
	}
}

// TestHashes checks the building blocks against their published
// definitions: FNV-1a 64 as in hash/fnv, and the SplitMix64 output function
// (whose first output from seed 0 is 0xe220a8397b1dcdaf).
func TestHashes(t *testing.T) {
	for _, s := range []string{"", "a", "10.0.0.1:80", "[2001:db8::1]:443"} {
		f := fnv.New64a()
		f.Write([]byte(s))
		if got, want := hashName(s), f.Sum64(); got != want {
			t.Errorf("hashName(%q) = %#x, want %#x", s, got, want)
		}
	}
	if got, want := mix(probeGamma), uint64(0xe220a8397b1dcdaf); got != want {
		t.Errorf("mix(gamma) = %#x, want %#x", got, want)
	}
}

func TestPreference(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
		size     int
	}{
		{"1", equal(1), 7},
		{"2", equal(2), 0},
		{"5 equal", equal(5), 0},
		{"weights with zeros", weighted(3, 0, 1, 0, 2, 0), 251},
		{"skewed", weighted(1000, 1, 1, 1), 0},
		{"17 equal", equal(17), 1021},
		{"12 equal (more than probing finds)", equal(12), 1021},
		{"40 equal", equal(40), 4099},
		{"300 weighted", func() []Backend {
			bs := equal(300)
			for i := range bs {
				bs[i].Weight = i % 4
			}
			return bs
		}(), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := newTable(t, tt.backends, tt.size)
			var usable []int
			for i, b := range tt.backends {
				if b.Weight > 0 {
					usable = append(usable, i)
				}
			}
			r := rand.New(rand.NewPCG(3, 4))
			dst := make([]int, 0, len(tt.backends))
			seen := make([]int, len(tt.backends))
			for k := range 2000 {
				h := r.Uint64()
				dst = tab.Preference(h, dst[:0])
				checkPreference(t, tab, tt.backends, h, dst, seen, k+1)
				again := tab.Preference(h, nil)
				if !slices.Equal(dst, again) {
					t.Fatalf("Preference(%#x) not deterministic: %v then %v", h, dst, again)
				}
			}
			if len(usable) < 3 {
				return
			}

			// Keys whose primary is the same spread their second choice.
			second := map[int]int{}
			n := 0
			for n < 1000 {
				h := r.Uint64()
				if tab.Lookup(h) != usable[0] {
					continue
				}
				n++
				second[tab.Preference(h, dst[:0])[1]]++
			}
			top := 0
			for _, c := range second {
				top = max(top, c)
			}
			if len(second) < min(len(usable)-1, 3) || top > n*3/4 {
				t.Errorf("second choices of keys with primary %d: %v", usable[0], second)
			}
		})
	}
}

// TestPreferenceWeighted checks that second choices follow the weights: of
// the keys whose primary is a weight-1 backend, the weight-8 backend should
// be second for about 8/9, not the 1/2 an unweighted order would give.
func TestPreferenceWeighted(t *testing.T) {
	bs := weighted(1, 1, 8)
	tab := newTable(t, bs, 0)
	r := rand.New(rand.NewPCG(5, 6))
	heavy, n := 0, 0
	for n < 2000 {
		h := r.Uint64()
		if tab.Lookup(h) == 2 {
			continue
		}
		n++
		if tab.Preference(h, nil)[1] == 2 {
			heavy++
		}
	}
	if got, want := float64(heavy)/float64(n), 8.0/9; math.Abs(got-want) > 0.03 {
		t.Errorf("weight-8 backend is second for %.3f of the other keys, want %.3f", got, want)
	}
}

// checkPreference checks the invariants of p = t.Preference(h, nil). seen
// is scratch of len(bs); gen must differ between calls.
func checkPreference(tb testing.TB, t *Table, bs []Backend, h uint64, p, seen []int, gen int) {
	tb.Helper()
	usable := 0
	for _, b := range bs {
		if b.Weight > 0 {
			usable++
		}
	}
	if len(p) != usable {
		tb.Fatalf("Preference(%#x) = %v: %d entries, want %d", h, p, len(p), usable)
	}
	if usable == 0 {
		return
	}
	if p[0] != t.Lookup(h) {
		tb.Fatalf("Preference(%#x)[0] = %d, want Lookup = %d", h, p[0], t.Lookup(h))
	}
	for _, i := range p {
		switch {
		case i < 0 || i >= len(bs):
			tb.Fatalf("Preference(%#x) = %v: index %d out of range", h, p, i)
		case bs[i].Weight == 0:
			tb.Fatalf("Preference(%#x) = %v: includes weight-0 backend %d", h, p, i)
		case seen[i] == gen:
			tb.Fatalf("Preference(%#x) = %v: %d twice", h, p, i)
		}
		seen[i] = gen
	}
}

func TestPreferenceAppends(t *testing.T) {
	tab := newTable(t, equal(5), 0)
	dst := []int{-7, -8}
	got := tab.Preference(42, dst)
	if len(got) != 7 || got[0] != -7 || got[1] != -8 {
		t.Fatalf("Preference(42, [-7 -8]) = %v, want the prefix kept and 5 appended", got)
	}
	if !slices.Equal(got[2:], tab.Preference(42, nil)) {
		t.Fatalf("appended part %v differs from Preference(42, nil)", got[2:])
	}
}

func TestNoAllocs(t *testing.T) {
	tab := newTable(t, equal(100), 0)
	dst := make([]int, 0, 100)
	h := uint64(1)
	if a := testing.AllocsPerRun(100, func() {
		h = mix(h)
		dst = tab.Preference(h, dst[:0])
	}); a != 0 {
		t.Errorf("Preference allocates %v times per call", a)
	}
	if a := testing.AllocsPerRun(100, func() {
		h = mix(h)
		_ = tab.Lookup(h)
	}); a != 0 {
		t.Errorf("Lookup allocates %v times per call", a)
	}
}

// TestConcurrent reads one table from several goroutines; run with -race.
func TestConcurrent(t *testing.T) {
	tab := newTable(t, weighted(1, 2, 3, 4), 1021)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			dst := make([]int, 0, 4)
			for h := uint64(g); h < 2000; h += 4 {
				dst = tab.Preference(h, dst[:0])
				if dst[0] != tab.Lookup(h) {
					t.Errorf("Preference(%d)[0] != Lookup", h)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestEmpty(t *testing.T) {
	tables := map[string]*Table{
		"zero value":   new(Table),
		"nil backends": newTable(t, nil, 0),
		"all weight 0": newTable(t, weighted(0, 0, 0), 7),
	}
	for name, tab := range tables {
		if got := tab.Lookup(12345); got != -1 {
			t.Errorf("%s: Lookup = %d, want -1", name, got)
		}
		if got := tab.Preference(12345, []int{9}); !slices.Equal(got, []int{9}) {
			t.Errorf("%s: Preference = %v, want dst unchanged", name, got)
		}
	}
	tab := tables["all weight 0"]
	if tab.Size() != 7 || tab.Len() != 3 {
		t.Errorf("all weight 0: Size, Len = %d, %d, want 7, 3", tab.Size(), tab.Len())
	}
	if tab := tables["nil backends"]; tab.Size() != DefaultSize || tab.Len() != 0 {
		t.Errorf("nil backends: Size, Len = %d, %d, want %d, 0", tab.Size(), tab.Len(), DefaultSize)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
		size     int
		want     string // substring of the error
	}{
		{"size not prime", equal(3), 100, "table size 100 is not prime"},
		{"size 1", nil, 1, "table size 1 out of range"},
		{"size negative", nil, -7, "table size -7 out of range"},
		{"size too large", nil, MaxSize + 1, "out of range"},
		{"size below usable", equal(12), 11, "table size 11 is smaller than the number of usable backends (12)"},
		{"duplicate", []Backend{{"a", 1}, {"b", 1}, {"a", 0}}, 7, `duplicate backend name "a" (backends 0 and 2)`},
		{"negative weight", []Backend{{"a", 1}, {"b", -2}}, 7, `backend 1 ("b"): negative weight -2`},
		{"weight too large", []Backend{{"a", MaxWeight + 1}}, 7, `backend 0 ("a"): weight 2147483648 exceeds the maximum`},
		{"empty name", []Backend{{"a", 1}, {"", 1}}, 7, "backend 1: empty name"},
		{"too many", make([]Backend, MaxBackends+1), 0, "65537 backends exceed the maximum of 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := New(tt.backends, tt.size)
			if err == nil {
				t.Fatalf("New succeeded (size %d), want error containing %q", tab.Size(), tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
	// Weight-0 backends do not count against the size.
	if _, err := New(append(equal(11), Backend{"z", 0}), 11); err != nil {
		t.Errorf("11 usable + 1 weight-0 in 11 slots: %v", err)
	}
}

func TestIsPrime(t *testing.T) {
	var got []int
	for n := -3; n < 60; n++ {
		if isPrime(n) {
			got = append(got, n)
		}
	}
	want := []int{2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59}
	if !slices.Equal(got, want) {
		t.Errorf("primes below 60 = %v", got)
	}
	for _, n := range []int{DefaultSize, 655373, 16777213} {
		if !isPrime(n) {
			t.Errorf("isPrime(%d) = false", n)
		}
	}
	for _, n := range []int{65535, 1 << 24, 1021 * 1031, 4093 * 4099} {
		if isPrime(n) {
			t.Errorf("isPrime(%d) = true", n)
		}
	}
}

// reference is a direct transcription of the algorithm in the package doc:
// explicit permutations, and before every turn a scan for the backend whose
// next turn j/w is earliest (lowest name on ties), with the weights as
// given. It returns the input index of every slot.
func reference(bs []Backend, m int) []int {
	var ranks []int
	for i, b := range bs {
		if b.Weight > 0 {
			ranks = append(ranks, i)
		}
	}
	slices.SortFunc(ranks, func(a, b int) int { return strings.Compare(bs[a].Name, bs[b].Name) })
	u := len(ranks)

	perm := make([][]int, u)
	for r, i := range ranks {
		h := hashName(bs[i].Name)
		offset := int(mix(h^seedOffset) % uint64(m))
		skip := 1
		if m > 2 {
			skip = int(mix(h^seedSkip)%uint64(m-1)) + 1
		}
		perm[r] = make([]int, m)
		for j := range perm[r] {
			perm[r][j] = (offset + j*skip) % m
		}
	}
	entry := slices.Repeat([]int{-1}, m)
	turns := make([]int, u) // turns taken
	next := make([]int, u)  // position in perm
	for range m {
		best := 0
		for r := 1; r < u; r++ {
			// turns[r]/w_r < turns[best]/w_best
			if turns[r]*bs[ranks[best]].Weight < turns[best]*bs[ranks[r]].Weight {
				best = r
			}
		}
		for entry[perm[best][next[best]]] >= 0 {
			next[best]++
		}
		entry[perm[best][next[best]]] = ranks[best]
		next[best]++
		turns[best]++
	}
	return entry
}

func TestReference(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
		size     int
	}{
		{"1 in 2", equal(1), 2},
		{"2 in 2", equal(2), 2},
		{"3 in 3", equal(3), 3},
		{"5 equal", equal(5), 251},
		{"weights", weighted(7, 0, 1, 3, 3, 0, 12), 1021},
		{"skewed", weighted(100000, 1, 2), 509},
		{"100 equal", equal(100), 4099},
		{"shuffled weights", shuffled(weighted(1, 2, 3, 4, 5, 6, 7, 8, 9), 7), 8191},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := newTable(t, tt.backends, tt.size)
			want := reference(tt.backends, tt.size)
			for s, w := range want {
				if got := tab.Lookup(uint64(s)); got != w {
					t.Fatalf("slot %d = %d, reference %d", s, got, w)
				}
			}
		})
	}
}

// TestClassic checks the claim that equal weights give exactly the paper's
// round-robin population (no quotas: every backend takes a turn per round
// until the table is full).
func TestClassic(t *testing.T) {
	bs := shuffled(equal(13), 1)
	const m = 1021
	ranks := make([]int, len(bs))
	for i := range ranks {
		ranks[i] = i
	}
	slices.SortFunc(ranks, func(a, b int) int { return strings.Compare(bs[a].Name, bs[b].Name) })
	entry := slices.Repeat([]int{-1}, m)
	next := make([]int, len(bs))
	for filled := 0; filled < m; {
		for _, i := range ranks {
			if filled == m {
				break
			}
			h := hashName(bs[i].Name)
			offset, skip := mix(h^seedOffset)%m, mix(h^seedSkip)%(m-1)+1
			c := func() int { return int((offset + uint64(next[i])*skip) % m) }
			for entry[c()] >= 0 {
				next[i]++
			}
			entry[c()] = i
			next[i]++
			filled++
		}
	}
	tab := newTable(t, bs, m)
	for s, w := range entry {
		if got := tab.Lookup(uint64(s)); got != w {
			t.Fatalf("slot %d = %d, classic Maglev %d", s, got, w)
		}
	}
}
