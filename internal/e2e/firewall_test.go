package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The XDP firewall through the real sluice binary:
//
//	sl-srv-PID                                   sl-cli-PID
//	sl-s-PID 198.18.0.1/24  <--- veth --->  sl-c-PID 198.18.0.2/24 (allowed)
//	  sluice :7000 (tcp) [:7100 (udp)]                198.18.0.3/24 (denied)
//	  sluice-bench serve: echo :7001 (unprotected), udp echo :7101
//	  admin :9000
//
// Part one runs sluice from flags; part two from a config file, with a
// rate limit, and changes the deny list by rewriting the file and sending
// SIGHUP. A denied client's connect must time out: its SYN vanishes in XDP,
// whereas a refusal would mean the SYN got through.
const (
	allowedIP = "198.18.0.2"
	deniedIP  = "198.18.0.3"

	listenTCP   = serverIP + ":7000"
	echoTCP     = serverIP + ":7001" // the backend, reachable directly: not protected
	listenUDP   = serverIP + ":7100"
	echoUDP     = serverIP + ":7101" // also a TCP echo, for sluice's TCP health check
	probeUDP    = serverIP + ":7200"
	adminAddr   = serverIP + ":9000"
	metricsURL  = "http://" + adminAddr + "/metrics"
	readyURL    = "http://" + adminAddr + "/readyz"
	dialTimeout = time.Second

	// The rate limit: a client sends UDP at four times it for rateSecs.
	rateLimit = 200
	rateBurst = 50
	rateSecs  = 2
)

func TestFirewall(t *testing.T) {
	requireRoot(t)
	bin := buildBinaries(t)
	top := newTopology(t, allowedIP+"/24", deniedIP+"/24")
	ready := filepath.Join(t.TempDir(), "backends.ready")
	startIn(t, top.srv, "backends", bin.bench, "serve",
		"--echo", echoTCP, "--udp-echo", echoUDP, "--echo", echoUDP, "--ready-file", ready)
	waitFor(t, "backends ready", 10*time.Second, func() bool {
		_, err := os.Stat(ready)
		return err == nil
	})
	admin := adminClient(top.srv)

	t.Run("flags", func(t *testing.T) { testFlags(t, bin, top, admin) })
	if t.Failed() {
		return
	}
	t.Run("config", func(t *testing.T) { testConfig(t, bin, top, admin) })
	if t.Failed() {
		return
	}
	t.Run("upgrade to another mode", func(t *testing.T) { testUpgradeMode(t, bin, top, admin) })
}

// testFlags: the deny list from the command line; the program goes away
// with the process.
func testFlags(t *testing.T, bin binaries, top topology, admin *http.Client) {
	sl := startIn(t, top.srv, "sluice-flags", bin.sluice,
		"--listen", listenTCP, "--backend", echoTCP,
		"--xdp-iface", top.srvDev, "--deny-cidr", deniedIP+"/32",
		"--admin-addr", adminAddr, "--health-interval", "200ms", "--drain-timeout", "2s")
	waitReady(t, sl, admin)
	if !xdpAttached(t, top.srv, top.srvDev) {
		t.Fatalf("no XDP program on %s", top.srvDev)
	}

	if err := echoRoundTrip(top.cli, allowedIP, listenTCP, 3*time.Second); err != nil {
		t.Errorf("allowed client through sluice: %v", err)
	}
	if err := echoRoundTrip(top.cli, deniedIP, listenTCP, dialTimeout); !isTimeout(err) {
		t.Errorf("denied client through sluice: %v, want a connect timeout", err)
	}
	if err := echoRoundTrip(top.cli, deniedIP, echoTCP, 3*time.Second); err != nil {
		t.Errorf("denied client to the unprotected port: %v", err)
	}
	v := verdicts(t, admin, metricsURL)
	t.Logf("verdicts: %v", v)
	if v["denied"] == 0 || v["passed"] == 0 || v["unprotected"] == 0 {
		t.Errorf("verdicts %v: want denied, passed and unprotected above 0", v)
	}

	if err := sl.stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Errorf("sluice after SIGTERM: %v, want exit status 0", err)
	}
	if xdpAttached(t, top.srv, top.srvDev) {
		t.Error("XDP program still attached after sluice exited")
	}
}

