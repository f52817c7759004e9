package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// requireRoot skips tb unless it can create namespaces and load XDP
// programs.
func requireRoot(tb testing.TB) {
	tb.Helper()
	testsrv.RequireNetns(tb, "creates network namespaces and attaches XDP programs")
}

// binaries are the paths of the built commands.
type binaries struct {
	sluice string
	bench  string
}

// buildBinaries builds cmd/sluice and cmd/sluice-bench into a temporary
// directory, removed by tb.Cleanup.
func buildBinaries(tb testing.TB) binaries {
	tb.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		tb.Fatalf("needs the go command to build the binaries: %v", err)
	}
	dir := tb.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", dir+string(filepath.Separator),
		"github.com/sluice-lb/sluice/cmd/sluice", "github.com/sluice-lb/sluice/cmd/sluice-bench")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return binaries{sluice: filepath.Join(dir, "sluice"), bench: filepath.Join(dir, "sluice-bench")}
}

// topology is two network namespaces joined by a veth pair:
//
//	srv: srvDev 198.18.0.1/24  <---->  cli: cliDev with the client addresses
type topology struct {
	srv, cli       string // namespace names
	srvDev, cliDev string // the veth ends
}

const serverIP = "198.18.0.1"

// newTopology creates the namespaces sl-srv-PID and sl-cli-PID and the
// veth pair between them, gives the server end 198.18.0.1/24 and the client
// end clientAddrs (the first is the primary address, which sockets that do
// not bind get), and removes it all in tb.Cleanup. There is one topology
// per test process.
func newTopology(tb testing.TB, clientAddrs ...string) topology {
	tb.Helper()
	pid := os.Getpid()
	t := topology{
		srv:    fmt.Sprintf("sl-srv-%d", pid),
		cli:    fmt.Sprintf("sl-cli-%d", pid),
		srvDev: fmt.Sprintf("sl-s-%d", pid), // at most 12 bytes of IFNAMSIZ's 15
		cliDev: fmt.Sprintf("sl-c-%d", pid),
	}
	for _, ns := range []string{t.srv, t.cli} {
		// Deleting a namespace destroys the veth end inside it, and with
		// it the pair.
		testsrv.Netns(tb, ns, nil)
	}
	testsrv.IP(tb, "link", "add", t.srvDev, "netns", t.srv, "type", "veth", "peer", "name", t.cliDev, "netns", t.cli)
	testsrv.IP(tb, "-n", t.srv, "addr", "add", serverIP+"/24", "dev", t.srvDev)
	for _, a := range clientAddrs {
		testsrv.IP(tb, "-n", t.cli, "addr", "add", a, "dev", t.cliDev)
	}
	for ns, dev := range map[string]string{t.srv: t.srvDev, t.cli: t.cliDev} {
		testsrv.IP(tb, "-n", ns, "link", "set", dev, "up")
	}
	return t
}

// xdpAttached reports whether dev in ns has an XDP program.
func xdpAttached(tb testing.TB, ns, dev string) bool {
	tb.Helper()
	return xdpMode(tb, ns, dev) != ""
}

