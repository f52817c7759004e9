package firewall

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// The network-namespace test: two namespaces joined by a veth pair, the
// program attached to the server's end, clients in the other namespace.
// Each side runs in a helper process, this test binary re-executed under
// "ip netns exec" (TestHelperProcess), driven by JSON lines on its stdin.
//
//	server namespace            client namespace
//	fw-s 198.18.0.1/24  <---->  fw-c 198.18.0.2/24 (allowed)
//	                                 198.18.0.3/24 (denied)
//	                                 198.18.0.4/24 (not in the allow list; UDP flood)

const (
	helperEnv    = "SLUICE_FIREWALL_HELPER"
	replyPrefix  = "fwhelper: "
	serverIP     = "198.18.0.1"
	protectedTCP = 8080
	openTCP      = 2222 // not protected
	protectedUDP = 8081
)

type helperRequest struct {
	Op string // start, update, counters, lifecycle, attach (server); dial, udp (client)

	Config Config // start, update, attach
	Iface  string // start, lifecycle, attach
	Mode   Mode   // start, attach
	Listen string // start: address to listen on

	Src, Dst string        // dial, udp: source address, destination address:port
	Rate     int           // udp: datagrams per second
	Duration time.Duration // udp: how long to send; dial: timeout
}

type helperReply struct {
	Err      string
	Mode     Mode     // start: the mode attached in
	Counters Counters // counters
	Sent     int      // udp
	Answered int      // udp
}

func TestNetns(t *testing.T) {
	requirePrivileges(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command")
	}
	for _, mode := range []Mode{ModeAuto, ModeGeneric} {
		t.Run(mode.String(), func(t *testing.T) { testNetns(t, mode) })
	}
}

func testNetns(t *testing.T, mode Mode) {
	srvNS, cliNS := newTopology(t)
	srv := startHelper(t, srvNS)
	cli := startHelper(t, cliNS)
	protected := []Port{{"tcp", protectedTCP}, {"udp", protectedUDP}}
	cfg := Config{Ports: protected, Deny: prefixes("198.18.0.3/32")}

	rep := srv.do(t, helperRequest{Op: "start", Config: cfg, Iface: "fw-s", Mode: mode, Listen: serverIP})
	if rep.Err != "" {
		t.Fatalf("start server: %s", rep.Err)
	}
	t.Logf("attached in %v mode", rep.Mode)
	if mode == ModeGeneric && rep.Mode != ModeGeneric {
		t.Errorf("asked for generic, attached in %v", rep.Mode)
	}

	protectedAddr := fmt.Sprintf("%s:%d", serverIP, protectedTCP)
	openAddr := fmt.Sprintf("%s:%d", serverIP, openTCP)
	dial := func(src, dst string) error {
		t.Helper()
		rep := cli.do(t, helperRequest{Op: "dial", Src: src, Dst: dst, Duration: time.Second})
		if rep.Err != "" {
			return errors.New(rep.Err)
		}
		return nil
	}
	counters := func() Counters {
		t.Helper()
		rep := srv.do(t, helperRequest{Op: "counters"})
		if rep.Err != "" {
			t.Fatalf("counters: %s", rep.Err)
		}
		return rep.Counters
	}

	// Deny list.
	if err := dial("198.18.0.2", protectedAddr); err != nil {
		t.Errorf("allowed client to protected port: %v", err)
	}
	if err := dial("198.18.0.3", protectedAddr); err == nil {
		t.Error("denied client connected to the protected port")
	}
	if err := dial("198.18.0.3", openAddr); err != nil {
		t.Errorf("denied client to unprotected port: %v", err)
	}
	c := counters()
	if c.Denied == 0 || c.Passed == 0 || c.Unprotected == 0 {
		t.Errorf("counters after deny checks: %v", c)
	}

	// Allow list, switched on at run time.
	allow := cfg
	allow.Allow = prefixes("198.18.0.2/32")
	if rep := srv.do(t, helperRequest{Op: "update", Config: allow}); rep.Err != "" {
		t.Fatalf("update: %s", rep.Err)
	}
	if err := dial("198.18.0.4", protectedAddr); err == nil {
		t.Error("client outside the allow list connected")
	}
	if err := dial("198.18.0.2", protectedAddr); err != nil {
		t.Errorf("client in the allow list: %v", err)
	}
	if err := dial("198.18.0.4", openAddr); err != nil {
		t.Errorf("client outside the allow list to unprotected port: %v", err)
	}
	if c := counters(); c.NotAllowed == 0 {
		t.Errorf("counters after allow checks: %v", c)
	}

	// Rate limit: UDP at four times the limit; answered should be
	// limit × seconds + burst.
	const (
		limit    = 200
		burst    = 50
		duration = 2 * time.Second
	)
	rated := cfg
	rated.RateLimit, rated.RateBurst = limit, burst
	if rep := srv.do(t, helperRequest{Op: "update", Config: rated}); rep.Err != "" {
		t.Fatalf("update: %s", rep.Err)
	}
	before := counters()
	rep = cli.do(t, helperRequest{
		Op: "udp", Src: "198.18.0.4", Dst: fmt.Sprintf("%s:%d", serverIP, protectedUDP),
		Rate: 4 * limit, Duration: duration,
	})
	if rep.Err != "" {
		t.Fatalf("udp: %s", rep.Err)
	}
	after := counters()
	want := limit*duration.Seconds() + burst
	t.Logf("udp at %d/s for %v: sent %d, answered %d, want %.0f ± 15%%; rate_limited %d", 4*limit, duration, rep.Sent, rep.Answered, want, after.RateLimited-before.RateLimited)
	if math.Abs(float64(rep.Answered)-want) > 0.15*want {
		t.Errorf("answered %d datagrams, want %.0f ± 15%%", rep.Answered, want)
	}
	if limited := after.RateLimited - before.RateLimited; limited+uint64(rep.Answered) > uint64(rep.Sent) || limited < uint64(rep.Sent-rep.Answered)*9/10 {
		t.Errorf("rate_limited went up by %d for %d sent, %d answered", limited, rep.Sent, rep.Answered)
	}
}