// testConfig: the rules from a config file, the rate limit, and a deny
// list changed by SIGHUP without a restart.
func testConfig(t *testing.T, bin binaries, top topology, admin *http.Client) {
	udpProxy := sluiceProxiesUDP(t, bin, top)
	udpTarget := listenUDP
	if !udpProxy {
		// The firewall polices protected ports whether sluice proxies
		// them or not: police the UDP echo itself.
		udpTarget = echoUDP
	}
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	writeConfig(t, conf, top, deniedIP, udpProxy)
	sl := startIn(t, top.srv, "sluice-config", bin.sluice, "--config", conf)
	waitReady(t, sl, admin)

	if err := echoRoundTrip(top.cli, allowedIP, listenTCP, 3*time.Second); err != nil {
		t.Errorf("allowed client through sluice: %v", err)
	}
	if err := echoRoundTrip(top.cli, deniedIP, listenTCP, dialTimeout); !isTimeout(err) {
		t.Errorf("denied client through sluice: %v, want a connect timeout", err)
	}

	// Rate limit: UDP at four times the limit; answered should be
	// limit × seconds + burst.
	before := verdicts(t, admin, metricsURL)
	res := runUDP(t, bin, top, udpTarget, 4*rateLimit, rateSecs*time.Second)
	after := verdicts(t, admin, metricsURL)
	want := rateLimit*res.ElapsedS + rateBurst
	limited := after["rate_limited"] - before["rate_limited"]
	unanswered := res.UDP.Sent - res.UDP.Replies
	t.Logf("udp to %s at %d/s for %.2f s: sent %d, answered %d, want %.0f ± 15%%; rate_limited +%d",
		udpTarget, 4*rateLimit, res.ElapsedS, res.UDP.Sent, res.UDP.Replies, want, limited)
	if math.Abs(float64(res.UDP.Replies)-want) > 0.15*want {
		t.Errorf("answered %d datagrams, want %.0f ± 15%%", res.UDP.Replies, want)
	}
	if wantSent := 4 * rateLimit * res.ElapsedS; math.Abs(float64(res.UDP.Sent)-wantSent) > 0.1*wantSent {
		t.Errorf("sent %d datagrams, want %.0f ± 10%%: the generator did not keep its rate", res.UDP.Sent, wantSent)
	}
	// Every unanswered datagram should be a rate-limit drop; a few sent
	// at the very end may be dropped yet not counted as sent.
	if limited < unanswered*9/10 || limited > unanswered+10 {
		t.Errorf("rate_limited went up by %d for %d unanswered datagrams", limited, unanswered)
	}

	// SIGHUP: deny the other client instead. The program stays attached,
	// so the counters carry on.
	writeConfig(t, conf, top, allowedIP, udpProxy)
	if err := sl.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "formerly denied client admitted after SIGHUP", 5*time.Second, func() bool {
		return echoRoundTrip(top.cli, deniedIP, listenTCP, 500*time.Millisecond) == nil
	})
	if err := echoRoundTrip(top.cli, allowedIP, listenTCP, dialTimeout); !isTimeout(err) {
		t.Errorf("newly denied client after SIGHUP: %v, want a connect timeout", err)
	}
	if sl.exited() {
		t.Fatalf("sluice exited after SIGHUP: %v", sl.exitErr)
	}
	reloaded := verdicts(t, admin, metricsURL)
	if reloaded["denied"] <= after["denied"] || reloaded["passed"] < after["passed"] {
		t.Errorf("verdicts %v after SIGHUP, %v before: want the counters to carry on", reloaded, after)
	}
	if err := sl.stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Errorf("sluice after SIGTERM: %v, want exit status 0", err)
	}
}

// testUpgradeMode: an upgrade whose new process is configured with another
// --xdp-mode keeps the interface's program in the mode it has, policing
// throughout, and the new process says so: native and generic programs
// cannot share an interface, so a switch would leave it unpoliced.
func testUpgradeMode(t *testing.T, bin binaries, top topology, admin *http.Client) {
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	write := func(mode string) {
		t.Helper()
		body := fmt.Sprintf("xdp-iface %s\nxdp-mode %s\ndeny-cidr %s/32\nadmin-addr %s\ndrain-timeout 2s\nlog-format json\n"+
			"\n[service tcp]\nlisten %s\nbackend %s\n", top.srvDev, mode, deniedIP, adminAddr, listenTCP, echoTCP)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("native")
	sl := startIn(t, top.srv, "sluice-upgrade", bin.sluice, "--config", conf)
	waitReady(t, sl, admin)
	if m := xdpMode(t, top.srv, top.srvDev); m != "native" {
		t.Fatalf("program attached in mode %q, want native", m)
	}

	write("generic")
	if err := sl.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	// The old process exits once the new one serves and it has drained.
	waitFor(t, "the old process to exit after SIGUSR2", 30*time.Second, sl.exited)
	if sl.exitErr != nil {
		t.Fatalf("old process: %v", sl.exitErr)
	}
	served := logLine(t, sl, "new process serves")
	pid, _ := served["pid"].(float64)
	if pid == 0 {
		t.Fatalf("no pid in %v", served)
	}
	t.Cleanup(func() { stopPID(t, int(pid)) })

	warn := logLine(t, sl, "--xdp-mode not applied: the xdp link taken over from the previous process keeps its mode; stop and start sluice to change it")
	if warn["iface"] != top.srvDev || warn["running_mode"] != "native" || warn["configured_mode"] != "generic" {
		t.Errorf("warning %v: want iface %s, running_mode native, configured_mode generic", warn, top.srvDev)
	}
	if m := xdpMode(t, top.srv, top.srvDev); m != "native" {
		t.Errorf("after the upgrade the program runs in mode %q, want native still", m)
	}
	if err := echoRoundTrip(top.cli, allowedIP, listenTCP, 3*time.Second); err != nil {
		t.Errorf("allowed client through the new process: %v", err)
	}
	if err := echoRoundTrip(top.cli, deniedIP, listenTCP, dialTimeout); !isTimeout(err) {
		t.Errorf("denied client through the new process: %v, want a connect timeout", err)
	}
}

// logLine returns the first JSON log line of p whose msg is msg; it fails
// tb if there is none.
func logLine(tb testing.TB, p *proc, msg string) map[string]any {
	tb.Helper()
	if m := findLog(p, msg); m != nil {
		return m
	}
	tb.Fatalf("%s logged no %q", p.name, msg)
	return nil
}

// stopPID sends SIGTERM to pid, a process that is not this one's child (an
// upgrade's successor), and waits for it to exit, through a pidfd.
func stopPID(tb testing.TB, pid int) {
	tb.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone already
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil {
		tb.Errorf("SIGTERM to pid %d: %v", pid, err)
		return
	}
	// A pidfd turns readable when its process exits. EINTR comes with
	// the runtime's preemption signals: go on until the deadline.
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			tb.Errorf("pid %d did not exit within 10 s of SIGTERM", pid)
			unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
			return
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(left.Milliseconds())+1)
		if n == 1 {
			return
		}
		if err != nil && err != unix.EINTR {
			tb.Errorf("wait for pid %d: %v", pid, err)
			return
		}
	}
}

