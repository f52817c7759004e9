package firewall

import (
	"bytes"
	"encoding/binary"
	"net/netip"
)

// Frames for the program tests, built by hand: Ethernet, VLAN tags, IPv4
// (with options and fragments) or IPv6 (with extension headers), and a
// TCP, UDP or ICMP header. Checksums are left zero: XDP does not check them.

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// ext6 is an IPv6 extension header for frame.ext.
type ext6 struct {
	typ  uint8  // 0 hop-by-hop, 43 routing, 44 fragment, 51 AH, 60 dest opts
	size int    // header length in bytes (multiple of 8; of 4 for AH); 8 for fragment
	frag uint16 // fragment header only: offset in bytes | M flag (1)
}

// frame describes a test packet.
type frame struct {
	vlans     []uint16   // TPIDs of VLAN tags, outermost first (0x8100, 0x88a8)
	etherType uint16     // overrides the Ethernet type (after tags) when not 0
	src, dst  netip.Addr // IPv4 or IPv6, which picks the IP version
	ipOptions int        // IPv4 option bytes, a multiple of 4
	fragment  uint16     // IPv4 frag_off field: flags (MF 0x2000) and offset in 8-byte units
	ext       []ext6     // IPv6 extension headers, in order
	proto     uint8      // L4 protocol number
	l4        []byte     // L4 header and payload
	badLen    int        // added to the IP length field (tot_len or payload_len)
	ihl       int        // overrides the IPv4 header length field (words) when not 0
	version   int        // overrides the IP version nibble when not 0
	truncate  int        // cut this many bytes from the end of the frame
	pad       int        // append this many zero bytes (Ethernet padding)
}

var (
	dstV4 = netip.MustParseAddr("198.18.200.1")
	dstV6 = netip.MustParseAddr("2001:db8:ffff::1")
)

func tcpHdr(dport uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], 40000)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 1)
	b[12] = 5 << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 65535)
	return b
}

// tcpHdrOpts is tcpHdr with opts bytes (a multiple of 4) of NOP options.
func tcpHdrOpts(dport uint16, flags uint8, opts int) []byte {
	b := append(tcpHdr(dport, flags), bytes.Repeat([]byte{1}, opts)...)
	b[12] = byte((20+opts)/4) << 4
	return b
}

func udpHdr(dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], 40000)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

// icmpEcho is an ICMP (type 8) or ICMPv6 (type 128) echo request.
func icmpEcho(v6 bool) []byte {
	b := []byte{8, 0, 0, 0, 0, 1, 0, 1}
	if v6 {
		b[0] = 128
	}
	return b
}

func tcp4(src string, dport uint16, flags uint8) frame {
	return frame{src: netip.MustParseAddr(src), dst: dstV4, proto: 6, l4: tcpHdr(dport, flags)}
}

func udp4(src string, dport uint16) frame {
	return frame{src: netip.MustParseAddr(src), dst: dstV4, proto: 17, l4: udpHdr(dport, []byte("ping"))}
}

func tcp6(src string, dport uint16, flags uint8) frame {
	return frame{src: netip.MustParseAddr(src), dst: dstV6, proto: 6, l4: tcpHdr(dport, flags)}
}

func udp6(src string, dport uint16) frame {
	return frame{src: netip.MustParseAddr(src), dst: dstV6, proto: 17, l4: udpHdr(dport, []byte("ping"))}
}

func (f frame) bytes() []byte {
	b := make([]byte, 12, 128)
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 2})
	for i, tpid := range f.vlans {
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, uint16(100+i)) // TCI: VLAN id
	}
	et := f.etherType
	if et == 0 {
		et = 0x0800
		if f.src.Is6() {
			et = 0x86dd
		}
	}
	b = binary.BigEndian.AppendUint16(b, et)
	if f.src.Is4() {
		b = append(b, f.ipv4()...)
	} else {
		b = append(b, f.ipv6()...)
	}
	b = append(b, make([]byte, f.pad)...)
	return b[:len(b)-f.truncate]
}

func (f frame) ipv4() []byte {
	hlen := 20 + f.ipOptions
	h := make([]byte, hlen)
	ver := f.version
	if ver == 0 {
		ver = 4
	}
	ihl := f.ihl
	if ihl == 0 {
		ihl = hlen / 4
	}
	h[0] = byte(ver<<4 | ihl)
	binary.BigEndian.PutUint16(h[2:], uint16(hlen+len(f.l4)+f.badLen))
	binary.BigEndian.PutUint16(h[4:], 0x1234)
	binary.BigEndian.PutUint16(h[6:], f.fragment)
	h[8] = 64
	h[9] = f.proto
	s, d := f.src.As4(), f.dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	for i := 20; i < hlen; i++ {
		h[i] = 1 // NOP options
	}
	return append(h, f.l4...)
}

func (f frame) ipv6() []byte {
	var ext []byte
	next := f.proto
	// Build the chain back to front so each header names the next.
	for i := len(f.ext) - 1; i >= 0; i-- {
		e := f.ext[i]
		h := make([]byte, e.size)
		h[0] = next
		switch e.typ {
		case 44:
			binary.BigEndian.PutUint16(h[2:], e.frag)
			binary.BigEndian.PutUint32(h[4:], 0xabcd)
		case 51:
			h[1] = byte(e.size/4 - 2)
		default:
			h[1] = byte(e.size/8 - 1)
			if e.size >= 8 {
				h[2], h[3] = 1, byte(e.size-4) // PadN option filling the rest
			}
		}
		ext = append(h, ext...)
		next = e.typ
	}
	h := make([]byte, 40)
	ver := f.version
	if ver == 0 {
		ver = 6
	}
	h[0] = byte(ver << 4)
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(f.l4)+f.badLen))
	h[6] = next
	h[7] = 64
	s, d := f.src.As16(), f.dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	h = append(h, ext...)
	return append(h, f.l4...)
}

// firstFragment makes f the first fragment of a larger datagram, carrying
// the first n bytes of its L4 header and payload: IPv4 with MF set, IPv6
// with a fragment header whose M flag is set.
func (f frame) firstFragment(n int) frame {
	f.l4 = f.l4[:n]
	if f.src.Is4() {
		f.fragment = 0x2000
	} else {
		f.ext = append(f.ext, ext6{typ: 44, size: 8, frag: 1})
	}
	return f
}

// arp is an ARP request frame.
func arp() []byte {
	b := make([]byte, 14+28)
	for i := 0; i < 6; i++ {
		b[i] = 0xff
	}
	b[6] = 0x02
	binary.BigEndian.PutUint16(b[12:], 0x0806)
	copy(b[14:], []byte{0, 1, 8, 0, 6, 4, 0, 1})
	return b
}
