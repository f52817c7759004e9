package server

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// errInUse is checkFree's error for an address another socket holds.
var errInUse = errors.New("address already in use by another socket (another sluice, or another server, is there)")

// checkFree reports an error when another socket already holds addr for
// proto ("tcp" or "udp"). The loops' sockets take SO_REUSEPORT, one per
// loop; a socket of the same user that also has it (a second sluice
// started by mistake) would join their group, and the kernel would share
// the connections or datagrams between the two processes without a word.
// A probe bound without SO_REUSEPORT fails where such a socket, or any
// other, is bound. For TCP the probe has SO_REUSEADDR, so that the
// TIME_WAIT connections of an earlier run do not count. Port 0 is always
// free.
func checkFree(proto string, addr netip.AddrPort) error {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if addr.Port() == 0 {
		return nil
	}
	typ := unix.SOCK_STREAM
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	if addr.Addr().Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("listen on %s/%s: %w", addr, proto, os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	if typ == unix.SOCK_STREAM {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}
	if family == unix.AF_INET6 {
		// As the listeners: IPv6 only.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if err := unix.Bind(fd, sa); err != nil {
		if err == unix.EADDRINUSE {
			return fmt.Errorf("listen on %s/%s: %w", addr, proto, errInUse)
		}
		return fmt.Errorf("listen on %s/%s: %w", addr, proto, os.NewSyscallError("bind", err))
	}
	return nil
}

// bindLockWait bounds how long bindLock waits for another process.
const bindLockWait = 2 * time.Second

// errBindLockBusy is bindLock's error when the lock stayed taken.
var errBindLockBusy = errors.New("another process held the bind lock for " + bindLockWait.String())

// bindLock serialises the probe and the binds of one port among the
// processes of a network namespace. Without it, two sluices started
// together could both find the port free before either binds, and then
// share one SO_REUSEPORT group. The lock is an abstract unix socket named
// after the protocol and port (not the address, so that a wildcard and a
// specific address also wait for each other); the kernel frees it when
// its holder exits, however that happens. A lock still taken after
// bindLockWait (a stuck process) is not waited for: bindLock returns
// errBindLockBusy and a release that does nothing, and the probe runs
// anyway.
func bindLock(proto string, port uint16) (release func(), err error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return func() {}, os.NewSyscallError("socket", err)
	}
	sa := &unix.SockaddrUnix{Name: fmt.Sprintf("@sluice-bind/%s/%d", proto, port)}
	deadline := time.Now().Add(bindLockWait)
	for {
		err = unix.Bind(fd, sa)
		if err == nil {
			return func() { unix.Close(fd) }, nil
		}
		if err != unix.EADDRINUSE {
			unix.Close(fd)
			return func() {}, os.NewSyscallError("bind", err)
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return func() {}, errBindLockBusy
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// protoAddr is a listening address of a protocol ("tcp" or "udp").
type protoAddr struct {
	proto string
	addr  netip.AddrPort
}

// ownListener reports whether another service of this process, or a
// listener the predecessor of an upgrade handed over, already listens for
// sv's protocol on an address that overlaps addr. The probe would fail on
// those sockets, which are sluice's own: a wildcard service and a specific
// one on the same port, a service renamed or moved between the wildcard
// and a specific address by an upgrade.
func (s *Server) ownListener(sv *service, addr netip.AddrPort) bool {
	for _, o := range s.services {
		if o != sv && o.cfg.Proto == sv.cfg.Proto && overlaps(o.addr, addr) {
			return true
		}
	}
	for _, h := range s.handedOver {
		if h.proto == sv.cfg.Proto && overlaps(h.addr, addr) {
			return true
		}
	}
	return false
}

// overlaps reports whether sockets bound to a and b would conflict: the
// same port, and the same address or a wildcard of the same family (the
// listeners are IPv6-only, so :: does not cover IPv4).
func overlaps(a, b netip.AddrPort) bool {
	if !a.IsValid() || !b.IsValid() || a.Port() != b.Port() {
		return false
	}
	x, y := a.Addr().Unmap(), b.Addr().Unmap()
	if x == y {
		return true
	}
	return x.Is4() == y.Is4() && (x.IsUnspecified() || y.IsUnspecified())
}
