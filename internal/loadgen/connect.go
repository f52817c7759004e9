package loadgen

import (
	"context"
	"encoding/binary"
	"io"
	"time"
)

// connect runs Conns workers that each open a new connection per request:
// connect, send ReqSize bytes, read the echo, close. Latency runs from the
// start of connect to the last byte of the echo.
func (r *runner) connect(ctx context.Context) (Result, error) {
	r.newWorkers(r.cfg.Conns, false)
	stop := r.load(ctx, r.connectLoop)
	res := r.result(stop)
	res.SizeBytes = r.cfg.ReqSize
	return res, nil
}

func (r *runner) connectLoop(ctx context.Context, w *worker, k int) {
	size := r.cfg.ReqSize
	req, resp := make([]byte, size), make([]byte, size)
	for i := range req {
		req[i] = byte(i)
	}
	for i := uint64(0); ; i++ {
		start := time.Now()
		if !start.Before(r.end) || ctx.Err() != nil {
			return
		}
		measured := !start.Before(r.measure)
		if measured && !r.takeTicket() {
			return
		}
		if size >= 8 {
			binary.LittleEndian.PutUint64(req, i)
		}
		c, err := r.dialTCP(ctx)
		if err != nil {
			// Counted, and the worker goes on: a refused or timed-out
			// connect is a figure of this mode, not the end of it.
			w.fail(ctx, err)
			continue
		}
		release := onDone(ctx, func() { c.SetDeadline(past) })
		_, err = c.Write(req)
		if err == nil {
			_, err = io.ReadFull(c, resp)
		}
		if err == nil && size >= 8 {
			if got := binary.LittleEndian.Uint64(resp); got != i {
				err = errEcho{want: i, got: got}
			}
		}
		done := time.Now()
		release()
		c.Close()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			w.fail(ctx, err)
			continue
		}
		w.liveOps.Add(1)
		w.liveBytes.Add(uint64(2 * size))
		if measured {
			w.ops++
			w.sent += uint64(size)
			w.recv += uint64(size)
			record(w.hist, done.Sub(start))
		}
	}
}
