package testsrv

import (
	"context"
	"testing"
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
