package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/splice"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// socketFD returns the number of this process's file descriptor for the
// established TCP socket from local to remote (IPv4), found through
// /proc/self/net/tcp and /proc/self/fd. The in-process balancer's sockets
// are this process's. A connection the balancer has not accepted yet has no
// descriptor (its inode is 0), so socketFD waits for the accept.
func socketFD(tb testing.TB, local, remote *net.TCPAddr) int {
	tb.Helper()
	fd := -1
	waitFor(tb, fmt.Sprintf("a descriptor for the socket %v -> %v", local, remote), func() bool {
		fd = findSocketFD(tb, local, remote)
		return fd >= 0
	})
	return fd
}

// findSocketFD is one look for socketFD: -1 while the socket has no
// descriptor.
func findSocketFD(tb testing.TB, local, remote *net.TCPAddr) int {
	tb.Helper()
	hexAddr := func(a *net.TCPAddr) string {
		ip := a.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	}
	data, err := os.ReadFile("/proc/self/net/tcp")
	if err != nil {
		tb.Fatal(err)
	}
	inode := ""
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		// An established socket (state 01) with a descriptor: a
		// connection of the same addresses that ended earlier may
		// linger in TIME_WAIT, and one not accepted yet has none
		// (inode 0 both).
		if len(f) > 9 && f[1] == hexAddr(local) && f[2] == hexAddr(remote) && f[3] == "01" && f[9] != "0" {
			inode = f[9]
		}
	}
	if inode == "" {
		return -1
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l == "socket:["+inode+"]" {
			fd, _ := strconv.Atoi(e.Name())
			return fd
		}
	}
	return -1 // its descriptor is not there (yet, or any more): look again
}

// epollInterest returns the events fd is registered for in the epoll
// instance of this process that watches it, from /proc/self/fdinfo. Go's
// own poller does not watch the balancer's sockets, and with --workers 1
// one loop does.
func epollInterest(tb testing.TB, fd int) uint32 {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l != "anon_inode:[eventpoll]" {
			continue
		}
		data, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // closed since ReadDir
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			// tfd:       12 events: 8000201d data: ...
			f := strings.Fields(sc.Text())
			if len(f) >= 4 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) && f[2] == "events:" {
				ev, err := strconv.ParseUint(f[3], 16, 32)
				if err != nil {
					tb.Fatalf("fdinfo line %q: %v", sc.Text(), err)
				}
				return uint32(ev)
			}
		}
	}
	tb.Fatalf("fd %d is in no epoll instance", fd)
	return 0
}

// muteClient dials r, whose backend does not read, and fills every buffer
// between the two. It returns once the balancer's socket for the client is
// unwatched for input: the client, that socket's descriptor, and the bytes
// sent.
func muteClient(t *testing.T, r *running) (c *net.TCPConn, fd int, sent int64) {
	t.Helper()
	c = r.dial(t)
	fd = socketFD(t, c.RemoteAddr().(*net.TCPAddr), c.LocalAddr().(*net.TCPAddr))
	sent, err := fillUntilBlocked(c)
	if err != nil {
		t.Fatalf("client fill: %v", err)
	}
	waitFor(t, "the client's socket unwatched for input", func() bool {
		return epollInterest(t, fd)&unix.EPOLLIN == 0
	})
	return c, fd, sent
}

