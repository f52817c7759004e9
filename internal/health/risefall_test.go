package health

import (
	"fmt"
	"strings"
	"testing"
)

// step is one observation and what RiseFall must answer to it.
type step struct {
	ok      bool
	up      bool // verdict after the observation
	changed bool
}

// parseSteps reads a compact script: each space-separated token is the
// result (+ ok, - fail) followed by the verdict (U up, D down) and, when the
// verdict changed, a "!". "+U -U -D!" is: ok → up; fail → still up; fail →
// down, changed.
func parseSteps(tb testing.TB, script string) []step {
	tb.Helper()
	var steps []step
	for _, tok := range strings.Fields(script) {
		if len(tok) < 2 || len(tok) > 3 || (tok[0] != '+' && tok[0] != '-') ||
			(tok[1] != 'U' && tok[1] != 'D') || (len(tok) == 3 && tok[2] != '!') {
			tb.Fatalf("bad step %q in %q", tok, script)
		}
		steps = append(steps, step{ok: tok[0] == '+', up: tok[1] == 'U', changed: len(tok) == 3})
	}
	return steps
}

func TestRiseFall(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rise, fall int
		up         bool // starting verdict
		script     string
	}{
		{"up stays up on success", 2, 3, true, "+U +U +U"},
		{"down stays down on failure", 2, 3, false, "-D -D -D"},
		{"fall 3 takes three failures", 2, 3, true, "-U -U -D! -D"},
		{"a success resets the fall streak", 2, 3, true, "-U -U +U -U -U -D!"},
		{"rise 2 takes two successes", 2, 3, false, "+D +U! +U"},
		{"a failure resets the rise streak", 2, 3, false, "+D -D +D -D +D +U!"},
		{"fall 1 goes down at once", 1, 1, true, "-D! +U! -D! -D +U! +U"},
		{"rise 1 comes up at once", 1, 2, false, "+U! -U -D! +U!"},
		{"full cycle", 3, 2, true, "-U -D! +D +D +U! -U +U -U -D!"},
		{"rise 5", 5, 1, false, "+D +D +D +D +U!"},
		{"streak against the verdict only", 2, 2, true, "+U +U -U +U -U -D! -D -D +D +U!"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rf := NewRiseFall(tc.rise, tc.fall, tc.up)
			if rf.Up() != tc.up {
				t.Fatalf("new RiseFall: Up() = %v, want %v", rf.Up(), tc.up)
			}
			for i, s := range parseSteps(t, tc.script) {
				up, changed := rf.Observe(s.ok)
				if up != s.up || changed != s.changed {
					t.Fatalf("step %d (ok=%v): got up=%v changed=%v, want up=%v changed=%v",
						i, s.ok, up, changed, s.up, s.changed)
				}
				if rf.Up() != up {
					t.Fatalf("step %d: Up() = %v, Observe said %v", i, rf.Up(), up)
				}
			}
		})
	}
}

func TestRiseFallForceDown(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rise, fall int
		before     string // observed before ForceDown
		after      string // observed after ForceDown
	}{
		{"up then forced down needs rise successes", 3, 2, "+U +U", "+D +D +U! +U"},
		{"forced down with rise 1", 1, 3, "+U", "+U!"},
		{"a pending fall streak is forgotten", 2, 3, "-U -U", "+D +U!"},
		{"a pending rise streak is forgotten", 3, 1, "-D! +D +D", "+D +D +U!"},
		{"a failure after ForceDown restarts the rise", 2, 3, "+U", "+D -D +D +U!"},
		{"already down", 2, 2, "-U -D!", "-D +D +U!"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rf := NewRiseFall(tc.rise, tc.fall, true)
			for i, s := range parseSteps(t, tc.before) {
				if up, changed := rf.Observe(s.ok); up != s.up || changed != s.changed {
					t.Fatalf("before step %d: got up=%v changed=%v, want %v %v", i, up, changed, s.up, s.changed)
				}
			}
			rf.ForceDown()
			if rf.Up() {
				t.Fatal("Up() after ForceDown")
			}
			for i, s := range parseSteps(t, tc.after) {
				if up, changed := rf.Observe(s.ok); up != s.up || changed != s.changed {
					t.Fatalf("after step %d: got up=%v changed=%v, want %v %v", i, up, changed, s.up, s.changed)
				}
			}
		})
	}
}

// TestRiseFallLongRuns checks, for every rise and fall up to 6, that the
// verdict flips after exactly rise (fall) results against it and never
// before.
func TestRiseFallLongRuns(t *testing.T) {
	for rise := 1; rise <= 6; rise++ {
		for fall := 1; fall <= 6; fall++ {
			t.Run(fmt.Sprintf("rise%d_fall%d", rise, fall), func(t *testing.T) {
				rf := NewRiseFall(rise, fall, true)
				for cycle := range 3 {
					for i := 1; i <= fall; i++ {
						up, changed := rf.Observe(false)
						if want := i < fall; up != want || changed != (i == fall) {
							t.Fatalf("cycle %d failure %d: up=%v changed=%v", cycle, i, up, changed)
						}
					}
					for i := 1; i <= rise; i++ {
						up, changed := rf.Observe(true)
						if want := i == rise; up != want || changed != want {
							t.Fatalf("cycle %d success %d: up=%v changed=%v", cycle, i, up, changed)
						}
					}
				}
			})
		}
	}
}
