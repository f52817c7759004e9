package proxyproto

import (
	"encoding/binary"
	"hash/crc32"
	"iter"
	"net/netip"
)

const (
	v2Sig = "\r\n\r\n\x00\r\nQUIT\n"

	v2Version = 0x2

	// Address families (high nibble of byte 14).
	famUnspec = 0x0
	famInet   = 0x1
	famInet6  = 0x2
	famUnix   = 0x3

	tlvHeaderLen = 3
)

// v2AddrLen is the address block length of each v2 family.
var v2AddrLen = [...]int{famUnspec: 0, famInet: 12, famInet6: 36, famUnix: 216}

// castagnoli is the CRC32C table; crc32 builds it once and it is read-only.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// TLV types registered by the spec. Types 0xE0 to 0xEF are for
// applications, 0xF0 to 0xF7 for experiments.
const (
	TypeALPN      = 0x01
	TypeAuthority = 0x02
	TypeCRC32C    = 0x03
	TypeNoop      = 0x04
	TypeUniqueID  = 0x05
	TypeSSL       = 0x20
	TypeNetNS     = 0x30

	// Sub-TLVs inside a TypeSSL value, after its 1-byte client field and
	// 4-byte verify field (parse them with TLVs(value[5:]).All).
	SubtypeSSLVersion = 0x21
	SubtypeSSLCN      = 0x22
	SubtypeSSLCipher  = 0x23
	SubtypeSSLSigAlg  = 0x24
	SubtypeSSLKeyAlg  = 0x25
)

// TLV is one type-length-value of a v2 header. Value is at most 65535
// bytes; in a parsed header it aliases the parsed buffer.
type TLV struct {
	Type  uint8
	Value []byte
}

// TLVs is the TLV area of a v2 header: TLVs back to back, each a type byte,
// a 2-byte big-endian length and the value. Iterating never allocates.
type TLVs []byte

// All yields the TLVs in order. It stops at the first malformed TLV, which
// a header from Parse never has.
func (t TLVs) All() iter.Seq[TLV] {
	return func(yield func(TLV) bool) {
		for len(t) >= tlvHeaderLen {
			n := tlvHeaderLen + int(binary.BigEndian.Uint16(t[1:]))
			if n > len(t) {
				return
			}
			if !yield(TLV{Type: t[0], Value: t[tlvHeaderLen:n:n]}) {
				return
			}
			t = t[n:]
		}
	}
}

// Lookup returns the value of the first TLV of type typ.
func (t TLVs) Lookup(typ uint8) (value []byte, ok bool) {
	for tlv := range t.All() {
		if tlv.Type == typ {
			return tlv.Value, true
		}
	}
	return nil, false
}

// check returns the offset in t of the CRC32C TLV's value (-1 if none), or
// ErrBadTLV.
func (t TLVs) check() (crcOff int, err error) {
	crcOff = -1
	for off := 0; off < len(t); {
		if len(t)-off < tlvHeaderLen {
			return -1, ErrBadTLV
		}
		vlen := int(binary.BigEndian.Uint16(t[off+1:]))
		if vlen > len(t)-off-tlvHeaderLen {
			return -1, ErrBadTLV
		}
		if t[off] == TypeCRC32C {
			if vlen != 4 || crcOff >= 0 {
				return -1, ErrBadTLV
			}
			crcOff = off + tlvHeaderLen
		}
		off += tlvHeaderLen + vlen
	}
	return crcOff, nil
}

// AppendV2 appends a v2 PROXY header for a TCP connection from src to dst,
// with tlvs after the addresses. Two IPv4 addresses give AF_INET; otherwise
// the family is AF_INET6, with an IPv4 address IPv4-mapped. If either
// address is invalid the header is a PROXY command with AF_UNSPEC and no
// addresses. If tlvs holds a TypeCRC32C TLV, its value is ignored and the
// header's 4-byte checksum written in its place (hold at most one).
//
// AppendV2 panics if a TLV value is longer than 65535 bytes or the header
// would be longer than MaxV2Len: senders control their TLVs.
func AppendV2(b []byte, src, dst netip.AddrPort, tlvs ...TLV) []byte {
	return appendV2(b, Proxy, TCP, src, dst, nil, tlvs)
}

