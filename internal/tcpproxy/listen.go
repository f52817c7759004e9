package tcpproxy

import (
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// Listen opens a non-blocking TCP listening socket on addr with
// SO_REUSEPORT, so that each loop can have its own socket on the same
// address and the kernel spreads new connections over them. It returns the
// fd and the bound address (the port filled in when addr's port is 0).
func Listen(addr netip.AddrPort, backlog int) (int, netip.AddrPort, error) {
	sa, family := sockaddrOf(addr)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, addr, os.NewSyscallError("socket", err)
	}
	fail := func(what string, err error) (int, netip.AddrPort, error) {
		unix.Close(fd)
		return -1, addr, fmt.Errorf("listen on %s: %w", addr, os.NewSyscallError(what, err))
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("setsockopt SO_REUSEADDR", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("setsockopt SO_REUSEPORT", err)
	}
	// Accepted sockets inherit TCP_NODELAY from the listener: the proxy
	// passes on its clients' writes as they come, without Nagle's delay.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return fail("setsockopt TCP_NODELAY", err)
	}
	if family == unix.AF_INET6 {
		// An IPv6 listener takes IPv6 only; listen on an IPv4 address for IPv4.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail("setsockopt IPV6_V6ONLY", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return fail("listen", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	return fd, addrPortOf(got), nil
}

// BoundAddr returns the address a socket is bound to.
func BoundAddr(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockname", err)
	}
	return addrPortOf(sa), nil
}
