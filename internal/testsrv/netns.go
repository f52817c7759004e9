package testsrv

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireNetns skips tb unless it can create network namespaces: it must
// run as root, with iproute2's ip command. why says what the test does as
// root, for the skip message ("creates a network namespace").
func RequireNetns(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: " + why)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("needs iproute2's ip command")
	}
}

// IP runs iproute2's ip command with args and fails tb if it fails.
func IP(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Netns creates the network namespace name with its loopback up, and
// deletes it in tb.Cleanup. Deleting it destroys the links inside it, and
// the veth pairs they belong to, once no process is left in it: stop the
// processes started there in a cleanup registered after Netns, which runs
// first. etc holds files by base name ("resolv.conf", "hosts", …) that
// ip netns exec mounts over those of /etc for the processes it starts in
// the namespace; they are written to /etc/netns/name and removed in
// tb.Cleanup, with /etc/netns if Netns made it and it is empty then.
func Netns(tb testing.TB, name string, etc map[string]string) {
	tb.Helper()
	if len(etc) > 0 {
		const parent = "/etc/netns"
		if _, err := os.Stat(parent); errors.Is(err, fs.ErrNotExist) {
			tb.Cleanup(func() { os.Remove(parent) }) // once empty: it was not there before
		}
		dir := filepath.Join(parent, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { os.RemoveAll(dir) })
		for file, content := range etc {
			if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
				tb.Fatal(err)
			}
		}
	}
	IP(tb, "netns", "add", name)
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
	IP(tb, "-n", name, "link", "set", "lo", "up")
}
