package main

import (
	"context"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseRefusesOtherRanges(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the error; "" = accepted
	}{
		{[]string{"--dst", "198.18.0.1:7000", "--duration", "1s"}, ""},
		{[]string{"--src", "198.19.255.0/24", "--dst", "198.19.0.1:80", "--duration", "1s", "--pps", "1000"}, ""},
		{[]string{"--src", "198.18.0.0/15", "--dst", "198.18.0.1:7000", "--duration", "1s"}, ""},
		{[]string{"--src", "198.16.0.0/13", "--dst", "198.18.0.1:7000", "--duration", "1s"}, "--src"},
		{[]string{"--src", "0.0.0.0/0", "--dst", "198.18.0.1:7000", "--duration", "1s"}, "--src"},
		{[]string{"--src", "10.0.0.0/8", "--dst", "198.18.0.1:7000", "--duration", "1s"}, "--src"},
		{[]string{"--src", "198.20.0.0/24", "--dst", "198.18.0.1:7000", "--duration", "1s"}, "--src"},
		{[]string{"--src", "2001:db8::/64", "--dst", "198.18.0.1:7000", "--duration", "1s"}, "--src"},
		{[]string{"--dst", "8.8.8.8:53", "--duration", "1s"}, "--dst"},
		{[]string{"--dst", "127.0.0.1:7000", "--duration", "1s"}, "--dst"},
		{[]string{"--dst", "[::ffff:198.18.0.1]:7000", "--duration", "1s"}, "--dst"},
		{[]string{"--dst", "198.18.0.1:0", "--duration", "1s"}, "--dst"},
		{[]string{"--dst", "198.18.0.1:7000"}, "--duration"},
		{[]string{"--dst", "198.18.0.1:7000", "--duration", "6m"}, "--duration"},
		{[]string{"--dst", "198.18.0.1:7000", "--duration", "1s", "--pps", "-1"}, "--pps"},
		{[]string{"--duration", "1s"}, "--dst"},
		{[]string{"--dst", "198.18.0.1:7000", "--duration", "1s", "--tick", "1ms"}, ""},
		{[]string{"--dst", "198.18.0.1:7000", "--duration", "1s", "--tick", "1µs"}, "--tick"},
		{[]string{"--dst", "198.18.0.1:7000", "--duration", "1s", "--tick", "1s"}, "--tick"},
	} {
		_, err := parse(tc.args)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: %v, want an error about %s", tc.args, err, tc.want)
		}
	}
}

func TestBuildSYN(t *testing.T) {
	src := netip.MustParseAddr("198.18.0.200")
	dst := netip.MustParseAddrPort("198.18.0.1:7000")
	var pkt [40]byte
	buildSYN(&pkt, src, dst, 40000, 0xdeadbeef)
	if pkt[0] != 0x45 || pkt[9] != unix.IPPROTO_TCP || netip.AddrFrom4([4]byte(pkt[12:16])) != src || netip.AddrFrom4([4]byte(pkt[16:20])) != dst.Addr() {
		t.Fatalf("IP header % x", pkt[:20])
	}
	tcp := pkt[20:]
	if binary.BigEndian.Uint16(tcp[0:]) != 40000 || binary.BigEndian.Uint16(tcp[2:]) != 7000 ||
		binary.BigEndian.Uint32(tcp[4:]) != 0xdeadbeef || tcp[12] != 0x50 || tcp[13] != 0x02 {
		t.Fatalf("TCP header % x", tcp)
	}
	// The checksum over the pseudo-header and a segment that includes its
	// own checksum folds to zero.
	var sum uint32
	for _, b := range [][]byte{pkt[12:20], {0, unix.IPPROTO_TCP, 0, 20}, tcp} {
		for i := 0; i < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff {
		t.Fatalf("TCP checksum does not verify: sum %#x", sum)
	}
}

func TestFloodCyclesSourcesAndBounds(t *testing.T) {
	c := config{
		src:      netip.MustParsePrefix("198.18.0.128/25"),
		dst:      netip.MustParseAddrPort("198.18.0.1:7000"),
		duration: 5 * time.Second,
		count:    300,
	}
	seen := map[netip.Addr]int{}
	s := flood(context.Background(), c, realClock{}, func(pkt []byte) error {
		if netip.AddrFrom4([4]byte(pkt[16:20])) != c.dst.Addr() {
			t.Errorf("sent to %v", pkt[16:20])
		}
		seen[netip.AddrFrom4([4]byte(pkt[12:16]))]++
		return nil
	})
	if s.Sent != 300 || s.Sources != 128 || len(seen) != 128 {
		t.Fatalf("sent %d from %d sources (%d seen), want 300 from 128", s.Sent, s.Sources, len(seen))
	}
	for a := range seen {
		if !c.src.Contains(a) {
			t.Errorf("source %v outside %v", a, c.src)
		}
	}

	// Paced: about pps × duration.
	c.count, c.pps, c.duration, c.tick = 0, 2000, 300*time.Millisecond, time.Millisecond
	s = flood(context.Background(), c, realClock{}, func([]byte) error { return nil })
	if s.Sent < 500 || s.Sent > 700 || s.ElapsedS > 0.5 {
		t.Fatalf("paced at 2000/s for 300 ms: sent %d in %.3f s", s.Sent, s.ElapsedS)
	}

	// A stall: the lost time is skipped, not sent in one burst.
	stalled := false
	s = flood(context.Background(), c, realClock{}, func([]byte) error {
		if !stalled {
			stalled = true
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	})
	if s.Skipped < 100 || s.Sent+s.Skipped < 500 || s.Sent+s.Skipped > 700 {
		t.Fatalf("paced at 2000/s for 300 ms with a 100 ms stall: sent %d, skipped %d", s.Sent, s.Skipped)
	}
}

// fakeClock advances only when flood sleeps.
type fakeClock struct{ t time.Time }

func (f *fakeClock) Now() time.Time        { return f.t }
func (f *fakeClock) Sleep(d time.Duration) { f.t = f.t.Add(d) }

// TestFloodTickBoundsBursts checks that the tick sets the burst size: at
// 100k/s, 100 SYNs a burst with a 1 ms tick and 10 with 100 µs, the rate
// the same.
func TestFloodTickBoundsBursts(t *testing.T) {
	c := config{
		src:      netip.MustParsePrefix("198.18.0.128/25"),
		dst:      netip.MustParseAddrPort("198.18.0.1:7000"),
		pps:      100000,
		duration: 200 * time.Millisecond,
	}
	for _, tc := range []struct {
		tick  time.Duration
		burst uint64
	}{{time.Millisecond, 100}, {100 * time.Microsecond, 10}} {
		c.tick = tc.tick
		biggest, n := uint64(0), uint64(0)
		clk := &fakeClock{t: time.Unix(0, 0)}
		last := clk.t
		s := flood(context.Background(), c, clk, func([]byte) error {
			if clk.t != last { // a new tick: a new burst
				last, n = clk.t, 0
			}
			n++
			biggest = max(biggest, n)
			return nil
		})
		// The first burst also carries the packet due at time zero; the
		// last tick's packets fall after the end.
		if biggest > tc.burst+1 || s.Sent < 19890 || s.Sent > 20001 {
			t.Errorf("tick %v: biggest burst %d (want %d), %d sent in %d bursts (want about 20000 in all)", tc.tick, biggest, tc.burst, s.Sent, s.Bursts)
		}
	}
}
