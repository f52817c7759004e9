package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// proc is a sluice process started from a copy of the test binary, whose
// JSON log lines (of it and of any successor it starts) are collected.
type proc struct {
	exe   string
	cmd   *os.Process
	lines chan map[string]any
}

// startCopy copies the test binary to a temp path (so the test can replace
// it) and starts it as sluice with args.
func startCopy(tb testing.TB, args ...string) *proc {
	tb.Helper()
	exe := filepath.Join(tb.TempDir(), "sluice")
	copyTestBinary(tb, exe)
	return startAt(tb, exe, args...)
}

// copyTestBinary writes a copy of the test binary to path.
func copyTestBinary(tb testing.TB, path string) {
	tb.Helper()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o755); err != nil {
		tb.Fatal(err)
	}
}

// startAt starts exe, a copy of the test binary or a path leading to one,
// as sluice with args.
func startAt(tb testing.TB, exe string, args ...string) *proc {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	attr := &os.ProcAttr{
		Env:   append(os.Environ(), "SLUICE_MAIN=1"),
		Files: []*os.File{nil, w, w},
	}
	p, err := os.StartProcess(exe, append([]string{exe, "--log-format", "json"}, args...), attr)
	w.Close()
	if err != nil {
		tb.Fatal(err)
	}
	pr := &proc{exe: exe, cmd: p, lines: make(chan map[string]any, 1024)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(pr.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				// A line that is not the logger's (a usage error,
				// a panic): kept as its own message, so that a test
				// waiting for a line it never gets can say what came.
				m = map[string]any{"msg": sc.Text()}
			}
			pr.lines <- m
		}
	}()
	tb.Cleanup(func() {
		p.Kill()
		p.Wait()
		r.Close()
		wg.Wait()
	})
	return pr
}

// waitLog returns the first log line whose msg is one of msgs.
func (p *proc) waitLog(tb testing.TB, msgs ...string) map[string]any {
	tb.Helper()
	deadline := time.After(30 * time.Second)
	var last []any // the messages before, newest last, for the failure
	for {
		select {
		case m, ok := <-p.lines:
			if !ok {
				tb.Fatalf("log ended before %q; its last lines: %q", msgs, last)
			}
			if msg, _ := m["msg"].(string); slices.Contains(msgs, msg) {
				return m
			}
			last = append(last[max(0, len(last)-4):], m["msg"])
		case <-deadline:
			tb.Fatalf("no %q log line within 30s; the last lines: %q", msgs, last)
		}
	}
}

// waitLogs waits until each of msgs has been logged, in any order, and
// returns the first line of each, by msg.
func (p *proc) waitLogs(tb testing.TB, msgs ...string) map[string]map[string]any {
	tb.Helper()
	got := map[string]map[string]any{}
	for len(got) < len(msgs) {
		var left []string
		for _, msg := range msgs {
			if got[msg] == nil {
				left = append(left, msg)
			}
		}
		m := p.waitLog(tb, left...)
		got[m["msg"].(string)] = m
	}
	return got
}

// started waits until p serves, and returns the address its (only)
// service listens on and its admin address ("" when off): those it bound,
// as it logs them, port 0 resolved. It waits for msgs too, lines that may
// come before those (a health check's).
//
// The tests start sluice on port 0 and learn its addresses here, rather
// than pick a free port and pass it on: a port found free, then closed, is
// in the kernel's ephemeral range, where any socket of a test running in
// parallel (a client's connect, another bind to port 0) can take it
// before sluice binds it, and sluice then exits at start. Port 0 holds
// across an upgrade: the successor takes the listening and admin sockets
// over by service, not by address.
func (p *proc) started(tb testing.TB, msgs ...string) (addr, admin string) {
	tb.Helper()
	lines := p.waitLogs(tb, append([]string{"sluice started", "service"}, msgs...)...)
	addr, _ = lines["service"]["listen"].(string)
	admin, _ = lines["sluice started"]["admin"].(string)
	if addr == "" {
		tb.Fatalf("no listening address in the service line %v", lines["service"])
	}
	return addr, admin
}