// AppendV2Local appends a v2 LOCAL header, with AF_UNSPEC and no
// addresses, for a connection the sender makes itself (a health check).
// TLVs are as for AppendV2.
func AppendV2Local(b []byte, tlvs ...TLV) []byte {
	return appendV2(b, Local, UnknownTransport, netip.AddrPort{}, netip.AddrPort{}, nil, tlvs)
}

// Append appends h in its version: v1 if Version is 1, else v2. A v1
// header is a TCP4 or TCP6 line when h is a Proxy command over TCP with
// valid addresses, else the UNKNOWN line. A v2 header keeps h's command
// and transport, carries the addresses when h is a Proxy command over TCP
// or UDP with valid addresses (else AF_UNSPEC), and ends with h.TLVs, whose
// CRC32C TLV, if any, is recomputed. It panics if the TLVs do not fit, as
// AppendV2 does.
func (h Header) Append(b []byte) []byte {
	proxied := h.Command == Proxy && (h.Transport == TCP || h.Transport == UDP)
	if h.Version == 1 {
		if proxied && h.Transport == TCP {
			return AppendV1(b, h.Src, h.Dst)
		}
		return AppendV1Local(b)
	}
	src, dst := h.Src, h.Dst
	if !proxied {
		src, dst = netip.AddrPort{}, netip.AddrPort{}
	}
	return appendV2(b, h.Command, h.Transport, src, dst, h.TLVs, nil)
}

// appendV2 appends a v2 header: raw is an already encoded TLV area and
// tlvs more TLVs to encode after it.
func appendV2(b []byte, cmd Command, tr Transport, src, dst netip.AddrPort, raw TLVs, tlvs []TLV) []byte {
	s, d, ok := addrPair(src, dst)
	fam := famUnspec
	switch {
	case !ok:
		if cmd == Proxy {
			tr = UnknownTransport
		}
	case s.Is4():
		fam = famInet
	default:
		fam = famInet6
	}
	length := v2AddrLen[fam] + len(raw)
	for _, t := range tlvs {
		if len(t.Value) > 0xffff {
			panic("proxyproto: TLV value longer than 65535 bytes")
		}
		length += tlvHeaderLen + tlvLen(t)
	}
	if length > 0xffff {
		panic("proxyproto: v2 header longer than MaxV2Len")
	}
	start := len(b)
	b = append(b, v2Sig...)
	b = append(b, v2Version<<4|byte(cmd), byte(fam)<<4|byte(tr))
	b = binary.BigEndian.AppendUint16(b, uint16(length))
	switch fam {
	case famInet:
		s4, d4 := s.As4(), d.As4()
		b = append(b, s4[:]...)
		b = append(b, d4[:]...)
	case famInet6:
		s16, d16 := s.As16(), d.As16()
		b = append(b, s16[:]...)
		b = append(b, d16[:]...)
	}
	if fam != famUnspec {
		b = binary.BigEndian.AppendUint16(b, src.Port())
		b = binary.BigEndian.AppendUint16(b, dst.Port())
	}
	tlvStart := len(b)
	b = append(b, raw...)
	for _, t := range tlvs {
		b = append(b, t.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(tlvLen(t)))
		if t.Type == TypeCRC32C {
			b = append(b, 0, 0, 0, 0)
		} else {
			b = append(b, t.Value...)
		}
	}
	if off, err := TLVs(b[tlvStart:]).check(); err == nil && off >= 0 {
		crc := b[tlvStart+off : tlvStart+off+4]
		clear(crc)
		binary.BigEndian.PutUint32(crc, crc32.Checksum(b[start:], castagnoli))
	}
	return b
}

// crc32Zeros is crc32.Update(crc, castagnoli, make([]byte, n)) without
// the slice, which would escape and allocate: the byte-at-a-time step of
// the reflected CRC, between the same inversions as crc32.Update.
func crc32Zeros(crc uint32, n int) uint32 {
	c := ^crc
	for range n {
		c = castagnoli[byte(c)] ^ c>>8
	}
	return ^c
}

// tlvLen is the length of t's value as encoded: a CRC32C is always 4 bytes.
func tlvLen(t TLV) int {
	if t.Type == TypeCRC32C {
		return 4
	}
	return len(t.Value)
}

