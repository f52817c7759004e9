// Package proxyproto encodes and parses PROXY protocol headers, versions 1
// (text) and 2 (binary), as specified by HAProxy in "The PROXY protocol",
// versions 1 & 2.
//
// # Parsing
//
// Parse is made for an event loop that has read some bytes of a new
// connection into a buffer and cannot block for more. It returns the header
// and its length in bytes, or one of the sentinel errors below:
//
//   - ErrIncomplete: the bytes are a valid beginning of a header and more are
//     needed. Read more and call Parse again with the whole buffer. The
//     wait is bounded: a v1 line is at most MaxV1Len bytes and a v2 header
//     at most 16 bytes plus the length it announces, which is checked
//     against Parser.MaxV2Len as soon as the 16-byte fixed part is in, so a
//     slow or hostile peer cannot make the caller buffer more than that.
//   - ErrNotProxy: the bytes do not start with either signature ("PROXY" or
//     the 12-byte v2 signature). There is no separate bad-signature error:
//     bytes whose signature does not match are not a PROXY header.
//   - any other error: the header is malformed, one distinct error per
//     reason so that a caller can close the connection and count why.
//     Errors are reported as early as the bytes allow, before the rest of
//     the header has arrived.
//
// Parse never panics, never allocates and never copies: the TLVs of a v2
// header alias the input buffer. Every proper prefix of a valid header gives
// ErrIncomplete (a test checks this at every offset).
//
// The v1 grammar is applied strictly: exactly one space between fields, IPv4
// addresses as four decimal numbers without leading zeros, IPv6 addresses in
// RFC 4291 text form without a zone, ports 0 to 65535 without leading zeros,
// and the line ended by CRLF within MaxV1Len bytes (a lone CR or LF is an
// error). For "PROXY UNKNOWN" everything up to the CRLF is ignored.
//
// In v2, AF_UNSPEC and AF_UNIX headers are accepted with no addresses (the
// spec's fall back to UNSPEC), as is any LOCAL header. The TLVs are checked
// to be well formed, and a PP2_TYPE_CRC32C checksum, when present, is
// verified. A LOCAL header's block is the sender's to fill as it likes (the
// spec has the receiver discard it), so a block that fails these checks,
// or a protocol byte naming no known family or transport, does not make a
// LOCAL header bad: it comes without TLVs (and, for the latter, without a
// transport).
//
// # Addresses
//
// Src and Dst are valid (IsValid) only for Command Proxy headers that carry
// IPv4 or IPv6 addresses; otherwise the caller uses the connection's real
// endpoints, as the spec requires. IPv4-mapped IPv6 addresses are returned
// unmapped, so a client has one address however the sender's listener saw
// it.
//
// # Encoding
//
// The Append functions append to a caller's buffer and allocate only when
// it must grow. Mixed families (an IPv4 client on an IPv6 listener, or the
// reverse) are sent as TCP6 / AF_INET6 with the IPv4 address in its
// IPv4-mapped form (::ffff:a.b.c.d), which keeps the real addresses instead
// of falling back to UNKNOWN. Two IPv4 (or IPv4-mapped) addresses are sent as
// TCP4 / AF_INET. Zones are dropped. An invalid address gives the
// "PROXY UNKNOWN" line in v1 and a PROXY command with AF_UNSPEC in v2.
package proxyproto

import (
	"errors"
	"net/netip"
	"strconv"
)

// Header size limits, in bytes.
const (
	// MaxV1Len is the longest v1 line, CRLF included ("PROXY UNKNOWN"
	// followed by two full IPv6 addresses and ports).
	MaxV1Len = 107
	// MaxV2Len is the longest v2 header the format can express: the 16-byte
	// fixed part and a 16-bit length.
	MaxV2Len = v2FixedLen + 0xffff

	v2FixedLen = 16
)

// Errors returned by Parse. They are returned unwrapped, so they can be
// compared with == as well as errors.Is.
var (
	// ErrIncomplete means more bytes are needed to finish the header.
	ErrIncomplete = errors.New("proxyproto: incomplete header")
	// ErrNotProxy means the bytes do not start with a PROXY signature.
	ErrNotProxy = errors.New("proxyproto: not a PROXY protocol header")
	// ErrTooLong means a v1 line has no CRLF within MaxV1Len bytes, or a v2
	// header announces more than the parser's MaxV2Len.
	ErrTooLong = errors.New("proxyproto: header too long")
	// ErrBadLine means a v1 line breaks the grammar: a missing space,
	// an extra space or field, or a lone CR or LF.
	ErrBadLine = errors.New("proxyproto: malformed v1 line")
	// ErrBadVersion means the v2 signature is followed by a version other
	// than 2.
	ErrBadVersion = errors.New("proxyproto: bad version")
	// ErrBadCommand means a v2 command other than LOCAL or PROXY.
	ErrBadCommand = errors.New("proxyproto: bad command")
	// ErrBadFamily means a v1 protocol other than TCP4, TCP6 or UNKNOWN, an
	// unassigned v2 address family, or a v2 PROXY header whose transport
	// is set while its family is AF_UNSPEC.
	ErrBadFamily = errors.New("proxyproto: bad address family")
	// ErrBadTransport means an unassigned v2 transport protocol, or a v2
	// PROXY header whose family is set while its transport is UNSPEC.
	ErrBadTransport = errors.New("proxyproto: bad transport protocol")
	// ErrBadLength means a v2 PROXY header too short for its address
	// block.
	ErrBadLength = errors.New("proxyproto: bad length")
	// ErrBadAddress means a v1 address that is malformed or of the wrong
	// family.
	ErrBadAddress = errors.New("proxyproto: bad address")
	// ErrBadPort means a v1 port that is not a decimal number from 0 to
	// 65535 without leading zeros.
	ErrBadPort = errors.New("proxyproto: bad port")
	// ErrBadTLV means a truncated v2 TLV, a CRC32C TLV whose value is not 4
	// bytes, or more than one CRC32C TLV.
	ErrBadTLV = errors.New("proxyproto: malformed TLV")
	// ErrBadChecksum means a v2 header whose CRC32C TLV does not match.
	ErrBadChecksum = errors.New("proxyproto: checksum mismatch")
)