// waitExit waits for a process that is not our child, through a pidfd.
func waitExit(tb testing.TB, pid int) {
	tb.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // already gone
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	// poll is cut short with EINTR by any signal to this thread, such as
	// the Go runtime's preemption signal: go on until the deadline.
	for deadline := time.Now().Add(30 * time.Second); ; {
		left := time.Until(deadline)
		if left <= 0 {
			tb.Fatalf("process %d did not exit within 30s", pid)
		}
		n, err := unix.Poll(fds, int(left/time.Millisecond)+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			tb.Fatalf("wait for process %d: %v", pid, err)
		}
		if n == 1 {
			return
		}
	}
}

// startConnectLoad opens a new connection per round trip, from workers
// clients, until stopped.
func startConnectLoad(addr string, workers int) *testsrv.ConnectLoad {
	return testsrv.StartConnectLoad(testsrv.LoadConfig{Target: addr, Clients: workers, Msg: []byte("ping"), Rounds: 1000000})
}

// waitOK waits until l has made n more successful round trips.
func waitOK(tb testing.TB, l *testsrv.ConnectLoad, n int64) {
	tb.Helper()
	target := l.OK.Load() + n
	deadline := time.Now().Add(30 * time.Second)
	for l.OK.Load() < target {
		if time.Now().After(deadline) {
			tb.Fatalf("load stalled at %d round trips (%d failed: %v)", l.OK.Load(), l.Failed.Load(), l.FirstErr())
		}
		time.Sleep(5 * time.Millisecond) // polling a counter; no event to wait on
	}
}

// TestUpgradeUnderLoad: SIGUSR2 under continuous new-connection load hands
// the listening sockets to a new process; not one connection fails, the
// old process drains and exits 0, the new one serves.
func TestUpgradeUnderLoad(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--admin-addr", "127.0.0.1:0", "--drain-timeout", "10s")
	addr, admin := p.started(t)
	load := startConnectLoad(addr, 4)
	defer load.Stop()
	waitOK(t, load, 200)
	// A connection held open keeps the old process draining for a while.
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	held.SetDeadline(time.Now().Add(30 * time.Second))
	held.Write([]byte("held"))
	io.ReadFull(held, make([]byte, 4))

	if err := p.cmd.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	served := p.waitLog(t, "new process serves")
	child := int(served["pid"].(float64))
	// While it drains, the old process must be idle even though new
	// connections keep arriving on the sockets it handed over.
	before := cpuSeconds(t, p.cmd.Pid)
	time.Sleep(time.Second) // the span over which CPU is measured, not synchronisation
	if used := cpuSeconds(t, p.cmd.Pid) - before; used > 0.3 {
		t.Fatalf("the draining old process used %.2f s of CPU in 1 s", used)
	}
	held.Write([]byte("more"))
	if _, err := io.ReadFull(held, make([]byte, 4)); err != nil {
		t.Fatalf("connection held across the upgrade broke: %v", err)
	}
	held.Close()
	st, err := p.cmd.Wait()
	if err != nil || !st.Success() {
		t.Fatalf("old process: %v %v", st, err)
	}
	// Only the new process is left: it must carry the load on its own.
	waitOK(t, load, 300)
	load.Stop()
	if f := load.Failed.Load(); f != 0 {
		t.Fatalf("%d of %d connections failed across the upgrade; first: %v", f, f+load.OK.Load(), load.FirstErr())
	}
	// The admin endpoint moved too.
	c, err := net.Dial("tcp", admin)
	if err != nil {
		t.Fatalf("admin endpoint after the upgrade: %v", err)
	}
	c.Close()
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}

