package loadgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A UDP request carries, little endian, its sequence number in bytes 0–7 and
// its intended send time in nanoseconds since the start of the run in bytes
// 8–15; the rest is filler. The echo returns it unchanged.
const udpHeader = 16

// udp runs datagram request/response over Conns connected client sockets.
// Open loop: per socket, one goroutine sends at the socket's share of Rate
// and one receives. Closed loop: one goroutine per socket sends a request and
// waits up to Timeout for its reply. A request is lost if no reply arrives
// within Timeout.
func (r *runner) udp(ctx context.Context) (Result, error) {
	n := r.cfg.Conns
	conns := make([]*net.UDPConn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		var laddr *net.UDPAddr
		if src := r.src.pick(); src.IsValid() {
			laddr = &net.UDPAddr{IP: src.AsSlice()}
		}
		c, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(r.cfg.Target))
		if err != nil {
			return Result{}, fmt.Errorf("open udp socket to %s: %w", r.cfg.Target, err)
		}
		// Best effort, capped by net.core.[rw]mem_max.
		c.SetReadBuffer(4 << 20)
		c.SetWriteBuffer(4 << 20)
		conns = append(conns, c)
	}
	open := r.cfg.Rate > 0
	r.newWorkers(n, open)
	stop := r.load(ctx, func(ctx context.Context, w *worker, k int) {
		if open {
			r.udpOpen(ctx, conns[k], w, k)
		} else {
			r.udpClosed(ctx, conns[k], w)
		}
	})
	res := r.result(stop)
	res.SizeBytes = r.cfg.Size
	return res, nil
}

func (r *runner) udpRequest(seq uint64, intended time.Time) []byte {
	b := make([]byte, r.cfg.Size)
	r.stamp(b, seq, intended)
	for i := udpHeader; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

func (r *runner) stamp(b []byte, seq uint64, intended time.Time) {
	binary.LittleEndian.PutUint64(b[0:], seq)
	binary.LittleEndian.PutUint64(b[8:], uint64(intended.Sub(r.start)))
}

func (r *runner) parse(b []byte) (seq uint64, intended time.Time, ok bool) {
	if len(b) != r.cfg.Size {
		return 0, time.Time{}, false
	}
	seq = binary.LittleEndian.Uint64(b[0:])
	intended = r.start.Add(time.Duration(binary.LittleEndian.Uint64(b[8:])))
	return seq, intended, true
}

// udpOpen sends at fixed intended times from this goroutine and receives
// in a second one that it owns.
func (r *runner) udpOpen(ctx context.Context, c *net.UDPConn, w *worker, k int) {
	p, err := newPacer()
	if err != nil {
		w.fail(ctx, err)
		return
	}
	defer p.Close()

	// The receiver waits for replies until Timeout after the end of the
	// run, or less once every request sent has had its reply.
	var (
		sentAll  atomic.Uint64 // requests sent, warmup included
		nextSeq  atomic.Uint64 // replies with a sequence number from here on are stray
		sendDone atomic.Bool
		rwg      sync.WaitGroup
	)
	rctx := context.WithoutCancel(ctx) // the receiver's errors count until it ends
	c.SetReadDeadline(r.end.Add(r.cfg.Timeout))
	releaseRecv := onDone(ctx, func() {
		if time.Now().Before(r.end) { // stopped early: do not wait for stragglers
			c.SetReadDeadline(past)
		}
	})
	defer releaseRecv()
	recv := &worker{} // the receiver's counters, merged below
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		r.udpReceive(rctx, c, recv, &sentAll, &nextSeq, &sendDone)
	}()

	release := onDone(ctx, func() { p.SetReadDeadline(past) })
	var i uint64
	buf := r.udpRequest(0, r.start)
	for ; ; i++ {
		intended := r.slot(k, i)
		if !intended.Before(r.end) {
			break
		}
		if err := p.sleepUntil(intended); err != nil {
			w.fail(ctx, err)
			break
		}
		measured := !intended.Before(r.measure)
		if measured && !r.takeTicket() {
			break
		}
		sent := time.Now()
		r.stamp(buf, i, intended)
		nextSeq.Store(i + 1)
		if _, err := c.Write(buf); err != nil {
			// ECONNREFUSED reports an ICMP error of an earlier
			// datagram; the socket is still usable.
			w.fail(ctx, err)
			continue
		}
		sentAll.Add(1)
		w.liveBytes.Add(uint64(len(buf)))
		if measured {
			w.udp.Sent++
			w.sent += uint64(len(buf))
			record(w.lag, sent.Sub(intended))
		}
	}
	release()
	w.paced, w.conn, w.next = true, k, i
	sendDone.Store(true)
	// Wake the receiver if it is already idle with everything answered.
	if recv.liveOps.Load() >= sentAll.Load() {
		c.SetReadDeadline(past)
	}
	rwg.Wait()

	w.ops, w.recv = recv.ops, recv.recv
	w.udp.Replies, w.udp.Late, w.udp.Stray = recv.udp.Replies, recv.udp.Late, recv.udp.Stray
	w.hist = recv.hist
	w.errs += recv.errs
	if w.firstErr == nil {
		w.firstErr, w.firstErrAt = recv.firstErr, recv.firstErrAt
	}
}