// TestStalledPeerMutesReads: while the bytes a client sent wait for a
// backend that does not read, the client's socket is not watched for input
// (each segment that arrives would wake the loop for nothing); once the
// backend has taken everything, it is watched again.
func TestStalledPeerMutesReads(t *testing.T) {
	for _, mode := range []string{"never", "always"} {
		t.Run(mode, func(t *testing.T) {
			look := make(chan int64, 1)
			stop := make(chan struct{})
			got := make(chan error, 1)
			addr, _ := oneConnBackend(t, func(c *net.TCPConn) {
				select { // does not read until told how much
				case n := <-look:
					_, err := io.CopyN(io.Discard, c, n)
					got <- err
				case <-stop:
				}
			})
			t.Cleanup(func() { close(stop) }) // runs before the backend's cleanup waits for it
			r := start(t, "--backend", addr, "--splice", mode, "--workers", "1", "--health-interval", "1h")
			c, fd, sent := muteClient(t, r)
			// Nothing waits to be written to the client, so EPOLLOUT,
			// which its empty send buffer would report at once, goes too.
			if ev := epollInterest(t, fd); ev&(unix.EPOLLOUT|unix.EPOLLRDHUP) != unix.EPOLLRDHUP {
				t.Errorf("muted registration %#x: want EPOLLRDHUP without EPOLLOUT", ev)
			}

			look <- sent
			if err := <-got; err != nil {
				t.Fatalf("backend read: %v", err)
			}
			waitFor(t, "the client's socket watched for input again", func() bool {
				return epollInterest(t, fd)&unix.EPOLLIN != 0
			})
			// And it is read: a last message gets through.
			if _, err := c.Write([]byte("end")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the last message forwarded", func() bool { return r.Stats().BytesUp == uint64(sent)+3 })
		})
	}
}

// TestBothWaysStalled: the client's socket, muted while nothing waited to
// be written to it, is registered without EPOLLOUT; when the backend's
// bytes then fill it, EPOLLOUT is put back, so that once the client reads,
// everything held for it is delivered. Then the backend reads, and the
// client's bytes are delivered too.
func TestBothWaysStalled(t *testing.T) {
	for _, mode := range []string{"never", "always"} {
		t.Run(mode, func(t *testing.T) {
			send := make(chan struct{})
			look := make(chan int64, 1)
			stop := make(chan struct{})
			sentDown := make(chan int64, 1)
			got := make(chan error, 1)
			addr, _ := oneConnBackend(t, func(c *net.TCPConn) {
				select { // neither reads nor writes until told
				case <-send:
				case <-stop:
					return
				}
				n, err := fillUntilBlocked(c) // the client does not read either
				if err != nil {
					got <- fmt.Errorf("backend fill: %w", err)
					return
				}
				sentDown <- n
				select {
				case n := <-look:
					_, err := io.CopyN(io.Discard, c, n)
					got <- err
				case <-stop:
				}
			})
			t.Cleanup(func() { close(stop) })
			r := start(t, "--backend", addr, "--splice", mode, "--workers", "1", "--health-interval", "1h")
			c, fd, sentUp := muteClient(t, r)
			if ev := epollInterest(t, fd); ev&unix.EPOLLOUT != 0 {
				t.Errorf("muted with nothing to write to it, the client's socket is registered for EPOLLOUT (%#x)", ev)
			}

			close(send)
			var down int64
			select {
			case down = <-sentDown:
			case err := <-got:
				t.Fatal(err)
			}
			waitFor(t, "the client's socket watched for output again", func() bool {
				return epollInterest(t, fd)&unix.EPOLLOUT != 0
			})

			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := io.CopyN(io.Discard, c, down); err != nil {
				t.Fatalf("client read %d of the backend's %d bytes: %v", n, down, err)
			}
			look <- sentUp
			if err := <-got; err != nil {
				t.Fatalf("backend read: %v", err)
			}
		})
	}
}

// TestSlowReaderByteExact sends 64 MiB through the balancer to a backend
// that reads in bursts with pauses, so that the client's side is muted and
// unmuted hundreds of times; every byte must arrive, in order.
func TestSlowReaderByteExact(t *testing.T) {
	const size = 64 << 20
	for _, mode := range []string{"never", "always"} {
		t.Run(mode, func(t *testing.T) {
			type result struct {
				n   int64
				sum [sha256.Size]byte
				err error
			}
			got := make(chan result, 1)
			addr, _ := oneConnBackend(t, func(c *net.TCPConn) {
				h := sha256.New()
				var res result
				for res.err == nil {
					var n int64
					n, res.err = io.CopyN(h, c, 256<<10)
					res.n += n
					time.Sleep(200 * time.Microsecond) // a slow reader: the proxy's side fills
				}
				if res.err == io.EOF {
					res.err = nil
				}
				copy(res.sum[:], h.Sum(nil))
				got <- res
			})
			r := start(t, "--backend", addr, "--splice", mode, "--workers", "1", "--health-interval", "1h")
			c := r.dial(t)
			h := sha256.New()
			if _, err := io.Copy(struct{ io.Writer }{c}, io.TeeReader(io.LimitReader(newRandReader(7), size), h)); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			res := <-got
			if res.err != nil {
				t.Fatalf("backend read: %v", res.err)
			}
			if res.n != size || !bytes.Equal(res.sum[:], h.Sum(nil)) {
				t.Fatalf("backend got %d of %d bytes, sha256 match %v", res.n, size, bytes.Equal(res.sum[:], h.Sum(nil)))
			}
		})
	}
}

// TestPipeFallbackMetric: with the loop's one pipe held by a connection
// whose backend does not read, another connection's bulk bytes are copied,
// and sluice_pipe_fallbacks_total says so.
func TestPipeFallbackMetric(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan *net.TCPConn, 2)
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			accepted <- c // held open, never read
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	})
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend", ln.Addr().String(), "--splice", "always",
		"--workers", "1", "--admin-addr", "127.0.0.1:0", "--health-interval", "1h", "--drain-timeout", "1s")
	cfg.MaxPipes = 1
	r := startCfg(t, cfg, zap.NewNop())

	metric := func() float64 {
		_, body := httpGet(t, "http://"+r.AdminAddr()+"/metrics")
		v, ok := parseMetrics(body)[`sluice_pipe_fallbacks_total{service="default"}`]
		if !ok {
			t.Fatalf("no sluice_pipe_fallbacks_total in:\n%s", body)
		}
		return v
	}
	if got := metric(); got != 0 {
		t.Fatalf("fallbacks before any traffic: %v", got)
	}
	first := r.dial(t)
	if _, err := fillUntilBlocked(first); err != nil { // its bytes now wait in the one pipe
		t.Fatal(err)
	}
	second := r.dial(t)
	if _, err := second.Write(make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second connection's bytes copied", func() bool { return metric() != 0 })
	if st := r.Stats(); st.SplicedBytes == 0 {
		t.Errorf("nothing spliced: the first connection should have had the pipe")
	}
}