// xdpMode returns the mode of dev's XDP program in ns, as --xdp-mode names
// it ("native" or "generic"), or "" when it has none.
func xdpMode(tb testing.TB, ns, dev string) string {
	tb.Helper()
	out, err := exec.Command("ip", "-j", "-n", ns, "link", "show", "dev", dev).Output()
	if err != nil {
		tb.Fatalf("ip link show: %v", err)
	}
	var links []struct {
		XDP *struct {
			Mode int `json:"mode"` // XDP_ATTACHED_*
		} `json:"xdp"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		tb.Fatalf("ip -j link show: %v: %s", err, out)
	}
	switch {
	case links[0].XDP == nil:
		return ""
	case links[0].XDP.Mode == 1:
		return "native"
	case links[0].XDP.Mode == 2:
		return "generic"
	}
	return fmt.Sprintf("mode %d", links[0].XDP.Mode)
}

// inNetns runs fn on a goroutine locked to an OS thread that has entered
// the namespace ns, and returns its error. Sockets fn creates stay in ns for
// their whole life, wherever they are used afterwards. The thread goes back
// to its own namespace before it is unlocked; should that fail, it stays
// locked, and the runtime ends it with the goroutine instead of reusing it.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns, os.NewSyscallError("setns", err))
			return
		}
		err = fn()
		if rerr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("leave netns %s: %w", ns, os.NewSyscallError("setns", rerr)))
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// dialIn connects from src (any address if empty) to dst over network
// ("tcp" or "udp") inside the namespace ns.
func dialIn(ns, network, src, dst string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if src != "" {
		ip := net.ParseIP(src)
		if network == "udp" {
			d.LocalAddr = &net.UDPAddr{IP: ip}
		} else {
			d.LocalAddr = &net.TCPAddr{IP: ip}
		}
	}
	var c net.Conn
	err := inNetns(ns, func() error {
		var err error
		c, err = d.Dial(network, dst)
		return err
	})
	return c, err
}

// echoRoundTrip connects over TCP from src to dst in ns, sends a line and
// expects it back within timeout.
func echoRoundTrip(ns, src, dst string, timeout time.Duration) error {
	c, err := dialIn(ns, "tcp", src, dst, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, timeout)
}

// roundTrip writes a line on c and reads it back within timeout.
func roundTrip(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	msg := fmt.Sprintf("ping from %s\n", c.LocalAddr())
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := readFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// readFull reads len(buf) bytes; for a datagram socket one read is one
// datagram, which must be the whole message.
func readFull(c net.Conn, buf []byte) (int, error) {
	if _, ok := c.(*net.UDPConn); ok {
		n, err := c.Read(buf)
		if err == nil && n != len(buf) {
			err = fmt.Errorf("datagram of %d bytes, want %d", n, len(buf))
		}
		return n, err
	}
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// isTimeout reports whether err is a timeout: what a dropped SYN looks
// like to the client, as opposed to a refusal (which means the SYN got
// through).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// proc is a process started in a namespace by "ip netns exec", which execs
// the command in place: the pid is the command's own.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string        // stdout and stderr
	done    chan struct{} // closed once the process has exited and exitErr is set
	exitErr error
}

// startIn starts argv in the namespace ns. tb.Cleanup stops it with SIGTERM
// (SIGKILL after 10 s) if it is still running, and logs its output if tb
// failed. The process gets SIGKILL should the test process die first.
func startIn(tb testing.TB, ns, name string, argv ...string) *proc {
	tb.Helper()
	return startInWith(tb, ns, name, nil, argv...)
}

// startInWith is startIn with setup, if not nil, called on the command
// before it starts (to add environment variables or descriptors).
func startInWith(tb testing.TB, ns, name string, setup func(*exec.Cmd), argv ...string) *proc {
	tb.Helper()
	p := &proc{name: name, logPath: filepath.Join(tb.TempDir(), name+".log"), done: make(chan struct{})}
	out, err := os.Create(p.logPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer out.Close()
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if setup != nil {
		setup(p.cmd)
	}
	// The parent-death signal fires when the thread that forked ends, not
	// the process; inNetns hands its threads back to the runtime, which
	// never ends them (unless leaving a namespace failed).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	go p.wait()
	tb.Cleanup(func() {
		if err := p.stop(syscall.SIGTERM, 10*time.Second); err != nil && !p.exited() {
			tb.Errorf("%s: %v", name, err)
		}
		if tb.Failed() {
			tb.Logf("%s output:\n%s", name, p.output())
		}
	})
	return p
}

func (p *proc) wait() {
	p.exitErr = p.cmd.Wait()
	close(p.done)
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits up to timeout for the exit, then kills. It
// returns the exit error (nil for status 0); for a process already gone,
// that of its earlier exit.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	if !p.exited() {
		p.cmd.Process.Signal(sig)
	}
	select {
	case <-p.done:
		return p.exitErr
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("did not exit within %v of %v; killed", timeout, sig)
	}
}

// output returns what the process wrote so far.
func (p *proc) output() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// waitFor polls cond every 50 ms until it is true or timeout passes, and
// fails tb in that case, naming what.
func waitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// adminClient is an HTTP client whose connections are made in ns.
func adminClient(ns string) *http.Client {
	return &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialIn(ns, network, "", addr, 2*time.Second)
			},
		},
	}
}

// getStatus returns the status code of GET url, or 0 if it failed.
func getStatus(c *http.Client, url string) int {
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// verdicts scrapes sluice_firewall_packets_total from url (an admin
// /metrics endpoint) and returns the count of each verdict.
func verdicts(tb testing.TB, c *http.Client, url string) map[string]uint64 {
	tb.Helper()
	resp, err := c.Get(url)
	if err != nil {
		tb.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("scrape metrics: %s", resp.Status)
	}
	const prefix = `sluice_firewall_packets_total{verdict="`
	m := map[string]uint64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		verdict, value, ok := strings.Cut(rest, `"} `)
		if !ok {
			tb.Fatalf("metrics line %q", sc.Text())
		}
		f, err := strconv.ParseFloat(value, 64)
		if err != nil {
			tb.Fatalf("metrics line %q: %v", sc.Text(), err)
		}
		m[verdict] = uint64(f)
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("scrape metrics: %v", err)
	}
	if len(m) == 0 {
		tb.Fatal("no sluice_firewall_packets_total in the metrics")
	}
	return m
}