// parseV2 parses a v2 header; b starts with v2Sig.
func (p Parser) parseV2(b []byte) (Header, int, error) {
	// Check each byte of the fixed part as soon as it is in.
	if len(b) <= len(v2Sig) {
		return Header{}, 0, ErrIncomplete
	}
	verCmd := b[12]
	if verCmd>>4 != v2Version {
		return Header{}, 0, ErrBadVersion
	}
	cmd := Command(verCmd & 0xf)
	if cmd != Local && cmd != Proxy {
		return Header{}, 0, ErrBadCommand
	}
	if len(b) < 14 {
		return Header{}, 0, ErrIncomplete
	}
	fam, tr := int(b[13]>>4), Transport(b[13]&0xf)
	// A LOCAL header's protocol byte is the sender's to fill as it likes
	// (the spec has the receiver ignore it): one this package does not
	// know makes the whole block opaque, not the header bad.
	opaque := cmd == Local && (fam >= len(v2AddrLen) || (tr != UnknownTransport && tr != TCP && tr != UDP))
	if opaque {
		fam, tr = famUnspec, UnknownTransport
	}
	if fam >= len(v2AddrLen) {
		return Header{}, 0, ErrBadFamily
	}
	if tr != UnknownTransport && tr != TCP && tr != UDP {
		return Header{}, 0, ErrBadTransport
	}
	if cmd == Proxy {
		// The spec lists only these combinations for PROXY: both
		// unspecified, or both set.
		if fam == famUnspec && tr != UnknownTransport {
			return Header{}, 0, ErrBadFamily
		}
		if fam != famUnspec && tr == UnknownTransport {
			return Header{}, 0, ErrBadTransport
		}
	}
	if len(b) < v2FixedLen {
		return Header{}, 0, ErrIncomplete
	}
	length := int(binary.BigEndian.Uint16(b[14:]))
	total := v2FixedLen + length
	maxLen := p.MaxV2Len
	if maxLen <= 0 || maxLen > MaxV2Len {
		maxLen = MaxV2Len
	}
	if total > maxLen {
		return Header{}, 0, ErrTooLong
	}
	addrLen := v2AddrLen[fam]
	if cmd == Proxy && length < addrLen {
		return Header{}, 0, ErrBadLength
	}
	if len(b) < total {
		return Header{}, 0, ErrIncomplete
	}
	hdr := b[:total:total]
	h := Header{Version: 2, Command: cmd, Transport: tr}
	if opaque {
		return h, total, nil
	}
	if length < addrLen {
		// A LOCAL header's address block is ignored, even when it is
		// shorter than its family says; there are no TLVs to find.
		return h, total, nil
	}
	if cmd == Proxy {
		a := hdr[v2FixedLen:]
		switch fam {
		case famInet:
			h.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:]))
			h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:]))
		case famInet6:
			h.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])).Unmap(), binary.BigEndian.Uint16(a[32:]))
			h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])).Unmap(), binary.BigEndian.Uint16(a[34:]))
		}
	}
	tlvs := TLVs(hdr[v2FixedLen+addrLen:])
	if err := checkTLVs(hdr, addrLen, tlvs); err != nil {
		if cmd == Local {
			// The spec has the receiver discard a LOCAL header's
			// block, so what is in it cannot make the header bad:
			// its TLVs are returned only when they are sound.
			return h, total, nil
		}
		return Header{}, 0, err
	}
	if len(tlvs) > 0 {
		h.TLVs = tlvs
	}
	return h, total, nil
}

// checkTLVs checks that tlvs, the TLV area of the v2 header hdr whose
// address block is addrLen bytes, is well formed, and verifies its
// PP2_TYPE_CRC32C checksum if it has one.
func checkTLVs(hdr []byte, addrLen int, tlvs TLVs) error {
	crcOff, err := tlvs.check()
	if err != nil || crcOff < 0 {
		return err
	}
	off := v2FixedLen + addrLen + crcOff
	want := binary.BigEndian.Uint32(hdr[off:])
	got := crc32.Update(0, castagnoli, hdr[:off])
	got = crc32Zeros(got, 4)
	got = crc32.Update(got, castagnoli, hdr[off+4:])
	if got != want {
		return ErrBadChecksum
	}
	return nil
}
