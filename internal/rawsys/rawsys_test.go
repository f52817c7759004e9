package rawsys

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// listen returns a non-blocking listening socket on addr (port 0) and its
// address.
func listen(t *testing.T, addr string) (int, netip.AddrPort) {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	fd, err := Socket(Family(ap), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Close(fd) })
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: ap.Addr().As16()}
	if Family(ap) == unix.AF_INET {
		sa = &unix.SockaddrInet4{Addr: ap.Addr().As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Skipf("cannot bind %s: %v", addr, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return fd, netip.AddrPortFrom(ap.Addr(), uint16(a.Port))
	case *unix.SockaddrInet6:
		return fd, netip.AddrPortFrom(ap.Addr(), uint16(a.Port))
	}
	t.Fatalf("getsockname: %T", got)
	return -1, netip.AddrPort{}
}

// accept waits (poll(2)) for one connection on the non-blocking listener
// fd and accepts it with Accept4.
func accept(t *testing.T, fd int) (int, netip.AddrPort) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Fatalf("no connection to accept: poll = %d, %v", n, err)
	}
	nfd, peer, err := Accept4(fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatalf("accept4: %v", err)
	}
	t.Cleanup(func() { Close(nfd) })
	return nfd, peer
}

// TestConnectAccept connects with Connect and accepts with Accept4 over
// IPv4 and IPv6: the accepted peer is the connecting socket's address.
func TestConnectAccept(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			lfd, lap := listen(t, addr)
			fd, err := Socket(Family(lap), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer Close(fd)
			if err := SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
				t.Fatal(err)
			}
			if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
				t.Fatalf("TCP_NODELAY = %d, %v after SetsockoptInt", v, err)
			}
			if err := Connect(fd, lap); err != nil && err != unix.EINPROGRESS {
				t.Fatalf("connect %v: %v", lap, err)
			}
			_, peer := accept(t, lfd)
			local, err := unix.Getsockname(fd)
			if err != nil {
				t.Fatal(err)
			}
			var want netip.AddrPort
			switch a := local.(type) {
			case *unix.SockaddrInet4:
				want = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
			case *unix.SockaddrInet6:
				want = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
			}
			if peer != want {
				t.Errorf("Accept4 peer = %v, want the client's %v", peer, want)
			}
		})
	}
}

// TestMappedPeer checks that an IPv4 client of a dual-stack IPv6 listener
// is reported as a plain IPv4 address.
func TestMappedPeer(t *testing.T) {
	lfd, lap := listen(t, "[::]:0")
	c, err := net.Dial("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), lap.Port()).String())
	if err != nil {
		t.Skipf("no dual-stack listener here: %v", err)
	}
	defer c.Close()
	_, peer := accept(t, lfd)
	if want := c.LocalAddr().(*net.TCPAddr).AddrPort(); peer != want {
		t.Errorf("peer = %v, want %v", peer, want)
	}
}

// TestShutdownAndLinger checks that Shutdown passes a FIN and that
// LingerZero turns Close into a reset.
func TestShutdownAndLinger(t *testing.T) {
	lfd, lap := listen(t, "127.0.0.1:0")
	c, err := net.Dial("tcp", lap.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sfd, _ := accept(t, lfd)
	if err := Shutdown(sfd, unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if n, err := c.Read(b[:]); n != 0 || err == nil || err.Error() != "EOF" {
		t.Fatalf("read after Shutdown = %d, %v; want EOF", n, err)
	}

	c2, err := net.Dial("tcp", lap.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	sfd2, _ := accept(t, lfd)
	if err := LingerZero(sfd2); err != nil {
		t.Fatal(err)
	}
	if err := Close(sfd2); err != nil {
		t.Fatal(err)
	}
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(b[:]); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after a linger-0 close = %v, want ECONNRESET", err)
	}
}

// TestErrors checks that failures come back as unix.Errno values.
func TestErrors(t *testing.T) {
	if err := Close(-1); err != unix.EBADF {
		t.Errorf("Close(-1) = %v, want EBADF", err)
	}
	if err := Shutdown(-1, unix.SHUT_WR); err != unix.EBADF {
		t.Errorf("Shutdown(-1) = %v, want EBADF", err)
	}
	if _, _, err := Accept4(-1, 0); err != unix.EBADF {
		t.Errorf("Accept4(-1) = %v, want EBADF", err)
	}
	if err := EpollCtl(-1, unix.EPOLL_CTL_DEL, 0, nil); err != unix.EBADF {
		t.Errorf("EpollCtl(-1) = %v, want EBADF", err)
	}
	if _, err := Socket(-1, unix.SOCK_STREAM, 0); err != unix.EAFNOSUPPORT && err != unix.EINVAL {
		t.Errorf("Socket(-1) = %v, want EAFNOSUPPORT", err)
	}
}

func TestByteOrder(t *testing.T) {
	for _, p := range []uint16{0, 1, 80, 0x1234, 65535} {
		if got := Ntohs(Htons(p)); got != p {
			t.Errorf("Ntohs(Htons(%d)) = %d", p, got)
		}
	}
	// Network order puts the high byte first in memory.
	b := Htons(0x1234)
	if bs := (*[2]byte)(unsafe.Pointer(&b)); bs[0] != 0x12 || bs[1] != 0x34 {
		t.Errorf("Htons(0x1234) is stored as % x, want 12 34", bs[:])
	}
}
