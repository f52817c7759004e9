package handoff

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func pair(tb testing.TB) (*net.UnixConn, *net.UnixConn) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second)) // a failed sender fails the reader, not hangs it
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// sendAsync sends on a from another goroutine and returns a function that
// waits for Send's result. A failed Send closes a, so the reader fails at
// once.
func sendAsync(a *net.UnixConn, sockets []Socket, backends []Backend) func() error {
	errc := make(chan error, 1)
	go func() {
		err := Send(a, sockets, backends)
		if err != nil {
			a.Close()
		}
		errc <- err
	}()
	return func() error { return <-errc }
}

// transfer sends sockets and backends on a and receives them on b.
func transfer(tb testing.TB, a, b *net.UnixConn, sockets []Socket, backends []Backend) ([]Socket, []Backend) {
	tb.Helper()
	wait := sendAsync(a, sockets, backends)
	gotSockets, gotBackends, err := Receive(b)
	if err := wait(); err != nil {
		tb.Fatalf("send: %v", err)
	}
	if err != nil {
		tb.Fatalf("receive: %v", err)
	}
	return gotSockets, gotBackends
}

// TestSendReceive passes more descriptors than fit one SCM_RIGHTS message
// and checks each arrives as the same file, with its description.
func TestSendReceive(t *testing.T) {
	a, b := pair(t)
	socks, inodes := pipeSockets(t, 450)
	got, backends := transfer(t, a, b, socks, nil)
	if backends != nil {
		t.Fatalf("received backends %+v, sent none", backends)
	}
	checkSockets(t, got, inodes)
	// Ready goes the other way.
	errc := make(chan error, 1)
	go func() { errc <- SendReady(b) }()
	if v, err := WaitReady(a); err != nil || v != Version {
		t.Fatalf("WaitReady: version %d, %v; want %d", v, err, Version)
	}
	<-errc
}

// TestWaitReadyStopping: a new process told to stop before it served says
// so, and WaitReady tells that apart from an exit (which closes the
// socket) with ErrStopping, at once: the old process must not wait out its
// timeout and then kill a process that is draining connections.
func TestWaitReadyStopping(t *testing.T) {
	a, b := pair(t)
	if err := SendStopping(b, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	v, err := WaitReady(a)
	if !errors.Is(err, ErrStopping) || v != Version {
		t.Fatalf("WaitReady after a Stopping frame: version %d, %v; want %d, ErrStopping", v, err, Version)
	}
	// The new process's drain timeout comes with it: the old one reaps
	// it by that, not by its own.
	var stop *StoppingError
	if !errors.As(err, &stop) || stop.Drain != 90*time.Second {
		t.Fatalf("WaitReady's error %#v does not carry the drain timeout sent (90s)", err)
	}
}

// TestStoppingWithoutDrain: a Stopping frame of a release that does not
// send its drain timeout reads as 0, for the caller to fill in.
func TestStoppingWithoutDrain(t *testing.T) {
	a, b := pair(t)
	if err := writeFrame(b, Frame{Version: 3, Stopping: true}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := WaitReady(a)
	var stop *StoppingError
	if !errors.As(err, &stop) || stop.Drain != 0 {
		t.Fatalf("WaitReady: %#v, want a StoppingError with no drain", err)
	}
}

// TestKept: a new process that reported ready and is stopping learns
// whether the old process drains reading the sockets they share: a Keep
// frame says so; the old process closing the socket without one (it saw
// the Ready frame, or is of version 3), or saying nothing within the
// wait, does not.
func TestKept(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  func(c *net.UnixConn) error
		want bool
	}{
		{"keep", SendKeep, true},
		{"keep then close", func(c *net.UnixConn) error { SendKeep(c); return c.Close() }, true},
		{"close", (*net.UnixConn).Close, false},
		{"silent", func(*net.UnixConn) error { return nil }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t)
			if err := tc.old(a); err != nil {
				t.Fatal(err)
			}
			if got := Kept(b, 50*time.Millisecond); got != tc.want {
				t.Fatalf("Kept: %v, want %v", got, tc.want)
			}
		})
	}
}

func TestWaitReadyFailsWhenPeerLeaves(t *testing.T) {
	a, b := pair(t)
	b.Close()
	if _, err := WaitReady(a); err == nil {
		t.Fatal("WaitReady succeeded without a Ready frame")
	}
}

