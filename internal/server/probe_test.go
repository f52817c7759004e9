package server

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/handoff"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// reusePortSocket binds a socket with SO_REUSEPORT on 127.0.0.1, as
// another sluice would, and returns its address.
func reusePortSocket(t *testing.T, typ int) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
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
			taken := reusePortSocket(t, tc.typ)
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

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := checkFree("tcp", addr); !errors.Is(err, errInUse) {
		t.Errorf("a listening port: %v, want errInUse", err)
	}
	if err := checkFree("udp", addr); err != nil {
		t.Errorf("UDP on a TCP listener's port: %v", err)
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

// TestRenamedServiceUpgrade: an upgrade whose configuration renamed a
// service keeps its address; the predecessor's socket there is sluice's
// own, handed over under the old name, so the new one may bind beside it.
func TestRenamedServiceUpgrade(t *testing.T) {
	backend := testsrv.StartTB(t, testsrv.Echo, "tcp")
	held := reusePortSocket(t, unix.SOCK_STREAM)
	// The handed-over copy: what the predecessor would pass.
	ln, err := net.Listen("tcp", "127.0.0.1:0") // any socket to stand for the old name's fd
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	// New owns what is handed over (it closes the sockets no service
	// claims): give it a descriptor of its own.
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	cfg := parse(t, "--listen", held.String(), "--backend", backend.Addr().String())
	s, err := New(cfg, zap.NewNop(), Options{Inherited: []handoff.Socket{
		{Kind: handoff.KindListener, Service: "old-name", Proto: "tcp", Addr: held.String(), FD: fd},
	}})
	if err != nil {
		t.Fatalf("New beside the predecessor's socket for a renamed service: %v", err)
	}
	s.release()
}
