package server

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/handoff"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// reusePortSocket binds a socket with SO_REUSEPORT on 127.0.0.1:port (port
// 0: the kernel picks), as another sluice would, and returns its address.
func reusePortSocket(t *testing.T, typ int, port uint16) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(port)}); err != nil {
		t.Fatal(err)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
}

// TestSecondInstanceRefused starts a server on an address where another
// process's SO_REUSEPORT socket already is: without the check it would
// silently share the port; with it, New fails and says why.
func TestSecondInstanceRefused(t *testing.T) {
	backend := testsrv.StartTB(t, testsrv.Echo, "tcp")
	for _, tc := range []struct {
		proto string
		typ   int
	}{{"tcp", unix.SOCK_STREAM}, {"udp", unix.SOCK_DGRAM}} {
		t.Run(tc.proto, func(t *testing.T) {
			taken := reusePortSocket(t, tc.typ, 0)
			cfg := parse(t, "--proto", tc.proto, "--listen", taken.String(), "--backend", backend.Addr().String())
			s, err := New(cfg, zap.NewNop(), Options{})
			if err == nil {
				s.release()
				t.Fatalf("New on %s/%s, held by another SO_REUSEPORT socket, succeeded", taken, tc.proto)
			}
			if !errors.Is(err, errInUse) || !strings.Contains(err.Error(), taken.String()) {
				t.Fatalf("New: %v; want errInUse naming %s", err, taken)
			}
		})
	}
}

// TestCheckFree: a free port passes, port 0 always does, and the
// TIME_WAIT connections left on a port by an earlier listener do not make
// it taken.
func TestCheckFree(t *testing.T) {
	if err := checkFree("tcp", netip.MustParseAddrPort("127.0.0.1:0")); err != nil {
		t.Errorf("port 0: %v", err)
	}

	// The kernel picks the listener's port in the ephemeral range, where
	// another process's UDP socket can hold the same number: then checkFree
	// rightly finds UDP taken, and the test takes another port. A bind of
	// the test's own tells that case from a checkFree that mistakes the TCP
	// listener for a UDP socket.
	var ln net.Listener
	var addr netip.AddrPort
	for attempt := 1; ; attempt++ {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().(*net.TCPAddr).AddrPort()
		if err := checkFree("tcp", addr); !errors.Is(err, errInUse) {
			t.Errorf("a listening port: %v, want errInUse", err)
		}
		err = checkFree("udp", addr)
		if err == nil {
			break
		}
		if !errors.Is(err, errInUse) {
			t.Fatalf("UDP on a TCP listener's port: %v", err)
		}
		if udpBindable(t, addr) {
			// Free for a bind: the socket checkFree met has gone since,
			// or checkFree is wrong, and then it is wrong again.
			if err := checkFree("udp", addr); err != nil {
				t.Fatalf("UDP on a TCP listener's port, where a UDP bind succeeds: %v", err)
			}
			break
		}
		ln.Close()
		if attempt == 10 {
			t.Fatalf("UDP on a TCP listener's port: another socket's on each of %d ports", attempt)
		}
		t.Logf("UDP port %d is another socket's; trying another port", addr.Port())
	}
	// The server side closes first, so its end of the connection, on the
	// listening port, stays in TIME_WAIT.
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()
	io.Copy(io.Discard, c) // the server's FIN
	c.Close()
	ln.Close()
	if err := checkFree("tcp", addr); err != nil {
		t.Errorf("a port with only TIME_WAIT connections left: %v", err)
	}
}

// udpBindable reports whether a UDP socket can bind addr now: false when
// another socket holds it.
func udpBindable(t *testing.T, addr netip.AddrPort) bool {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if errors.Is(err, unix.EADDRINUSE) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	return true
}

// standIn returns a descriptor of a throwaway socket to stand for the one
// an upgrade's predecessor hands over under another name or address. New
// owns what is handed over (it closes the sockets no service claims), so
// the descriptor is the caller's to give away.
func standIn(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestRenamedServiceUpgrade: an upgrade whose configuration renamed a
// service keeps its address; the predecessor's socket there, handed over
// under the old name, is taken over rather than closed (with the
// connections in its accept queue), and the second loop's socket joins it;
// the states of its backends (a drain) are taken over too.
func TestRenamedServiceUpgrade(t *testing.T) {
	backend := testsrv.StartTB(t, testsrv.Echo, "tcp")
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	held := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port))
	given, err := unix.Dup(fd) // New owns what is handed over
	if err != nil {
		t.Fatal(err)
	}
	cfg := parse(t, "--listen", held.String(), "--backend", backend.Addr().String(), "--workers", "2")
	s, err := New(cfg, zap.NewNop(), Options{Inherited: Inheritance{
		Sockets: []handoff.Socket{
			{Kind: handoff.KindListener, Service: "old-name", Proto: "tcp", Addr: held.String(), FD: given},
		},
		Backends: []handoff.Backend{{Service: "old-name", Addr: backend.Addr().String(), Drained: true}},
	}})
	if err != nil {
		t.Fatalf("New with the predecessor's socket for a renamed service: %v", err)
	}
	defer s.release()
	// Its backends' states come with the sockets.
	if got := s.Service("default").Info()[0].State; got != balancer.StateDraining {
		t.Errorf("the backend drained under the old name: %s, want draining", got)
	}
	// The handed-over socket and one new one; three if it was not taken.
	if got := testsrv.ListenInodes(t, port); len(got) != 2 {
		t.Fatalf("sockets listening on %s: %v, want 2", held, got)
	}
}

