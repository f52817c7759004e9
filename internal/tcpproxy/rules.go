package tcpproxy

import (
	"net/netip"
	"sync/atomic"
)

// SourceRules are deny and allow lists applied in user space to client
// addresses taken from PROXY headers: the XDP firewall sees only the
// upstream balancer's address, so for these clients the same lists are
// checked here once the header is read. Safe for concurrent use; the zero
// value admits everyone.
type SourceRules struct {
	p atomic.Pointer[sourceRules]
}

type sourceRules struct {
	deny, allow []netip.Prefix
}

// Set replaces the lists: deny drops, a non-empty allow admits only its
// prefixes (deny wins), as in the firewall.
func (r *SourceRules) Set(deny, allow []netip.Prefix) {
	r.p.Store(&sourceRules{deny: deny, allow: allow})
}

// Admit reports whether a client at a may connect. The lists are scanned
// linearly: they are operator-written and short.
func (r *SourceRules) Admit(a netip.Addr) bool {
	if r == nil {
		return true
	}
	rs := r.p.Load()
	if rs == nil {
		return true
	}
	a = a.Unmap()
	for _, p := range rs.deny {
		if p.Contains(a) {
			return false
		}
	}
	if len(rs.allow) == 0 {
		return true
	}
	for _, p := range rs.allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