// udpReceive matches replies to requests until its read deadline, or until
// the sender is done and every request sent has been answered. It counts
// replies in recv.liveOps (all) and recv.ops (measured and in time).
func (r *runner) udpReceive(ctx context.Context, c *net.UDPConn, recv *worker, sentAll, nextSeq *atomic.Uint64, sendDone *atomic.Bool) {
	recv.hist = newHist()
	buf := make([]byte, MaxUDPSize+1)
	var seen bitset
	var answered uint64
	for {
		if sendDone.Load() && answered >= sentAll.Load() {
			return
		}
		n, err := c.Read(buf)
		now := time.Now()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed) {
				return
			}
			recv.fail(ctx, err) // e.g. ECONNREFUSED: no echo there
			continue
		}
		seq, intended, ok := r.parse(buf[:n])
		if !ok || seq >= nextSeq.Load() || seen.has(seq) || intended.After(now) {
			recv.udp.Stray++
			continue
		}
		seen.set(seq)
		answered++
		recv.liveOps.Add(1)
		lat := now.Sub(intended)
		if lat > r.cfg.Timeout {
			recv.udp.Late++
			continue
		}
		if !intended.Before(r.measure) && intended.Before(r.end) {
			recv.ops++
			recv.udp.Replies++
			recv.recv += uint64(n)
			record(recv.hist, lat)
		}
	}
}

// udpClosed sends one request at a time and waits up to Timeout for its
// reply.
func (r *runner) udpClosed(ctx context.Context, c *net.UDPConn, w *worker) {
	release := onDone(ctx, func() { c.SetReadDeadline(past) })
	defer release()
	req := r.udpRequest(0, r.start)
	buf := make([]byte, MaxUDPSize+1)
	for i := uint64(0); ; i++ {
		sent := time.Now()
		if !sent.Before(r.end) || ctx.Err() != nil {
			return
		}
		measured := !sent.Before(r.measure)
		if measured && !r.takeTicket() {
			return
		}
		r.stamp(req, i, sent)
		if _, err := c.Write(req); err != nil {
			w.fail(ctx, err)
			continue
		}
		w.liveBytes.Add(uint64(len(req)))
		if measured {
			w.udp.Sent++
			w.sent += uint64(len(req))
		}
		c.SetReadDeadline(sent.Add(r.cfg.Timeout))
		if ctx.Err() != nil { // lost the race with onDone's deadline
			c.SetReadDeadline(past)
		}
		for {
			n, err := c.Read(buf)
			now := time.Now()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					if ctx.Err() != nil && measured {
						w.udp.Sent-- // stopped early: not a loss
						w.sent -= uint64(len(req))
					}
					break // lost
				}
				w.fail(ctx, err)
				break
			}
			seq, _, ok := r.parse(buf[:n])
			switch {
			case !ok || seq > i:
				w.udp.Stray++
				continue
			case seq < i:
				w.udp.Late++ // an earlier request's reply, already lost
				continue
			}
			w.liveOps.Add(1)
			if measured {
				w.ops++
				w.udp.Replies++
				w.recv += uint64(n)
				record(w.hist, now.Sub(sent))
			}
			break
		}
	}
}

// bitset is a growable set of sequence numbers.
type bitset []uint64

func (b bitset) has(i uint64) bool {
	return i/64 < uint64(len(b)) && b[i/64]&(1<<(i%64)) != 0
}

func (b *bitset) set(i uint64) {
	for uint64(len(*b)) <= i/64 {
		*b = append(*b, 0)
	}
	(*b)[i/64] |= 1 << (i % 64)
}
