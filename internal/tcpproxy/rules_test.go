package tcpproxy

import (
	"net/netip"
	"testing"
)

func TestSourceRules(t *testing.T) {
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	var nilRules *SourceRules
	if !nilRules.Admit(netip.MustParseAddr("198.18.0.1")) {
		t.Fatal("nil rules refused a client")
	}
	var r SourceRules
	if !r.Admit(netip.MustParseAddr("198.18.0.1")) {
		t.Fatal("empty rules refused a client")
	}
	r.Set(pfx("198.18.1.0/24", "2001:db8:bad::/48"), nil)
	for addr, want := range map[string]bool{
		"198.18.1.9": false, "198.18.2.9": true, "::ffff:198.18.1.9": false,
		"2001:db8:bad::1": false, "2001:db8:600d::1": true,
	} {
		if got := r.Admit(netip.MustParseAddr(addr)); got != want {
			t.Errorf("deny only: Admit(%s) = %v", addr, got)
		}
	}
	r.Set(pfx("198.18.1.0/24"), pfx("198.18.0.0/16"))
	for addr, want := range map[string]bool{
		"198.18.1.9":  false, // deny wins
		"198.18.2.9":  true,
		"198.19.0.1":  false, // outside the allow list
		"2001:db8::1": false,
	} {
		if got := r.Admit(netip.MustParseAddr(addr)); got != want {
			t.Errorf("deny+allow: Admit(%s) = %v", addr, got)
		}
	}
}