func TestMalformedFrame(t *testing.T) {
	a, b := pair(t)
	go func() {
		a.Write([]byte{0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'})
	}()
	if _, _, err := Receive(b); err == nil {
		t.Fatal("accepted a frame that is not JSON")
	}
	go func() {
		a.Write([]byte{0xff, 0xff, 0xff, 0xff})
	}()
	if _, _, err := Receive(b); err == nil {
		t.Fatal("accepted a 4 GiB frame length")
	}
}

// pipeSockets returns n listener descriptions of pipe descriptors, closed
// at the end of the test, and the descriptors' inodes.
func pipeSockets(tb testing.TB, n int) ([]Socket, []uint64) {
	tb.Helper()
	var socks []Socket
	var inodes []uint64
	for range n {
		r, w, err := os.Pipe()
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { r.Close(); w.Close() })
		var st unix.Stat_t
		unix.Fstat(int(r.Fd()), &st)
		inodes = append(inodes, st.Ino)
		socks = append(socks, Socket{Kind: KindListener, Service: "svc", Proto: "tcp", Addr: "127.0.0.1:1", FD: int(r.Fd())})
	}
	return socks, inodes
}

// checkSockets checks that got are the sockets pipeSockets made, each the
// same file as sent, and closes them.
func checkSockets(tb testing.TB, got []Socket, inodes []uint64) {
	tb.Helper()
	if len(got) != len(inodes) {
		tb.Errorf("received %d sockets, sent %d", len(got), len(inodes))
	}
	for i, s := range got {
		var st unix.Stat_t
		if err := unix.Fstat(s.FD, &st); err != nil || i >= len(inodes) || st.Ino != inodes[i] || s.Service != "svc" || s.Kind != KindListener {
			tb.Errorf("socket %d: %+v inode %d (%v)", i, s, st.Ino, err)
		}
		unix.Close(s.FD)
	}
}

// manyBackends returns backends whose JSON needs several frames: every
// state a service passes on, and n more down with a long check error.
func manyBackends(n int) []Backend {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	out := []Backend{
		{Service: "pg", Addr: "10.0.0.1:5432", Drained: true},
		{Service: "pg", Addr: "10.0.0.2:5432", Down: true, LastCheck: &Check{Time: at, Error: "connection refused", Duration: 1500 * time.Microsecond}},
		{Service: "pg", Addr: "10.0.0.3:5432", LastCheck: &Check{Time: at, OK: true, Duration: time.Millisecond}},
		{Service: "redis", Addr: "[2001:db8::1]:6379", Drained: true, Down: true, Left: at.Add(-time.Minute)},
	}
	for i := range n {
		out = append(out, Backend{Service: "dns", Addr: fmt.Sprintf("10.1.%d.%d:80", i/256, i%256), Down: true,
			LastCheck: &Check{Time: at, Error: strings.Repeat("x", 1000)}})
	}
	return out
}

// TestSendReceiveBackends: the backends' state comes through beside the
// sockets, over several frames when it does not fit one.
func TestSendReceiveBackends(t *testing.T) {
	a, b := pair(t)
	socks, inodes := pipeSockets(t, 3)
	sent := manyBackends(3000) // about 3 MB of JSON: at least 3 frames
	got, backends := transfer(t, a, b, socks, sent)
	checkSockets(t, got, inodes)
	want, _ := json.Marshal(sent)
	have, _ := json.Marshal(backends)
	if !bytes.Equal(have, want) {
		t.Fatalf("received %d backends, sent %d; first received %+v", len(backends), len(sent), backends[:min(1, len(backends))])
	}
}

// TestOversizedBackend: a backend whose check error alone fills a frame
// goes without its last check rather than break the upgrade.
func TestOversizedBackend(t *testing.T) {
	a, b := pair(t)
	sent := []Backend{
		{Service: "s", Addr: "10.0.0.1:1", Down: true, LastCheck: &Check{Error: strings.Repeat("e", maxFrame)}},
		{Service: "s", Addr: "10.0.0.2:1", Drained: true},
	}
	_, got := transfer(t, a, b, nil, sent)
	if len(got) != 2 || got[0].LastCheck != nil || !got[0].Down || got[0].Addr != "10.0.0.1:1" || !got[1].Drained {
		t.Fatalf("received %+v", got)
	}
}

// frameV1 is Frame as protocol version 1 knew it: no backends.
type frameV1 struct {
	Version int      `json:"version"`
	Sockets []Socket `json:"sockets,omitempty"`
	Done    bool     `json:"done,omitempty"`
	Ready   bool     `json:"ready,omitempty"`
	PID     int      `json:"pid,omitempty"`
}

// receiveV1 reads frames up to Done as a version-1 Receive did, failing
// where it failed, and returns the sockets and how many frames it read.
func receiveV1(c *net.UnixConn) ([]Socket, int, error) {
	var socks []Socket
	for frames := 1; ; frames++ {
		body, fds, err := readBody(c)
		if err != nil {
			return socks, frames, fmt.Errorf("frame %d: %w", frames, err)
		}
		var f frameV1
		if err := json.Unmarshal(body, &f); err != nil || f.Version < 1 {
			return socks, frames, fmt.Errorf("frame %d: %v, version %d", frames, err, f.Version)
		}
		if len(fds) != len(f.Sockets) {
			return socks, frames, fmt.Errorf("frame %d lists %d sockets but carries %d descriptors", frames, len(f.Sockets), len(fds))
		}
		for i, s := range f.Sockets {
			s.FD = fds[i]
			socks = append(socks, s)
		}
		if f.Done {
			return socks, frames, nil
		}
	}
}

// TestVersion1ReaderSkipsBackends: a successor of the version before the
// backends (a downgrade) takes the sockets and skips the backend frames.
func TestVersion1ReaderSkipsBackends(t *testing.T) {
	a, b := pair(t)
	socks, inodes := pipeSockets(t, 2)
	wait := sendAsync(a, socks, manyBackends(1500))
	got, frames, err := receiveV1(b)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("version-1 reader: %v", err)
	}
	if frames < 4 {
		t.Fatalf("read %d frames: the backends did not take frames of their own", frames)
	}
	checkSockets(t, got, inodes)
}

// TestReceiveFromVersion1: a predecessor of the version before the
// backends sends none, and its sockets are taken as before.
func TestReceiveFromVersion1(t *testing.T) {
	a, b := pair(t)
	socks, inodes := pipeSockets(t, 1)
	errc := make(chan error, 1)
	go func() {
		// Frames as a version-1 sender wrote them.
		body := `{"version":1,"sockets":[{"kind":"listener","service":"svc","proto":"tcp","addr":"127.0.0.1:1"}]}`
		msg := append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
		if _, _, err := a.WriteMsgUnix(msg, unix.UnixRights(socks[0].FD), nil); err != nil {
			errc <- err
			return
		}
		body = `{"version":1,"done":true,"pid":1}`
		_, err := a.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...))
		errc <- err
	}()
	got, backends, err := Receive(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if backends != nil {
		t.Fatalf("backends %+v from a version-1 sender", backends)
	}
	checkSockets(t, got, inodes)
}
