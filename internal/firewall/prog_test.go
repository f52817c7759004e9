package firewall

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Tests of the program itself through BPF_PROG_TEST_RUN: frames built in Go
// go through the loaded program, and each case checks the XDP action and
// which verdict counter moved.

const (
	xdpDrop = 1
	xdpPass = 2
)

// requirePrivileges skips tb unless the process may load XDP programs.
func requirePrivileges(tb testing.TB) {
	tb.Helper()
	if m := currentPrivileges().missing(false); m != "" {
		tb.Skipf("loading XDP programs needs %s: run as root", m)
	}
}

func newTestFirewall(tb testing.TB, cfg Config) *Firewall {
	tb.Helper()
	requirePrivileges(tb)
	f, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() {
		if err := f.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return f
}

// run passes pkt through the program once and returns the XDP action and
// the one verdict whose counter went up by one; it fails tb if any other
// counter moved.
func run(tb testing.TB, f *Firewall, pkt []byte) (uint32, string) {
	tb.Helper()
	before, err := f.Counters()
	if err != nil {
		tb.Fatal(err)
	}
	ret, err := f.objs.XdpFirewall.Run(&ebpf.RunOptions{Data: pkt})
	if err != nil {
		tb.Fatalf("run program: %v", err)
	}
	after, err := f.Counters()
	if err != nil {
		tb.Fatal(err)
	}
	verdict := ""
	b, a := before.Verdicts(), after.Verdicts()
	for i := range a {
		switch d := a[i].Packets - b[i].Packets; {
		case d == 1 && verdict == "":
			verdict = a[i].Verdict
		case d != 0:
			tb.Fatalf("counters moved from %v to %v for one packet", before, after)
		}
	}
	if verdict == "" {
		tb.Fatalf("no counter moved: %v", after)
	}
	return ret, verdict
}

// expect runs pkt and checks the action and verdict.
func expect(tb testing.TB, f *Firewall, pkt []byte, action uint32, verdict string) {
	tb.Helper()
	ret, v := run(tb, f, pkt)
	if ret != action || v != verdict {
		tb.Errorf("got action %s, verdict %s; want %s, %s", actionName(ret), v, actionName(action), verdict)
	}
}

func actionName(a uint32) string {
	switch a {
	case xdpDrop:
		return "DROP"
	case xdpPass:
		return "PASS"
	}
	return fmt.Sprintf("action(%d)", a)
}

func prefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

// Sources used below.
const (
	okV4     = "198.18.0.10"
	deniedV4 = "198.18.1.5" // in 198.18.1.0/24
	okV6     = "2001:db8:1::10"
	deniedV6 = "2001:db8:dead::5" // in 2001:db8:dead::/48
)

var verdictConfig = Config{
	Ports: []Port{{"tcp", 80}, {"udp", 53}},
	Deny:  prefixes("198.18.1.0/24", "2001:db8:dead::/48"),
}

func TestProgramVerdicts(t *testing.T) {
	f := newTestFirewall(t, verdictConfig)

	ipv4Frag := func(fr frame, fragOff uint16) frame { fr.fragment = fragOff; return fr }
	withExt := func(fr frame, ext ...ext6) frame { fr.ext = ext; return fr }
	vlan := func(fr frame, tpids ...uint16) frame { fr.vlans = tpids; return fr }
	opts := tcp4(deniedV4, 80, tcpSYN)
	opts.ipOptions = 12
	dstopts := ext6{typ: 60, size: 8}
	longChain := make([]ext6, 9)
	for i := range longChain {
		longChain[i] = dstopts
	}

	tests := []struct {
		name    string
		pkt     []byte
		action  uint32
		verdict string
	}{
		// Protected ports: policed.
		{"ipv4 tcp syn", tcp4(okV4, 80, tcpSYN).bytes(), xdpPass, "passed"},
		{"ipv4 tcp syn denied", tcp4(deniedV4, 80, tcpSYN).bytes(), xdpDrop, "denied"},
		{"ipv4 tcp established denied", tcp4(deniedV4, 80, tcpACK|tcpPSH).bytes(), xdpDrop, "denied"},
		{"ipv4 tcp established", tcp4(okV4, 80, tcpACK).bytes(), xdpPass, "passed"},
		{"ipv4 udp", udp4(okV4, 53).bytes(), xdpPass, "passed"},
		{"ipv4 udp denied", udp4(deniedV4, 53).bytes(), xdpDrop, "denied"},
		{"ipv4 options denied", opts.bytes(), xdpDrop, "denied"},
		{"ipv4 padded frame", frame{src: netip.MustParseAddr(okV4), dst: dstV4, proto: 6, l4: tcpHdr(80, tcpACK), pad: 6}.bytes(), xdpPass, "passed"},
		{"ipv6 tcp syn", tcp6(okV6, 80, tcpSYN).bytes(), xdpPass, "passed"},
		{"ipv6 tcp syn denied", tcp6(deniedV6, 80, tcpSYN).bytes(), xdpDrop, "denied"},
		{"ipv6 udp denied", udp6(deniedV6, 53).bytes(), xdpDrop, "denied"},
		{"vlan ipv4 denied", vlan(tcp4(deniedV4, 80, tcpSYN), 0x8100).bytes(), xdpDrop, "denied"},
		{"qinq ipv4 denied", vlan(tcp4(deniedV4, 80, tcpSYN), 0x88a8, 0x8100).bytes(), xdpDrop, "denied"},
		{"qinq ipv6 denied", vlan(udp6(deniedV6, 53), 0x88a8, 0x8100).bytes(), xdpDrop, "denied"},
		{"vlan ipv4", vlan(tcp4(okV4, 80, tcpSYN), 0x8100).bytes(), xdpPass, "passed"},
		{"ipv6 hop dst routing denied", withExt(udp6(deniedV6, 53), ext6{typ: 0, size: 8}, ext6{typ: 60, size: 16}, ext6{typ: 43, size: 24}).bytes(), xdpDrop, "denied"},
		{"ipv6 ah denied", withExt(tcp6(deniedV6, 80, tcpSYN), ext6{typ: 51, size: 24}).bytes(), xdpDrop, "denied"},
		{"ipv6 eight ext headers denied", withExt(udp6(deniedV6, 53), longChain[:8]...).bytes(), xdpDrop, "denied"},
		{"ipv6 atomic fragment denied", withExt(udp6(deniedV6, 53), ext6{typ: 44, size: 8}).bytes(), xdpDrop, "denied"},
		{"ipv6 first fragment denied", withExt(udp6(deniedV6, 53), ext6{typ: 44, size: 8, frag: 1}).bytes(), xdpDrop, "denied"},
		{"ipv4 first fragment denied", ipv4Frag(udp4(deniedV4, 53), 0x2000).bytes(), xdpDrop, "denied"},

		// Unprotected ports and protocols: pass untouched, from anyone,
		// however short the header after the ports.
		{"ipv4 tcp truncated unprotected port", tcp4(okV4, 22, tcpSYN).bytes()[:14+20+12], xdpPass, "unprotected"},
		{"ipv4 tcp unprotected port denied source", tcp4(deniedV4, 22, tcpSYN).bytes(), xdpPass, "unprotected"},
		{"ipv4 udp port of tcp service", udp4(deniedV4, 80).bytes(), xdpPass, "unprotected"},
		{"ipv4 tcp port of udp service", tcp4(deniedV4, 53, tcpSYN).bytes(), xdpPass, "unprotected"},
		{"ipv6 tcp unprotected port", tcp6(deniedV6, 22, tcpSYN).bytes(), xdpPass, "unprotected"},
		{"icmp echo denied source", frame{src: netip.MustParseAddr(deniedV4), dst: dstV4, proto: 1, l4: icmpEcho(false)}.bytes(), xdpPass, "unprotected"},
		{"icmpv6 echo denied source", frame{src: netip.MustParseAddr(deniedV6), dst: dstV6, proto: 58, l4: icmpEcho(true)}.bytes(), xdpPass, "unprotected"},
		{"arp", arp(), xdpPass, "unprotected"},
		{"three vlan tags", vlan(tcp4(deniedV4, 80, tcpSYN), 0x88a8, 0x8100, 0x8100).bytes(), xdpPass, "unprotected"},
		{"truncated vlan tag", vlan(tcp4(deniedV4, 80, tcpSYN), 0x8100).bytes()[:16], xdpPass, "unprotected"},

		// Non-first fragments: no ports, pass.
		{"ipv4 later fragment denied source", ipv4Frag(udp4(deniedV4, 53), 185).bytes(), xdpPass, "fragment"},
		{"ipv4 later fragment more to come", ipv4Frag(udp4(deniedV4, 53), 0x2000|185).bytes(), xdpPass, "fragment"},
		{"ipv6 later fragment denied source", withExt(udp6(deniedV6, 53), ext6{typ: 44, size: 8, frag: 1480}).bytes(), xdpPass, "fragment"},

		// Unparsable: dropped.
		{"ipv4 tcp fragment at offset 8", ipv4Frag(tcp4(okV4, 80, tcpACK), 1).bytes(), xdpDrop, "malformed"},
		{"ipv4 tiny first fragment", ipv4Frag(frame{src: netip.MustParseAddr(okV4), dst: dstV4, proto: 6, l4: tcpHdr(80, tcpSYN)[:8]}, 0x2000).bytes(), xdpDrop, "malformed"},
		{"ipv4 header truncated", tcp4(okV4, 80, tcpSYN).bytes()[:14+12], xdpDrop, "malformed"},
		{"ipv4 options truncated", opts.bytes()[:14+24], xdpDrop, "malformed"},
		{"ipv4 tcp truncated", tcp4(okV4, 80, tcpSYN).bytes()[:14+20+12], xdpDrop, "malformed"},
		{"ipv4 udp truncated", udp4(okV4, 53).bytes()[:14+20+6], xdpDrop, "malformed"},
		{"ipv4 tcp truncated before the ports", tcp4(okV4, 22, tcpSYN).bytes()[:14+20+3], xdpDrop, "malformed"},
		{"ipv6 udp truncated before the ports", udp6(okV6, 22).bytes()[:14+40+2], xdpDrop, "malformed"},
		{"ipv4 ihl below 5", frame{src: netip.MustParseAddr(okV4), dst: dstV4, proto: 6, l4: tcpHdr(80, tcpSYN), ihl: 4}.bytes(), xdpDrop, "malformed"},
		{"ipv4 wrong version", frame{src: netip.MustParseAddr(okV4), dst: dstV4, proto: 6, l4: tcpHdr(80, tcpSYN), version: 6}.bytes(), xdpDrop, "malformed"},
		{"ipv4 total length too short for tcp", frame{src: netip.MustParseAddr(okV4), dst: dstV4, proto: 6, l4: tcpHdr(80, tcpSYN), badLen: -8}.bytes(), xdpDrop, "malformed"},
		{"tcp data offset below 5", func() []byte { fr := tcp4(okV4, 80, tcpSYN); fr.l4[12] = 4 << 4; return fr.bytes() }(), xdpDrop, "malformed"},
		{"ipv6 header truncated", tcp6(okV6, 80, tcpSYN).bytes()[:14+30], xdpDrop, "malformed"},
		{"ipv6 tcp truncated", tcp6(okV6, 80, tcpSYN).bytes()[:14+40+10], xdpDrop, "malformed"},
		{"ipv6 ext header truncated", withExt(udp6(okV6, 53), ext6{typ: 60, size: 16}).bytes()[:14+40+12], xdpDrop, "malformed"},
		{"ipv6 ah of odd length", withExt(tcp6(okV6, 80, tcpSYN), ext6{typ: 51, size: 12}).bytes(), xdpDrop, "malformed"},
		{"ipv6 nine ext headers", withExt(udp6(okV6, 53), longChain...).bytes(), xdpDrop, "malformed"},
		{"ipv6 payload length too short", frame{src: netip.MustParseAddr(okV6), dst: dstV6, proto: 17, l4: udpHdr(53, nil), badLen: -4}.bytes(), xdpDrop, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expect(t, f, tt.pkt, tt.action, tt.verdict)
		})
	}
}

