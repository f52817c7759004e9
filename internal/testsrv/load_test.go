package testsrv

import (
	"net"
	"testing"
)

// TestConnectLoad: against an echo every round trip succeeds; against a
// closed port every one fails and is recorded with its error and time.
func TestConnectLoad(t *testing.T) {
	echo := StartTB(t, Echo, "tcp")
	l := StartConnectLoad(LoadConfig{Target: echo.Addr().String(), Clients: 2, Msg: []byte("hi"), Rounds: 50})
	l.Wait()
	if l.OK.Load() != 100 || l.Failed.Load() != 0 || l.FirstErr() != nil {
		t.Fatalf("against an echo: %d ok, %d failed (%v)", l.OK.Load(), l.Failed.Load(), l.FirstErr())
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	bad := StartConnectLoad(LoadConfig{Target: closed, Clients: 1, Msg: []byte("hi"), Rounds: 5})
	bad.Wait()
	bad.Stop()
	bad.Stop() // a second Stop is harmless
	if bad.OK.Load() != 0 || bad.Failed.Load() != 5 || bad.FirstErr() == nil || len(bad.FailedAt()) != 5 {
		t.Fatalf("against a closed port: %d ok, %d failed, %d times, first %v", bad.OK.Load(), bad.Failed.Load(), len(bad.FailedAt()), bad.FirstErr())
	}
}
