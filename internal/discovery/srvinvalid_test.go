package discovery

import (
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// Lines of an SRV answer with records whose target names are invalid.
const (
	msgInvalid      = "SRV answer has records with invalid target names, ignoring them"
	msgInvalidAgain = "SRV answer has no records with invalid target names again"
)

// srvRR returns an SRV record built directly, without the zone file
// parser, so that its target can be any bytes: "bad name.test." goes on
// the wire as a label with a space in it, which Go's resolver refuses as a
// domain name.
func srvRR(prio, weight, port uint16, target string) dns.RR {
	return &dns.SRV{
		Hdr:      dns.RR_Header{Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1},
		Priority: prio, Weight: weight, Port: port, Target: target,
	}
}

// TestSRVInvalidTargetNameIgnored: an SRV answer with a record whose
// target is not a valid domain name, which Go's resolver drops and reports
// with an error beside the valid records, gives the valid records'
// backends. That is logged once while the answers have such records, and
// once when they no longer do. An answer whose only records are invalid,
// or whose valid records give no backend, fails and keeps the last good
// backends; it is not a name that is gone.
func TestSRVInvalidTargetNameIgnored(t *testing.T) {
	const name = "_pg._tcp.db.test."
	const bad = "bad name.test."
	s := newDNSServer(t)
	s.setRR(name, srvRR(10, 1, 5432, "a.test."), srvRR(10, 1, 5432, bad))
	s.set(t, "a.test.", "A 127.0.1.1")
	s.set(t, "b.test.", "A 127.0.1.2")
	h := start(t, s, Config{Targets: []Target{{Kind: SRV, Name: name}}})
	h.expect(t, "127.0.1.1:5432")

	// A change of the valid records goes through, with no second line.
	s.setRR(name, srvRR(10, 1, 5432, "a.test."), srvRR(10, 1, 5432, "b.test."), srvRR(10, 1, 5432, bad))
	h.expect(t, "127.0.1.1:5432", "127.0.1.2:5432")
	h.quiet(t)
	lines := h.logs.FilterMessage(msgInvalid).All()
	if len(lines) != 1 {
		t.Fatalf("%d lines %q, want 1", len(lines), msgInvalid)
	}
	if f := lines[0].ContextMap(); f["target"] != name || !strings.Contains(fmt.Sprint(f["error"]), "invalid names") {
		t.Errorf("line %q: %v, want target %s and the resolver's error", msgInvalid, f, name)
	}
	if n := h.count(msgFailed); n != 0 {
		t.Fatalf("%d failure lines, want 0", n)
	}

	// The invalid record goes: the set stays, and that is logged once.
	s.setRR(name, srvRR(10, 1, 5432, "a.test."), srvRR(10, 1, 5432, "b.test."))
	h.quiet(t)
	if n := h.count(msgInvalidAgain); n != 1 {
		t.Fatalf("%d lines %q, want 1", n, msgInvalidAgain)
	}

	// Only invalid records, or only invalid and unusable ones: a failure,
	// logged once, that keeps the last good set; no hold starts.
	s.setRR(name, srvRR(10, 1, 5432, bad))
	h.quiet(t)
	s.setRR(name, srvRR(10, 1, 5432, bad), srvRR(10, 1, 5432, "."), srvRR(10, 1, 5432, "gone.test."))
	h.quiet(t)
	if n := h.count(msgFailed); n != 1 {
		t.Fatalf("%d failure lines, want 1", n)
	}
	if n := h.count(msgHold); n != 0 {
		t.Fatalf("%d hold lines, want 0", n)
	}
	if n := h.count(msgInvalid); n != 1 {
		t.Fatalf("%d lines %q after failures, want 1", n, msgInvalid)
	}
}
