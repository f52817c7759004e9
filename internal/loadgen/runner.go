package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// past is a deadline that has passed: setting it makes blocked I/O return.
// It is never modified.
var past = time.Unix(1, 0)

// Run checks cfg, runs it against cfg.Target and returns its figures. It
// returns an error if cfg is invalid or the load could not start (for
// example, the first connections could not be opened); failures during the
// run are counted in Result.Errors instead. Cancelling ctx ends the run early
// with the figures measured until then.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	if len(cfg.ProxyPIDs) > 0 {
		// Fail now rather than report no proxy cost at the end.
		if _, err := sumCPU(cfg.ProxyPIDs); err != nil {
			return Result{}, err
		}
	}
	r := &runner{cfg: cfg, src: newSources(cfg.SourceCIDR)}
	r.tickets.Store(math.MaxInt64)
	if cfg.Requests > 0 {
		r.tickets.Store(cfg.Requests)
	}
	var (
		res Result
		err error
	)
	switch cfg.Mode {
	case Stream:
		res, err = r.stream(ctx)
	case RR:
		res, err = r.rr(ctx)
	case Connect:
		res, err = r.connect(ctx)
	case UDP:
		res, err = r.udp(ctx)
	case Idle:
		res, err = r.idle(ctx)
	}
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

// runner is the state of one Run. Its fields are set before the workers
// start and only read while they run, except where noted.
type runner struct {
	cfg Config
	src *sources

	// start, measure and end delimit the load: warmup is [start, measure),
	// the measured time [measure, end).
	start, measure, end time.Time

	// tickets is the number of measured requests still allowed.
	tickets atomic.Int64

	workers []*worker

	// cpu0 is the proxies' CPU time at the start of the measured time;
	// written by the monitor goroutine, read after it has ended.
	cpu0   float64
	cpu0ok bool
	cpuErr error
	// sys0 is the machine's CPU time at the same moment.
	sys0    cpuTicks
	sys0ok  bool
	sys0Err error
}

// worker is the account of one load goroutine. The live counters are
// written by it and read by the progress monitor; the rest is owned by the
// worker goroutine until it returns, then read by the runner.
type worker struct {
	liveOps   atomic.Uint64
	liveBytes atomic.Uint64
	liveErrs  atomic.Uint64

	ops, sent, recv, errs uint64
	// paced workers (open loop) record where they stopped: the slot index
	// next of connection conn had not been completed.
	paced      bool
	conn       int
	next       uint64
	firstErr   error
	firstErrAt time.Time
	hist, lag  *hdrhistogram.Histogram
	udp        UDPResult
}

func (r *runner) newWorkers(n int, lag bool) {
	r.workers = make([]*worker, n)
	for i := range r.workers {
		w := &worker{hist: newHist()}
		if lag {
			w.lag = newHist()
		}
		r.workers[i] = w
	}
}

// fail counts err unless the run is over (ctx done or past its deadline:
// a dial can time out on the deadline before ctx reports it), in which case
// the error is how blocked I/O was stopped. It reports whether err was
// counted.
func (w *worker) fail(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return false
	}
	w.errs++
	w.liveErrs.Add(1)
	if w.firstErr == nil {
		w.firstErr, w.firstErrAt = err, time.Now()
	}
	return true
}

// inWindow reports whether t lies in the measured time.
func (r *runner) inWindow(t time.Time) bool {
	return !t.Before(r.measure) && t.Before(r.end)
}

// takeTicket reports whether one more measured request may be made.
func (r *runner) takeTicket() bool { return r.tickets.Add(-1) >= 0 }

// limited reports whether the request limit has been reached.
func (r *runner) limited() bool { return r.cfg.Requests > 0 && r.tickets.Load() <= 0 }

// slot returns the intended time of request i of connection k in open loop:
// the connections share the rate, staggered evenly.
func (r *runner) slot(k int, i uint64) time.Time {
	n := float64(r.cfg.Conns)
	return r.start.Add(time.Duration((float64(i)*n + float64(k)) * 1e9 / r.cfg.Rate))
}

// slotsFrom counts the slots of connection k from index i on whose intended
// time lies in the measured time as it ended at stop.
func (r *runner) slotsFrom(k int, i uint64, stop time.Time) uint64 {
	n, rate := float64(r.cfg.Conns), r.cfg.Rate
	idx := func(t time.Time) float64 { // first j with slot(k, j) >= t
		return math.Max(0, math.Ceil((t.Sub(r.start).Seconds()*rate-float64(k))/n))
	}
	lo := math.Max(float64(i), idx(r.measure))
	hi := idx(stop)
	if hi <= lo {
		return 0
	}
	return uint64(hi - lo)
}

