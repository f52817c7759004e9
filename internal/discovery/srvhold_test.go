package discovery

import (
	"testing"
	"time"
)

// TestSRVTargetHeldBesideAFailingOne: an SRV record target whose name is
// gone is held, and then removed, while another target of the priority
// fails to resolve (SERVFAIL) and keeps its last addresses. The failing
// target holds back neither the hold's end nor the removal: the SRV name
// as a whole fails only when none of its targets resolved or is held.
func TestSRVTargetHeldBesideAFailingOne(t *testing.T) {
	const hold = 300 * time.Millisecond
	const name = "_pg._tcp.db.test."
	s := newDNSServer(t)
	s.set(t, name, "SRV 10 1 5432 a.test.", "SRV 10 1 5432 b.test.")
	s.set(t, "a.test.", "A 127.0.1.1")
	s.set(t, "b.test.", "A 127.0.1.2")
	h := start(t, s, Config{Hold: hold, Targets: []Target{{Kind: SRV, Name: name}}})
	h.expect(t, "127.0.1.1:5432", "127.0.1.2:5432")

	began := time.Now() // at or before the first answer saying a.test. is gone
	s.setMode("b.test.", servfail)
	s.set(t, "a.test.")
	h.expect(t, "127.0.1.2:5432")
	if held := time.Since(began); held < hold {
		t.Fatalf("a.test.'s backend removed %v after it went, before the hold of %v", held, hold)
	}
	h.quiet(t)
	if n := h.count(msgTargetHold); n != 1 {
		t.Errorf("%d lines %q, want 1", n, msgTargetHold)
	}
	if n := h.count(msgTargetRemoved); n != 1 {
		t.Errorf("%d lines %q, want 1", n, msgTargetRemoved)
	}

	// b.test. answers again: a.test., gone for longer than the hold, does
	// not come back with a hold of its own.
	s.set(t, "b.test.", "A 127.0.1.3")
	s.setMode("b.test.", answer)
	h.expect(t, "127.0.1.3:5432")
	h.quiet(t)
	if n := h.count(msgTargetHold); n != 1 {
		t.Errorf("%d lines %q after b.test. recovered, want 1", n, msgTargetHold)
	}
}
