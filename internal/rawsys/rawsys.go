// Package rawsys makes the few socket syscalls of a connection's life on an
// event loop (accept, socket, connect, setsockopt, epoll_ctl, shutdown,
// close) with RawSyscall, without the Go scheduler's bookkeeping.
//
// A plain syscall.Syscall tells the runtime that the thread may block: if
// it lasts more than about 20 µs, sysmon hands the thread's P to another
// thread, which then has to be woken (futex) and the P taken back. On a
// non-blocking socket none of these calls waits for anything, but a
// loopback connect(2) runs the whole handshake and close(2) the FIN, so
// they can exceed 20 µs. The loops also avoid x/sys/unix's Accept4, which
// asks for SO_PROTOCOL with a getsockopt(2) after every IPv4 accept (to
// tell L2TP sockets apart).
//
// Measured 2026-11-22 (strace -c over 5,000 connections of
// cmd/sluice-bench connect through sluice, 2 loops): 87,609 syscalls
// against 100,191 with the plain calls (sysmon's nanosleep 458 against
// 3,966; no getsockopt; together with the tcpproxy change that skips the
// redundant last shutdown, 5,000 shutdowns against 9,997); the proxy's CPU
// per connection fell by about 7% (three alternating rounds: 96.3, 95.4,
// 90.5 µs against 104.5, 97.5, 103.1).
//
// Only for non-blocking fds, on goroutines that own their thread (the
// loops): a raw syscall that blocked would stall its P.
package rawsys

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// Accept4 accepts a connection on the listening socket fd with flags and
// returns its fd and the peer's address (unmapped for an IPv4-mapped IPv6
// peer, zero for a family other than IPv4 and IPv6).
func Accept4(fd int, flags int) (int, netip.AddrPort, error) {
	var sa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n)), uintptr(flags), 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(r), AddrPortOf(&sa), nil
}

// AddrPortOf returns the address in a raw sockaddr written by the kernel.
func AddrPortOf(sa *unix.RawSockaddrAny) netip.AddrPort {
	switch sa.Addr.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), Ntohs(sa4.Port))
	case unix.AF_INET6:
		sa6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom16(sa6.Addr).Unmap(), Ntohs(sa6.Port))
	}
	return netip.AddrPort{}
}

// Socket creates a socket.
func Socket(family, typ, proto int) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), uintptr(typ), uintptr(proto))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// Family returns the address family of ap: AF_INET for an IPv4 address,
// else AF_INET6 (an IPv4-mapped address is reached through IPv6).
func Family(ap netip.AddrPort) int {
	if ap.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// Connect connects fd, a socket of Family(ap), to ap. On a non-blocking
// socket it returns unix.EINPROGRESS while the connection is being made.
func Connect(fd int, ap netip.AddrPort) error {
	if Family(ap) == unix.AF_INET {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Port: Htons(ap.Port()), Addr: ap.Addr().As4()}
		_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
		return errnoErr(e)
	}
	sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: Htons(ap.Port()), Addr: ap.Addr().As16()}
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet6)
	return errnoErr(e)
}

// SetsockoptInt sets an int socket option.
func SetsockoptInt(fd, level, opt, value int) error {
	v := int32(value)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), 4, 0)
	return errnoErr(e)
}

// LingerZero sets SO_LINGER to on with a zero timeout, so that closing fd
// sends RST instead of FIN.
func LingerZero(fd int) error {
	l := unix.Linger{Onoff: 1, Linger: 0}
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
	return errnoErr(e)
}

// Shutdown shuts down part of a full-duplex connection.
func Shutdown(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errnoErr(e)
}

// Close closes fd.
func Close(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return errnoErr(e)
}

// EpollCtl is epoll_ctl(2); ev may be nil for EPOLL_CTL_DEL.
func EpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return errnoErr(e)
}

// Ntohs and Htons convert the port of a raw sockaddr, stored in network
// byte order in a uint16 field.
func Ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

func Htons(p uint16) uint16 {
	var r uint16
	b := (*[2]byte)(unsafe.Pointer(&r))
	b[0], b[1] = byte(p>>8), byte(p)
	return r
}
