package maglev

import (
	"slices"
	"strings"
	"testing"
)

// fuzzSizes keeps fuzzed tables small so the fuzzer runs fast; the
// non-primes and out-of-range values exercise the size errors.
var fuzzSizes = []int{2, 3, 5, 7, 11, 13, 17, 31, 61, 97, 251, 1021, 1, 4, 9, 100, -5}

// FuzzNew builds tables from arbitrary names (comma-separated), weights (one
// signed byte each, 101..127 scaled up by 2^24; missing ones are 1) and sizes, and checks that New
// errs exactly when the input is invalid and that every table it returns
// equals the reference transcription, keeps the Lookup and Preference
// invariants and does not depend on the input order.
func FuzzNew(f *testing.F) {
	f.Add("a,b,c", []byte{1, 1, 1}, uint8(4), uint64(0))
	f.Add("10.0.0.1:80,10.0.0.2:80,10.0.0.3:80", []byte{1, 2, 0}, uint8(10), uint64(12345))
	f.Add("a,a", []byte{1, 1}, uint8(3), uint64(1))
	f.Add("a,,b", []byte{1, 1, 1}, uint8(3), uint64(1))
	f.Add("x,y", []byte{0x80, 1}, uint8(3), uint64(1))
	f.Add("p,q,r,s,t,u,v,w", []byte{0, 0, 0}, uint8(0), uint64(7))
	f.Add("a,b,c,d", []byte{127, 1, 127, 1}, uint8(5), ^uint64(0))
	f.Fuzz(func(t *testing.T, names string, weights []byte, sizeSel uint8, h uint64) {
		var bs []Backend
		if names != "" {
			for i, name := range strings.Split(names, ",") {
				w := 1
				if i < len(weights) {
					w = int(int8(weights[i]))
				}
				if w > 100 { // near MaxWeight: exercises the schedule arithmetic
					w <<= 24
				}
				bs = append(bs, Backend{Name: name, Weight: w})
			}
		}
		size := fuzzSizes[int(sizeSel)%len(fuzzSizes)]

		valid := size >= 2 && isPrime(size)
		usable := 0
		seen := map[string]bool{}
		for _, b := range bs {
			if b.Name == "" || b.Weight < 0 || seen[b.Name] {
				valid = false
			}
			seen[b.Name] = true
			if b.Weight > 0 {
				usable++
			}
		}
		valid = valid && usable <= size

		tab, err := New(bs, size)
		if !valid {
			if err == nil {
				t.Fatalf("New(%+v, %d) succeeded, want error", bs, size)
			}
			return
		}
		if err != nil {
			t.Fatalf("New(%+v, %d): %v", bs, size, err)
		}
		if tab.Size() != size || tab.Len() != len(bs) {
			t.Fatalf("Size, Len = %d, %d, want %d, %d", tab.Size(), tab.Len(), size, len(bs))
		}

		// Every slot is a usable backend, and every usable backend has one.
		counts := make([]int, len(bs))
		for s := range size {
			i := tab.Lookup(uint64(s))
			if usable == 0 {
				if i != -1 {
					t.Fatalf("empty table: Lookup(%d) = %d", s, i)
				}
				continue
			}
			if i < 0 || i >= len(bs) || bs[i].Weight <= 0 {
				t.Fatalf("Lookup(%d) = %d: not a usable backend of %+v", s, i, bs)
			}
			counts[i]++
		}
		for i, b := range bs {
			if b.Weight > 0 && counts[i] == 0 {
				t.Fatalf("usable backend %q has no slot", b.Name)
			}
		}

		// The table is the one the plain transcription of the algorithm
		// builds.
		if usable > 0 {
			for s, want := range reference(bs, size) {
				if got := tab.Lookup(uint64(s)); got != want {
					t.Fatalf("slot %d = %d, reference %d", s, got, want)
				}
			}
		}

		marks := make([]int, len(bs))
		for k, key := range []uint64{h, h + 1, mix(h), ^h} {
			p := tab.Preference(key, nil)
			checkPreference(t, tab, bs, key, p, marks, k+1)
		}

		// Reversed input: same names for every slot and the same preference.
		rev := slices.Clone(bs)
		slices.Reverse(rev)
		tab2, err := New(rev, size)
		if err != nil {
			t.Fatalf("New(reversed): %v", err)
		}
		for s := range size {
			a, b := tab.Lookup(uint64(s)), tab2.Lookup(uint64(s))
			if (a < 0) != (b < 0) || a >= 0 && bs[a].Name != rev[b].Name {
				t.Fatalf("slot %d: %d vs %d after reversing the input", s, a, b)
			}
		}
		p1, p2 := tab.Preference(h, nil), tab2.Preference(h, nil)
		for k := range p1 {
			if bs[p1[k]].Name != rev[p2[k]].Name {
				t.Fatalf("Preference(%#x) differs after reversing the input: %v vs %v", h, p1, p2)
			}
		}
	})
}
