package loadgen

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// errEcho is a reply that is not the echo of its request.
type errEcho struct{ want, got uint64 }

func (e errEcho) Error() string {
	return fmt.Sprintf("reply carries sequence %d, want %d: target is not an echo", e.got, e.want)
}

// rr runs request/response over Conns keep-alive connections opened before
// the clock starts, closed loop or at the open-loop Rate.
func (r *runner) rr(ctx context.Context) (Result, error) {
	conns, err := r.openTCP(ctx, r.cfg.Conns)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	open := r.cfg.Rate > 0
	r.newWorkers(r.cfg.Conns, open)
	stop := r.load(ctx, func(ctx context.Context, w *worker, k int) {
		r.rrLoop(ctx, conns[k], w, k)
	})
	res := r.result(stop)
	res.SizeBytes = r.cfg.ReqSize
	return res, nil
}

func (r *runner) rrLoop(ctx context.Context, c *net.TCPConn, w *worker, k int) {
	open := r.cfg.Rate > 0
	var p *pacer
	if open {
		var err error
		if p, err = newPacer(); err != nil {
			w.fail(ctx, err)
			return
		}
		defer p.Close()
	}
	release := onDone(ctx, func() {
		c.SetDeadline(past)
		if p != nil {
			p.SetReadDeadline(past)
		}
	})
	defer release()

	size := r.cfg.ReqSize
	req, resp := make([]byte, size), make([]byte, size)
	for i := range req {
		req[i] = byte(i)
	}
	var i uint64
	if open {
		defer func() { w.paced, w.conn, w.next = true, k, i }()
	}
	for ; ; i++ {
		var intended, sent time.Time
		if open {
			intended = r.slot(k, i)
			if !intended.Before(r.end) {
				return
			}
			if err := p.sleepUntil(intended); err != nil {
				w.fail(ctx, err)
				return
			}
			sent = time.Now()
		} else {
			sent = time.Now()
			intended = sent
			if !sent.Before(r.end) {
				return
			}
		}
		measured := !intended.Before(r.measure)
		if measured && !r.takeTicket() {
			return
		}
		if size >= 8 {
			binary.LittleEndian.PutUint64(req, i)
		}
		if _, err := c.Write(req); err != nil {
			w.fail(ctx, err)
			return
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the target closed a keep-alive connection
			}
			w.fail(ctx, err)
			return
		}
		done := time.Now()
		if size >= 8 {
			if got := binary.LittleEndian.Uint64(resp); got != i {
				w.fail(ctx, errEcho{want: i, got: got})
				return
			}
		}
		w.liveOps.Add(1)
		w.liveBytes.Add(uint64(2 * size))
		if measured {
			w.ops++
			w.sent += uint64(size)
			w.recv += uint64(size)
			record(w.hist, done.Sub(intended))
			if open {
				record(w.lag, sent.Sub(intended))
			}
		}
	}
}