// Command says whether a header relays another connection's addresses.
type Command uint8

const (
	// Local means the sender opened the connection itself (a health check):
	// the receiver uses the connection's real endpoints. A v1 "PROXY
	// UNKNOWN" line parses as Local.
	Local Command = 0x0
	// Proxy means the connection is relayed on behalf of Src.
	Proxy Command = 0x1
)

// String returns "LOCAL" or "PROXY".
func (c Command) String() string {
	switch c {
	case Local:
		return "LOCAL"
	case Proxy:
		return "PROXY"
	}
	return "Command(" + strconv.Itoa(int(c)) + ")"
}

// Transport is the relayed connection's transport protocol.
type Transport uint8

const (
	// UnknownTransport is v2's UNSPEC, and v1's UNKNOWN.
	UnknownTransport Transport = 0x0
	// TCP is v2's STREAM (TCP over IPv4/IPv6, or a UNIX stream socket).
	TCP Transport = 0x1
	// UDP is v2's DGRAM (UDP over IPv4/IPv6, or a UNIX datagram socket).
	UDP Transport = 0x2
)

// String returns "TCP", "UDP" or "UNSPEC".
func (t Transport) String() string {
	switch t {
	case UnknownTransport:
		return "UNSPEC"
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return "Transport(" + strconv.Itoa(int(t)) + ")"
}

// Header is a parsed PROXY header, or one to encode with Append. The zero
// value is a v2 LOCAL header.
type Header struct {
	// Version is 1 or 2.
	Version int
	// Command is Proxy for a relayed connection, Local for a health check
	// or a v1 UNKNOWN line.
	Command Command
	// Transport is the relayed connection's protocol: TCP for v1 TCP4 and
	// TCP6 lines.
	Transport Transport
	// Src is the relayed connection's source (the client) and Dst its
	// destination (the address the client connected to). Both are invalid
	// (the zero AddrPort) unless Command is Proxy and the header carries
	// IPv4 or IPv6 addresses. IPv4 addresses are never IPv4-mapped.
	Src, Dst netip.AddrPort
	// TLVs is the v2 TLV area, already checked to be well formed by Parse;
	// it aliases the parsed buffer, so copy it (bytes.Clone) to keep it
	// after the buffer is reused. Empty for v1.
	TLVs TLVs
}

// Detect reports which version of the protocol b starts with: 1 or 2 once
// the whole signature is in b, else ErrIncomplete while b is a prefix of a
// signature, else ErrNotProxy. It looks at no more than 12 bytes, and does
// not check that the rest is well formed: Parse does.
func Detect(b []byte) (version int, err error) {
	if len(b) == 0 {
		return 0, ErrIncomplete
	}
	switch b[0] {
	case v1Sig[0]:
		return detect(b, v1Sig, 1)
	case v2Sig[0]:
		return detect(b, v2Sig, 2)
	}
	return 0, ErrNotProxy
}

func detect(b []byte, sig string, version int) (int, error) {
	n := min(len(b), len(sig))
	if string(b[:n]) != sig[:n] {
		return 0, ErrNotProxy
	}
	if n < len(sig) {
		return 0, ErrIncomplete
	}
	return version, nil
}

// Parser parses with limits. The zero value applies only the spec's limits.
// A Parser is a value with no state: it is safe for concurrent use.
type Parser struct {
	// MaxV2Len caps the size of a v2 header in bytes, the 16-byte fixed
	// part included: a header announcing more is ErrTooLong as soon as its
	// fixed part is in. 0 (or anything above MaxV2Len) means MaxV2Len.
	// Useful values start at 16+36 (IPv6 addresses, no TLVs); a cap of a
	// few hundred bytes leaves room for the TLVs proxies send.
	MaxV2Len int
}

// Parse parses the header at the start of b with the zero Parser.
func Parse(b []byte) (h Header, n int, err error) {
	return Parser{}.Parse(b)
}

// Parse parses the PROXY header at the start of b. On success n is the
// header's length: the connection's own data starts at b[n:]. On error h
// is the zero Header and n is 0; see the package documentation for what
// the errors mean.
func (p Parser) Parse(b []byte) (h Header, n int, err error) {
	v, err := Detect(b)
	switch {
	case err != nil:
		return Header{}, 0, err
	case v == 1:
		h, n, err = parseV1(b)
	default:
		h, n, err = p.parseV2(b)
	}
	if err != nil {
		return Header{}, 0, err
	}
	return h, n, nil
}
