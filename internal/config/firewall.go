package config

import (
	"cmp"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/sluice-lb/sluice/internal/firewall"
)

// buildFirewall checks the firewall flags into fw and returns the problems.
func buildFirewall(fw *Firewall, g globalVals) []string {
	var probs []string
	bad := func(flag, value, format string, a ...any) {
		probs = append(probs, fmt.Sprintf("--%s %q: %s", flag, value, fmt.Sprintf(format, a...)))
	}
	fw.Ifaces = g.xdpIfaces
	seen := map[string]bool{}
	for _, ifc := range g.xdpIfaces {
		switch {
		case ifc == "" || len(ifc) > 15 || strings.ContainsAny(ifc, "/ \t"):
			bad("xdp-iface", ifc, "not an interface name")
		case seen[ifc]:
			bad("xdp-iface", ifc, "given twice")
		}
		seen[ifc] = true
	}
	m, err := firewall.ParseMode(g.xdpMode)
	if err != nil {
		bad("xdp-mode", g.xdpMode, "want auto, native or generic")
	}
	fw.Mode = m
	rules := firewall.DefaultConfig()
	for _, s := range g.deny {
		p, err := parsePrefix(s)
		if err != nil {
			bad("deny-cidr", s, "%v", err)
			continue
		}
		rules.Deny = append(rules.Deny, p)
	}
	for _, s := range g.allow {
		p, err := parsePrefix(s)
		if err != nil {
			bad("allow-cidr", s, "%v", err)
			continue
		}
		rules.Allow = append(rules.Allow, p)
	}
	if g.rateLimit < 0 || g.rateLimit > firewall.MaxRateLimit {
		bad("rate-limit", strconv.Itoa(g.rateLimit), "want 0 (off) to %d per second", firewall.MaxRateLimit)
	} else {
		rules.RateLimit = uint32(g.rateLimit)
	}
	if g.rateBurst < 0 || g.rateBurst > firewall.MaxRateLimit {
		bad("rate-burst", strconv.Itoa(g.rateBurst), "want 0 to %d", firewall.MaxRateLimit)
	} else if g.rateBurst > 0 && g.rateLimit == 0 {
		bad("rate-burst", strconv.Itoa(g.rateBurst), "needs --rate-limit")
	} else {
		rules.RateBurst = uint32(g.rateBurst)
	}
	for _, s := range g.protect {
		ports, err := parseProtect(s)
		if err != nil {
			bad("protect-port", s, "%v", err)
			continue
		}
		rules.Ports = append(rules.Ports, ports...)
	}
	fw.Rules = rules
	if len(fw.Ifaces) == 0 && (len(g.deny)+len(g.allow)+len(g.protect) > 0 || g.rateLimit > 0) {
		probs = append(probs, "--deny-cidr, --allow-cidr, --rate-limit and --protect-port need --xdp-iface: without it no firewall runs")
	}
	return probs
}

// ProtectedPorts returns extra (the --protect-port ports) and the services'
// own ports, each once.
func ProtectedPorts(extra []firewall.Port, services iter.Seq2[string, uint16]) []firewall.Port {
	out := slices.Clone(extra)
	for proto, port := range services {
		out = append(out, firewall.Port{Proto: proto, Num: port})
	}
	slices.SortFunc(out, func(a, b firewall.Port) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Num, b.Num))
	})
	return slices.Compact(out)
}

// checkFirewallSize reports, as problems of the flags that make them, rule
// sets larger than the program's maps hold: protected ports (counting the
// services' own) and each family's deny and allow prefixes.
func checkFirewallSize(cfg Config) []string {
	if len(cfg.Firewall.Ifaces) == 0 {
		return nil
	}
	var probs []string
	ports := ProtectedPorts(cfg.Firewall.Rules.Ports, func(yield func(string, uint16) bool) {
		for _, s := range cfg.Services {
			if !yield(s.Proto, s.Listen.Port()) {
				return
			}
		}
	})
	if len(ports) > firewall.MaxPorts {
		probs = append(probs, fmt.Sprintf("--protect-port: %d ports to protect, counting each service's own, more than %d", len(ports), firewall.MaxPorts))
	}
	for _, l := range []struct {
		flag string
		ps   []netip.Prefix
	}{{"deny-cidr", cfg.Firewall.Rules.Deny}, {"allow-cidr", cfg.Firewall.Rules.Allow}} {
		var n4, n6 int
		for _, p := range firewall.UnmapPrefixes(l.ps) {
			if p.Addr().Is4() {
				n4++
			} else {
				n6++
			}
		}
		if n4 > firewall.MaxPrefixes || n6 > firewall.MaxPrefixes {
			probs = append(probs, fmt.Sprintf("--%s: %d IPv4 and %d IPv6 prefixes, more than %d of a family", l.flag, n4, n6, firewall.MaxPrefixes))
		}
	}
	return probs
}

func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("want a CIDR prefix such as 198.18.0.0/15 or 2001:db8::/32")
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("want a CIDR prefix such as 198.18.0.0/15 or 2001:db8::/32")
	}
	if p.Masked() != p {
		return p, fmt.Errorf("host bits set: did you mean %s?", p.Masked())
	}
	return p, nil
}

func parseProtect(s string) ([]firewall.Port, error) {
	proto, num, ok := strings.Cut(s, "/")
	if !ok {
		num, proto = s, ""
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("want tcp/PORT, udp/PORT or PORT with PORT 1 to 65535")
	}
	switch proto {
	case "tcp", "udp":
		return []firewall.Port{{Proto: proto, Num: uint16(n)}}, nil
	case "":
		return []firewall.Port{{Proto: "tcp", Num: uint16(n)}, {Proto: "udp", Num: uint16(n)}}, nil
	}
	return nil, fmt.Errorf("protocol %q: want tcp or udp", proto)
}
