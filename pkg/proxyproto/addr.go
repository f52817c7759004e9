package proxyproto

import "net/netip"

// The v1 address parsers work on bytes so that parsing allocates nothing
// (netip.ParseAddr takes a string, and converting would copy). They accept
// exactly what the spec allows; a fuzz test holds parseIPv6 to
// netip.ParseAddr on the same text.

// parseIPv4 parses four decimal octets, 0 to 255, without leading zeros.
func parseIPv4(s []byte) (ip [4]byte, ok bool) {
	k, v, digits := 0, 0, 0
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			if digits == 1 && v == 0 {
				return ip, false // leading zero
			}
			v = v*10 + int(c-'0')
			digits++
			if v > 0xff {
				return ip, false
			}
		case c == '.':
			if digits == 0 || k == 3 {
				return ip, false
			}
			ip[k] = byte(v)
			k, v, digits = k+1, 0, 0
		default:
			return ip, false
		}
	}
	if k != 3 || digits == 0 {
		return ip, false
	}
	ip[3] = byte(v)
	return ip, true
}

// parseIPv6 parses RFC 4291 text: eight groups of one to four hex digits,
// at most one "::" standing for one or more zero groups, and optionally a
// dotted IPv4 address in place of the last two groups. Zones are rejected.
func parseIPv6(s []byte) (netip.Addr, bool) {
	var ip [16]byte
	ellipsis := -1 // byte offset in ip where "::" stands, if any
	if len(s) >= 2 && s[0] == ':' && s[1] == ':' {
		ellipsis = 0
		s = s[2:]
		if len(s) == 0 {
			return netip.AddrFrom16(ip), true
		}
	}
	i := 0 // bytes of ip filled
	for i < len(ip) {
		n, v := 0, 0
		for n < len(s) {
			d, ok := hexVal(s[n])
			if !ok {
				break
			}
			if n == 4 {
				return netip.Addr{}, false
			}
			v = v<<4 | d
			n++
		}
		if n == 0 {
			return netip.Addr{}, false
		}
		if n < len(s) && s[n] == '.' {
			// Dotted IPv4 tail: it must end the address and fill
			// the last four bytes, or precede them via "::".
			if (ellipsis < 0 && i != 12) || i+4 > len(ip) {
				return netip.Addr{}, false
			}
			v4, ok := parseIPv4(s)
			if !ok {
				return netip.Addr{}, false
			}
			copy(ip[i:], v4[:])
			i += 4
			s = nil
			break
		}
		ip[i], ip[i+1] = byte(v>>8), byte(v)
		i += 2
		s = s[n:]
		if len(s) == 0 {
			break
		}
		if s[0] != ':' || len(s) == 1 {
			return netip.Addr{}, false
		}
		s = s[1:]
		if s[0] == ':' {
			if ellipsis >= 0 {
				return netip.Addr{}, false
			}
			ellipsis = i
			s = s[1:]
			if len(s) == 0 {
				break
			}
		}
	}
	if len(s) != 0 {
		return netip.Addr{}, false
	}
	if i < len(ip) {
		if ellipsis < 0 {
			return netip.Addr{}, false
		}
		gap := len(ip) - i
		copy(ip[ellipsis+gap:], ip[ellipsis:i])
		clear(ip[ellipsis : ellipsis+gap])
	} else if ellipsis >= 0 {
		return netip.Addr{}, false // "::" must stand for at least one group
	}
	return netip.AddrFrom16(ip), true
}

func hexVal(c byte) (int, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0'), true
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10, true
	}
	return 0, false
}
