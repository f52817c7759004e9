package config

import (
	"fmt"
	"net/netip"
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