// onDone runs f once ctx is done. The returned release stops that, or waits
// for f if it has already started, so that no goroutine outlives its owner.
func onDone(ctx context.Context, f func()) (release func()) {
	ran := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(ran)
		f()
	})
	return func() {
		if !stop() {
			<-ran
		}
	}
}

// load runs one goroutine per worker, each calling fn(ctx, w, i), from now
// through warmup and the measured time. fn must return soon after ctx is
// done; ctx is done at the end of the measured time. load returns the end of
// the measured time as it happened: earlier than planned if ctx was
// cancelled or all workers returned early.
func (r *runner) load(ctx context.Context, fn func(ctx context.Context, w *worker, i int)) time.Time {
	r.start = time.Now()
	r.measure = r.start.Add(r.cfg.Warmup)
	r.end = r.measure.Add(r.cfg.Duration)
	lctx, cancel := context.WithDeadline(ctx, r.end)
	defer cancel()

	if r.cfg.Warmup == 0 {
		r.sampleCPU0()
	}
	mctx, mcancel := context.WithCancel(ctx)
	var mwg sync.WaitGroup
	mwg.Add(1)
	go r.monitor(mctx, &mwg)

	var wg sync.WaitGroup
	for i, w := range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lctx, w, i)
		}()
	}
	wg.Wait()
	stop := time.Now()
	if stop.After(r.end) {
		stop = r.end
	}
	mcancel()
	mwg.Wait()
	return stop
}

func (r *runner) sampleCPU0() {
	r.sys0, r.sys0Err = machineCPU()
	r.sys0ok = r.sys0Err == nil
	if len(r.cfg.ProxyPIDs) == 0 {
		return
	}
	r.cpu0, r.cpuErr = sumCPU(r.cfg.ProxyPIDs)
	r.cpu0ok = r.cpuErr == nil
}

// monitor samples the proxies' CPU time when warmup ends and reports
// progress once a second, until ctx is done.
func (r *runner) monitor(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	var tick <-chan time.Time
	if r.cfg.Progress != nil {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		tick = t.C
	}
	var warm <-chan time.Time
	if r.cfg.Warmup > 0 {
		t := time.NewTimer(time.Until(r.measure))
		defer t.Stop()
		warm = t.C
	}
	var lastOps, lastBytes uint64
	last := r.start
	for {
		select {
		case <-ctx.Done():
			return
		case <-warm:
			r.sampleCPU0()
		case now := <-tick:
			var p Progress
			for _, w := range r.workers {
				p.Ops += w.liveOps.Load()
				p.Bytes += w.liveBytes.Load()
				p.Errors += w.liveErrs.Load()
			}
			dt := now.Sub(last).Seconds()
			p.Elapsed = now.Sub(r.start)
			p.Warmup = now.Before(r.measure)
			p.OpsPerSec = float64(p.Ops-lastOps) / dt
			p.Gbps = float64(p.Bytes-lastBytes) * 8 / dt / 1e9
			lastOps, lastBytes, last = p.Ops, p.Bytes, now
			r.cfg.Progress(p)
		}
	}
}

// result sums the workers into a Result over the measured time that ended
// at stop.
func (r *runner) result(stop time.Time) Result {
	cfg := r.cfg
	res := Result{
		Mode:        cfg.Mode,
		Target:      cfg.Target.String(),
		Conns:       cfg.Conns,
		WarmupS:     cfg.Warmup.Seconds(),
		TargetRate:  cfg.Rate,
		SourceAddrs: r.src.used(),
		Env:         currentEnv(r.start),
	}
	if el := stop.Sub(r.measure); el > 0 {
		res.ElapsedS = el.Seconds()
	}
	hist, lag := newHist(), newHist()
	var firstAt time.Time
	var udp UDPResult
	for _, w := range r.workers {
		res.Ops += w.ops
		res.BytesSent += w.sent
		res.BytesReceived += w.recv
		res.Errors += w.errs
		if w.paced && !r.limited() {
			res.Missed += r.slotsFrom(w.conn, w.next, stop)
		}
		if w.firstErr != nil && (firstAt.IsZero() || w.firstErrAt.Before(firstAt)) {
			res.FirstError, firstAt = w.firstErr.Error(), w.firstErrAt
		}
		hist.Merge(w.hist)
		if w.lag != nil {
			lag.Merge(w.lag)
		}
		udp.Sent += w.udp.Sent
		udp.Replies += w.udp.Replies
		udp.Late += w.udp.Late
		udp.Stray += w.udp.Stray
	}
	res.Latency = latencyOf(hist)
	res.SendLag = latencyOf(lag)
	if cfg.Mode == UDP {
		udp.Lost = udp.Sent - min(udp.Replies, udp.Sent)
		if udp.Sent > 0 {
			udp.LossPct = 100 * float64(udp.Lost) / float64(udp.Sent)
		}
		res.UDP = &udp
	}
	if res.ElapsedS > 0 {
		res.OpsPerSec = float64(res.Ops) / res.ElapsedS
		res.Gbps = float64(res.BytesSent+res.BytesReceived) * 8 / res.ElapsedS / 1e9
	}
	res.Proxy = r.proxyCost(res)
	res.Machine = r.machineCost(res)
	return res
}