// TestPipeSizing: the empty pipes kept for reuse make 16 MiB over all the
// pools (one per TCP service on each loop), so more loops or services do
// not take more of an unprivileged user's pipe allowance; and a
// --pipe-size this process may not have is warned of at start.
func TestPipeSizing(t *testing.T) {
	started := func(t *testing.T, args ...string) (idle int64, warned []observer.LoggedEntry) {
		t.Helper()
		core, logs := observer.New(zapcore.InfoLevel)
		// The start-up lines are logged just after Ready: once Run has
		// returned, they all are.
		if err := startCfg(t, parse(t, args...), zap.New(core)).stop(t); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, e := range logs.FilterMessage("sluice started").All() {
			idle = e.ContextMap()["idle_pipes_per_pool"].(int64)
		}
		return idle, logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("smaller than --pipe-size").All()
	}
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	path := filepath.Join(t.TempDir(), "sluice.conf")
	writeFile(t, path, "[service one]", "listen 127.0.0.1:0", "backend "+a.Addr().String(), "health-check none",
		"[service two]", "listen 127.0.0.1:0", "backend "+a.Addr().String(), "health-check none",
		"[service dgram]", "proto udp", "listen 127.0.0.1:0", "backend "+a.Addr().String(), "health-check none")
	for _, c := range []struct {
		args []string
		want int64
	}{
		{[]string{"--workers", "1"}, 8},                        // 2 TCP pools of 1 MiB pipes
		{[]string{"--workers", "4"}, 2},                        // 8 pools
		{[]string{"--workers", "4", "--pipe-size", "256k"}, 8}, // 8 pools of 256 KiB pipes
	} {
		idle, warned := started(t, append([]string{"--config", path}, c.args...)...)
		if idle != c.want {
			t.Errorf("%v: %d empty pipes per pool, want %d", c.args, idle, c.want)
		}
		if len(warned) != 0 {
			t.Errorf("%v: warned %q", c.args, warned[0].Message)
		}
	}

	// Above fs.pipe-max-size, without CAP_SYS_RESOURCE, pipes stay small.
	if got, err := splice.Probe(16 << 20); err != nil || got == 16<<20 {
		t.Skipf("this process may make 16 MiB pipes (%d, %v): nothing to warn of", got, err)
	}
	_, warned := started(t, "--listen", "127.0.0.1:0", "--backend", a.Addr().String(), "--health-check", "none", "--pipe-size", "16m")
	if len(warned) != 1 {
		t.Fatalf("--pipe-size 16m, which this process may not have: %d warnings, want 1", len(warned))
	}
}
