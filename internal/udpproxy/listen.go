package udpproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// ErrWildcard is returned by Listen for 0.0.0.0 and ::. Replies must leave
// from the address the client sent to, and a socket bound to a specific
// address guarantees that without per-datagram IP_PKTINFO; listen once per
// address instead.
var ErrWildcard = errors.New("a UDP service needs a specific listen address, not a wildcard (replies must come from the address clients sent to)")

// Listen opens a non-blocking UDP socket bound to addr with SO_REUSEPORT,
// so that each loop can have its own socket on the same address and the
// kernel hashes each client's 4-tuple to one of them, and returns the fd
// and the bound address (the port filled in when addr's port is 0). An IPv6
// socket is IPv6-only. socketBuffer, when positive, is asked for as
// SO_RCVBUF and SO_SNDBUF, best effort. Wildcard addresses are refused with
// ErrWildcard.
func Listen(addr netip.AddrPort, socketBuffer int) (int, netip.AddrPort, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() {
		return -1, addr, fmt.Errorf("listen on %s: %w", addr, ErrWildcard)
	}
	sa, family := sockaddrOf(addr)
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, addr, fmt.Errorf("listen on %s: %w", addr, os.NewSyscallError("socket", err))
	}
	fail := func(what string, err error) (int, netip.AddrPort, error) {
		unix.Close(fd)
		return -1, addr, fmt.Errorf("listen on %s: %w", addr, os.NewSyscallError(what, err))
	}
	// No SO_REUSEADDR: for UDP it would let an unrelated socket bind the
	// same address and take datagrams; SO_REUSEPORT is limited to sockets
	// of the same user.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("setsockopt SO_REUSEPORT", err)
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail("setsockopt IPV6_V6ONLY", err)
		}
	}
	if socketBuffer > 0 {
		setBuffer(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, socketBuffer)
		setBuffer(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, socketBuffer)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	return fd, addrPortOf(got), nil
}

// setBuffer sets a socket buffer size, first with the privileged option that
// ignores net.core.[rw]mem_max, then with the capped one. Failure keeps the
// default: a smaller buffer only means drops under bursts, and those are
// counted.
func setBuffer(fd, force, plain, size int) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size) == nil {
		return
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, size)
}