// TestProgramFirstFragments: a first fragment is decided by its ports
// alone when they are unprotected, whatever it lacks of the rest of the
// TCP header; at a protected port it needs the fixed 20 bytes (the flags),
// not the options, which may continue in the next fragment.
func TestProgramFirstFragments(t *testing.T) {
	f := newTestFirewall(t, verdictConfig)
	// A SYN with 40 bytes of options. The first fragments below carry 24
	// or 32 bytes of it, or 8 or 16: multiples of 8, as every fragment but
	// the last must be.
	syn := func(src string, dport uint16) frame {
		fr := frame{src: netip.MustParseAddr(src), dst: dstV4, proto: 6, l4: tcpHdrOpts(dport, tcpSYN, 40)}
		if fr.src.Is6() {
			fr.dst = dstV6
		}
		return fr
	}
	tests := []struct {
		name    string
		pkt     frame
		action  uint32
		verdict string
	}{
		{"ipv4 options continue, unprotected port", syn(deniedV4, 22).firstFragment(24), xdpPass, "unprotected"},
		{"ipv4 options continue", syn(okV4, 80).firstFragment(24), xdpPass, "passed"},
		{"ipv4 options continue, denied", syn(deniedV4, 80).firstFragment(24), xdpDrop, "denied"},
		{"ipv6 options continue, unprotected port", syn(deniedV6, 22).firstFragment(32), xdpPass, "unprotected"},
		{"ipv6 options continue", syn(okV6, 80).firstFragment(32), xdpPass, "passed"},
		{"ipv6 options continue, denied", syn(deniedV6, 80).firstFragment(32), xdpDrop, "denied"},

		// RFC 1858 tiny fragments: ports but no flags.
		{"ipv4 tiny, unprotected port", syn(deniedV4, 22).firstFragment(8), xdpPass, "unprotected"},
		{"ipv4 tiny, 16 bytes, unprotected port", syn(okV4, 22).firstFragment(16), xdpPass, "unprotected"},
		{"ipv6 tiny, unprotected port", syn(okV6, 22).firstFragment(8), xdpPass, "unprotected"},
		{"ipv4 tiny", syn(okV4, 80).firstFragment(16), xdpDrop, "malformed"},
		{"ipv6 tiny", syn(okV6, 80).firstFragment(8), xdpDrop, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expect(t, f, tt.pkt.bytes(), tt.action, tt.verdict)
		})
	}
}