var topologies atomic.Int32

// newTopology creates the two namespaces and the veth pair between them,
// deleted again by tb.Cleanup.
func newTopology(tb testing.TB) (server, client string) {
	tb.Helper()
	n := topologies.Add(1)
	server = fmt.Sprintf("sluice-fw-%d-%d-s", os.Getpid(), n)
	client = fmt.Sprintf("sluice-fw-%d-%d-c", os.Getpid(), n)
	for _, ns := range []string{server, client} {
		testsrv.Netns(tb, ns, nil) // deleting it destroys the veth end inside it
	}
	testsrv.IP(tb, "link", "add", "fw-s", "netns", server, "type", "veth", "peer", "name", "fw-c", "netns", client)
	testsrv.IP(tb, "-n", server, "addr", "add", serverIP+"/24", "dev", "fw-s")
	for _, a := range []string{"198.18.0.2/24", "198.18.0.3/24", "198.18.0.4/24"} {
		testsrv.IP(tb, "-n", client, "addr", "add", a, "dev", "fw-c")
	}
	for ns, dev := range map[string]string{server: "fw-s", client: "fw-c"} {
		testsrv.IP(tb, "-n", ns, "link", "set", dev, "up")
	}
	return server, client
}

// helper is a helper process in a namespace.
type helper struct {
	ns      string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	replies chan string // reply lines, closed at EOF
	killed  atomic.Bool // by kill: its exit status is no failure
}

// kill ends the helper with SIGKILL, as a crash would.
func (h *helper) kill(tb testing.TB) {
	tb.Helper()
	h.killed.Store(true)
	if err := h.cmd.Process.Kill(); err != nil {
		tb.Fatal(err)
	}
}

func startHelper(tb testing.TB, ns string) *helper {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^TestHelperProcess$", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start helper in %s: %v", ns, err)
	}
	h := &helper{ns: ns, cmd: cmd, stdin: stdin, replies: make(chan string, 1)}
	var wg sync.WaitGroup
	wg.Add(1)
	go h.readReplies(&wg, stdout)
	tb.Cleanup(func() {
		stdin.Close() // the helper shuts down at EOF
		done := make(chan error, 1)
		go func() { wg.Wait(); done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil && !h.killed.Load() {
				tb.Errorf("helper in %s: %v", ns, err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			tb.Errorf("helper in %s did not exit; killed", ns)
		}
		if tb.Failed() {
			tb.Logf("helper in %s stderr:\n%s", ns, stderr.String())
		}
	})
	return h
}

// readReplies forwards the reply lines of stdout, skipping what the test
// framework prints, until EOF.
func (h *helper) readReplies(wg *sync.WaitGroup, stdout io.Reader) {
	defer wg.Done()
	defer close(h.replies)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), replyPrefix); ok {
			h.replies <- line
		}
	}
}

