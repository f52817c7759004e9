package proxyproto

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var allErrors = []error{
	ErrIncomplete, ErrNotProxy, ErrTooLong, ErrBadLine, ErrBadVersion,
	ErrBadCommand, ErrBadFamily, ErrBadTransport, ErrBadLength,
	ErrBadAddress, ErrBadPort, ErrBadTLV, ErrBadChecksum,
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// v2 builds a v2 header from its 13th and 14th bytes and a body, with the
// length field set to len(body).
func v2(verCmd, famTr byte, body ...[]byte) []byte {
	b := append([]byte(v2Sig), verCmd, famTr, 0, 0)
	for _, p := range body {
		b = append(b, p...)
	}
	binary.BigEndian.PutUint16(b[14:], uint16(len(b)-v2FixedLen))
	return b
}

func tlv(typ byte, value string) []byte {
	return append([]byte{typ, byte(len(value) >> 8), byte(len(value))}, value...)
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

var (
	inet4TCP = unhex("01020304 05060708 03e8 0050")                                                 // 1.2.3.4:1000 -> 5.6.7.8:80
	inet6UDP = unhex("20010db8000000000000000000000001 20010db8000000000000000000000002 0035 ffff") // [2001:db8::1]:53 -> [2001:db8::2]:65535
)

type parseCase struct {
	name string
	in   []byte
	want Header
	n    int // header length; 0 means len(in)
	err  error
	// anyTLVs skips comparing the TLVs (a checksum computed by the encoder).
	anyTLVs bool
}

var validCases = []parseCase{
	{name: "v1 TCP4", in: []byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
		want: Header{Version: 1, Command: Proxy, Transport: TCP, Src: ap("192.168.0.1:56324"), Dst: ap("192.168.0.11:443")}},
	{name: "v1 TCP6", in: []byte("PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 0 65535\r\n"),
		want: Header{Version: 1, Command: Proxy, Transport: TCP, Src: ap("[2001:db8::1]:0"), Dst: ap("[2001:db8::2]:65535")}},
	{name: "v1 TCP6 mapped", in: []byte("PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n"),
		want: Header{Version: 1, Command: Proxy, Transport: TCP, Src: ap("10.0.0.1:1"), Dst: ap("[::1]:2")}},
	{name: "v1 TCP6 max", in: []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
		want: Header{Version: 1, Command: Proxy, Transport: TCP,
			Src: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), Dst: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")}},
	{name: "v1 UNKNOWN", in: []byte("PROXY UNKNOWN\r\n"), want: Header{Version: 1, Command: Local}},
	{name: "v1 UNKNOWN max", in: []byte("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
		want: Header{Version: 1, Command: Local}},
	{name: "v1 UNKNOWN garbage", in: []byte("PROXY UNKNOWN what\tever  \x00\r\n"), want: Header{Version: 1, Command: Local}},
	{name: "v2 TCP4", in: v2(0x21, 0x11, inet4TCP),
		want: Header{Version: 2, Command: Proxy, Transport: TCP, Src: ap("1.2.3.4:1000"), Dst: ap("5.6.7.8:80")}},
	{name: "v2 UDP6", in: v2(0x21, 0x22, inet6UDP),
		want: Header{Version: 2, Command: Proxy, Transport: UDP, Src: ap("[2001:db8::1]:53"), Dst: ap("[2001:db8::2]:65535")}},
	{name: "v2 TCP6 mapped", in: v2(0x21, 0x21, unhex("00000000000000000000ffff01020304 00000000000000000000000000000001 0001 0002")),
		want: Header{Version: 2, Command: Proxy, Transport: TCP, Src: ap("1.2.3.4:1"), Dst: ap("[::1]:2")}},
	{name: "v2 TLVs", in: v2(0x21, 0x11, inet4TCP, tlv(TypeAuthority, "example.com"), tlv(TypeNoop, ""), tlv(0xe0, "x")),
		want: Header{Version: 2, Command: Proxy, Transport: TCP, Src: ap("1.2.3.4:1000"), Dst: ap("5.6.7.8:80"),
			TLVs: slices.Concat(tlv(TypeAuthority, "example.com"), tlv(TypeNoop, ""), tlv(0xe0, "x"))}},
	{name: "v2 LOCAL", in: v2(0x20, 0x00), want: Header{Version: 2, Command: Local}},
	{name: "v2 LOCAL ignores addresses", in: v2(0x20, 0x11, inet4TCP), want: Header{Version: 2, Command: Local, Transport: TCP}},
	{name: "v2 LOCAL short block", in: v2(0x20, 0x21, []byte{1, 2, 3}), want: Header{Version: 2, Command: Local, Transport: TCP}},
	{name: "v2 LOCAL TLVs", in: v2(0x20, 0x00, tlv(TypeUniqueID, "id")), want: Header{Version: 2, Command: Local, TLVs: tlv(TypeUniqueID, "id")}},
	// A LOCAL block is discarded by the receiver, so what the sender put
	// there cannot make the header bad; only sound TLVs come back.
	{name: "v2 LOCAL UNSPEC with an address-like block", in: v2(0x20, 0x00, inet4TCP),
		want: Header{Version: 2, Command: Local}},
	{name: "v2 LOCAL addresses and a stray byte", in: v2(0x20, 0x11, inet4TCP, []byte{0}),
		want: Header{Version: 2, Command: Local, Transport: TCP}},
	{name: "v2 LOCAL TLV cut", in: v2(0x20, 0x00, []byte{1}), want: Header{Version: 2, Command: Local}},
	{name: "v2 LOCAL unknown transport", in: v2(0x20, 0x03, inet4TCP), want: Header{Version: 2, Command: Local}},
	{name: "v2 LOCAL unknown family", in: v2(0x20, 0x40, tlv(TypeUniqueID, "id")), want: Header{Version: 2, Command: Local}},
	{name: "v2 LOCAL INET, unknown transport", in: v2(0x20, 0x13), want: Header{Version: 2, Command: Local}},
	{name: "v2 LOCAL CRC32C wrong", in: v2(0x20, 0x00, tlv(TypeCRC32C, "abcd")),
		want: Header{Version: 2, Command: Local}},
	{name: "v2 PROXY UNSPEC", in: v2(0x21, 0x00, tlv(TypeNoop, "pad")), want: Header{Version: 2, Command: Proxy, TLVs: tlv(TypeNoop, "pad")}},
	{name: "v2 PROXY UNIX", in: v2(0x21, 0x31, make([]byte, 216)), want: Header{Version: 2, Command: Proxy, Transport: TCP}},
	{name: "v2 CRC32C", in: AppendV2(nil, ap("1.2.3.4:1000"), ap("5.6.7.8:80"), TLV{Type: TypeCRC32C}, TLV{Type: TypeALPN, Value: []byte("h2")}),
		want: Header{Version: 2, Command: Proxy, Transport: TCP, Src: ap("1.2.3.4:1000"), Dst: ap("5.6.7.8:80")}, anyTLVs: true},
}

var invalidCases = []parseCase{
	{name: "empty", in: nil, err: ErrIncomplete},
	{name: "P", in: []byte("P"), err: ErrIncomplete},
	{name: "PROX", in: []byte("PROX"), err: ErrIncomplete},
	{name: "v2 sig prefix", in: []byte(v2Sig[:11]), err: ErrIncomplete},
	{name: "v1 partial", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), err: ErrIncomplete},
	{name: "http", in: []byte("GET / HTTP/1.1\r\n"), err: ErrNotProxy},
	{name: "PUT", in: []byte("PUT"), err: ErrNotProxy},
	{name: "PROXz", in: []byte("PROXz TCP4"), err: ErrNotProxy},
	{name: "crlf", in: []byte("\r\n\r\n\x00\r\nQUIX"), err: ErrNotProxy},
	{name: "tls", in: []byte{0x16, 0x03, 0x01}, err: ErrNotProxy},

	{name: "v1 lone LF", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), err: ErrBadLine},
	{name: "v1 lone CR", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), err: ErrBadLine},
	{name: "v1 LF early", in: []byte("PROXY\n"), err: ErrBadLine},
	{name: "v1 no space", in: []byte("PROXYTCP4"), err: ErrBadLine},
	{name: "v1 no protocol", in: []byte("PROXY\r\n"), err: ErrBadLine},
	{name: "v1 empty protocol", in: []byte("PROXY \r\n"), err: ErrBadLine},
	{name: "v1 double space first", in: []byte("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), err: ErrBadLine},
	{name: "v1 double space", in: []byte("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), err: ErrBadLine},
	{name: "v1 trailing space", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), err: ErrBadLine},
	{name: "v1 tab", in: []byte("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"), err: ErrBadFamily},
	{name: "v1 missing port", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), err: ErrBadLine},
	{name: "v1 extra field", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), err: ErrBadLine},
	{name: "v1 protocol only", in: []byte("PROXY TCP4\r\n"), err: ErrBadLine},
	{name: "v1 protocol space", in: []byte("PROXY TCP4 \r\n"), err: ErrBadLine},
	{name: "v1 TCP5", in: []byte("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), err: ErrBadFamily},
	{name: "v1 lower case", in: []byte("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"), err: ErrBadFamily},
	{name: "v1 UDP4", in: []byte("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), err: ErrBadFamily},
	{name: "v1 UNKNOWNX", in: []byte("PROXY UNKNOWNX\r\n"), err: ErrBadFamily},
	{name: "v1 TCP early", in: []byte("PROXY TCP\r\n"), err: ErrBadFamily},
	{name: "v1 bad protocol early", in: []byte("PROXY X"), err: ErrBadFamily},
	{name: "v1 bad protocol early 2", in: []byte("PROXY TCP44"), err: ErrBadFamily},
	{name: "v1 TCP4 with IPv6", in: []byte("PROXY TCP4 ::1 ::1 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 TCP6 with IPv4", in: []byte("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 leading zero address", in: []byte("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 octet 256", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 three octets", in: []byte("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 five octets", in: []byte("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 zone", in: []byte("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 bad IPv6", in: []byte("PROXY TCP6 1:::2 ::1 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 IPv6 5 digits", in: []byte("PROXY TCP6 12345::1 ::1 1 2\r\n"), err: ErrBadAddress},
	{name: "v1 port 65536", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), err: ErrBadPort},
	{name: "v1 port leading zero", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n"), err: ErrBadPort},
	{name: "v1 port 00", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 00 1\r\n"), err: ErrBadPort},
	{name: "v1 port sign", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"), err: ErrBadPort},
	{name: "v1 port hex", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 0x50\r\n"), err: ErrBadPort},
	{name: "v1 port 6 digits", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n"), err: ErrBadPort},
	{name: "v1 no CRLF in 107", in: []byte("PROXY UNKNOWN " + strings.Repeat("x", MaxV1Len-14)), err: ErrTooLong},
	{name: "v1 CRLF at 108", in: []byte("PROXY UNKNOWN " + strings.Repeat("x", MaxV1Len-15) + "\r\n"), err: ErrTooLong},
	{name: "v1 TCP6 too long", in: []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n"), err: ErrTooLong},

	{name: "v2 version 1", in: v2(0x11, 0x11, inet4TCP), err: ErrBadVersion},
	{name: "v2 version 3 early", in: []byte(v2Sig + "\x31"), err: ErrBadVersion},
	{name: "v2 command 2", in: v2(0x22, 0x11, inet4TCP), err: ErrBadCommand},
	{name: "v2 command F early", in: []byte(v2Sig + "\x2f"), err: ErrBadCommand},
	{name: "v2 family 4", in: v2(0x21, 0x41, inet4TCP), err: ErrBadFamily},
	{name: "v2 family F early", in: []byte(v2Sig + "\x21\xf0"), err: ErrBadFamily},
	{name: "v2 transport 3", in: v2(0x21, 0x13, inet4TCP), err: ErrBadTransport},
	{name: "v2 PROXY INET UNSPEC", in: v2(0x21, 0x10, inet4TCP), err: ErrBadTransport},
	{name: "v2 PROXY UNSPEC STREAM", in: v2(0x21, 0x01), err: ErrBadFamily},
	{name: "v2 INET short", in: v2(0x21, 0x11, inet4TCP[:11]), err: ErrBadLength},
	{name: "v2 INET6 short", in: v2(0x21, 0x21, inet4TCP), err: ErrBadLength},
	{name: "v2 UNIX short", in: v2(0x21, 0x31, make([]byte, 215)), err: ErrBadLength},
	{name: "v2 TLV header cut", in: v2(0x21, 0x11, inet4TCP, []byte{TypeNoop, 0}), err: ErrBadTLV},
	{name: "v2 TLV value cut", in: v2(0x21, 0x11, inet4TCP, tlv(TypeAuthority, "abc")[:5]), err: ErrBadTLV},
	{name: "v2 CRC32C 3 bytes", in: v2(0x21, 0x11, inet4TCP, tlv(TypeCRC32C, "abc")), err: ErrBadTLV},
	{name: "v2 two CRC32C", in: v2(0x21, 0x11, inet4TCP, tlv(TypeCRC32C, "abcd"), tlv(TypeCRC32C, "abcd")), err: ErrBadTLV},
	{name: "v2 CRC32C wrong", in: v2(0x21, 0x11, inet4TCP, tlv(TypeCRC32C, "abcd")), err: ErrBadChecksum},
	{name: "v2 CRC32C flipped bit", in: func() []byte {
		b := AppendV2(nil, ap("1.2.3.4:1000"), ap("5.6.7.8:80"), TLV{Type: TypeCRC32C})
		b[17] ^= 1
		return b
	}(), err: ErrBadChecksum},
}

func checkParse(t *testing.T, p Parser, c parseCase) {
	t.Helper()
	h, n, err := p.Parse(c.in)
	if err != c.err {
		t.Fatalf("Parse(%q) error %v, want %v", c.in, err, c.err)
	}
	if err != nil {
		if n != 0 || !headerEqual(h, Header{}) {
			t.Fatalf("Parse(%q) = %+v, %d with error %v", c.in, h, n, err)
		}
		return
	}
	wantN := c.n
	if wantN == 0 {
		wantN = len(c.in)
	}
	if n != wantN {
		t.Fatalf("Parse(%q) n = %d, want %d", c.in, n, wantN)
	}
	if c.anyTLVs {
		h.TLVs = nil
	}
	if !headerEqual(h, c.want) {
		t.Fatalf("Parse(%q)\n got %+v\nwant %+v", c.in, h, c.want)
	}
}

func headerEqual(a, b Header) bool {
	return a.Version == b.Version && a.Command == b.Command && a.Transport == b.Transport &&
		a.Src == b.Src && a.Dst == b.Dst && bytes.Equal(a.TLVs, b.TLVs)
}

func TestParseValid(t *testing.T) {
	for _, c := range validCases {
		t.Run(c.name, func(t *testing.T) {
			checkParse(t, Parser{}, c)
			// Data after the header is left alone.
			c.in = append(slices.Clip(c.in), "\r\nGET / HTTP/1.1\r\n\r\n"...)
			c.n = len(c.in) - len("\r\nGET / HTTP/1.1\r\n\r\n")
			checkParse(t, Parser{}, c)
		})
	}
}

func TestParseInvalid(t *testing.T) {
	for _, c := range invalidCases {
		t.Run(c.name, func(t *testing.T) {
			checkParse(t, Parser{}, c)
		})
	}
}

// TestParseEveryPrefix checks that every proper prefix of a valid header is
// ErrIncomplete: a header arriving a byte at a time is never misparsed or
// refused.
func TestParseEveryPrefix(t *testing.T) {
	for _, c := range validCases {
		t.Run(c.name, func(t *testing.T) {
			for i := range len(c.in) {
				if _, _, err := Parse(c.in[:i]); err != ErrIncomplete {
					t.Fatalf("Parse(%q) (prefix %d of %d): %v, want ErrIncomplete", c.in[:i], i, len(c.in), err)
				}
			}
		})
	}
}

func TestParseLimit(t *testing.T) {
	big := v2(0x21, 0x11, inet4TCP, tlv(0xe0, strings.Repeat("x", 200)))
	// Refused from its fixed part alone: the peer cannot make us wait for
	// bytes we would refuse.
	for _, in := range [][]byte{big[:v2FixedLen], big} {
		if _, _, err := (Parser{MaxV2Len: 100}).Parse(in); err != ErrTooLong {
			t.Fatalf("MaxV2Len 100, %d bytes: %v, want ErrTooLong", len(in), err)
		}
	}
	for _, max := range []int{0, -1, len(big), MaxV2Len, MaxV2Len + 1} {
		if _, n, err := (Parser{MaxV2Len: max}).Parse(big); err != nil || n != len(big) {
			t.Fatalf("MaxV2Len %d: %d, %v", max, n, err)
		}
	}
	// The spec's own limit: a 65535-byte body is allowed.
	huge := v2(0x21, 0x11, inet4TCP, tlv(0xe0, strings.Repeat("x", 0xffff-12-3)))
	if len(huge) != MaxV2Len {
		t.Fatalf("test header is %d bytes", len(huge))
	}
	if _, n, err := Parse(huge); err != nil || n != MaxV2Len {
		t.Fatalf("max header: %d, %v", n, err)
	}
	if _, _, err := Parse(huge[:MaxV2Len-1]); err != ErrIncomplete {
		t.Fatalf("max header less a byte: %v", err)
	}
}

func TestDetect(t *testing.T) {
	for _, c := range []struct {
		in      string
		version int
		err     error
	}{
		{"", 0, ErrIncomplete},
		{"PROX", 0, ErrIncomplete},
		{"PROXY", 1, nil},
		{"PROXY TCP4", 1, nil},
		{"PROXYZ", 1, nil}, // Parse rejects it
		{v2Sig[:1], 0, ErrIncomplete},
		{v2Sig, 2, nil},
		{v2Sig + "\x99", 2, nil}, // Parse rejects it
		{"GET /", 0, ErrNotProxy},
		{"\r\n\r\n\x01", 0, ErrNotProxy},
		{"PRO\x00", 0, ErrNotProxy},
	} {
		v, err := Detect([]byte(c.in))
		if v != c.version || err != c.err {
			t.Errorf("Detect(%q) = %d, %v, want %d, %v", c.in, v, err, c.version, c.err)
		}
	}
}

func TestAppendV1(t *testing.T) {
	for _, c := range []struct {
		src, dst netip.AddrPort
		want     string
	}{
		{ap("192.168.0.1:56324"), ap("192.168.0.11:443"), "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"},
		{ap("[2001:db8::1]:0"), ap("[2001:db8::2]:65535"), "PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n"},
		{ap("10.0.0.1:1"), ap("[::1]:2"), "PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n"},
		{ap("[::1]:1"), ap("10.0.0.1:2"), "PROXY TCP6 ::1 ::ffff:10.0.0.1 1 2\r\n"},
		{ap("[::ffff:10.0.0.1]:1"), ap("[::ffff:10.0.0.2]:2"), "PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"},
		{ap("[fe80::1%eth0]:1"), ap("[fe80::2%eth0]:2"), "PROXY TCP6 fe80::1 fe80::2 1 2\r\n"},
		{netip.AddrPort{}, ap("10.0.0.1:2"), "PROXY UNKNOWN\r\n"},
		{ap("10.0.0.1:2"), netip.AddrPort{}, "PROXY UNKNOWN\r\n"},
	} {
		got := string(AppendV1([]byte("x"), c.src, c.dst))
		if got != "x"+c.want {
			t.Errorf("AppendV1(%v, %v) = %q, want %q", c.src, c.dst, got, "x"+c.want)
		}
	}
	if got := string(AppendV1Local(nil)); got != "PROXY UNKNOWN\r\n" {
		t.Errorf("AppendV1Local = %q", got)
	}
}

func TestAppendV2(t *testing.T) {
	for _, c := range []struct {
		name string
		got  []byte
		want []byte
	}{
		{"TCP4", AppendV2(nil, ap("1.2.3.4:1000"), ap("5.6.7.8:80")), v2(0x21, 0x11, inet4TCP)},
		{"TCP6", AppendV2(nil, ap("[2001:db8::1]:53"), ap("[2001:db8::2]:65535")), v2(0x21, 0x21, inet6UDP)},
		{"mixed", AppendV2(nil, ap("1.2.3.4:1"), ap("[::1]:2")),
			v2(0x21, 0x21, unhex("00000000000000000000ffff01020304 00000000000000000000000000000001 0001 0002"))},
		{"mapped", AppendV2(nil, ap("[::ffff:1.2.3.4]:1000"), ap("[::ffff:5.6.7.8]:80")), v2(0x21, 0x11, inet4TCP)},
		{"invalid", AppendV2(nil, netip.AddrPort{}, ap("5.6.7.8:80")), v2(0x21, 0x00)},
		{"TLVs", AppendV2(nil, ap("1.2.3.4:1000"), ap("5.6.7.8:80"), TLV{TypeALPN, []byte("h2")}, TLV{0xe1, nil}),
			v2(0x21, 0x11, inet4TCP, tlv(TypeALPN, "h2"), tlv(0xe1, ""))},
		{"LOCAL", AppendV2Local(nil), v2(0x20, 0x00)},
		{"LOCAL TLVs", AppendV2Local(nil, TLV{TypeNoop, []byte("pad")}), v2(0x20, 0x00, tlv(TypeNoop, "pad"))},
		{"UDP6", func() []byte {
			h := Header{Version: 2, Command: Proxy, Transport: UDP, Src: ap("[2001:db8::1]:53"), Dst: ap("[2001:db8::2]:65535")}
			return h.Append(nil)
		}(), v2(0x21, 0x22, inet6UDP)},
	} {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s:\n got %x\nwant %x", c.name, c.got, c.want)
		}
	}
}

func TestCRC32C(t *testing.T) {
	// The check value of CRC-32C (RFC 3720 appendix B.4 and RFC 4960
	// appendix B use the same polynomial).
	if got := crc32.Checksum([]byte("123456789"), castagnoli); got != 0xe3069283 {
		t.Fatalf("crc32c check value %#x", got)
	}
	b := AppendV2(nil, ap("1.2.3.4:1000"), ap("5.6.7.8:80"), TLV{TypeALPN, []byte("h2")}, TLV{TypeCRC32C, []byte("ignored, any length")})
	h, _, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	sum, ok := h.TLVs.Lookup(TypeCRC32C)
	if !ok || len(sum) != 4 {
		t.Fatalf("no CRC32C TLV in %x", b)
	}
	// Independently: zero the field and checksum the whole header.
	want := binary.BigEndian.Uint32(sum)
	c := bytes.Clone(b)
	copy(c[len(c)-4:], []byte{0, 0, 0, 0})
	if got := crc32.Checksum(c, castagnoli); got != want {
		t.Fatalf("checksum %#x, header says %#x", got, want)
	}
	// Re-encoding recomputes it for the new header (IPv4-mapped to IPv4).
	h.Src = ap("[::ffff:9.9.9.9]:1")
	if _, _, err := Parse(h.Append(nil)); err != nil {
		t.Fatalf("re-encoded: %v", err)
	}
}

func TestTLVs(t *testing.T) {
	raw := TLVs(slices.Concat(tlv(TypeALPN, "h2"), tlv(TypeSSL, "\x01\x00\x00\x00\x00"+string(tlv(SubtypeSSLVersion, "TLSv1.3"))), tlv(TypeNoop, "")))
	var types []uint8
	for v := range raw.All() {
		types = append(types, v.Type)
	}
	if !slices.Equal(types, []uint8{TypeALPN, TypeSSL, TypeNoop}) {
		t.Fatalf("types %v", types)
	}
	ssl, ok := raw.Lookup(TypeSSL)
	if !ok {
		t.Fatal("no SSL TLV")
	}
	if v, ok := TLVs(ssl[5:]).Lookup(SubtypeSSLVersion); !ok || string(v) != "TLSv1.3" {
		t.Fatalf("SSL version %q, %v", v, ok)
	}
	if _, ok := raw.Lookup(TypeAuthority); ok {
		t.Fatal("found an absent TLV")
	}
	// Early stop and a malformed tail.
	for range raw.All() {
		break
	}
	n := 0
	for range TLVs(append(tlv(1, "a"), 2, 0, 9)).All() {
		n++
	}
	if n != 1 {
		t.Fatalf("yielded %d from a malformed area", n)
	}
}

func TestRoundTrip(t *testing.T) {
	pairs := []struct{ src, dst, wantSrc, wantDst netip.AddrPort }{
		{ap("1.2.3.4:1"), ap("5.6.7.8:2"), ap("1.2.3.4:1"), ap("5.6.7.8:2")},
		{ap("[2001:db8::1]:65535"), ap("[::]:0"), ap("[2001:db8::1]:65535"), ap("[::]:0")},
		{ap("1.2.3.4:1"), ap("[2001:db8::2]:2"), ap("1.2.3.4:1"), ap("[2001:db8::2]:2")},
		{ap("[::ffff:1.2.3.4]:1"), ap("[::ffff:5.6.7.8]:2"), ap("1.2.3.4:1"), ap("5.6.7.8:2")},
		{ap("[fe80::1%eth0]:1"), ap("[::1]:2"), ap("[fe80::1]:1"), ap("[::1]:2")},
		{ap("0.0.0.0:0"), ap("255.255.255.255:65535"), ap("0.0.0.0:0"), ap("255.255.255.255:65535")},
	}
	for _, p := range pairs {
		for _, b := range [][]byte{
			AppendV1(nil, p.src, p.dst),
			AppendV2(nil, p.src, p.dst),
			AppendV2(nil, p.src, p.dst, TLV{TypeAuthority, []byte("a.example")}, TLV{TypeCRC32C, nil}),
		} {
			h, n, err := Parse(b)
			if err != nil || n != len(b) {
				t.Fatalf("Parse(%q) = %d, %v", b, n, err)
			}
			if h.Command != Proxy || h.Transport != TCP || h.Src != p.wantSrc || h.Dst != p.wantDst {
				t.Fatalf("Parse(%q) = %+v, want %v -> %v", b, h, p.wantSrc, p.wantDst)
			}
			if again := h.Append(nil); !bytes.Equal(again, b) {
				t.Fatalf("re-encoded %q as %q", b, again)
			}
		}
	}
}

func TestAppendPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"long value": func() { AppendV2(nil, ap("1.2.3.4:1"), ap("1.2.3.4:2"), TLV{0xe0, make([]byte, 0x10000)}) },
		"long header": func() {
			AppendV2(nil, ap("1.2.3.4:1"), ap("1.2.3.4:2"), TLV{0xe0, make([]byte, 0x8000)}, TLV{0xe0, make([]byte, 0x8000)})
		},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func TestAllocs(t *testing.T) {
	inputs := [][]byte{
		validCases[0].in, validCases[1].in, validCases[2].in,
		AppendV2(nil, ap("[2001:db8::1]:1"), ap("[2001:db8::2]:2"), TLV{TypeAuthority, []byte("a.example")}, TLV{TypeCRC32C, nil}),
		[]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n"),
	}
	for _, in := range inputs {
		if a := testing.AllocsPerRun(100, func() { Parse(in) }); a != 0 {
			t.Errorf("Parse(%q): %v allocs", in, a)
		}
	}
	buf := make([]byte, 0, 256)
	src, dst := ap("[2001:db8::1]:1"), ap("[2001:db8::2]:2")
	tlvs := []TLV{{TypeAuthority, []byte("a.example")}, {TypeCRC32C, nil}}
	if a := testing.AllocsPerRun(100, func() { AppendV1(buf[:0], src, dst) }); a != 0 {
		t.Errorf("AppendV1: %v allocs", a)
	}
	if a := testing.AllocsPerRun(100, func() { AppendV2(buf[:0], src, dst, tlvs...) }); a != 0 {
		t.Errorf("AppendV2: %v allocs", a)
	}
}

func TestErrorsDistinct(t *testing.T) {
	seen := map[string]bool{}
	for i, e := range allErrors {
		if seen[e.Error()] {
			t.Errorf("duplicate message %q", e)
		}
		seen[e.Error()] = true
		for j, f := range allErrors {
			if i != j && errors.Is(e, f) {
				t.Errorf("%v is %v", e, f)
			}
		}
	}
}

func TestStrings(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{Local.String(), "LOCAL"}, {Proxy.String(), "PROXY"}, {Command(7).String(), "Command(7)"},
		{TCP.String(), "TCP"}, {UDP.String(), "UDP"}, {UnknownTransport.String(), "UNSPEC"}, {Transport(9).String(), "Transport(9)"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
