// Command synflood sends TCP SYNs to one address and port, with source
// addresses cycled through a prefix, for bench/flood.sh. It is a benchmark
// tool, not product code.
//
// Usage:
//
//	synflood --src 198.18.0.128/25 --dst 198.18.0.1:7000 --duration 10s [--pps N] [--tick D] [--count N] [--json]
//
// Every source address of --src is used in turn, with random source ports
// and sequence numbers, through a raw IPv4 socket (so it needs
// CAP_NET_RAW). The sources are spoofed: nothing answers them, and the
// handshakes never complete.
//
// Where packets may go is fixed, not configurable: the source prefix and
// the destination must lie inside 198.18.0.0/15, the benchmarking range,
// which bench/flood.sh gives to network namespaces it creates. Any other
// address is refused. Every run is bounded: --duration (at most 5 minutes)
// and, if given, --count; SIGINT or SIGTERM stops it early. At the end it
// prints what it sent: one line, or one JSON object with --json.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// benchRange is the only range packets may come from and go to.
var benchRange = netip.MustParsePrefix("198.18.0.0/15")

// maxDuration bounds every run.
const maxDuration = 5 * time.Minute

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "synflood: %v\n", err)
		os.Exit(1)
	}
}

// config is one run.
type config struct {
	src      netip.Prefix   // source addresses, cycled
	dst      netip.AddrPort // destination
	pps      int            // packets per second; 0 = as fast as the socket takes them
	tick     time.Duration  // paced runs send what is due once per tick
	duration time.Duration  // how long to send
	count    uint64         // stop after this many packets; 0 = no limit but duration
	json     bool
}

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("synflood", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	src := fs.String("src", "198.18.0.128/25", "source `prefix` to cycle through, inside 198.18.0.0/15")
	dst := fs.String("dst", "", "destination `IP:PORT`, inside 198.18.0.0/15 (required)")
	fs.IntVar(&c.pps, "pps", 0, "packets per second; 0 = as fast as possible")
	fs.DurationVar(&c.tick, "tick", 100*time.Microsecond, "paced runs send what is due once per `interval`, 10µs to 10ms")
	fs.DurationVar(&c.duration, "duration", 0, "how long to send, at most 5m (required)")
	fs.Uint64Var(&c.count, "count", 0, "stop after this many packets; 0 = bounded by --duration only")
	fs.BoolVar(&c.json, "json", false, "print the summary as one JSON object")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.src, err = netip.ParsePrefix(*src); err != nil {
		return c, fmt.Errorf("--src %q: %v", *src, err)
	}
	if c.dst, err = netip.ParseAddrPort(*dst); err != nil {
		return c, fmt.Errorf("--dst %q: want IP:PORT", *dst)
	}
	return c, c.check()
}

// check refuses anything outside the benchmarking range and unbounded
// runs.
func (c config) check() error {
	var errs []error
	if !c.src.Addr().Is4() || c.src.Bits() < benchRange.Bits() || !benchRange.Contains(c.src.Addr()) {
		errs = append(errs, fmt.Errorf("--src %s: not an IPv4 prefix inside %s", c.src, benchRange))
	}
	if !c.dst.Addr().Is4() || !benchRange.Contains(c.dst.Addr()) || c.dst.Port() == 0 {
		errs = append(errs, fmt.Errorf("--dst %s: not an IPv4 address and port inside %s", c.dst, benchRange))
	}
	if c.pps < 0 || c.pps > 10_000_000 {
		errs = append(errs, fmt.Errorf("--pps %d: want 0 to 10000000", c.pps))
	}
	if c.tick < 10*time.Microsecond || c.tick > 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("--tick %v: want 10µs to 10ms", c.tick))
	}
	if c.duration <= 0 || c.duration > maxDuration {
		errs = append(errs, fmt.Errorf("--duration %v: want more than 0, at most %v", c.duration, maxDuration))
	}
	return errors.Join(errs...)
}

// summary is what a run did; its JSON names are read by bench/flood.sh.
type summary struct {
	Sent     uint64  `json:"sent"`
	Errors   uint64  `json:"errors"`  // sends refused, mostly ENOBUFS
	Skipped  uint64  `json:"skipped"` // paced runs: packets not sent because the generator fell more than 10 ms behind
	Bursts   uint64  `json:"bursts"`  // paced runs: ticks that sent something; sent/bursts is the mean burst
	ElapsedS float64 `json:"elapsed_s"`
	PPS      float64 `json:"pps"`
	Sources  int     `json:"sources"`
	Src      string  `json:"src"`
	Dst      string  `json:"dst"`
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	// One thread sends; a flood generator that spreads over every core
	// would take the CPU from what it is meant to measure.
	runtime.GOMAXPROCS(1)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK, unix.IPPROTO_RAW) // implies IP_HDRINCL
	if err != nil {
		return fmt.Errorf("open raw socket: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	to := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: c.dst.Addr().As4()}
	s := flood(ctx, c, realClock{}, func(pkt []byte) error {
		// A raw syscall: the socket does not block (a full buffer is
		// an error), so the scheduler need not hand the P to another
		// thread around each send, as unix.Sendto would have it do;
		// with that, one sender kept two cores busy.
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&pkt[0])), uintptr(len(pkt)),
			0, uintptr(unsafe.Pointer(&to)), unix.SizeofSockaddrInet4)
		if e != 0 {
			return e
		}
		return nil
	})
	if c.json {
		return json.NewEncoder(stdout).Encode(s)
	}
	_, err = fmt.Fprintf(stdout, "synflood: %d SYNs from %s (%d sources) to %s in %.2f s: %.0f/s, %d send errors, %d skipped after stalls\n",
		s.Sent, s.Src, s.Sources, s.Dst, s.ElapsedS, s.PPS, s.Errors, s.Skipped)
	return err
}