func (h *helper) do(tb testing.TB, req helperRequest) helperReply {
	tb.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := h.stdin.Write(append(b, '\n')); err != nil {
		tb.Fatalf("helper in %s: %v", h.ns, err)
	}
	select {
	case line, ok := <-h.replies:
		if !ok {
			tb.Fatalf("helper in %s exited", h.ns)
		}
		var rep helperReply
		if err := json.Unmarshal([]byte(line), &rep); err != nil {
			tb.Fatalf("helper in %s: %v: %q", h.ns, err, line)
		}
		return rep
	case <-time.After(30 * time.Second):
		tb.Fatalf("helper in %s: no reply to %s", h.ns, req.Op)
	}
	panic("unreachable")
}

// TestHelperProcess is the helper side of TestNetns, run in a namespace.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process of TestNetns, started by it")
	}
	var s helperServer
	defer s.stop(t)
	enc := json.NewEncoder(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var req helperRequest
		var rep helperReply
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			rep.Err = err.Error()
		} else {
			rep = s.handle(req)
		}
		os.Stdout.WriteString(replyPrefix)
		if err := enc.Encode(rep); err != nil {
			t.Fatal(err)
		}
	}
}

// helperServer is the state of a helper process: the firewall and the
// servers of the server side; the client side uses none of it.
type helperServer struct {
	fw        *Firewall
	listeners []io.Closer
	wg        sync.WaitGroup // the accept and echo loops
}

func (s *helperServer) handle(req helperRequest) helperReply {
	var rep helperReply
	var err error
	switch req.Op {
	case "start":
		rep.Mode, err = s.start(req)
	case "update":
		err = s.fw.Update(req.Config)
	case "counters":
		rep.Counters, err = s.fw.Counters()
	case "lifecycle":
		err = lifecycle(req.Config, req.Iface)
	case "attach":
		err = attachOnce(req.Config, req.Iface, req.Mode)
	case "dial":
		err = dialOnce(req.Src, req.Dst, req.Duration)
	case "udp":
		rep.Sent, rep.Answered, err = udpFlood(req.Src, req.Dst, req.Rate, req.Duration)
	default:
		err = fmt.Errorf("unknown op %q", req.Op)
	}
	if err != nil {
		rep.Err = err.Error()
	}
	return rep
}

func (s *helperServer) start(req helperRequest) (Mode, error) {
	fw, err := New(req.Config)
	if err != nil {
		return 0, err
	}
	s.fw = fw
	if err := fw.Attach(req.Iface, req.Mode); err != nil {
		return 0, err
	}
	for _, port := range []int{protectedTCP, openTCP} {
		ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", req.Listen, port))
		if err != nil {
			return 0, err
		}
		s.listeners = append(s.listeners, ln)
		s.wg.Add(1)
		go greet(&s.wg, ln)
	}
	pc, err := net.ListenPacket("udp", fmt.Sprintf("%s:%d", req.Listen, protectedUDP))
	if err != nil {
		return 0, err
	}
	s.listeners = append(s.listeners, pc)
	s.wg.Add(1)
	go echo(&s.wg, pc)
	return fw.Attachments()[0].Mode, nil
}

func (s *helperServer) stop(tb testing.TB) {
	for _, l := range s.listeners {
		l.Close()
	}
	s.wg.Wait()
	if s.fw != nil {
		if err := s.fw.Close(); err != nil {
			tb.Error(err)
		}
	}
}

// greet writes "hi\n" to every connection on ln until ln is closed.
func greet(wg *sync.WaitGroup, ln net.Listener) {
	defer wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write([]byte("hi\n"))
		c.Close()
	}
}

// echo sends every datagram on pc back until pc is closed.
func echo(wg *sync.WaitGroup, pc net.PacketConn) {
	defer wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], from)
	}
}

// dialOnce connects from src to dst and reads the greeting.
func dialOnce(src, dst string, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", dst)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "hi\n" {
		return fmt.Errorf("greeting %q", line)
	}
	return nil
}

