package proxyproto

import (
	"bytes"
	"net/netip"
	"strconv"
)

const (
	v1Sig     = "PROXY"
	v1TCP4    = "TCP4"
	v1TCP6    = "TCP6"
	v1Unknown = "UNKNOWN"
)

// AppendV1 appends the v1 line for a TCP connection from src to dst. Two
// IPv4 addresses give a TCP4 line; otherwise the line is TCP6, with an IPv4
// address written IPv4-mapped. If either address is invalid it appends the
// UNKNOWN line of AppendV1Local.
func AppendV1(b []byte, src, dst netip.AddrPort) []byte {
	s, d, ok := addrPair(src, dst)
	if !ok {
		return AppendV1Local(b)
	}
	b = append(b, v1Sig+" "...)
	if s.Is4() {
		b = append(b, v1TCP4...)
	} else {
		b = append(b, v1TCP6...)
	}
	b = append(b, ' ')
	b = s.AppendTo(b)
	b = append(b, ' ')
	b = d.AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(src.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(dst.Port()), 10)
	return append(b, "\r\n"...)
}

// AppendV1Local appends "PROXY UNKNOWN\r\n", the v1 line for a connection
// whose addresses the receiver should take from the connection itself. The
// spec discourages sending it for health checks, since some receivers
// reject it: prefer AppendV1 with the health check's own addresses.
func AppendV1Local(b []byte) []byte {
	return append(b, v1Sig+" "+v1Unknown+"\r\n"...)
}

// addrPair returns src and dst ready to encode: unmapped and unzoned when
// both are IPv4, both IPv6 (IPv4 mapped) otherwise. ok is false when either
// is invalid.
func addrPair(src, dst netip.AddrPort) (s, d netip.Addr, ok bool) {
	if !src.Addr().IsValid() || !dst.Addr().IsValid() {
		return netip.Addr{}, netip.Addr{}, false
	}
	s, d = src.Addr().Unmap().WithZone(""), dst.Addr().Unmap().WithZone("")
	if s.Is4() != d.Is4() {
		s, d = netip.AddrFrom16(s.As16()), netip.AddrFrom16(d.As16())
	}
	return s, d, true
}

// parseV1 parses a v1 line; b starts with v1Sig.
func parseV1(b []byte) (Header, int, error) {
	// Find the CRLF within the first MaxV1Len bytes.
	end, complete := -1, false
	for i := len(v1Sig); i < len(b) && i < MaxV1Len; i++ {
		if b[i] == '\n' {
			return Header{}, 0, ErrBadLine
		}
		if b[i] != '\r' {
			continue
		}
		end = i
		if i+1 >= MaxV1Len {
			break // CR as the last allowed byte: too long, below
		}
		if i+1 < len(b) {
			if b[i+1] != '\n' {
				return Header{}, 0, ErrBadLine
			}
			complete = true
		}
		break
	}
	line := b
	if end >= 0 {
		line = b[:end]
	}
	line = line[:min(len(line), MaxV1Len)]
	// Check what can be checked before the line is complete, so that
	// garbage is rejected as early as possible.
	if len(line) > len(v1Sig) && line[len(v1Sig)] != ' ' {
		return Header{}, 0, ErrBadLine
	}
	var rest []byte
	if len(line) > len(v1Sig)+1 {
		rest = line[len(v1Sig)+1:]
	}
	tokEnd := bytes.IndexByte(rest, ' ')
	tokDone := tokEnd >= 0 || complete
	if tokEnd < 0 {
		tokEnd = len(rest)
	}
	tok := rest[:tokEnd]
	switch {
	case tokDone && len(tok) == 0:
		return Header{}, 0, ErrBadLine
	case tokDone && !isV1Proto(tok):
		return Header{}, 0, ErrBadFamily
	case !tokDone && !isV1ProtoPrefix(tok):
		return Header{}, 0, ErrBadFamily
	}
	if !complete {
		if len(b) >= MaxV1Len {
			return Header{}, 0, ErrTooLong
		}
		return Header{}, 0, ErrIncomplete
	}
	n := end + 2
	if string(tok) == v1Unknown {
		// The receiver must ignore the rest of an UNKNOWN line.
		return Header{Version: 1, Command: Local}, n, nil
	}
	if tokEnd == len(rest) {
		return Header{}, 0, ErrBadLine
	}
	var f [4][]byte
	s := rest[tokEnd+1:]
	for k := range f {
		i := bytes.IndexByte(s, ' ')
		if k == len(f)-1 {
			if i >= 0 {
				return Header{}, 0, ErrBadLine
			}
			i = len(s)
		} else if i < 0 {
			return Header{}, 0, ErrBadLine
		}
		if i == 0 {
			return Header{}, 0, ErrBadLine
		}
		f[k], s = s[:i], s[min(i+1, len(s)):]
	}
	v6 := string(tok) == v1TCP6
	src, ok1 := parseV1Addr(f[0], v6)
	dst, ok2 := parseV1Addr(f[1], v6)
	if !ok1 || !ok2 {
		return Header{}, 0, ErrBadAddress
	}
	sport, ok1 := parsePort(f[2])
	dport, ok2 := parsePort(f[3])
	if !ok1 || !ok2 {
		return Header{}, 0, ErrBadPort
	}
	return Header{
		Version:   1,
		Command:   Proxy,
		Transport: TCP,
		Src:       netip.AddrPortFrom(src.Unmap(), sport),
		Dst:       netip.AddrPortFrom(dst.Unmap(), dport),
	}, n, nil
}

func isV1Proto(tok []byte) bool {
	s := string(tok)
	return s == v1TCP4 || s == v1TCP6 || s == v1Unknown
}

// isV1ProtoPrefix reports whether tok can still become a v1 protocol.
func isV1ProtoPrefix(tok []byte) bool {
	for _, p := range [...]string{v1TCP4, v1TCP6, v1Unknown} {
		if len(tok) <= len(p) && string(tok) == p[:len(tok)] {
			return true
		}
	}
	return false
}

func parseV1Addr(s []byte, v6 bool) (netip.Addr, bool) {
	if !v6 {
		a, ok := parseIPv4(s)
		return netip.AddrFrom4(a), ok
	}
	return parseIPv6(s)
}

// parsePort parses a decimal port, 0 to 65535, without leading zeros.
func parsePort(s []byte) (uint16, bool) {
	if len(s) == 0 || len(s) > 5 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	v := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	if v > 0xffff {
		return 0, false
	}
	return uint16(v), true
}
