package splice

import (
	"math/bits"
	"os"
)

// PoolConfig sizes a Pool.
type PoolConfig struct {
	// PipeSize is the capacity asked of each pipe, in bytes. The kernel
	// rounds it up to a power of two pages.
	PipeSize int
	// MaxPipes caps the pipes alive at once (lent plus idle). When it is
	// reached Get fails and the caller falls back to read/write. Each pipe
	// costs two file descriptors.
	MaxPipes int
	// MaxIdle caps the empty pipes kept for reuse; more are closed on Put.
	MaxIdle int
}

// DefaultPoolConfig returns the pool sizing used when none is given.
func DefaultPoolConfig() PoolConfig {
	return PoolConfig{PipeSize: 1 << 20, MaxPipes: 1024, MaxIdle: IdleFor(1<<20, 1)}
}

// IdleFor returns how many empty pipes of pipeSize bytes each of pools
// pools keeps: as many as make 16 MiB in all, at least 1 and at most 64
// each. An empty pipe holds no memory, but Linux counts its capacity
// against an unprivileged user's pipe allowance (fs.pipe-user-pages-soft,
// 64 MiB by default), so idle pipes kept for reuse would leave less of it
// for the pipes in use; a pool per loop and service, each with its own 16
// MiB, would hold all of it from four loops on. The capacity is what the
// kernel makes of pipeSize: rounded up to a power of two, at least a page.
func IdleFor(pipeSize, pools int) int {
	capacity := max(1<<bits.Len(uint(max(pipeSize, 1)-1)), os.Getpagesize())
	return min(max(16<<20/capacity/max(pools, 1), 1), 64)
}

// Probe creates and closes a pipe of size bytes and returns the capacity
// the kernel gave it, which is less than size when this process may not
// have pipes that large (above fs.pipe-max-size without CAP_SYS_RESOURCE,
// or over its user's pipe allowance).
func Probe(size int) (int, error) {
	pp, err := newPipe(size)
	if err != nil {
		return 0, err
	}
	pp.close()
	return pp.Cap, nil
}

// MinPipe is the smallest pipe worth splicing through. A pipe the kernel
// keeps smaller than this (and smaller than asked) is not lent: an
// unprivileged user over fs.pipe-user-pages-soft gets pipes of two pages,
// and copying through the loop's buffer moves more per system call.
const MinPipe = 64 << 10

// retryAfter is how many Get calls fall back to copying, after the kernel
// kept a new pipe small, before a pipe is created again: the allowance is
// per user and frees up as pipes close, here or in another process.
const retryAfter = 64

// Stats are a pool's counters. Owned by the loop; copy them out with
// Pool.Stats on the loop goroutine.
type Stats struct {
	Created   uint64 // pipes created
	Closed    uint64 // pipes closed (excess idle, dirty on Put, or Close)
	Exhausted uint64 // Get calls refused because MaxPipes were alive
	Failed    uint64 // pipe creations the kernel refused (fd or memory limits)
	Small     uint64 // Get calls that fell back because the kernel kept new pipes small (see MinPipe)
	Alive     int    // pipes alive now, lent or idle
	Idle      int    // pipes in the pool now
}

// Pool lends empty pipes. Not safe for concurrent use: one loop owns it.
type Pool struct {
	cfg   PoolConfig
	free  []*Pipe
	stats Stats
	// skip counts down the Get calls that fall back without trying,
	// after the kernel kept a new pipe small.
	skip int
	// newPipe creates a pipe; a variable for tests.
	newPipe func(size int) (*Pipe, error)
}

// NewPool returns an empty pool; pipes are created on demand.
func NewPool(cfg PoolConfig) *Pool {
	return &Pool{cfg: cfg, newPipe: newPipe}
}

// Get lends an empty pipe, or returns nil when MaxPipes are alive, or the
// kernel refuses a new one or keeps it below MinPipe; the caller then
// copies through a buffer instead.
func (p *Pool) Get() *Pipe {
	if n := len(p.free); n > 0 {
		pp := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		return pp
	}
	if p.stats.Alive >= p.cfg.MaxPipes {
		p.stats.Exhausted++
		return nil
	}
	if p.skip > 0 {
		p.skip--
		p.stats.Small++
		return nil
	}
	pp, err := p.newPipe(p.cfg.PipeSize)
	if err != nil {
		p.stats.Failed++
		return nil
	}
	if pp.Cap < min(MinPipe, p.cfg.PipeSize) {
		pp.close()
		p.skip = retryAfter
		p.stats.Small++
		return nil
	}
	p.stats.Created++
	p.stats.Alive++
	return pp
}

// Put returns a pipe. An empty pipe goes back to the pool (or is closed when
// MaxIdle are already idle); a pipe that still holds bytes is closed, since
// its contents belong to a connection that is gone.
func (p *Pool) Put(pp *Pipe) {
	if pp.Len != 0 || len(p.free) >= p.cfg.MaxIdle {
		p.discard(pp)
		return
	}
	p.free = append(p.free, pp)
}

func (p *Pool) discard(pp *Pipe) {
	pp.close()
	pp.Len = 0
	p.stats.Closed++
	p.stats.Alive--
}

// Stats returns a copy of the pool's counters.
func (p *Pool) Stats() Stats {
	s := p.stats
	s.Idle = len(p.free)
	return s
}

// Close closes the idle pipes. Lent pipes are closed when they are Put back.
func (p *Pool) Close() {
	for i, pp := range p.free {
		p.discard(pp)
		p.free[i] = nil
	}
	p.free = p.free[:0]
}
