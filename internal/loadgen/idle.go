package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// idle opens Conns connections, proves each with one echo round trip, holds
// them for Duration (or until ctx is cancelled) and closes them. With
// ProxyPIDs it reports the proxies' resident memory before opening and at the
// end of the hold. Warmup does not apply. Opening must finish within Timeout
// plus 2 ms per connection; it stops early after 64 failures.
func (r *runner) idle(ctx context.Context) (Result, error) {
	cfg := r.cfg
	var (
		proxy *ProxyResult
		err   error
	)
	if len(cfg.ProxyPIDs) > 0 {
		proxy = &ProxyResult{PIDs: cfg.ProxyPIDs}
		if proxy.RSSBeforeKiB, err = sumRSS(cfg.ProxyPIDs); err != nil {
			return Result{}, err
		}
		r.sampleCPU0()
	}
	r.start = time.Now()
	r.measure, r.end = r.start, r.start.Add(cfg.Duration)

	// Open.
	n := cfg.Conns
	conns := make([]*net.TCPConn, n)
	defer closeAll(conns)
	var open atomic.Int64
	stopProgress := r.idleProgress(ctx, &open)
	octx, ocancel := context.WithTimeout(ctx, cfg.Timeout+time.Duration(n)*2*time.Millisecond)
	r.newWorkers(min(n, maxOpenProcs), false)
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		failures atomic.Int64
	)
	for _, w := range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for octx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				start := time.Now()
				c, err := r.openProved(octx, i)
				if err != nil {
					w.fail(octx, err)
					if failures.Add(1) >= maxOpenProcs {
						ocancel()
					}
					continue
				}
				conns[i] = c
				record(w.hist, time.Since(start))
				w.ops++
				open.Add(1)
			}
		}()
	}
	wg.Wait()
	openErr := octx.Err()
	ocancel()
	openDone := time.Now()

	// Hold.
	if ctx.Err() == nil {
		t := time.NewTimer(cfg.Duration)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	held := time.Since(openDone)
	var closedByPeer uint64
	for _, c := range conns {
		if c != nil && !alive(c) {
			closedByPeer++
		}
	}
	if proxy != nil {
		if proxy.RSSAfterKiB, err = sumRSS(cfg.ProxyPIDs); err != nil {
			stopProgress()
			return Result{}, err
		}
		if cpu1, err := sumCPU(cfg.ProxyPIDs); err == nil && r.cpu0ok {
			proxy.CPUSeconds = cpu1 - r.cpu0
		} else if err != nil {
			proxy.Error = err.Error()
		}
	}
	stopProgress()

	res := Result{
		Mode:        Idle,
		Target:      cfg.Target.String(),
		Conns:       n,
		SizeBytes:   cfg.ReqSize,
		ElapsedS:    held.Seconds(),
		SourceAddrs: r.src.used(),
		Proxy:       proxy,
		Env:         currentEnv(r.start),
		Idle: &IdleResult{
			OpenS:  openDone.Sub(r.start).Seconds(),
			HeldS:  held.Seconds(),
			Closed: closedByPeer,
		},
	}
	hist := newHist()
	var firstAt time.Time
	for _, w := range r.workers {
		res.Ops += w.ops
		res.Errors += w.errs
		hist.Merge(w.hist)
		if w.firstErr != nil && (firstAt.IsZero() || w.firstErrAt.Before(firstAt)) {
			res.FirstError, firstAt = w.firstErr.Error(), w.firstErrAt
		}
	}
	res.Latency = latencyOf(hist)
	res.Idle.Opened = res.Ops
	res.Idle.Failed = uint64(n) - res.Ops
	res.BytesSent = res.Ops * uint64(cfg.ReqSize)
	res.BytesReceived = res.BytesSent
	if res.Idle.OpenS > 0 {
		res.OpsPerSec = float64(res.Ops) / res.Idle.OpenS
	}
	if res.Errors == 0 && openErr != nil && ctx.Err() == nil && res.Idle.Failed > 0 {
		res.FirstError = fmt.Sprintf("opening took longer than %v", cfg.Timeout+time.Duration(n)*2*time.Millisecond)
	}
	if proxy != nil && res.Ops > 0 {
		proxy.RSSPerConnKiB = float64(proxy.RSSAfterKiB-proxy.RSSBeforeKiB) / float64(res.Ops)
	}
	return res, nil
}

// openProved opens connection i and does one echo round trip on it.
func (r *runner) openProved(ctx context.Context, i int) (*net.TCPConn, error) {
	c, err := r.dialTCP(ctx)
	if err != nil {
		return nil, err
	}
	release := onDone(ctx, func() { c.SetDeadline(past) })
	defer release()
	req := bytes.Repeat([]byte{byte(i)}, r.cfg.ReqSize)
	resp := make([]byte, len(req))
	if _, err = c.Write(req); err == nil {
		_, err = io.ReadFull(c, resp)
	}
	if err == nil && !bytes.Equal(req, resp) {
		err = errors.New("reply differs from request: target is not an echo")
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("round trip on new connection: %w", err)
	}
	return c, nil
}

// alive reports whether c is still open: a read with an expired deadline
// times out on an open connection and returns EOF or an error on one the
// peer has closed. Any byte read means the target misbehaves; the connection
// counts as alive.
func alive(c *net.TCPConn) bool {
	c.SetReadDeadline(past)
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err == nil || errors.As(err, &ne) && ne.Timeout()
}

// idleProgress reports the number of open connections once a second until
// the returned stop is called; stop waits for the reporting goroutine.
func (r *runner) idleProgress(ctx context.Context, open *atomic.Int64) (stop func()) {
	if r.cfg.Progress == nil {
		return func() {}
	}
	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case now := <-t.C:
				r.cfg.Progress(Progress{Elapsed: now.Sub(r.start), Open: open.Load(), Ops: uint64(open.Load())})
			}
		}
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}
