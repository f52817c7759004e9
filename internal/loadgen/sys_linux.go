package loadgen

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sources hands out client source addresses from a loopback prefix, round
// robin. A nil *sources means "let the kernel choose". Safe for concurrent
// use.
type sources struct {
	first netip.Addr
	n     uint64 // addresses in the range
	next  atomic.Uint64
}

// newSources returns the usable addresses of p: for IPv4 prefixes of /30 and
// wider, the first (network) and last (broadcast) addresses are skipped.
func newSources(p netip.Prefix) *sources {
	if !p.IsValid() {
		return nil
	}
	p = p.Masked()
	a := p.Addr()
	if !a.Is4() {
		return &sources{first: a, n: 1}
	}
	size := uint64(1) << (32 - p.Bits())
	if p.Bits() <= 30 {
		return &sources{first: a.Next(), n: size - 2}
	}
	return &sources{first: a, n: size}
}

// pick returns the next source address, or the zero Addr for nil s.
func (s *sources) pick() netip.Addr {
	if s == nil {
		return netip.Addr{}
	}
	i := (s.next.Add(1) - 1) % s.n
	if !s.first.Is4() {
		return s.first // ::1, the only IPv6 loopback address
	}
	b := s.first.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// used returns how many distinct addresses have been handed out.
func (s *sources) used() int {
	if s == nil {
		return 0
	}
	return int(min(s.next.Load(), s.n))
}

// bindNoPort sets IP_BIND_ADDRESS_NO_PORT so that binding a source address
// does not reserve a local port before connect: the kernel then picks the
// port at connect time and may reuse it towards other destinations, which a
// connection-per-request run needs.
func bindNoPort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt IP_BIND_ADDRESS_NO_PORT", serr)
}

// tcpDialer returns a dialer bound to src, if src is valid.
func tcpDialer(src netip.Addr, timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		d.Control = bindNoPort
	}
	return d
}

// pacer sleeps until an absolute time with a timerfd that the Go netpoller
// waits on. time.Sleep rounds sub-millisecond sleeps up to the netpoller's
// 1 ms epoll timeout when the runtime is idle; a timerfd wakes the poller
// within the machine's wake-up latency. Owned by one goroutine; Close
// releases the fd.
type pacer struct {
	f   *os.File
	fd  int // the timerfd; f owns it
	buf [8]byte
}

func newPacer() (*pacer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("timerfd_create", err)
	}
	// A non-blocking fd given to os.NewFile is registered with the poller.
	return &pacer{f: os.NewFile(uintptr(fd), "timerfd"), fd: fd}, nil
}

// sleepUntil returns at t, or with an error once the file's read deadline
// (set by SetReadDeadline, which is safe from other goroutines) has passed.
func (p *pacer) sleepUntil(t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(p.fd, 0, &spec, nil); err != nil {
		return os.NewSyscallError("timerfd_settime", err)
	}
	if _, err := p.f.Read(p.buf[:]); err != nil {
		return fmt.Errorf("wait for timer: %w", err)
	}
	return nil
}

// SetReadDeadline bounds sleepUntil.
func (p *pacer) SetReadDeadline(t time.Time) error { return p.f.SetReadDeadline(t) }

// Close releases the timerfd.
func (p *pacer) Close() error { return p.f.Close() }