func TestProgramAllowList(t *testing.T) {
	f := newTestFirewall(t, verdictConfig)
	allow := verdictConfig
	allow.Allow = prefixes("198.18.0.0/24", "198.18.1.0/24", "2001:db8:1::/48")
	if err := f.Update(allow); err != nil {
		t.Fatal(err)
	}
	expect(t, f, tcp4(okV4, 80, tcpSYN).bytes(), xdpPass, "passed")
	expect(t, f, tcp4("198.18.2.1", 80, tcpSYN).bytes(), xdpDrop, "not_allowed")
	expect(t, f, tcp4(deniedV4, 80, tcpSYN).bytes(), xdpDrop, "denied") // deny wins
	expect(t, f, tcp6(okV6, 80, tcpSYN).bytes(), xdpPass, "passed")
	expect(t, f, udp6("2001:db8:2::1", 53).bytes(), xdpDrop, "not_allowed")
	expect(t, f, tcp4("198.18.2.1", 22, tcpSYN).bytes(), xdpPass, "unprotected")

	// An IPv4-only allow list shuts out IPv6 sources.
	v4only := verdictConfig
	v4only.Allow = prefixes("198.18.0.0/24")
	if err := f.Update(v4only); err != nil {
		t.Fatal(err)
	}
	expect(t, f, tcp6(okV6, 80, tcpSYN).bytes(), xdpDrop, "not_allowed")

	// Back to no allow list, then no deny list: all admitted.
	if err := f.Update(verdictConfig); err != nil {
		t.Fatal(err)
	}
	expect(t, f, tcp4("198.18.2.1", 80, tcpSYN).bytes(), xdpPass, "passed")
	expect(t, f, tcp4(deniedV4, 80, tcpSYN).bytes(), xdpDrop, "denied")
	if err := f.Update(Config{Ports: verdictConfig.Ports}); err != nil {
		t.Fatal(err)
	}
	expect(t, f, tcp4(deniedV4, 80, tcpSYN).bytes(), xdpPass, "passed")
	expect(t, f, tcp6(deniedV6, 80, tcpSYN).bytes(), xdpPass, "passed")

	// Ports move: 80 unprotected, 8080 protected.
	if err := f.Update(Config{Ports: []Port{{"tcp", 8080}}, Deny: verdictConfig.Deny}); err != nil {
		t.Fatal(err)
	}
	expect(t, f, tcp4(deniedV4, 80, tcpSYN).bytes(), xdpPass, "unprotected")
	expect(t, f, tcp4(deniedV4, 8080, tcpSYN).bytes(), xdpDrop, "denied")

	// An invalid config changes nothing.
	bad := Config{Ports: []Port{{"sctp", 80}}}
	if err := f.Update(bad); err == nil {
		t.Fatal("Update accepted an invalid config")
	}
	expect(t, f, tcp4(deniedV4, 8080, tcpSYN).bytes(), xdpDrop, "denied")
}