// A process draining after SIGTERM (or after an upgrade) ignores SIGHUP
// and SIGUSR2: they must not kill it and reset what it is finishing.
func TestDrainSurvivesReloadSignals(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--drain-timeout", "20s")
	addr, _ := p.started(t)
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(30 * time.Second))
	roundTrip := func(msg string) {
		t.Helper()
		if _, err := held.Write([]byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		if _, err := io.ReadFull(held, make([]byte, len(msg))); err != nil {
			t.Fatalf("read %q back: %v", msg, err)
		}
	}
	roundTrip("before")
	if err := p.cmd.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "draining connections")
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR2} {
		if err := p.cmd.Signal(sig); err != nil {
			t.Fatalf("%v: %v", sig, err)
		}
	}
	roundTrip("during the drain")
	held.Close()
	st, err := p.cmd.Wait()
	if err != nil || !st.Success() {
		t.Fatalf("draining process: %v %v, want a clean exit once the held connection closed", st, err)
	}
}

// childrenOf lists the pids whose parent is ppid, from /proc/*/stat. It
// reads only the pids above ppid's (a child started later gets a higher
// pid unless pids wrapped around), to be quick enough to find a child in
// its first milliseconds.
func childrenOf(ppid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= ppid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after
		// its closing parenthesis.
		i := strings.LastIndexByte(string(b), ')')
		if f := strings.Fields(string(b[i+1:])); i > 0 && len(f) > 1 {
			if p, _ := strconv.Atoi(f[1]); p == ppid {
				out = append(out, pid)
			}
		}
	}
	return out
}

// An upgrade's successor must survive a SIGHUP in its first milliseconds,
// before its own init could ignore it (a `pkill -HUP sluice` during an
// upgrade): the old process starts it with SIGHUP ignored. The test sends
// SIGHUP to every child of the old process, over and over, from before the
// upgrade until the successor serves.
func TestUpgradeSuccessorSurvivesEarlySIGHUP(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--drain-timeout", "1s")
	addr, _ := p.started(t)
	stop := make(chan struct{})
	hit := make(chan int, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sent := 0
		defer func() { hit <- sent }()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
			select {
			case <-stop:
				return
			default:
			}
			for _, pid := range childrenOf(p.cmd.Pid) {
				if syscall.Kill(pid, syscall.SIGHUP) == nil {
					sent++
				}
			}
		}
	}()
	if err := p.cmd.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	var child int
	for child == 0 {
		select {
		case m, ok := <-p.lines:
			if !ok {
				t.Fatal("the old process ended before the upgrade finished")
			}
			switch m["msg"] {
			case "new process serves":
				child = int(m["pid"].(float64))
			case "upgrade failed, this process keeps serving":
				close(stop)
				wg.Wait()
				t.Fatalf("upgrade failed under SIGHUPs to the successor (%d sent): %v", <-hit, m["error"])
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no upgrade outcome in 30 s")
		}
	}
	close(stop)
	wg.Wait()
	if n := <-hit; n == 0 {
		t.Fatal("no SIGHUP reached the successor while it started: the test proved nothing")
	}
	// Serving, it takes SIGHUP as a reload, not as its end.
	if err := syscall.Kill(child, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("ping"))
	_, err = io.ReadFull(c, make([]byte, 4))
	c.Close()
	if err != nil {
		t.Fatalf("the successor does not serve after a SIGHUP: %v", err)
	}
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}

// TestStopDuringUpgrade: a SIGTERM to the old process while its successor
// is still starting ends the upgrade. The successor is told to stop too,
// so nothing is left serving after a stop (under systemd it would outlive
// the service until the stop timeout's SIGKILL).
func TestStopDuringUpgrade(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--drain-timeout", "5s")
	addr, _ := p.started(t)
	// The new release starts slowly: a wrapper that records its pid, waits
	// a second, then runs the real binary (exec keeps the pid). The sleep
	// does not get the handoff socket (fd 3): sockets in flight on it would
	// stay open, and listening, for as long as any process holds it.
	real, pidFile := p.exe+".real", p.exe+".pid"
	data, err := os.ReadFile(p.exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(real, data, 0o755); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\necho $$ > %s.tmp && mv %s.tmp %s\nsleep 1 3>&-\nexec %s \"$@\"\n", pidFile, pidFile, pidFile, real)
	if err := os.WriteFile(p.exe+".new", []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p.exe+".new", p.exe); err != nil {
		t.Fatal(err)
	}
	p.cmd.Signal(syscall.SIGUSR2)
	var child int
	for deadline := time.Now().Add(30 * time.Second); child == 0; {
		if b, err := os.ReadFile(pidFile); err == nil {
			child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			t.Fatal("the successor did not start within 30s")
		}
		time.Sleep(5 * time.Millisecond) // polling for a file; no event to wait on
	}
	p.cmd.Signal(syscall.SIGTERM)
	m := p.waitLog(t, "upgrade abandoned: this process is stopping")
	if e, _ := m["error"].(string); !strings.Contains(e, strconv.Itoa(child)) {
		t.Fatalf("error %q does not name the successor %d", e, child)
	}
	if st, err := p.cmd.Wait(); err != nil || !st.Success() {
		t.Fatalf("old process: %v %v, want a clean exit", st, err)
	}
	// The successor stops too; were it left serving, this would time out.
	waitExit(t, child)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("something still listens after the stop")
	}
}

