package loadgen

import (
	"context"
	"net"
	"time"
)

// stream moves bulk data over Conns connections opened before the clock
// starts: push writes to a sink, pull reads from a source, both does the two
// at once against an echo (one goroutine per direction and connection).
func (r *runner) stream(ctx context.Context) (Result, error) {
	n := r.cfg.Conns
	conns, err := r.openTCP(ctx, n)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)

	workers := n
	if r.cfg.Direction == Both {
		workers = 2 * n
	}
	r.newWorkers(workers, false)
	stop := r.load(ctx, func(ctx context.Context, w *worker, i int) {
		c := conns[i%n]
		release := onDone(ctx, func() { c.SetDeadline(past) })
		defer release()
		write := r.cfg.Direction == Push || (r.cfg.Direction == Both && i < n)
		if write {
			r.pushLoop(ctx, c, w)
		} else {
			r.pullLoop(ctx, c, w)
		}
	})
	res := r.result(stop)
	res.Direction = r.cfg.Direction
	res.SizeBytes = r.cfg.Chunk
	res.Latency = nil // stream records no latencies
	return res, nil
}

func (r *runner) pushLoop(ctx context.Context, c *net.TCPConn, w *worker) {
	buf := make([]byte, r.cfg.Chunk)
	for i := range buf {
		buf[i] = byte(i)
	}
	for {
		n, err := c.Write(buf)
		if n > 0 {
			w.liveOps.Add(1)
			w.liveBytes.Add(uint64(n))
			if r.inWindow(time.Now()) {
				w.ops++
				w.sent += uint64(n)
			}
		}
		if err != nil {
			w.fail(ctx, err)
			return
		}
	}
}

func (r *runner) pullLoop(ctx context.Context, c *net.TCPConn, w *worker) {
	buf := make([]byte, r.cfg.Chunk)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			w.liveOps.Add(1)
			w.liveBytes.Add(uint64(n))
			if r.inWindow(time.Now()) {
				w.ops++
				w.recv += uint64(n)
			}
		}
		if err != nil {
			w.fail(ctx, err) // EOF from the target is an error here: it should not end
			return
		}
	}
}