// machineCost measures the machine's busy CPU time since sys0, relates it
// to the work done, and takes the share of the CPUs' time stolen meanwhile.
func (r *runner) machineCost(res Result) *MachineResult {
	m := &MachineResult{}
	sys1, err := machineCPU()
	switch {
	case r.sys0Err != nil:
		m.Error = r.sys0Err.Error()
	case err != nil:
		m.Error = err.Error()
	case !r.sys0ok:
		m.Error = "the run ended before the measured time started"
	default:
		m.CPUSeconds = sys1.busySeconds() - r.sys0.busySeconds()
		m.CPUSecPerGiB, m.CPUMicrosPerOp = perWork(r.cfg.Mode, m.CPUSeconds, res)
		if pct, ok := stealPct(r.sys0, sys1); ok {
			m.StealPct = &pct
		}
	}
	return m
}

// perWork relates CPU seconds to the work of res: seconds per GiB moved in
// stream mode, microseconds per request, connection or datagram in rr,
// connect and udp. The figure that does not apply is 0.
func perWork(mode Mode, sec float64, res Result) (perGiB, microsPerOp float64) {
	switch mode {
	case Stream:
		if b := res.BytesSent + res.BytesReceived; b > 0 {
			perGiB = sec / (float64(b) / (1 << 30))
		}
	case RR, Connect, UDP:
		if res.Ops > 0 {
			microsPerOp = sec * 1e6 / float64(res.Ops)
		}
	}
	return perGiB, microsPerOp
}

// proxyCost measures the proxies' CPU time since cpu0 and relates it to the
// work done.
func (r *runner) proxyCost(res Result) *ProxyResult {
	if len(r.cfg.ProxyPIDs) == 0 {
		return nil
	}
	p := &ProxyResult{PIDs: r.cfg.ProxyPIDs}
	cpu1, err := sumCPU(r.cfg.ProxyPIDs)
	switch {
	case r.cpuErr != nil:
		p.Error = r.cpuErr.Error()
		return p
	case err != nil:
		p.Error = err.Error()
		return p
	case !r.cpu0ok:
		p.Error = "the run ended before the measured time started"
		return p
	}
	p.CPUSeconds = cpu1 - r.cpu0
	p.CPUSecPerGiB, p.CPUMicrosPerOp = perWork(r.cfg.Mode, p.CPUSeconds, res)
	return p
}

// errOpen is returned when the connections a run needs cannot be opened.
var errOpen = errors.New("open connections")

// openTCP opens n connections to the target with up to maxOpenProcs dials at
// a time. It stops at the first failure, closes what it opened and returns
// the error.
func (r *runner) openTCP(ctx context.Context, n int) ([]*net.TCPConn, error) {
	conns := make([]*net.TCPConn, n)
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		mu       sync.Mutex // guards firstErr
		firstErr error
	)
	for range min(n, maxOpenProcs) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || octx.Err() != nil {
					return
				}
				c, err := r.dialTCP(octx)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		closeAll(conns)
		return nil, fmt.Errorf("%w to %s: %w", errOpen, r.cfg.Target, firstErr)
	}
	return conns, nil
}

func (r *runner) dialTCP(ctx context.Context) (*net.TCPConn, error) {
	c, err := tcpDialer(r.src.pick(), r.cfg.Timeout).DialContext(ctx, "tcp", r.cfg.Target.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