// TestUpgradeRunsSymlinkTarget: a release made by repointing the symlink
// sluice was started by (current -> releases/v2) is what an upgrade runs;
// and the successor starts with SIGHUP and SIGUSR2 ignored, so neither can
// kill it before its Go runtime handles them. The new release is a wrapper
// script that records its pid and its ignored signals, then runs the
// binary.
func TestUpgradeRunsSymlinkTarget(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	dir := t.TempDir()
	for _, d := range []string{"v1", "v2"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	v1, v2 := filepath.Join(dir, "v1", "sluice"), filepath.Join(dir, "v2", "sluice")
	copyTestBinary(t, v1)
	status := filepath.Join(dir, "v2.status")
	script := fmt.Sprintf("#!/bin/sh\ngrep SigIgn /proc/$$/status > %s.tmp && mv %s.tmp %s\nexec %s \"$@\"\n", status, status, status, v1)
	if err := os.WriteFile(v2, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(dir, "sluice")
	if err := os.Symlink(v1, current); err != nil {
		t.Fatal(err)
	}
	p := startAt(t, current, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--drain-timeout", "1s")
	p.started(t)
	if err := os.Symlink(v2, current+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(current+".new", current); err != nil {
		t.Fatal(err)
	}
	p.cmd.Signal(syscall.SIGUSR2)
	m := p.waitLog(t, "new process serves")
	child := int(m["pid"].(float64))
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	b, err := os.ReadFile(status)
	if err != nil {
		t.Fatalf("the upgrade did not run the symlink's new target: %v", err)
	}
	var ign uint64
	if _, err := fmt.Sscanf(string(b), "SigIgn: %x", &ign); err != nil {
		t.Fatalf("status %q: %v", b, err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR2} {
		if ign&(1<<(sig-1)) == 0 {
			t.Errorf("the successor started with %v not ignored (SigIgn %016x)", sig, ign)
		}
	}
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}

// TestUpgradeFailureKeepsServing: when the binary on disk cannot start,
// the running process logs why and keeps serving.
func TestUpgradeFailureKeepsServing(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String())
	addr, _ := p.started(t)
	// A broken release: the new binary exits at once.
	tmp := p.exe + ".new"
	if err := os.WriteFile(tmp, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p.exe); err != nil {
		t.Fatal(err)
	}
	p.cmd.Signal(syscall.SIGUSR2)
	m := p.waitLog(t, "upgrade failed, this process keeps serving")
	if e, _ := m["error"].(string); !strings.Contains(e, "new process") {
		t.Fatalf("error %q", e)
	}
	load := startConnectLoad(addr, 1)
	waitOK(t, load, 20)
	load.Stop()
	if load.Failed.Load() != 0 {
		t.Fatalf("connections failed after a failed upgrade: %v", load.FirstErr())
	}
	p.cmd.Signal(syscall.SIGTERM)
	if st, err := p.cmd.Wait(); err != nil || !st.Success() {
		t.Fatalf("exit after SIGTERM: %v %v", st, err)
	}
}

// TestUpgradeWithFirewall: the XDP link is handed over too; the new
// process swaps its program in, so the deny rule holds across the upgrade
// and no allowed connection fails. Needs root (loads BPF, attaches to lo).
// It runs in a network namespace of its own: lo has room for one XDP
// program, and other packages' tests attach theirs to their lo.
func TestUpgradeWithFirewall(t *testing.T) {
	if !testsrv.InOwnNetns(t, "loads an XDP program and attaches it to lo") {
		return
	}
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--xdp-iface", "lo", "--xdp-mode", "generic",
		"--deny-cidr", "127.0.0.77/32", "--drain-timeout", "10s")
	addr, _ := p.started(t)
	denied := func() bool {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 77)}, Timeout: 300 * time.Millisecond}
		c, err := d.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	}
	if !denied() {
		t.Fatal("denied source connected before the upgrade")
	}
	load := startConnectLoad(addr, 2)
	defer load.Stop()
	waitOK(t, load, 100)
	p.cmd.Signal(syscall.SIGUSR2)
	served := p.waitLog(t, "new process serves")
	child := int(served["pid"].(float64))
	if st, err := p.cmd.Wait(); err != nil || !st.Success() {
		t.Fatalf("old process: %v %v", st, err)
	}
	waitOK(t, load, 100)
	load.Stop()
	if f := load.Failed.Load(); f != 0 {
		t.Fatalf("%d connections failed across the upgrade: %v", f, load.FirstErr())
	}
	if !denied() {
		t.Fatal("denied source connected after the upgrade: the firewall was not carried over")
	}
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}

