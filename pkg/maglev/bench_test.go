package maglev

import (
	"fmt"
	"testing"
)

func BenchmarkLookup(b *testing.B) {
	tab := newTable(b, equal(100), 0)
	h, sum := uint64(0), 0
	for b.Loop() {
		h += probeGamma
		sum += tab.Lookup(h)
	}
	_ = sum
}

func BenchmarkPreference(b *testing.B) {
	for _, n := range []int{5, 100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			tab := newTable(b, equal(n), 0)
			dst := make([]int, 0, n)
			h := uint64(0)
			b.ReportAllocs()
			for b.Loop() {
				h += probeGamma
				dst = tab.Preference(h, dst[:0])
			}
		})
	}
}

func benchmarkBuild(b *testing.B, bs []Backend) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(bs, DefaultSize); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuild100(b *testing.B) { benchmarkBuild(b, equal(100)) }

func BenchmarkBuild1000(b *testing.B) { benchmarkBuild(b, equal(1000)) }

// BenchmarkBuild100Weighted uses weights 1..100, including one far larger
// than the rest, to show weights do not slow the build.
func BenchmarkBuild100Weighted(b *testing.B) {
	bs := equal(100)
	for i := range bs {
		bs[i].Weight = i + 1
	}
	bs[0].Weight = 1_000_000
	benchmarkBuild(b, bs)
}
