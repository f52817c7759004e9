package proxyproto_test

import (
	"fmt"
	"net/netip"

	"github.com/sluice-lb/sluice/pkg/proxyproto"
)

func Example() {
	// A sender writes the header first.
	src := netip.MustParseAddrPort("203.0.113.7:51234")
	dst := netip.MustParseAddrPort("[2001:db8::80]:443")
	wire := proxyproto.AppendV2(nil, src, dst, proxyproto.TLV{Type: proxyproto.TypeAuthority, Value: []byte("example.com")})
	wire = append(wire, "hello"...)

	// A receiver's event loop parses what it has read so far, here in two
	// reads, and keeps reading while the header is incomplete.
	p := proxyproto.Parser{MaxV2Len: 512}
	var buf []byte
	for _, chunk := range [][]byte{wire[:20], wire[20:]} {
		buf = append(buf, chunk...)
		h, n, err := p.Parse(buf)
		if err == proxyproto.ErrIncomplete {
			fmt.Println("need more bytes")
			continue
		}
		if err != nil {
			fmt.Println("close:", err)
			return
		}
		authority, _ := h.TLVs.Lookup(proxyproto.TypeAuthority)
		fmt.Println(h.Command, h.Transport, h.Src, h.Dst, string(authority))
		fmt.Printf("payload %q\n", buf[n:])
	}
	// Output:
	// need more bytes
	// PROXY TCP 203.0.113.7:51234 [2001:db8::80]:443 example.com
	// payload "hello"
}

func ExampleAppendV1() {
	b := proxyproto.AppendV1(nil, netip.MustParseAddrPort("192.0.2.1:56324"), netip.MustParseAddrPort("192.0.2.10:443"))
	fmt.Printf("%q\n", b)
	b = proxyproto.AppendV1(nil, netip.MustParseAddrPort("192.0.2.1:56324"), netip.MustParseAddrPort("[2001:db8::1]:443"))
	fmt.Printf("%q\n", b)
	// Output:
	// "PROXY TCP4 192.0.2.1 192.0.2.10 56324 443\r\n"
	// "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 56324 443\r\n"
}