// TestUpgradeNotifiesSystemd: under a service manager (NOTIFY_SOCKET), the
// old process hands the main-pid role to its successor with MAINPID= and
// waits on a BARRIER before it exits, as systemd needs to keep the service.
func TestUpgradeNotifiesSystemd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String())
	p.started(t)
	p.cmd.Signal(syscall.SIGUSR2)
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	buf, oob := make([]byte, 256), make([]byte, 256)
	n, _, _, _, err := nc.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	mainpid := string(buf[:n])
	n, oobn, _, _, err := nc.ReadMsgUnix(buf, oob)
	if err != nil || string(buf[:n]) != "BARRIER=1" {
		t.Fatalf("second message %q, %v; want BARRIER=1", buf[:n], err)
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	if len(msgs) != 1 {
		t.Fatal("BARRIER=1 without a descriptor")
	}
	fds, _ := unix.ParseUnixRights(&msgs[0])
	for _, fd := range fds {
		unix.Close(fd) // releases the barrier, as systemd does
	}
	served := p.waitLog(t, "new process serves")
	child := int(served["pid"].(float64))
	if want := "MAINPID=" + strconv.Itoa(child); mainpid != want {
		t.Fatalf("first message %q, want %q", mainpid, want)
	}
	if st, err := p.cmd.Wait(); err != nil || !st.Success() {
		t.Fatalf("old process: %v %v", st, err)
	}
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}

