package testsrv

import (
	"fmt"
	"net"
	"os"
	"testing"
)

// TestInOwnNetns: the test's body runs in a network namespace other than
// that of the test binary go test started, where loopback is the only
// interface.
func TestInOwnNetns(t *testing.T) {
	if !InOwnNetns(t, "creates a network namespace") {
		return
	}
	here, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs the test binary in place: its parent is the
	// test binary that InOwnNetns started it from.
	there, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", os.Getppid()))
	if err != nil {
		t.Fatal(err)
	}
	if here == there {
		t.Fatalf("the body runs in the starting test's network namespace, %s", here)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
		t.Fatalf("interfaces %v, want lo alone, up", ifs)
	}
}
