package proxyproto

import "testing"

func benchParse(b *testing.B, in []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, _, err := Parse(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseV1TCP4(b *testing.B) {
	benchParse(b, []byte("PROXY TCP4 192.168.100.100 192.168.100.200 56324 443\r\n"))
}

func BenchmarkParseV1TCP6(b *testing.B) {
	benchParse(b, []byte("PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8:85a3::8a2e:370:7335 56324 443\r\n"))
}

func BenchmarkParseV2TCP4(b *testing.B) {
	benchParse(b, AppendV2(nil, ap("192.168.100.100:56324"), ap("192.168.100.200:443")))
}

func BenchmarkParseV2TCP6TLVs(b *testing.B) {
	benchParse(b, AppendV2(nil, ap("[2001:db8::1]:56324"), ap("[2001:db8::2]:443"),
		TLV{TypeAuthority, []byte("www.example.com")}, TLV{TypeALPN, []byte("h2")}, TLV{TypeUniqueID, make([]byte, 32)}))
}

func BenchmarkParseV2CRC32C(b *testing.B) {
	benchParse(b, AppendV2(nil, ap("[2001:db8::1]:56324"), ap("[2001:db8::2]:443"),
		TLV{TypeAuthority, []byte("www.example.com")}, TLV{TypeCRC32C, nil}))
}

func BenchmarkAppendV1TCP4(b *testing.B) {
	src, dst := ap("192.168.100.100:56324"), ap("192.168.100.200:443")
	buf := make([]byte, 0, MaxV1Len)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendV1(buf[:0], src, dst)
	}
}

func BenchmarkAppendV1TCP6(b *testing.B) {
	src, dst := ap("[2001:db8:85a3::8a2e:370:7334]:56324"), ap("[2001:db8:85a3::8a2e:370:7335]:443")
	buf := make([]byte, 0, MaxV1Len)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendV1(buf[:0], src, dst)
	}
}

func BenchmarkAppendV2TCP6(b *testing.B) {
	src, dst := ap("[2001:db8::1]:56324"), ap("[2001:db8::2]:443")
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendV2(buf[:0], src, dst)
	}
}

func BenchmarkAppendV2CRC32C(b *testing.B) {
	src, dst := ap("[2001:db8::1]:56324"), ap("[2001:db8::2]:443")
	tlvs := []TLV{{TypeAuthority, []byte("www.example.com")}, {TypeCRC32C, nil}}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendV2(buf[:0], src, dst, tlvs...)
	}
}
