package testsrv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
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
