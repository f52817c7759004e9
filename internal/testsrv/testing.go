package testsrv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// StartTB starts a server of the given kind on a free loopback port of
// network ("tcp", "tcp6", "udp", …) for the test tb, and closes it with
// tb.Cleanup. It fails tb at once if the server cannot start.
func StartTB(tb testing.TB, kind Kind, network string) *Server {
	tb.Helper()
	s, err := Start(context.Background(), Config{Kind: kind, Network: network})
	if err != nil {
		tb.Fatalf("testsrv: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// RefusedAddr returns a loopback TCP address that refuses connections for
// as long as the test runs: a socket bound there without listening. It
// holds the port (without SO_REUSEADDR, no other socket can bind it, and
// connect's choice of a local port skips it), so that nothing can start
// listening there, as could on a port merely found free.
func RefusedAddr(tb testing.TB) string {
	tb.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
}

// ListenInodes returns the sorted inodes of the IPv4 TCP sockets listening
// on port, from /proc/net/tcp: which sockets, not which descriptors, so a
// socket handed from one process to another keeps its inode.
func ListenInodes(tb testing.TB, port int) []string {
	tb.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		tb.Fatal(err)
	}
	var inodes []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" || !strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) {
			continue
		}
		inodes = append(inodes, f[9])
	}
	slices.Sort(inodes)
	return inodes
}

// ReadUDP reads n datagrams at be, a test's UDP backend, within timeout,
// and returns where each came from and what it held, in the order they
// arrived. It fails tb at the first read error.
func ReadUDP(tb testing.TB, be *net.UDPConn, n int, timeout time.Duration) (froms []netip.AddrPort, data []string) {
	tb.Helper()
	buf := make([]byte, 64<<10)
	be.SetReadDeadline(time.Now().Add(timeout))
	for range n {
		k, from, err := be.ReadFromUDPAddrPort(buf)
		if err != nil {
			tb.Fatalf("backend: %v", err)
		}
		froms = append(froms, from)
		data = append(data, string(buf[:k]))
	}
	return froms, data
}