// udpFlood sends rate datagrams per second from src to dst for d, paced in
// small steps, and counts the answers that come back within 300 ms after.
func udpFlood(src, dst string, rate int, d time.Duration) (sent, answered int, err error) {
	laddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(src), 0))
	raddr, err := net.ResolveUDPAddr("udp", dst)
	if err != nil {
		return 0, 0, err
	}
	c, err := net.DialUDP("udp", laddr, raddr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()

	var got atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			if _, err := c.Read(buf); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ECONNREFUSED and the like: not an answer
			}
			got.Add(1)
		}
	}()

	total := int(float64(rate) * d.Seconds())
	payload := make([]byte, 64)
	start := time.Now()
	for sent < total && time.Since(start) < d+time.Second {
		due := min(total, int(time.Since(start).Seconds()*float64(rate))+1)
		for ; sent < due; sent++ {
			if _, err := c.Write(payload); err != nil {
				c.SetReadDeadline(time.Now())
				wg.Wait()
				return sent, int(got.Load()), err
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	wg.Wait()
	return sent, int(got.Load()), nil
}

func TestAttachLifecycle(t *testing.T) {
	requirePrivileges(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command")
	}
	srvNS, _ := newTopology(t)
	cfg := Config{Ports: []Port{{"tcp", protectedTCP}}}

	srv := startHelper(t, srvNS)
	if rep := srv.do(t, helperRequest{Op: "lifecycle", Config: cfg, Iface: "fw-s"}); rep.Err != "" {
		t.Fatal(rep.Err)
	}
	if xdpAttached(t, srvNS, "fw-s") {
		t.Fatal("program still attached after Close")
	}

	// The bpf_link dies with the process, however it ends.
	if rep := srv.do(t, helperRequest{Op: "start", Config: cfg, Iface: "fw-s", Mode: ModeAuto, Listen: serverIP}); rep.Err != "" {
		t.Fatal(rep.Err)
	}
	if !xdpAttached(t, srvNS, "fw-s") {
		t.Fatal("program not attached after start")
	}
	srv.kill(t)
	deadline := time.Now().Add(3 * time.Second)
	for xdpAttached(t, srvNS, "fw-s") {
		if time.Now().After(deadline) {
			t.Fatal("program still attached 3 s after its process was killed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAttachEthernetOnly: the program parses Ethernet frames, so Attach
// refuses a layer-3 device, where it would pass everything unpoliced (a
// tun device here, as WireGuard, ipip and gre devices are), and takes
// Ethernet devices and loopback.
func TestAttachEthernetOnly(t *testing.T) {
	requirePrivileges(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command")
	}
	srvNS, _ := newTopology(t)
	testsrv.IP(t, "-n", srvNS, "tuntap", "add", "dev", "fw-tun", "mode", "tun")
	srv := startHelper(t, srvNS)
	for _, tc := range []struct {
		iface string
		mode  Mode
		ok    bool
	}{
		{"fw-tun", ModeGeneric, false},
		{"fw-tun", ModeAuto, false},
		{"fw-s", ModeGeneric, true},
		{"lo", ModeGeneric, true},
	} {
		rep := srv.do(t, helperRequest{Op: "attach", Iface: tc.iface, Mode: tc.mode})
		switch {
		case tc.ok && rep.Err != "":
			t.Errorf("attach to %s in %v mode: %s", tc.iface, tc.mode, rep.Err)
		case !tc.ok && (!strings.Contains(rep.Err, "not Ethernet") || !strings.Contains(rep.Err, ErrInterface.Error())):
			t.Errorf("attach to %s in %v mode: error %q, want a refusal for not being Ethernet", tc.iface, tc.mode, rep.Err)
		}
	}
}

// TestAttachNativeUnsupported: native mode asked for by name on a driver
// without XDP (loopback's) is refused with the way out, and as
// ErrInterface, which sluice reports as a bad invocation (exit 2): no
// restart changes the driver.
func TestAttachNativeUnsupported(t *testing.T) {
	requirePrivileges(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip command")
	}
	srvNS, _ := newTopology(t)
	srv := startHelper(t, srvNS)
	rep := srv.do(t, helperRequest{Op: "attach", Iface: "lo", Mode: ModeNative})
	if !strings.Contains(rep.Err, ErrInterface.Error()) || !strings.Contains(rep.Err, "--xdp-mode generic") {
		t.Fatalf("native attach to lo: error %q, want ErrInterface and the generic mode named", rep.Err)
	}
	if rep := srv.do(t, helperRequest{Op: "attach", Iface: "lo", Mode: ModeAuto}); rep.Err != "" {
		t.Fatalf("auto attach to lo after the refusal: %s", rep.Err)
	}
}

// attachOnce attaches a new firewall to iface and closes it again.
func attachOnce(cfg Config, iface string, mode Mode) error {
	fw, err := New(cfg)
	if err != nil {
		return err
	}
	defer fw.Close()
	return fw.Attach(iface, mode)
}

// xdpAttached reports whether dev in ns has an XDP program.
func xdpAttached(tb testing.TB, ns, dev string) bool {
	tb.Helper()
	out, err := exec.Command("ip", "-n", ns, "link", "show", "dev", dev).CombinedOutput()
	if err != nil {
		tb.Fatalf("ip link show: %v: %s", err, out)
	}
	return strings.Contains(string(out), "prog/xdp")
}

// lifecycle checks, in the helper, attaching and closing: modes, errors,
// and that Close gives back every file descriptor.
func lifecycle(cfg Config, iface string) error {
	fds := func() int {
		es, _ := os.ReadDir("/proc/self/fd")
		return len(es)
	}
	before := fds()
	fw, err := New(cfg)
	if err != nil {
		return err
	}
	defer fw.Close()
	if err := fw.Attach(iface, ModeNative); err != nil {
		return fmt.Errorf("native attach: %w", err)
	}
	if err := fw.Attach(iface, ModeGeneric); err == nil {
		return errors.New("second attach to the same interface succeeded")
	}
	if err := fw.Attach("sluice-nonexistent", ModeAuto); err == nil || !strings.Contains(err.Error(), "sluice-nonexistent") {
		return fmt.Errorf("attach to a missing interface: %v", err)
	}
	if as := fw.Attachments(); len(as) != 1 || as[0] != (Attachment{iface, ModeNative}) {
		return fmt.Errorf("attachments %v", as)
	}
	if err := adoptAndReclaim(cfg, fw); err != nil {
		return err
	}
	if err := fw.Close(); err != nil {
		return err
	}
	if err := fw.Close(); err != nil {
		return fmt.Errorf("second Close: %w", err)
	}
	if err := fw.Update(cfg); !errors.Is(err, ErrClosed) {
		return fmt.Errorf("Update after Close: %v", err)
	}
	if after := fds(); after != before {
		return fmt.Errorf("%d file descriptors before New, %d after Close", before, after)
	}
	return nil
}

// adoptAndReclaim plays an upgrade that fails after the successor adopted
// the link: a second firewall adopts fw's link, swapping its program in,
// and exits; fw's Reclaim must put fw's program back.
func adoptAndReclaim(cfg Config, fw *Firewall) error {
	progOn := func() (ebpf.ProgramID, error) {
		info, err := fw.links[0].link.Info()
		if err != nil {
			return 0, err
		}
		return info.Program, nil
	}
	idOf := func(f *Firewall) ebpf.ProgramID {
		info, err := f.objs.XdpFirewall.Info()
		if err != nil {
			return 0
		}
		id, _ := info.ID()
		return id
	}
	fds := fw.LinkFDs()
	dup, err := unix.Dup(fds[0].FD)
	if err != nil {
		return err
	}
	succ, err := New(cfg)
	if err != nil {
		unix.Close(dup)
		return err
	}
	if err := succ.Adopt(fds[0].Iface, fds[0].Mode, dup); err != nil {
		succ.Close()
		return fmt.Errorf("adopt: %w", err)
	}
	if got, err := progOn(); err != nil || got != idOf(succ) {
		succ.Close()
		return fmt.Errorf("after Adopt the link runs program %d (%v), want the successor's %d", got, err, idOf(succ))
	}
	succ.Close()
	if err := fw.Reclaim(); err != nil {
		return fmt.Errorf("reclaim: %w", err)
	}
	if got, err := progOn(); err != nil || got != idOf(fw) {
		return fmt.Errorf("after Reclaim the link runs program %d (%v), want the first firewall's %d", got, err, idOf(fw))
	}
	return nil
}
