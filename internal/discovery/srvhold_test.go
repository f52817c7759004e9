package discovery

import (
	"slices"
	"testing"
	"time"
)

// TestSRVTargetHeldBesideAFailingOne: an SRV record target whose name is
// gone is held, and then removed, while another target of the priority
// fails to resolve (SERVFAIL, or no answer before the timeout) and keeps
// its last addresses. For the hold the set does not change and the SRV
// name does not fail: a held target is an answer, so the priority has one.
// The failing target holds back neither the hold's end nor the removal.
//
// When the held target's own lookups fail too, no target of the priority
// answered: the SRV name fails and keeps its last good answer, the held
// addresses with it, however long the failure lasts; the hold's clock runs
// on, and the first answer after it that says the target is still gone
// removes them.
func TestSRVTargetHeldBesideAFailingOne(t *testing.T) {
	const hold = time.Second
	const name = "_pg._tcp.db.test."
	for _, tc := range []struct {
		name      string
		mode      int  // how b.test. fails
		heldFails bool // a.test.'s lookups fail too, in its hold
	}{
		{"SERVFAIL", servfail, false},
		{"timeout", drop, false},
		{"held target fails too", servfail, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newDNSServer(t)
			s.set(t, name, "SRV 10 1 5432 a.test.", "SRV 10 1 5432 b.test.")
			s.set(t, "a.test.", "A 127.0.1.1")
			s.set(t, "b.test.", "A 127.0.1.2")
			h := start(t, s, Config{Hold: hold, Timeout: 100 * time.Millisecond, Targets: []Target{{Kind: SRV, Name: name}}})
			h.expect(t, "127.0.1.1:5432", "127.0.1.2:5432")

			began := time.Now() // at or before the first answer saying a.test. is gone
			s.setMode("b.test.", tc.mode)
			s.set(t, "a.test.")
			h.waitLog(t, msgTargetHold, 1)
			h.waitLog(t, msgTargetFailed, 1)
			if n := h.count(msgFailed); n != 0 {
				t.Fatalf("%d failure lines for the SRV name while a.test. is held", n)
			}
			if f := h.logs.FilterMessage(msgTargetFailed).All()[0].ContextMap(); f["target"] != "b.test." || f["kept"] != int64(1) {
				t.Errorf("line %q: %v, want target b.test. kept 1", msgTargetFailed, f)
			}
			var again time.Time // a.test. answers NXDOMAIN again, after its hold
			if tc.heldFails {
				s.setMode("a.test.", servfail)
				h.waitLog(t, msgFailed, 1)
				if f := h.logs.FilterMessage(msgFailed).All()[0].ContextMap(); f["target"] != name || f["kept"] != int64(2) {
					t.Errorf("line %q: %v, want target %s kept 2", msgFailed, f, name)
				}
				// Past the hold, nothing is removed until a.test.
				// answers NXDOMAIN again.
				time.Sleep(time.Until(began.Add(hold)))
				h.quiet(t)
				again = time.Now()
				s.setMode("a.test.", answer)
			}

			// The first change of the set is a.test.'s removal, at the
			// end of its hold: until then both addresses stay.
			select {
			case bs := <-h.updates:
				if want := backends(t, "127.0.1.2:5432"); !slices.Equal(bs, want) {
					t.Fatalf("update to %v while a.test. is held, want none, then %v", bs, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a.test.'s backend not removed in 10s")
			}
			if held := time.Since(began); held < hold {
				t.Fatalf("a.test.'s backend removed %v after it went, before the hold of %v", held, hold)
			}
			if d := time.Since(again); !again.IsZero() && d >= hold {
				t.Fatalf("a.test.'s backend removed %v after it answered NXDOMAIN again: its failures restarted the hold", d)
			}
			h.quiet(t)
			if n := h.count(msgTargetHold); n != 1 {
				t.Errorf("%d lines %q, want 1", n, msgTargetHold)
			}
			if n := h.count(msgTargetRemoved); n != 1 {
				t.Errorf("%d lines %q, want 1", n, msgTargetRemoved)
			}

			// b.test. answers again: a.test., gone for longer than the
			// hold, does not come back with a hold of its own.
			s.set(t, "b.test.", "A 127.0.1.3")
			s.setMode("b.test.", answer)
			h.expect(t, "127.0.1.3:5432")
			h.quiet(t)
			if n := h.count(msgTargetHold); n != 1 {
				t.Errorf("%d lines %q after b.test. recovered, want 1", n, msgTargetHold)
			}
		})
	}
}