// waitReady waits until sl's admin endpoint says ready, and fails at once
// if sl exits.
func waitReady(t *testing.T, sl *proc, admin *http.Client) {
	t.Helper()
	waitFor(t, sl.name+" ready", 10*time.Second, func() bool {
		if sl.exited() {
			t.Fatalf("%s exited: %v", sl.name, sl.exitErr) // its output is logged at cleanup
		}
		return getStatus(admin, readyURL) == http.StatusOK
	})
}

// writeConfig writes sluice's config file, denying deny/32, atomically (a
// rename over the old file).
func writeConfig(t *testing.T, path string, top topology, deny string, udpProxy bool) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "# TestFirewall\nxdp-iface %s\nadmin-addr %s\ndrain-timeout 2s\n", top.srvDev, adminAddr)
	fmt.Fprintf(&b, "deny-cidr %s/32\nrate-limit %d\nrate-burst %d\n", deny, rateLimit, rateBurst)
	if !udpProxy {
		fmt.Fprintf(&b, "protect-port udp/%s\n", echoUDP[strings.LastIndexByte(echoUDP, ':')+1:])
	}
	fmt.Fprintf(&b, "\n[service tcp]\nlisten %s\nbackend %s\nhealth-interval 200ms\n", listenTCP, echoTCP)
	if udpProxy {
		fmt.Fprintf(&b, "\n[service udp]\nproto udp\nlisten %s\nbackend %s\nhealth-interval 200ms\n", listenUDP, echoUDP)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// sluiceProxiesUDP reports whether this sluice has UDP services: --proto
// in its help and a UDP service that answers through it. UDP support is
// recent; without it the test polices a UDP echo with --protect-port.
func sluiceProxiesUDP(t *testing.T, bin binaries, top topology) bool {
	t.Helper()
	help, _ := exec.Command(bin.sluice, "--help").CombinedOutput()
	if !strings.Contains(string(help), "--proto") {
		t.Log("sluice has no --proto: the rate limit is tested on a protected UDP echo")
		return false
	}
	p := startIn(t, top.srv, "sluice-udp-probe", bin.sluice,
		"--proto", "udp", "--listen", probeUDP, "--backend", echoUDP, "--health-interval", "200ms")
	defer p.stop(syscall.SIGTERM, 5*time.Second)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if p.exited() {
			out := strings.TrimSpace(p.output())
			t.Logf("sluice does not proxy UDP (%v: %s): the rate limit is tested on a protected UDP echo",
				p.exitErr, out[strings.LastIndexByte(out, '\n')+1:])
			return false
		}
		c, err := dialIn(top.cli, "udp", allowedIP, probeUDP, time.Second)
		if err != nil {
			continue
		}
		err = roundTrip(c, 200*time.Millisecond)
		c.Close()
		if err == nil {
			t.Log("sluice proxies UDP: the rate limit is tested through a sluice UDP service")
			return true
		}
	}
	t.Log("a sluice UDP service did not answer within 5 s: the rate limit is tested on a protected UDP echo")
	return false
}

// udpResult is the part of sluice-bench udp --json the test reads.
type udpResult struct {
	ElapsedS float64 `json:"elapsed_s"`
	UDP      struct {
		Sent    uint64 `json:"sent"`
		Replies uint64 `json:"replies"`
	} `json:"udp"`
}

// runUDP runs sluice-bench udp in the client namespace (from its primary
// address, the allowed one) at rate datagrams per second for d.
func runUDP(t *testing.T, bin binaries, top topology, target string, rate int, d time.Duration) udpResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", top.cli, bin.bench, "udp",
		"--target", target, "--rate", fmt.Sprint(rate), "--duration", d.String(), "--timeout", "500ms", "--json")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sluice-bench udp: %v\n%s", err, stderr.String())
	}
	var res udpResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("sluice-bench udp output: %v\n%s", err, out)
	}
	return res
}
