package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/handoff"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestSuccessorStoppedBeforeReady: an upgrade's new process that is told
// to stop (SIGTERM) before it reports ready may already have accepted
// connections, on the listening sockets it shares with the old process.
// It drains them like any stop, and the old process keeps serving: it
// must not wait out the upgrade's 30 s and then kill the new one, which
// would cut them.
//
// The new process stays unready while its DNS discovery has no answer
// (up to the DNS timeout and a second): the namespace's resolv.conf names
// a DNS server on loopback that never answers. Its backend differs from
// the old process's, so the backend a connection reaches tells which
// process accepted it.
func TestSuccessorStoppedBeforeReady(t *testing.T) {
	bin, ns := loopbackNetns(t, "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n")
	const (
		listen = "127.0.0.1:7000"
		oldBE  = "127.0.0.1:7001"
		newBE  = "127.0.0.1:7002"
	)
	var silentDNS net.PacketConn
	var oldBackend, newBackend *testsrv.Server
	if err := inNetns(ns, func() error {
		var err error
		if silentDNS, err = net.ListenPacket("udp", "127.0.0.1:53"); err != nil {
			return err
		}
		if oldBackend, err = testsrv.Start(context.Background(), testsrv.Config{Kind: testsrv.Echo, Addr: oldBE}); err != nil {
			return err
		}
		newBackend, err = testsrv.Start(context.Background(), testsrv.Config{Kind: testsrv.Echo, Addr: newBE})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		silentDNS.Close()
		oldBackend.Close()
		if newBackend != nil {
			newBackend.Close()
		}
	})

	conf := filepath.Join(t.TempDir(), "sluice.conf")
	write := func(backends string) {
		t.Helper()
		body := "drain-timeout 2m\n[service web]\nlisten " + listen + "\nhealth-check none\n" + backends
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("backend " + oldBE + "\n")
	old := startIn(t, ns, "sluice", bin.sluice, "--log-format", "json", "--config", conf)
	waitLogCount(t, old, "sluice started", 1)

	// The new release's configuration, read by the new process.
	write("backend " + newBE + "\nbackend-dns never.test:7002\n")
	if err := old.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	// Its loops run, and its DNS round has no answer: unready. Only then
	// is it the old process's one child: the first process the Go runtime
	// starts is preceded by a short-lived one of its own (a probe of
	// clone's CLONE_PIDFD, reaped before the start).
	waitLogCount(t, old, "sluice started", 2)
	var child int
	waitFor(t, "the new process", 10*time.Second, func() bool {
		kids := childrenOf(old.cmd.Process.Pid)
		if len(kids) == 1 {
			child = kids[0]
		}
		return child != 0
	})
	t.Cleanup(func() { stopPID(t, child) })
	var held net.Conn
	for deadline := time.Now().Add(3 * time.Second); held == nil; {
		if time.Now().After(deadline) {
			t.Fatal("no connection reached the new process within 3 s")
		}
		c, err := dialIn(ns, "tcp", "", listen, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(c, 3*time.Second); err != nil {
			c.Close()
			t.Fatal(err)
		}
		if newBackend.Stats().Active > 0 {
			held = c
			break
		}
		c.Close()
	}
	defer held.Close()
	if m := findLog(old, "new process serves"); m != nil {
		t.Fatalf("the new process reported ready before the test stopped it: %v", m)
	}

	if err := syscall.Kill(child, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	const abandoned = "upgrade abandoned: the new process was stopped; this process keeps serving"
	outcome := waitLog(t, old, 45*time.Second, abandoned, "upgrade failed, this process keeps serving", "new process serves")
	if outcome["msg"] != abandoned {
		t.Errorf("the old process logged %q (%v), want %q", outcome["msg"], outcome["error"], abandoned)
	}
	if err := roundTrip(held, 3*time.Second); err != nil {
		t.Errorf("the connection the stopped new process accepted: %v; it should drain", err)
	}
	before := oldBackend.Stats().Accepted
	if err := echoRoundTrip(ns, "", listen, 3*time.Second); err != nil {
		t.Errorf("a new connection after the new process stopped: %v", err)
	}
	if oldBackend.Stats().Accepted == before {
		t.Error("a new connection after the new process stopped did not reach the old process's backend")
	}
	// Its last connection closed, the new process's drain ends (a further
	// SIGTERM changes nothing there).
	held.Close()
	stopPID(t, child)
	if old.exited() {
		t.Fatalf("the old process exited: %v", old.exitErr)
	}
}

// TestSuccessorLeavesKeptSockets: an upgrade's new process that reported
// ready as its old process was stopped is stopped by it too; the old one
// drains reading the UDP sockets the two share, and says so first with a
// Keep frame. The new process must then drain without reading them, as
// after an upgrade: two readers would each take datagrams of the other's
// sessions, and drop them (a new client's, too, which the old process
// would drop anyway). The test plays the old process: it hands over a UDP
// socket it holds, takes the Ready frame, sends the Keep frame and
// SIGTERM, and reads from its socket what the new process leaves in it.
func TestSuccessorLeavesKeptSockets(t *testing.T) {
	bin, ns := loopbackNetns(t, "")
	const (
		listen = "127.0.0.1:7100"
		echoBE = "127.0.0.1:7101"
	)
	var held int
	var backend *testsrv.Server
	if err := inNetns(ns, func() error {
		var err error
		if backend, err = testsrv.Start(context.Background(), testsrv.Config{Kind: testsrv.Echo, Network: "udp", Addr: echoBE}); err != nil {
			return err
		}
		if held, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(held, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return err
		}
		return unix.Bind(held, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 7100})
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		backend.Close()
		unix.Close(held)
	})
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(pair[1]), "handoff-child")
	ours := os.NewFile(uintptr(pair[0]), "handoff")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		t.Fatal(err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))

	sl := startInWith(t, ns, "sluice", func(cmd *exec.Cmd) {
		cmd.Env = append(os.Environ(), "SLUICE_UPGRADE_FD=3")
		cmd.ExtraFiles = []*os.File{theirs}
	}, bin.sluice, "--log-format", "json", "--listen", listen, "--proto", "udp", "--backend", echoBE,
		"--workers", "1", "--health-check", "none", "--drain-timeout", "20s")
	theirs.Close()
	if err := handoff.Send(conn, []handoff.Socket{{Kind: handoff.KindListener, Service: "default", Proto: "udp", Addr: listen, FD: held}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := handoff.WaitReady(conn); err != nil {
		t.Fatalf("the new process did not report ready: %v", err)
	}
	session, err := dialIn(ns, "udp", "", listen, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	if err := roundTrip(session, 3*time.Second); err != nil { // the drain waits for this session
		t.Fatal(err)
	}

	// The Keep frame, as an old process writes it: a 4-byte length, then
	// the JSON.
	keep := []byte(`{"version":4,"keep":true}`)
	if _, err := conn.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(keep))), keep...)); err != nil {
		t.Fatal(err)
	}
	if err := sl.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLog(t, sl, 10*time.Second, "draining connections")
	newcomer, err := dialIn(ns, "udp", "", listen, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer newcomer.Close()
	if _, err := newcomer.Write([]byte("new")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a process reading the socket has read it by now
	if n, _, err := unix.Recvfrom(held, make([]byte, 64), unix.MSG_DONTWAIT); err != nil || n != 3 {
		t.Fatalf("the new client's datagram was not left in the socket for the old process (recvfrom: %d, %v): the new process read it", n, err)
	}
}

// loopbackNetns skips tb without root, builds the binaries, and creates a
// network namespace with loopback up and a resolv.conf of its own (ip
// netns exec mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf for
// the processes it starts), which tb.Cleanup removes.
func loopbackNetns(tb testing.TB, resolvConf string) (binaries, string) {
	tb.Helper()
	requireRoot(tb)
	bin := buildBinaries(tb)
	ns := fmt.Sprintf("sl-up-%d", os.Getpid())
	testsrv.Netns(tb, ns, map[string]string{"resolv.conf": resolvConf})
	return bin, ns
}

// childrenOf lists the children of pid, from /proc/PID/task/*/children.
func childrenOf(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// logLines returns p's JSON log lines whose msg is one of msgs, in order.
func logLines(p *proc, msgs ...string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(p.output(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && slices.Contains(msgs, fmt.Sprint(m["msg"])) {
			out = append(out, m)
		}
	}
	return out
}

// findLog returns p's first JSON log line whose msg is msg, or nil.
func findLog(p *proc, msg string) map[string]any {
	if l := logLines(p, msg); len(l) > 0 {
		return l[0]
	}
	return nil
}

// waitLog waits up to timeout for a JSON log line of p whose msg is one of
// msgs, and returns the first.
func waitLog(tb testing.TB, p *proc, timeout time.Duration, msgs ...string) map[string]any {
	tb.Helper()
	var l []map[string]any
	waitFor(tb, fmt.Sprintf("%s to log one of %q", p.name, msgs), timeout, func() bool {
		l = logLines(p, msgs...)
		return len(l) > 0
	})
	return l[0]
}

// waitLogCount waits until p (with the successors it starts, which share
// its output) has logged msg n times.
func waitLogCount(tb testing.TB, p *proc, msg string, n int) {
	tb.Helper()
	waitFor(tb, fmt.Sprintf("%s to log %q %d times", p.name, msg, n), 20*time.Second, func() bool {
		if p.exited() {
			tb.Fatalf("%s exited: %v", p.name, p.exitErr)
		}
		return len(logLines(p, msg)) >= n
	})
}