func TestProgramRateLimit(t *testing.T) {
	// One token per second: within a test nothing refills.
	cfg := Config{Ports: []Port{{"tcp", 80}, {"udp", 53}}, RateLimit: 1, RateBurst: 3}
	f := newTestFirewall(t, cfg)

	t.Run("syn burst", func(t *testing.T) {
		const src = "198.18.0.20"
		for i := 0; i < 3; i++ {
			expect(t, f, tcp4(src, 80, tcpSYN).bytes(), xdpPass, "passed")
		}
		expect(t, f, tcp4(src, 80, tcpSYN).bytes(), xdpDrop, "rate_limited")
		// Established segments, SYN-ACKs and RSTs are not counted.
		for i := 0; i < 10; i++ {
			expect(t, f, tcp4(src, 80, tcpACK|tcpPSH).bytes(), xdpPass, "passed")
		}
		expect(t, f, tcp4(src, 80, tcpSYN|tcpACK).bytes(), xdpPass, "passed")
		expect(t, f, tcp4(src, 80, tcpRST).bytes(), xdpPass, "passed")
		expect(t, f, tcp4(src, 80, tcpFIN|tcpACK).bytes(), xdpPass, "passed")
		// UDP shares the source's bucket; unprotected ports are not counted.
		expect(t, f, udp4(src, 53).bytes(), xdpDrop, "rate_limited")
		expect(t, f, tcp4(src, 22, tcpSYN).bytes(), xdpPass, "unprotected")
		// Another source has its own bucket.
		expect(t, f, tcp4("198.18.0.21", 80, tcpSYN).bytes(), xdpPass, "passed")
	})

	t.Run("udp", func(t *testing.T) {
		const src = "198.18.0.30"
		for i := 0; i < 3; i++ {
			expect(t, f, udp4(src, 53).bytes(), xdpPass, "passed")
		}
		expect(t, f, udp4(src, 53).bytes(), xdpDrop, "rate_limited")
		expect(t, f, udp4(src, 54).bytes(), xdpPass, "unprotected")
	})

	t.Run("ipv6 per /64", func(t *testing.T) {
		// Two addresses of one /64 share a bucket of 3.
		expect(t, f, tcp6("2001:db8:1:1::1", 80, tcpSYN).bytes(), xdpPass, "passed")
		expect(t, f, tcp6("2001:db8:1:1::2", 80, tcpSYN).bytes(), xdpPass, "passed")
		expect(t, f, udp6("2001:db8:1:1:ffff::3", 53).bytes(), xdpPass, "passed")
		expect(t, f, tcp6("2001:db8:1:1::1", 80, tcpSYN).bytes(), xdpDrop, "rate_limited")
		expect(t, f, tcp6("2001:db8:1:1::4", 80, tcpSYN).bytes(), xdpDrop, "rate_limited")
		// The next /64 is another source.
		expect(t, f, tcp6("2001:db8:1:2::1", 80, tcpSYN).bytes(), xdpPass, "passed")
		// IPv4 and IPv6 keys never collide: 198.18.0.40 is c612:0028.
		for i := 0; i < 3; i++ {
			expect(t, f, tcp4("198.18.0.40", 80, tcpSYN).bytes(), xdpPass, "passed")
		}
		expect(t, f, tcp4("198.18.0.40", 80, tcpSYN).bytes(), xdpDrop, "rate_limited")
		expect(t, f, tcp6("c612:28::", 80, tcpSYN).bytes(), xdpPass, "passed")
	})

	t.Run("syn in a first fragment", func(t *testing.T) {
		// The options continue in the next fragment; the flags are read.
		pkt := frame{src: netip.MustParseAddr("198.18.0.35"), dst: dstV4, proto: 6, l4: tcpHdrOpts(80, tcpSYN, 40)}.firstFragment(24).bytes()
		for i := 0; i < 3; i++ {
			expect(t, f, pkt, xdpPass, "passed")
		}
		expect(t, f, pkt, xdpDrop, "rate_limited")
	})

	t.Run("deny before rate", func(t *testing.T) {
		c := cfg
		c.Deny = prefixes("198.18.9.0/24")
		if err := f.Update(c); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			expect(t, f, tcp4("198.18.9.1", 80, tcpSYN).bytes(), xdpDrop, "denied")
		}
		if err := f.Update(cfg); err != nil {
			t.Fatal(err)
		}
		// Denied packets took no tokens.
		for i := 0; i < 3; i++ {
			expect(t, f, tcp4("198.18.9.1", 80, tcpSYN).bytes(), xdpPass, "passed")
		}
	})

	t.Run("faster rate at run time", func(t *testing.T) {
		const src = "198.18.0.50"
		for i := 0; i < 3; i++ {
			expect(t, f, tcp4(src, 80, tcpSYN).bytes(), xdpPass, "passed")
		}
		expect(t, f, tcp4(src, 80, tcpSYN).bytes(), xdpDrop, "rate_limited")
		// The old rate would make the source wait 3 s. Under the new one
		// its bucket is empty (this packet) and then refills in 50 ms.
		faster := cfg
		faster.RateLimit, faster.RateBurst = 100, 5
		if err := f.Update(faster); err != nil {
			t.Fatal(err)
		}
		expect(t, f, tcp4(src, 80, tcpSYN).bytes(), xdpDrop, "rate_limited")
		time.Sleep(120 * time.Millisecond)
		for i := 0; i < 5; i++ {
			expect(t, f, tcp4(src, 80, tcpSYN).bytes(), xdpPass, "passed")
		}
		if err := f.Update(cfg); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("off", func(t *testing.T) {
		if err := f.Update(Config{Ports: cfg.Ports}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 10; i++ {
			expect(t, f, tcp4("198.18.0.20", 80, tcpSYN).bytes(), xdpPass, "passed")
		}
	})
}

func TestProgramRateRefill(t *testing.T) {
	// 50/s with a burst of 2: after the burst, a token every 20 ms.
	f := newTestFirewall(t, Config{Ports: []Port{{"udp", 53}}, RateLimit: 50, RateBurst: 2})
	pkt := udp4("198.18.0.60", 53).bytes()
	expect(t, f, pkt, xdpPass, "passed")
	expect(t, f, pkt, xdpPass, "passed")
	expect(t, f, pkt, xdpDrop, "rate_limited")
	time.Sleep(30 * time.Millisecond)
	expect(t, f, pkt, xdpPass, "passed")
}

// TestProgramSpoofedFlood checks that a flood from more sources than the
// table holds neither fails nor shuts out a new source.
func TestProgramSpoofedFlood(t *testing.T) {
	f := newTestFirewall(t, Config{Ports: []Port{{"tcp", 80}}, RateLimit: 1, RateBurst: 1, RateSources: 256})
	const n = 2000
	for i := 0; i < n; i++ {
		a := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		ret, err := f.objs.XdpFirewall.Run(&ebpf.RunOptions{Data: tcp4(a.String(), 80, tcpSYN).bytes()})
		if err != nil || ret != xdpPass {
			t.Fatalf("source %d: action %d, %v", i, ret, err)
		}
	}
	expect(t, f, tcp4("198.18.0.70", 80, tcpSYN).bytes(), xdpPass, "passed")
	var k firewallRateKey
	var v firewallRateState
	entries := 0
	for it := f.objs.RateBuckets.Iterate(); it.Next(&k, &v); {
		entries++
	}
	if entries > 256 {
		t.Errorf("%d entries in a table of 256", entries)
	}
	c, err := f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Passed != n+1 || c.RateLimited != 0 {
		t.Errorf("counters %v, want passed=%d and none rate limited", c, n+1)
	}
}

// TestProgramRandomFrames mutates valid frames at random and checks that
// every one gets PASS or DROP and moves exactly one counter.
func TestProgramRandomFrames(t *testing.T) {
	f := newTestFirewall(t, Config{
		Ports:     []Port{{"tcp", 80}, {"udp", 53}},
		Deny:      prefixes("198.18.1.0/24"),
		RateLimit: 1000,
	})
	seeds := [][]byte{
		tcp4(okV4, 80, tcpSYN).bytes(),
		udp6(okV6, 53).bytes(),
		frame{src: netip.MustParseAddr(okV6), dst: dstV6, proto: 17, l4: udpHdr(53, nil), vlans: []uint16{0x8100}, ext: []ext6{{typ: 0, size: 8}, {typ: 44, size: 8, frag: 1}, {typ: 60, size: 16}}}.bytes(),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 1500; i++ {
		pkt := append([]byte(nil), seeds[i%len(seeds)]...)
		for j := rng.IntN(4) + 1; j > 0; j-- {
			pkt[12+rng.IntN(len(pkt)-12)] = byte(rng.Uint32())
		}
		if cut := rng.IntN(len(pkt) - 14 + 1); rng.IntN(4) == 0 {
			pkt = pkt[:14+cut]
		}
		ret, _ := run(t, f, pkt)
		if ret != xdpPass && ret != xdpDrop {
			t.Fatalf("frame %x: action %s", pkt, actionName(ret))
		}
	}
}

// TestUpdateRollback makes a map update fail halfway through Update and
// checks that the rules already changed are put back.
func TestUpdateRollback(t *testing.T) {
	a, b := "198.18.3.1", "198.18.4.1"
	cfg := Config{Ports: []Port{{"tcp", 80}}, Deny: prefixes(a + "/32")}
	f := newTestFirewall(t, cfg)

	// A map whose key type the allow update cannot marshal to.
	broken, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 1, ValueSize: 1, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer broken.Close()
	allow := f.objs.AllowV4
	f.objs.AllowV4 = broken
	err = f.Update(Config{Ports: cfg.Ports, Deny: prefixes(b + "/32"), Allow: prefixes("198.18.0.0/16")})
	f.objs.AllowV4 = allow
	if err == nil {
		t.Fatal("Update succeeded with a broken allow map")
	}
	t.Logf("Update: %v", err)
	// The deny list is the old one again, and the allow list is off.
	expect(t, f, tcp4(a, 80, tcpSYN).bytes(), xdpDrop, "denied")
	expect(t, f, tcp4(b, 80, tcpSYN).bytes(), xdpPass, "passed")
	expect(t, f, tcp4("198.19.0.1", 80, tcpSYN).bytes(), xdpPass, "passed")
}

// TestMapsHoldTwoRuleSets checks, without loading anything, that every rule
// map has room for two full rule sets: Update adds the new rules before it
// removes the old ones.
func TestMapsHoldTwoRuleSets(t *testing.T) {
	spec, err := loadFirewall()
	if err != nil {
		t.Fatal(err)
	}
	for name, limit := range map[string]uint32{
		firewallMapProtectedPorts: MaxPorts,
		firewallMapDenyV4:         MaxPrefixes,
		firewallMapDenyV6:         MaxPrefixes,
		firewallMapAllowV4:        MaxPrefixes,
		firewallMapAllowV6:        MaxPrefixes,
	} {
		if got := spec.Maps[name].MaxEntries; got < 2*limit {
			t.Errorf("map %s holds %d entries, want at least 2 × %d", name, got, limit)
		}
	}
}

// TestUpdateBetweenFullRuleSets replaces full port, deny and allow tables
// with different full ones: every new entry goes in before the old ones
// leave, so the maps hold both sets at once.
func TestUpdateBetweenFullRuleSets(t *testing.T) {
	full := func(portBase uint16, v4 byte, v6 uint16) Config {
		c := Config{Allow: prefixes("198.18.0.0/15")}
		for i := range MaxPorts {
			c.Ports = append(c.Ports, Port{"tcp", portBase + uint16(i)})
		}
		for i := range MaxPrefixes {
			c.Deny = append(c.Deny, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, v4, byte(i >> 8), byte(i)}), 32))
			a := [16]byte{0x20, 0x01, 0x0d, 0xb8, byte(v6 >> 8), byte(v6), 14: byte(i >> 8), 15: byte(i)}
			c.Allow = append(c.Allow, netip.PrefixFrom(netip.AddrFrom16(a), 128))
		}
		return c
	}
	f := newTestFirewall(t, full(1, 18, 0xa))
	expect(t, f, tcp4("198.18.7.7", 1, tcpSYN).bytes(), xdpDrop, "denied")
	if err := f.Update(full(2001, 19, 0xb)); err != nil {
		t.Fatalf("Update to a different full rule set: %v", err)
	}
	expect(t, f, tcp4("198.18.7.7", 1, tcpSYN).bytes(), xdpPass, "unprotected")
	expect(t, f, tcp4("198.18.7.7", 3024, tcpSYN).bytes(), xdpPass, "passed")
	expect(t, f, tcp4("198.19.7.7", 2001, tcpSYN).bytes(), xdpDrop, "denied")
	expect(t, f, tcp6("2001:db8:a::707", 2001, tcpSYN).bytes(), xdpDrop, "not_allowed")
	expect(t, f, tcp6("2001:db8:b::707", 2001, tcpSYN).bytes(), xdpPass, "passed")
	if got := len(f.applied.deny) + len(f.applied.allow) + len(f.applied.ports); got != 2*MaxPrefixes+1+MaxPorts {
		t.Errorf("%d rules applied, want only the new set's %d", got, 2*MaxPrefixes+1+MaxPorts)
	}
}