// flood sends SYNs to c.dst with send until the duration, the count or ctx
// ends.
// Paced runs send what is due every c.tick; after a stall (a busy machine)
// they catch up at most 10 ms worth at once and skip the rest, so that the
// rate stays a rate instead of turning into bursts. The tick matters on
// veth: what XDP drops is dropped on the sender's CPU, inside its send, so
// each burst holds that CPU for its whole length. At 100k/s with a 1 ms
// tick the generator used 24% of a core, so each 100-SYN burst held it for
// about 240 µs (derived, not timed), close to the rise of about 270 µs in
// the allowed client's p99 measured then.
func flood(ctx context.Context, c config, clk clock, send func([]byte) error) summary {
	srcs := addrs(c.src)
	var pkt [40]byte
	s := summary{Sources: len(srcs), Src: c.src.String(), Dst: c.dst.String()}
	start := clk.Now()
	end := start.Add(c.duration)
	limit := c.count
	if limit == 0 {
		limit = ^uint64(0)
	}
	var i uint64
	for s.Sent+s.Skipped < limit {
		now := clk.Now()
		if !now.Before(end) || ctx.Err() != nil {
			break
		}
		batch := uint64(1024) // flat out: look at the clock every batch
		if c.pps > 0 {
			due := min(limit, uint64(now.Sub(start).Seconds()*float64(c.pps))+1)
			batch = due - min(due, s.Sent+s.Errors+s.Skipped)
			if most := uint64(c.pps)/100 + 1; batch > most {
				s.Skipped += batch - most
				batch = most
			}
		}
		if c.pps > 0 && batch > 0 {
			s.Bursts++
		}
		for ; batch > 0 && s.Sent+s.Skipped < limit; batch-- {
			buildSYN(&pkt, srcs[i%uint64(len(srcs))], c.dst, uint16(1024+rand.N(64512)), rand.Uint32())
			i++
			if err := send(pkt[:]); err != nil {
				s.Errors++
				continue
			}
			s.Sent++
		}
		if c.pps > 0 {
			clk.Sleep(c.tick)
		}
	}
	s.ElapsedS = clk.Now().Sub(start).Seconds()
	s.PPS = float64(s.Sent) / s.ElapsedS
	return s
}

// clock is the time flood paces by: realClock, or a fake one in tests.
type clock interface {
	Now() time.Time
	Sleep(d time.Duration)
}

// realClock sleeps with nanosleep(2), not a time.Ticker: the runtime's
// timers wake up about once a millisecond when nothing else happens, so a
// 100 µs ticker still sent bursts of a millisecond; nanosleep is a kernel
// hrtimer.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	_ = unix.Nanosleep(&ts, nil) // EINTR: a signal, seen by ctx at the top of the loop
}

// addrs lists the addresses of p, at most 65536 of them.
func addrs(p netip.Prefix) []netip.Addr {
	var as []netip.Addr
	for a := p.Masked().Addr(); p.Contains(a) && len(as) < 1<<16; a = a.Next() {
		as = append(as, a)
	}
	return as
}

// buildSYN writes an IPv4 header and a TCP SYN without options into pkt.
// The kernel fills in the IP checksum, total length and ID of a raw
// IP_HDRINCL packet; the TCP checksum is computed here.
func buildSYN(pkt *[40]byte, src netip.Addr, dst netip.AddrPort, sport uint16, seq uint32) {
	ip, tcp := pkt[:20], pkt[20:]
	ip[0] = 0x45 // IPv4, 5 words of header
	ip[1] = 0
	binary.BigEndian.PutUint16(ip[2:], 40)
	binary.BigEndian.PutUint16(ip[4:], 0) // ID: the kernel's
	binary.BigEndian.PutUint16(ip[6:], 0) // no fragmentation flags
	ip[8] = 64                            // TTL
	ip[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(ip[10:], 0) // checksum: the kernel's
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])

	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], 0) // ack
	tcp[12] = 5 << 4                       // 5 words of header
	tcp[13] = 0x02                         // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	binary.BigEndian.PutUint16(tcp[16:], 0) // checksum, below
	binary.BigEndian.PutUint16(tcp[18:], 0) // urgent pointer
	binary.BigEndian.PutUint16(tcp[16:], tcpChecksum(s4, d4, tcp))
}

// tcpChecksum is the Internet checksum of the IPv4 pseudo-header and seg.
func tcpChecksum(src, dst [4]byte, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	sum += unix.IPPROTO_TCP + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
