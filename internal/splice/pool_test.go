package splice

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestSmallPipeNotLent: a pipe the kernel keeps below MinPipe is closed,
// not lent, and the pool does not try again for retryAfter calls.
func TestSmallPipeNotLent(t *testing.T) {
	p := NewPool(PoolConfig{PipeSize: 1 << 20, MaxPipes: 100, MaxIdle: 4})
	defer p.Close()
	calls, size := 0, 8<<10 // what the kernel gives an unprivileged user over its allowance
	p.newPipe = func(int) (*Pipe, error) {
		calls++
		return newPipe(size)
	}
	if pp := p.Get(); pp != nil {
		t.Fatalf("lent a pipe of %d bytes", pp.Cap)
	}
	for i := 0; i < retryAfter; i++ {
		if p.Get() != nil {
			t.Fatal("lent a pipe while waiting to retry")
		}
	}
	if calls != 1 {
		t.Fatalf("%d pipe creations, want 1 (no retry before %d calls)", calls, retryAfter)
	}
	st := p.Stats()
	if st.Small != retryAfter+1 || st.Created != 0 || st.Alive != 0 {
		t.Fatalf("stats %+v", st)
	}
	size = 1 << 20 // the allowance freed up
	pp := p.Get()
	if pp == nil || pp.Cap != 1<<20 || calls != 2 {
		t.Fatalf("after the wait: pipe %v, %d creations", pp, calls)
	}
	p.Put(pp)

	// A pipe asked below MinPipe is lent at that size.
	q := NewPool(PoolConfig{PipeSize: 16 << 10, MaxPipes: 1, MaxIdle: 1})
	defer q.Close()
	if pp := q.Get(); pp == nil || pp.Cap != 16<<10 {
		t.Fatalf("--pipe-size 16k: got %v", pp)
	}
}

// TestIdleFor: the empty pipes kept by all pools make 16 MiB of the
// capacity the kernel gives, which is the size asked rounded up to a power
// of two; each pool keeps at least one.
func TestIdleFor(t *testing.T) {
	for _, c := range []struct{ size, pools, want int }{
		{4 << 10, 1, 64}, {256 << 10, 1, 64}, {512 << 10, 1, 32}, {1 << 20, 1, 16}, {16 << 20, 1, 1}, {0, 1, 64},
		{600 << 10, 1, 16}, {1<<20 + 1, 1, 8}, {3 << 20, 1, 4}, {5000, 1, 64},
		{1 << 20, 2, 8}, {1 << 20, 8, 2}, {1 << 20, 32, 1}, {1 << 20, 0, 16}, {256 << 10, 4, 16}, {16 << 20, 4, 1},
	} {
		if got := IdleFor(c.size, c.pools); got != c.want {
			t.Errorf("IdleFor(%d, %d) = %d, want %d", c.size, c.pools, got, c.want)
		}
	}
	// The rounding is the kernel's.
	pp, err := newPipe(600 << 10)
	if err != nil {
		t.Fatal(err)
	}
	defer pp.close()
	if pp.Cap != 1<<20 {
		t.Errorf("a pipe asked 600 KiB has %d bytes, want 1 MiB", pp.Cap)
	}
}

// TestUnprivilegedAllowance runs the pool as an unprivileged user (nobody)
// against the real kernel: once the user's pipes reach
// fs.pipe-user-pages-soft, Get falls back instead of lending the two-page
// pipes the kernel makes. The allowance is the user's, shared with its
// other processes (PostgreSQL run as nobody by the health tests of a
// parallel go test ./... holds a few pipes): just under it the kernel keeps
// a pipe at its default 64 KiB, which the pool lends (MinPipe), so that is
// allowed too, never anything smaller.
func TestUnprivilegedAllowance(t *testing.T) {
	if os.Getenv("SLUICE_POOL_CHILD") == "1" {
		poolChild()
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as nobody")
	}
	soft, err := os.ReadFile("/proc/sys/fs/pipe-user-pages-soft")
	if err != nil || strings.TrimSpace(string(soft)) == "0" {
		t.Skipf("no per-user pipe allowance here (fs.pipe-user-pages-soft %q, %v)", soft, err)
	}
	// The test binary may sit in a directory nobody cannot enter.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sluice-pool")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "pool.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run", "^TestUnprivilegedAllowance$")
	cmd.Env = append(os.Environ(), "SLUICE_POOL_CHILD=1")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "pool child ok") {
		t.Fatalf("child did not report:\n%s", out)
	}
	t.Logf("%s", out)
}

// poolChild is TestUnprivilegedAllowance's child, as nobody: it takes 1 MiB
// pipes until the pool falls back, keeping them all lent.
func poolChild() {
	fail := func(format string, a ...any) {
		fmt.Printf(format+"\n", a...)
		os.Exit(1)
	}
	soft, err := os.ReadFile("/proc/sys/fs/pipe-user-pages-soft")
	if err != nil {
		fail("%v", err)
	}
	pages, err := strconv.Atoi(strings.TrimSpace(string(soft)))
	if err != nil {
		fail("fs.pipe-user-pages-soft %q: %v", soft, err)
	}
	p := NewPool(PoolConfig{PipeSize: 1 << 20, MaxPipes: 10000, MaxIdle: 0})
	var lent []*Pipe
	full := 0
	for len(lent) < 4096 {
		pp := p.Get()
		if pp == nil {
			break
		}
		if pp.Cap < MinPipe {
			fail("lent a pipe of %d bytes, below MinPipe", pp.Cap)
		}
		if pp.Cap == 1<<20 {
			full++
		} else if len(lent) == 0 {
			fail("the first pipe has %d bytes, asked 1 MiB: is the user's allowance spent elsewhere?", pp.Cap)
		}
		lent = append(lent, pp)
	}
	st := p.Stats()
	if st.Small != 1 || st.Failed != 0 {
		fail("after %d pipes: stats %+v, want one small pipe refused", len(lent), st)
	}
	if full == 0 || full > pages/256 {
		fail("%d pipes of 1 MiB before the allowance ran out, want 1 to %d (%d pages)", full, pages/256, pages)
	}
	for _, pp := range lent {
		p.Put(pp)
	}
	fmt.Printf("pool child ok: %d pipes of 1 MiB and %d smaller lent, then a fallback\n", full, len(lent)-full)
}
