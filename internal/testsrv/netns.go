package testsrv

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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

// ownNetnsEnv is set, in a test binary that InOwnNetns runs again, to the
// name of the test it runs it for.
const ownNetnsEnv = "SLUICE_TEST_OWN_NETNS"

var ownNetnsCount atomic.Int32

// InOwnNetns runs t's test alone in a network namespace of its own, with
// only its loopback, up: for a test that takes what a namespace has one of,
// such as the XDP program of lo, which a test of another package, run by go
// test in another process at the same time, could want too. In the test
// binary go test started, it creates the namespace, runs the test binary
// again there (ip netns exec) with just t's test, and returns false: the
// test returns at once, failed if that run failed (its output is logged,
// and shown with -v when it passed), skipped if it skipped. In the test
// binary it started, it returns true: the test's body runs there. It skips
// t unless it runs as root, with ip; why says what the test does as root,
// for the skip message.
func InOwnNetns(t *testing.T, why string) bool {
	t.Helper()
	if os.Getenv(ownNetnsEnv) == t.Name() {
		return true
	}
	RequireNetns(t, why)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("sl-own-%d-%d", os.Getpid(), ownNetnsCount.Add(1))
	Netns(t, ns, nil)
	elems := strings.Split(t.Name(), "/")
	for i, e := range elems {
		elems[i] = "^" + regexp.QuoteMeta(e) + "$"
	}
	args := []string{"netns", "exec", ns, exe, "-test.run=" + strings.Join(elems, "/"), "-test.count=1", "-test.v"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	if d, ok := t.Deadline(); ok {
		// Its own timeout ends it first, with its goroutines' stacks.
		args = append(args, "-test.timeout="+max(time.Until(d)*9/10, time.Second).String())
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), ownNetnsEnv+"="+t.Name())
	// ip netns exec execs the test binary in place: it dies with this one.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second // should a process it left hold the output
	out, err := cmd.CombinedOutput()
	t.Logf("run in network namespace %s:\n%s", ns, out)
	switch {
	case err != nil:
		t.Fatalf("the run in network namespace %s: %v", ns, err)
	case bytes.Contains(out, []byte("--- SKIP: "+t.Name()+" ")):
		t.Skipf("skipped in network namespace %s (its output above says why)", ns)
	case !bytes.Contains(out, []byte("--- PASS: "+t.Name()+" ")):
		t.Fatalf("the run in network namespace %s did not run %s", ns, t.Name())
	}
	return false
}