// freeFixedPort returns a TCP port below the kernel's ephemeral range
// (32768 and up by default) that is free on every address: a port picked
// by the kernel could be given to another test's outgoing connection
// before this test binds it, and then the check would rightly refuse it.
func freeFixedPort(t *testing.T) uint16 {
	t.Helper()
	for range 100 {
		port := uint16(20000 + rand.IntN(12000))
		if checkFree("tcp", netip.AddrPortFrom(netip.IPv4Unspecified(), port)) == nil {
			return port
		}
	}
	t.Fatal("no free port in 20000-32000")
	return 0
}

// TestOwnOverlappingServices: one service on the wildcard and one on a
// specific address of the same port, in one configuration, are both
// sluice's: the check must not take the first for a stranger.
func TestOwnOverlappingServices(t *testing.T) {
	backend := testsrv.StartTB(t, testsrv.Echo, "tcp")
	port := freeFixedPort(t)
	conf := fmt.Sprintf("[service any]\nlisten 0.0.0.0:%d\nbackend %s\n[service vip]\nlisten 127.0.0.1:%d\nbackend %s\n",
		port, backend.Addr(), port, backend.Addr())
	path := filepath.Join(t.TempDir(), "sluice.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(parse(t, "--config", path), zap.NewNop(), Options{})
	if err != nil {
		t.Fatalf("New with a wildcard and a specific service on port %d: %v", port, err)
	}
	s.release()
}

// TestUpgradeMovesToWildcard: an upgrade whose configuration moves a
// service from a specific address to the wildcard of the same port binds
// beside the predecessor's socket, which is handed over.
func TestUpgradeMovesToWildcard(t *testing.T) {
	backend := testsrv.StartTB(t, testsrv.Echo, "tcp")
	// The predecessor's, on 127.0.0.1. Its port is below the ephemeral
	// range: a kernel-picked one can be in TIME_WAIT on another loopback
	// address from another test's client, which a wildcard bind meets.
	held := reusePortSocket(t, unix.SOCK_STREAM, freeFixedPort(t))
	fd := standIn(t)
	wild := netip.AddrPortFrom(netip.IPv4Unspecified(), held.Port())
	cfg := parse(t, "--listen", wild.String(), "--backend", backend.Addr().String())
	s, err := New(cfg, zap.NewNop(), Options{Inherited: Inheritance{Sockets: []handoff.Socket{
		{Kind: handoff.KindListener, Service: "default", Proto: "tcp", Addr: held.String(), FD: fd},
	}}})
	if err != nil {
		t.Fatalf("New on %v beside the predecessor's %v: %v", wild, held, err)
	}
	s.release()
}

func TestOverlaps(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1:80", "127.0.0.1:80", true},
		{"127.0.0.1:80", "127.0.0.1:81", false},
		{"127.0.0.1:80", "127.0.0.2:80", false},
		{"0.0.0.0:80", "127.0.0.1:80", true},
		{"127.0.0.1:80", "0.0.0.0:80", true},
		{"[::]:80", "127.0.0.1:80", false}, // IPv6-only listeners
		{"[::]:80", "[::1]:80", true},
		{"[::ffff:127.0.0.1]:80", "127.0.0.1:80", true},
	} {
		if got := overlaps(ap(tc.a), ap(tc.b)); got != tc.want {
			t.Errorf("overlaps(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
	if overlaps(netip.AddrPort{}, ap("0.0.0.0:0")) {
		t.Error("an unset address overlaps")
	}
}

// TestBindLockSerialises: a second process's probe and binds of a port wait
// for the first's to finish, so two sluices started together cannot both
// find the port free. Other ports and protocols do not wait.
func TestBindLockSerialises(t *testing.T) {
	const port = 47931 // only named: the lock is an abstract unix socket
	release, err := bindLock("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []struct {
		proto string
		port  uint16
	}{{"udp", port}, {"tcp", port + 1}} {
		r, err := bindLock(other.proto, other.port)
		if err != nil {
			t.Fatalf("%s/%d waited for tcp/%d: %v", other.proto, other.port, port, err)
		}
		r()
	}
	var released atomic.Bool
	got := make(chan bool, 1)
	go func() {
		r, err := bindLock("tcp", port)
		if err != nil {
			t.Error(err)
		}
		got <- released.Load()
		r()
	}()
	// A lock that does not wait returns within this time.
	select {
	case <-got:
		t.Fatal("the second bindLock returned while the first held the lock")
	case <-time.After(100 * time.Millisecond):
	}
	released.Store(true)
	release()
	if !<-got {
		t.Fatal("the second bindLock returned before the first released")
	}
}
