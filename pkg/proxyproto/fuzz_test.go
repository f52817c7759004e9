package proxyproto

import (
	"bytes"
	"hash/crc32"
	"net/netip"
	"slices"
	"testing"
)

// FuzzParse checks that Parse never panics, returns only its own errors,
// never reads past what it reports, and that a parsed header re-encodes to
// bytes that parse to the same header.
func FuzzParse(f *testing.F) {
	for _, c := range validCases {
		f.Add(c.in)
	}
	for _, c := range invalidCases {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := Parse(b)
		if err != nil {
			if !slices.Contains(allErrors, err) {
				t.Fatalf("unknown error %v", err)
			}
			if n != 0 {
				t.Fatalf("n = %d with error %v", n, err)
			}
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("n = %d of %d", n, len(b))
		}
		if h.Version == 1 && n > MaxV1Len {
			t.Fatalf("v1 header of %d bytes", n)
		}
		// The header alone parses the same; one byte less is incomplete.
		if h2, n2, err := Parse(b[:n]); err != nil || n2 != n || !headerEqual(h, h2) {
			t.Fatalf("header alone: %+v, %d, %v", h2, n2, err)
		}
		if _, _, err := Parse(b[:n-1]); err != ErrIncomplete {
			t.Fatalf("header less a byte: %v", err)
		}
		if h.Src.IsValid() != h.Dst.IsValid() || (h.Src.IsValid() && h.Command != Proxy) {
			t.Fatalf("inconsistent header %+v", h)
		}
		for _, a := range []netip.Addr{h.Src.Addr(), h.Dst.Addr()} {
			if a.Is4In6() || a.Zone() != "" {
				t.Fatalf("address %v not normalised", a)
			}
		}
		again := h.Append(nil)
		h2, n2, err := Parse(again)
		if err != nil || n2 != len(again) {
			t.Fatalf("re-encoded %q: %d, %v", again, n2, err)
		}
		if h2.Version != h.Version || h2.Command != h.Command || h2.Src != h.Src || h2.Dst != h.Dst {
			t.Fatalf("re-encoded\n got %+v\nwant %+v", h2, h)
		}
		if h.Src.IsValid() && h2.Transport != h.Transport {
			t.Fatalf("transport %v, want %v", h2.Transport, h.Transport)
		}
		if !bytes.Equal(h.TLVs, h2.TLVs) {
			if _, ok := h.TLVs.Lookup(TypeCRC32C); !ok {
				t.Fatalf("TLVs %x, want %x", h2.TLVs, h.TLVs)
			}
		}
	})
}

// FuzzRoundTrip checks that any pair of addresses and any TLVs encode to
// headers that parse back to the same addresses, normalised.
func FuzzRoundTrip(f *testing.F) {
	f.Add(make([]byte, 16), make([]byte, 16), uint16(1), uint16(2), uint8(0), []byte(nil))
	f.Add([]byte{1, 2, 3, 4}, []byte{5, 6, 7, 8}, uint16(65535), uint16(0), uint8(1), []byte("\x02host"))
	f.Add(netip.MustParseAddr("::ffff:1.2.3.4").AsSlice(), netip.MustParseAddr("2001:db8::1").AsSlice(), uint16(80), uint16(443), uint8(7), []byte("\x03\x01h2"))
	f.Fuzz(func(t *testing.T, s, d []byte, sport, dport uint16, flags uint8, tlvData []byte) {
		sa, ok1 := netip.AddrFromSlice(s)
		da, ok2 := netip.AddrFromSlice(d)
		if !ok1 || !ok2 {
			return
		}
		if flags&4 != 0 && sa.Is6() {
			sa = sa.WithZone("eth0")
		}
		src, dst := netip.AddrPortFrom(sa, sport), netip.AddrPortFrom(da, dport)
		wantSrc := netip.AddrPortFrom(sa.Unmap().WithZone(""), sport)
		wantDst := netip.AddrPortFrom(da.Unmap().WithZone(""), dport)
		// TLVs: each byte of tlvData up to a 0xff is a type, then its
		// value runs to the next 0xff.
		var tlvs []TLV
		for part := range bytes.SplitSeq(tlvData, []byte{0xff}) {
			if len(part) > 0 {
				tlvs = append(tlvs, TLV{Type: part[0], Value: part[1:]})
			}
		}
		crcs := 0
		for _, tlv := range tlvs {
			if tlv.Type == TypeCRC32C {
				crcs++
			}
		}
		if crcs > 1 || len(tlvData) > 0xffff-36-3*len(tlvs) {
			return // outside AppendV2's contract
		}
		tr := TCP
		if flags&1 != 0 {
			tr = UDP
		}
		check := func(b []byte, version int, transport Transport) {
			t.Helper()
			h, n, err := Parse(b)
			if err != nil || n != len(b) {
				t.Fatalf("Parse(%q) = %d, %v", b, n, err)
			}
			if h.Version != version || h.Command != Proxy || h.Transport != transport || h.Src != wantSrc || h.Dst != wantDst {
				t.Fatalf("Parse(%q) = %+v, want %v -> %v", b, h, wantSrc, wantDst)
			}
		}
		check(AppendV1(nil, src, dst), 1, TCP)
		v2b := AppendV2(nil, src, dst, tlvs...)
		check(v2b, 2, TCP)
		h := Header{Version: 2, Command: Proxy, Transport: tr, Src: src, Dst: dst}
		check(h.Append(nil), 2, tr)
		got, _, _ := Parse(v2b)
		i := 0
		for tlv := range got.TLVs.All() {
			want := tlvs[i]
			if tlv.Type != want.Type || (want.Type != TypeCRC32C && !bytes.Equal(tlv.Value, want.Value)) {
				t.Fatalf("TLV %d = %+v, want %+v", i, tlv, want)
			}
			i++
		}
		if i != len(tlvs) {
			t.Fatalf("%d TLVs, want %d", i, len(tlvs))
		}
	})
}

// FuzzParseIPv6 holds the allocation-free IPv6 parser to netip.ParseAddr.
func FuzzParseIPv6(f *testing.F) {
	for _, s := range []string{"::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::ffff:1.2.3.4",
		"1:2:3:4:5:6:1.2.3.4", "1::1.2.3.4", "fe80::1%eth0", "1:::2", "12345::", "::1.2.3", ":1::", "1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseIPv6([]byte(s))
		want, err := netip.ParseAddr(s)
		wantOK := err == nil && want.Is6() && want.Zone() == ""
		if ok != wantOK || (ok && got != want) {
			t.Fatalf("parseIPv6(%q) = %v, %v; netip: %v, %v", s, got, ok, want, err)
		}
		v4, ok := parseIPv4([]byte(s))
		wantOK = err == nil && want.Is4()
		if ok != wantOK || (ok && netip.AddrFrom4(v4) != want) {
			t.Fatalf("parseIPv4(%q) = %v, %v; netip: %v, %v", s, v4, ok, want, err)
		}
	})
}

func TestCRC32Zeros(t *testing.T) {
	for _, seed := range []uint32{0, 1, 0xdeadbeef} {
		for n := range 9 {
			if got, want := crc32Zeros(seed, n), crc32.Update(seed, castagnoli, make([]byte, n)); got != want {
				t.Fatalf("crc32Zeros(%#x, %d) = %#x, want %#x", seed, n, got, want)
			}
		}
	}
}
