package splice

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func socketpair(tb testing.TB) (int, int) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

func TestPoolLendsAndReuses(t *testing.T) {
	p := NewPool(PoolConfig{PipeSize: 64 << 10, MaxPipes: 2, MaxIdle: 1})
	defer p.Close()
	a, b := p.Get(), p.Get()
	if a == nil || b == nil {
		t.Fatal("Get failed under MaxPipes")
	}
	if a.Cap < 64<<10 {
		t.Fatalf("pipe capacity %d, asked 64k", a.Cap)
	}
	if c := p.Get(); c != nil {
		t.Fatal("Get lent a third pipe with MaxPipes 2")
	}
	p.Put(a)
	p.Put(b) // over MaxIdle: closed
	st := p.Stats()
	if st.Created != 2 || st.Exhausted != 1 || st.Idle != 1 || st.Alive != 1 || st.Closed != 1 {
		t.Fatalf("stats %+v", st)
	}
	if again := p.Get(); again != a {
		t.Fatal("Get did not reuse the idle pipe")
	}
}

// TestDirtyPipeNeverReused: a pipe returned with bytes in it is closed, so
// its bytes can never leak into another connection.
func TestDirtyPipeNeverReused(t *testing.T) {
	p := NewPool(PoolConfig{PipeSize: 64 << 10, MaxPipes: 4, MaxIdle: 4})
	defer p.Close()
	pp := p.Get()
	if _, err := pp.Write([]byte("secret")); err != nil {
		t.Fatal(err)
	}
	p.Put(pp)
	if st := p.Stats(); st.Idle != 0 || st.Closed != 1 || st.Alive != 0 {
		t.Fatalf("dirty pipe kept: %+v", st)
	}
	fresh := p.Get()
	if fresh == nil || fresh.Len != 0 {
		t.Fatal("no clean pipe")
	}
	// The fresh pipe really is empty: a non-blocking splice out of it finds
	// nothing.
	a, _ := socketpair(t)
	fresh.Len = 1
	if _, err := fresh.Drain(a); err != unix.EAGAIN {
		t.Fatalf("drain of fresh pipe = %v, want EAGAIN", err)
	}
	fresh.Len = 0
	p.Put(fresh)
}

// TestFillDrain moves bytes socket → pipe → socket and checks them.
func TestFillDrain(t *testing.T) {
	p := NewPool(DefaultPoolConfig())
	defer p.Close()
	srcW, srcR := socketpair(t)
	dstW, dstR := socketpair(t)
	pp := p.Get()
	msg := bytes.Repeat([]byte("sluice"), 10000)
	if n, err := Write(srcW, msg); err != nil || n != len(msg) {
		t.Fatalf("write %d, %v", n, err)
	}
	total := 0
	for total < len(msg) {
		n, err := pp.Fill(srcR, pp.Cap)
		if err != nil {
			t.Fatalf("fill: %v", err)
		}
		total += n
	}
	if pp.Len != len(msg) {
		t.Fatalf("pipe holds %d, want %d", pp.Len, len(msg))
	}
	// Empty source: EAGAIN, and the pipe is not full.
	if _, err := pp.Fill(srcR, pp.Cap); err != unix.EAGAIN {
		t.Fatalf("fill from empty socket = %v, want EAGAIN", err)
	}
	for pp.Len > 0 {
		if _, err := pp.Drain(dstW); err != nil {
			t.Fatalf("drain: %v", err)
		}
	}
	got := make([]byte, len(msg)+1)
	n, err := Read(dstR, got)
	if err != nil || !bytes.Equal(got[:n], msg) {
		t.Fatalf("read back %d bytes, %v; equal=%v", n, err, bytes.Equal(got[:n], msg))
	}
	// End of stream: Fill returns 0, nil.
	unix.Shutdown(srcW, unix.SHUT_WR)
	if n, err := pp.Fill(srcR, pp.Cap); n != 0 || err != nil {
		t.Fatalf("fill at EOF = %d, %v", n, err)
	}
	p.Put(pp)
}