// backendStates returns the state of each backend of service svc, by
// address, from the admin endpoint's GET /backends.
func backendStates(tb testing.TB, admin, svc string) map[string]string {
	tb.Helper()
	resp, err := http.Get("http://" + admin + "/backends")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var services []struct {
		Service  string `json:"service"`
		Backends []struct {
			Address string `json:"address"`
			State   string `json:"state"`
		} `json:"backends"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&services); err != nil {
		tb.Fatalf("GET /backends: %v", err)
	}
	out := map[string]string{}
	for _, s := range services {
		for _, b := range s.Backends {
			if s.Service == svc {
				out[b.Address] = b.State
			}
		}
	}
	return out
}

// TestUpgradeKeepsBackendStates: an upgrade hands the backends' states to
// the new process, as HAProxy's server-state file does: right after it, the
// backend the operator drained is still draining (it took new connections
// again before) and the dead one is still down (it counted as up until
// --health-fall checks had failed). The new release's configuration checks
// once an hour and takes three failures, so that only the handed-over state
// can explain the down.
func TestUpgradeKeepsBackendStates(t *testing.T) {
	up := testsrv.StartTB(t, testsrv.Echo, "tcp")
	drained := testsrv.StartTB(t, testsrv.Echo, "tcp")
	dead := testsrv.RefusedAddr(t) // nothing listens: refused
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	write := func(interval string, fall int) {
		body := fmt.Sprintf("admin-addr 127.0.0.1:0\ndrain-timeout 5s\n[service web]\nlisten 127.0.0.1:0\nbackend %s\nbackend %s\nbackend %s\n"+
			"health-interval %s\nhealth-fall %d\n", up.Addr(), drained.Addr(), dead, interval, fall)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("50ms", 1)
	p := startCopy(t, "--config", conf)
	// The dead one, at its first check. The checks start as the process
	// serves: the admin endpoint answers what follows, SIGUSR2 included.
	_, admin := p.started(t, "backend down")
	resp, err := http.Post("http://"+admin+"/backends/"+drained.Addr().String()+"/drain", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("drain: %s", resp.Status)
	}
	want := map[string]string{up.Addr().String(): "up", drained.Addr().String(): "draining", dead: "down"}
	if got := backendStates(t, admin, "web"); !maps.Equal(got, want) {
		t.Fatalf("before the upgrade: %v, want %v", got, want)
	}

	write("1h", 3) // the new release reads the file afresh
	if err := p.cmd.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	child := int(p.waitLog(t, "new process serves")["pid"].(float64))
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	// Once the old process is gone, only the new one answers on the
	// admin socket.
	if st, err := p.cmd.Wait(); err != nil || !st.Success() {
		t.Fatalf("old process: %v %v", st, err)
	}
	if got := backendStates(t, admin, "web"); !maps.Equal(got, want) {
		t.Fatalf("right after the upgrade: %v, want %v", got, want)
	}
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}

// cpuSeconds returns utime+stime of pid.
func cpuSeconds(tb testing.TB, pid int) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return float64(ut+st) / 100
}

// TestAcceptEMFILEDoesNotSpin: when accept(2) runs out of file descriptors
// sluice pauses accepting instead of spinning, logs it once, and serves
// again once descriptors are free.
func TestAcceptEMFILEDoesNotSpin(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--health-interval", "1h", "--max-conns", "100")
	addr, _ := p.started(t)
	pid := p.cmd.Pid
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Skipf("prlimit: %v", err)
	}
	// The limit caps descriptor numbers: set it to the lowest free one, so
	// the next accept fails.
	low := unix.Rlimit{Cur: uint64(freeFD(t, pid, 0)), Max: old.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 40; i++ { // the kernel completes the handshakes; sluice cannot accept them all
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	p.waitLog(t, "accept failing, pausing accepts")
	before := cpuSeconds(t, pid)
	time.Sleep(time.Second) // the span over which CPU is measured, not synchronisation
	if used := cpuSeconds(t, pid) - before; used > 0.3 {
		t.Fatalf("sluice used %.2f s of CPU in 1 s while out of descriptors: it spins", used)
	}
	// Free the descriptors: the waiting connections are served.
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
		t.Fatal(err)
	}
	last := conns[len(conns)-1]
	last.SetDeadline(time.Now().Add(10 * time.Second))
	last.Write([]byte("ping"))
	if _, err := io.ReadFull(last, make([]byte, 4)); err != nil {
		t.Fatalf("connection queued during the pause not served after: %v", err)
	}
}

// TestLocalFDShortageSparesBackend: when sluice can accept a client but not
// open the backend socket (out of descriptors), the backend is not blamed:
// no passive ejection, and the failure is counted as local.
func TestLocalFDShortageSparesBackend(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	p := startCopy(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(), "--health-interval", "1h",
		"--passive-fall", "2", "--admin-addr", "127.0.0.1:0")
	addr, admin := p.started(t)
	pid := p.cmd.Pid
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Skipf("prlimit: %v", err)
	}
	// Room for exactly one more descriptor: the accepted client's.
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(freeFD(t, pid, 1)), Max: old.Max}, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if errors.Is(err, syscall.ECONNRESET) {
			continue // sluice's reset beat the dialer's own check
		}
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 1)) // closed by sluice
		c.Close()
	}
	unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil)
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`sluice_connections_failed_total{reason="local_resources",service="default"} 4`,
		fmt.Sprintf(`sluice_backend_up{backend="%s",service="default"} 1`, echo.Addr()),
		fmt.Sprintf(`sluice_backend_connect_errors_total{backend="%s",service="default"} 0`, echo.Addr()),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// freeFD returns the (skip+1)-th lowest descriptor number pid has free: an
// open-file limit of that number leaves pid exactly skip descriptors.
func freeFD(tb testing.TB, pid, skip int) int {
	tb.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		tb.Fatal(err)
	}
	used := map[int]bool{}
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		used[n] = true
	}
	fd := 0
	for {
		for used[fd] {
			fd++
		}
		if skip == 0 {
			return fd
		}
		skip--
		fd++
	}
}

// A SIGHUP kills a process that does not handle it. sluice ignores it from
// package earlysig's init, before the heavy packages (gRPC, Prometheus,
// zap, cilium/ebpf, net/http) spend milliseconds in theirs;
// GODEBUG=inittrace=1 prints the order. This traces the test binary, whose
// imports are main's plus the test's: the order rule is the same.
func TestSignalsIgnoredEarlyInInit(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "--help")
	cmd.Env = append(os.Environ(), "SLUICE_MAIN=1", "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sluice --help: %v\n%s", err, out)
	}
	var order []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "init" {
			order = append(order, f[1])
		}
	}
	early := slices.Index(order, "github.com/sluice-lb/sluice/internal/earlysig")
	if early < 0 {
		t.Fatalf("no init of internal/earlysig in the trace of %d inits", len(order))
	}
	// A heavy package is one of these or a package under one, except
	// their small internal helpers (zap's buffer pool, say).
	heavy := func(pkg string) bool {
		for _, root := range []string{"google.golang.org/grpc", "github.com/prometheus", "go.uber.org/zap", "github.com/cilium/ebpf", "net/http"} {
			if (pkg == root || strings.HasPrefix(pkg, root+"/")) && !strings.Contains(pkg, "/internal/") {
				return true
			}
		}
		return false
	}
	seen := 0
	for i, pkg := range order {
		if !heavy(pkg) {
			continue
		}
		seen++
		if i < early {
			t.Errorf("%s initialises (#%d) before internal/earlysig (#%d)", pkg, i, early)
		}
	}
	if seen == 0 {
		t.Errorf("none of the heavy packages in the trace of %d inits", len(order))
	}
}

// TestUpgradeRenamedServiceKeepsSockets: a service renamed in the config
// file between the releases still takes its listening sockets over, so
// the connections waiting in their accept queues are not reset; before, it
// bound new ones and the old ones were closed.
func TestUpgradeRenamedServiceKeepsSockets(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	write := func(name, addr string) {
		body := fmt.Sprintf("workers 2\ndrain-timeout 1s\n[service %s]\nlisten %s\nbackend %s\n", name, addr, echo.Addr())
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("pg", "127.0.0.1:0")
	p := startCopy(t, "--config", conf)
	addr, _ := p.started(t)
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	before := testsrv.ListenInodes(t, port)
	if len(before) != 2 {
		t.Fatalf("listening sockets before the upgrade: %v, want 2", before)
	}
	// The new release's file names the address the service listens on (a
	// service on port 0 is taken over by its name, and a renamed one only
	// by its address).
	write("postgres", addr)
	p.cmd.Signal(syscall.SIGUSR2)
	m := p.waitLog(t, "taking over the listening sockets of a renamed service")
	if m["service"] != "postgres" || m["was"] != "pg" {
		t.Fatalf("log line %v", m)
	}
	m = p.waitLog(t, "new process serves")
	child := int(m["pid"].(float64))
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	if err := p.cmd.Signal(syscall.SIGTERM); err == nil {
		p.cmd.Wait()
	}
	if after := testsrv.ListenInodes(t, port); !slices.Equal(after, before) {
		t.Fatalf("listening sockets after the upgrade: %v, want the handed-over %v", after, before)
	}
	syscall.Kill(child, syscall.SIGTERM)
	waitExit(t, child)
}
