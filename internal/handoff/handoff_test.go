package handoff

import (
	"net"
	"os"
	"testing"

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
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// TestSendReceive passes more descriptors than fit one SCM_RIGHTS message
// and checks each arrives as the same file, with its description.
func TestSendReceive(t *testing.T) {
	a, b := pair(t)
	const n = 450
	var socks []Socket
	var want []uint64
	for i := 0; i < n; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		var st unix.Stat_t
		unix.Fstat(int(r.Fd()), &st)
		want = append(want, st.Ino)
		socks = append(socks, Socket{Kind: KindListener, Service: "svc", Proto: "tcp", Addr: "127.0.0.1:1", FD: int(r.Fd())})
	}
	errc := make(chan error, 1)
	go func() { errc <- Send(a, socks) }()
	got, err := Receive(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("received %d sockets, sent %d", len(got), n)
	}
	for i, s := range got {
		var st unix.Stat_t
		if err := unix.Fstat(s.FD, &st); err != nil || st.Ino != want[i] || s.Service != "svc" || s.Kind != KindListener {
			t.Fatalf("socket %d: %+v inode %d want %d (%v)", i, s, st.Ino, want[i], err)
		}
		unix.Close(s.FD)
	}
	// Ready goes the other way.
	go func() { errc <- SendReady(b) }()
	if err := WaitReady(a); err != nil {
		t.Fatal(err)
	}
	<-errc
}

func TestWaitReadyFailsWhenPeerLeaves(t *testing.T) {
	a, b := pair(t)
	b.Close()
	if err := WaitReady(a); err == nil {
		t.Fatal("WaitReady succeeded without a Ready frame")
	}
}

func TestMalformedFrame(t *testing.T) {
	a, b := pair(t)
	go func() {
		a.Write([]byte{0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'})
	}()
	if _, err := Receive(b); err == nil {
		t.Fatal("accepted a frame that is not JSON")
	}
	go func() {
		a.Write([]byte{0xff, 0xff, 0xff, 0xff})
	}()
	if _, err := Receive(b); err == nil {
		t.Fatal("accepted a 4 GiB frame length")
	}
}
