package tcpproxy

import (
	"net/netip"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/loop"
	"github.com/sluice-lb/sluice/internal/rawsys"
	"github.com/sluice-lb/sluice/internal/splice"
)

type connState uint8

// closeReason says why a connection ended, for the access log; it also
// decides whether the sockets are closed with a reset.
type closeReason uint8

const (
	reasonClosed       closeReason = iota // both sides finished (FIN both ways)
	reasonIdle                            // idle timeout
	reasonClientReset                     // the client reset or failed; the backend is reset
	reasonBackendReset                    // the backend reset or failed; the client is reset
	reasonNoBackend                       // no backend accepted the connection
	reasonProxyHeader                     // bad, missing, late or untrusted PROXY header
	reasonBackendDown                     // --close-on-down
	reasonShutdown                        // reset at the end of a drain
	reasonInternal                        // local resources: no fd, memory or port for the backend, or the loop could not register a socket
)

var reasonNames = [...]string{"closed", "idle_timeout", "client_reset", "backend_reset", "no_backend", "proxy_header", "backend_down", "shutdown", "internal"}

func (r closeReason) String() string { return reasonNames[r] }

// reset reports whether the sockets are closed with RST rather than FIN.
func (r closeReason) reset() bool { return r != reasonClosed && r != reasonIdle }

const (
	stateHeader     connState = iota // waiting for the client's PROXY header
	stateConnecting                  // connecting to a backend
	stateEstablished
	stateClosed
)

// conn is one proxied connection: the accepted client socket and the
// backend socket, with one half per direction. It is owned by its proxy's
// loop; nothing else touches it.
type conn struct {
	p       *Proxy
	client  endpoint
	backend endpoint
	up      half // client → backend
	down    half // backend → client

	state    connState
	attempts uint8 // connect attempts made so far, the current one included
	idx      int   // position in p.conns

	// be is the backend being connected to or proxied to; its Active
	// count includes this conn while be is set.
	be *balancer.Backend

	peer  netip.AddrPort     // the client's address (from its PROXY header, if one was accepted)
	local netip.AddrPort     // the address the client connected to, when a PROXY header said so
	hash  uint64             // key hash of peer
	snap  *balancer.Snapshot // backend set the choice was made from; kept for retries

	timer       loop.Timer        // connect timeout while connecting, then idle timeout
	lastActive  int64             // loop clock of the last byte moved
	start       int64             // loop clock at accept
	bytesUp     uint64            // bytes client → backend
	bytesDown   uint64            // bytes backend → client
	lastBackend *balancer.Backend // the backend of the last connect attempt, for the access log
}

// endpoint is one socket of a conn with the readiness the loop last
// reported. The flags are cleared only when a syscall answers EAGAIN, or
// readable by a short read (see copy), which is what edge-triggered epoll
// requires: a new edge is reported only after that.
type endpoint struct {
	c        *conn
	fd       int
	readable bool
	writable bool
	hup      bool // the peer's FIN or an error was reported: read until EOF
	isClient bool
	// muted: registered without EPOLLIN, because the half that reads this
	// socket holds bytes its peer does not take (see pump).
	muted bool
	// noOut: muted and registered without EPOLLOUT as well, because
	// nothing waited to be written to this socket (see mute).
	noOut bool
	outq  int // the send queue when the idle timer last looked, -1 before (see draining)
}

// half is one direction of a conn. Bytes read but not yet written are held
// either in pipe (spliced) or in buf (copied); never both with new bytes
// behind them, since a half reads again only once what it holds is written.
type half struct {
	pipe   *splice.Pipe // lent from the pool while it holds bytes
	buf    []byte       // bytes a blocked writer left over, from the proxy's spare buffers
	eof    bool         // the source sent FIN
	shut   bool         // FIN passed on with shutdown(SHUT_WR)
	splice bool         // SpliceAuto: this direction is in bulk mode
}

func (h *half) holding() bool {
	return (h.pipe != nil && h.pipe.Len > 0) || len(h.buf) > 0
}

// HandleEvent records readiness and runs the connection.
func (e *endpoint) HandleEvent(ev uint32) {
	if ev&(loop.In|loop.RdHup|loop.Hup|loop.Err) != 0 {
		e.readable = true
	}
	if ev&(loop.RdHup|loop.Hup|loop.Err) != 0 {
		e.hup = true
	}
	if ev&(loop.Out|loop.Hup|loop.Err) != 0 {
		e.writable = true
	}
	c := e.c
	if c.state == stateHeader {
		if e.isClient && e.readable {
			c.readHeader()
		}
		return
	}
	if c.state == stateConnecting {
		if !e.isClient && ev&(loop.Out|loop.Err|loop.Hup) != 0 {
			c.connected(ev)
		}
		return
	}
	if ev&loop.Err != 0 && c.from(e).holding() {
		// A reset or another socket error while bytes read from this
		// socket wait for a peer that does not take them. Passed on
		// now: pump would see it only by reading this socket, which it
		// does not until that peer drains. (Otherwise pump reads what
		// came before the error, passes it on, then meets the error.)
		if errno, err := unix.GetsockoptInt(e.fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && errno != 0 {
			c.fail(&pumpError{at: e, err: unix.Errno(errno)})
			return
		}
	}
	c.run()
}

// dial starts a non-blocking connect to backend bidx of c.snap.
func (c *conn) dial(bidx int) {
	p := c.p
	c.be = c.snap.Backends[bidx]
	c.lastBackend = c.be
	c.be.Active.Add(1)
	p.lb.Open.Add(1)
	c.attempts++
	c.state = stateConnecting
	fd, err := rawsys.Socket(rawsys.Family(c.be.Addr), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		c.localFailure(err)
		return
	}
	_ = rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	c.backend = endpoint{c: c, fd: fd}
	err = rawsys.Connect(fd, c.be.Addr)
	if err != nil && err != unix.EINPROGRESS {
		if isLocal(err) {
			c.localFailure(err)
		} else {
			c.connectFailed(false)
		}
		return
	}
	if err := p.loop.Add(fd, connEvents, &c.backend); err != nil {
		c.localFailure(err)
		return
	}
	p.loop.Schedule(&c.timer, p.loop.Now()+int64(p.cfg.ConnectTimeout))
}

// connected is called when the connecting backend socket reports
// writability or an error. A failed non-blocking connect always raises
// EPOLLERR (with EPOLLHUP), so writability alone means success and no
// getsockopt(SO_ERROR) is needed.
func (c *conn) connected(ev uint32) {
	if ev&(loop.Err|loop.Hup) != 0 {
		c.connectFailed(false)
		return
	}
	p := c.p
	p.stats.Established.Add(1)
	c.be.Loops[p.id].Connections.Add(1)
	p.svc.ReportConnect(c.be, true)
	c.state = stateEstablished
	c.client.outq, c.backend.outq = -1, -1
	c.lastActive = p.loop.Now()
	p.loop.Schedule(&c.timer, c.lastActive+int64(p.cfg.IdleTimeout))
	if p.cfg.SendProxy != 0 {
		// Goes out ahead of the client's bytes: the up half writes what
		// it holds before it reads.
		c.up.buf = c.proxyHeader(p.getBuf())
	}
	if p.debug {
		p.log.Debug("connection established", zap.Stringer("client", c.peer), zap.Stringer("backend", c.be.Addr), zap.Uint8("attempt", c.attempts))
	}
	c.run()
}

// connectFailed closes the failed backend socket and tries the next backend
// in the key's preference order, or gives up once the retries are spent.
func (c *conn) connectFailed(timedOut bool) {
	p := c.p
	if timedOut {
		p.stats.ConnectTimeouts.Add(1)
	} else {
		p.stats.ConnectFailures.Add(1)
	}
	c.be.Loops[p.id].ConnectErrors.Add(1)
	p.svc.ReportConnect(c.be, false)
	c.closeBackend(false)
	c.release()
	if int(c.attempts) <= p.cfg.ConnectRetries {
		p.pref = c.snap.Preference(c.hash, p.pref[:0])
		if int(c.attempts) < len(p.pref) {
			c.dial(p.pref[c.attempts])
			return
		}
	}
	p.stats.NoBackend.Add(1)
	if p.debug {
		p.log.Debug("no backend accepted the connection", zap.Stringer("client", c.peer), zap.Uint8("attempts", c.attempts))
	}
	c.finish(reasonNoBackend)
}

// isLocal reports whether a connect error is this host's (out of fds,
// memory or ephemeral ports), not the backend's.
func isLocal(err error) bool {
	switch err {
	case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.EADDRNOTAVAIL, unix.EAGAIN:
		return true
	}
	return false
}

// localFailure ends a connection whose backend connect failed for a reason
// of this host's. It neither counts against the backend (no passive
// ejection of a healthy backend because this process ran out of fds) nor
// tries another one, which would fail alike.
func (c *conn) localFailure(err error) {
	p := c.p
	p.stats.LocalErrors.Add(1)
	if p.debug {
		p.log.Debug("cannot connect to a backend: local resources", zap.Stringer("client", c.peer), zap.Error(err))
	}
	c.closeBackend(false)
	c.release()
	c.finish(reasonInternal)
}

func (c *conn) onTimer() {
	p := c.p
	switch c.state {
	case stateHeader:
		p.stats.ProxyTimeouts.Add(1)
		c.finish(reasonProxyHeader)
	case stateConnecting:
		c.connectFailed(true)
	case stateEstablished:
		if c.draining() {
			c.lastActive = p.loop.Now()
		}
		deadline := c.lastActive + int64(p.cfg.IdleTimeout)
		if p.loop.Now() < deadline {
			p.loop.Schedule(&c.timer, deadline)
			return
		}
		p.stats.IdleTimeouts.Add(1)
		c.finish(reasonIdle)
	}
}

// draining reports whether a peer took bytes from its socket's send queue
// (unsent and unacknowledged bytes, SIOCOUTQ) since the last call. The loop
// writes to a socket only when its send buffer has room again, so a slow
// reader can keep bytes moving for longer than the idle timeout with no
// write in between; the timer asks the kernel rather than count that as
// idle. The first call has nothing to compare with and counts any bytes
// queued as moving, so a peer that stopped reading with bytes queued is
// cut after twice the idle timeout. Called only when the idle timer fires.
func (c *conn) draining() bool {
	moved := false
	for _, e := range []*endpoint{&c.client, &c.backend} {
		q, err := unix.IoctlGetInt(e.fd, unix.SIOCOUTQ)
		if err != nil {
			continue
		}
		if q < e.outq || (e.outq < 0 && q > 0) {
			moved = true
		}
		e.outq = q
	}
	return moved
}

// run moves bytes both ways as far as readiness allows, then closes the
// connection when both directions have ended, or aborts it on an error.
func (c *conn) run() {
	if err := c.pump(&c.up, &c.client, &c.backend); err != nil {
		c.fail(err)
		return
	}
	if err := c.pump(&c.down, &c.backend, &c.client); err != nil {
		c.fail(err)
		return
	}
	if c.up.shut && c.down.shut {
		c.finish(reasonClosed)
	}
}

// pumpError says which socket failed, so the reset goes to the other one.
type pumpError struct {
	at  *endpoint
	err error
}

func (e *pumpError) Error() string { return e.err.Error() }

func (c *conn) fail(err error) {
	if le, ok := err.(*localError); ok {
		if c.p.debug {
			c.p.log.Debug("connection ended: its epoll registration could not be changed", zap.Stringer("client", c.peer), zap.Error(le.err))
		}
		c.finish(reasonInternal)
		return
	}
	c.p.stats.Resets.Add(1)
	pe := err.(*pumpError)
	reason := reasonBackendReset
	if pe.at.isClient {
		reason = reasonClientReset
	}
	if c.p.debug {
		c.p.log.Debug("connection reset", zap.Stringer("client", c.peer), zap.Stringer("reason", reason), zap.Error(pe.err))
	}
	c.finish(reason)
}

// pump moves bytes of h from src to dst until a syscall would block, the
// source ends, or an error occurs.
func (c *conn) pump(h *half, src, dst *endpoint) error {
	p := c.p
	for {
		if h.holding() {
			if dst.writable {
				if err := c.flush(h, dst); err != nil {
					return err
				}
			}
			if h.holding() {
				// dst's send buffer is full; wait for its next edge.
				// Until then nothing can be read from src, so src
				// stops waking the loop for the bytes that arrive.
				if dst.noOut {
					if err := c.watchOut(dst); err != nil {
						return err
					}
				}
				c.mute(src)
				break
			}
		}
		// Nothing is held from here on: any pipe is empty.
		if src.muted {
			if err := c.unmute(src); err != nil {
				return err
			}
		}
		if h.eof {
			if !h.shut {
				h.shut = true
				// When the other direction has ended too, both sockets
				// are about to be closed, and the close sends dst its
				// FIN: everything dst sent has been read, so it is not
				// a reset.
				if !c.other(h).shut {
					_ = rawsys.Shutdown(dst.fd, unix.SHUT_WR)
				}
			}
			break
		}
		if !src.readable {
			break
		}
		var n int
		var err error
		if c.useSplice(h) {
			if h.pipe == nil {
				h.pipe = p.pool.Get()
			}
			if h.pipe != nil {
				// On entry the pipe is empty, so EAGAIN means src
				// has nothing to read, never that the pipe is full.
				n, err = h.pipe.Fill(src.fd, h.pipe.Cap)
				switch {
				case err == unix.EINTR:
					continue
				case err != nil && err != unix.EAGAIN:
					return &pumpError{at: src, err: err}
				case n > 0:
					p.stats.SplicedBytes.Add(uint64(n))
					if p.cfg.Splice == SpliceAuto && n < autoSpliceAt/4 {
						h.splice = false // small reads again: back to copying
					}
				}
			} else {
				if !dst.writable {
					break
				}
				p.stats.PipeFallbacks.Add(1)
				n, err = c.copy(h, src, dst, len(p.buf))
			}
		} else {
			if !dst.writable {
				break // copying reads only what can be written at once
			}
			max := len(p.buf)
			if p.cfg.Splice == SpliceAuto {
				max = autoSpliceAt
			}
			n, err = c.copy(h, src, dst, max)
			if p.cfg.Splice == SpliceAuto && n == max {
				h.splice = true
			}
		}
		switch {
		case err == unix.EAGAIN:
			src.readable = false
		case err != nil:
			return err
		case n == 0:
			h.eof = true
			continue
		default:
			c.lastActive = p.loop.Now()
			if src.isClient {
				c.bytesUp += uint64(n)
				p.stats.BytesUp.Add(uint64(n))
				c.be.Loops[p.id].BytesUp.Add(uint64(n))
			} else {
				c.bytesDown += uint64(n)
				p.stats.BytesDown.Add(uint64(n))
				c.be.Loops[p.id].BytesDown.Add(uint64(n))
			}
			continue
		}
		break
	}
	if h.pipe != nil && h.pipe.Len == 0 {
		p.pool.Put(h.pipe)
		h.pipe = nil
	}
	return nil
}

// connEvents are the events a connection's sockets are registered for,
// edge-triggered. EPOLLERR and EPOLLHUP are always reported, muted or not.
const connEvents = loop.In | loop.Out | loop.RdHup | loop.Edge

// mute takes EPOLLIN out of e's registration while the half that reads e
// holds bytes its peer does not take. Edge-triggered, every segment that
// arrives on e would otherwise wake the loop for nothing: under a bulk
// transfer to a slower reader that is most wake-ups (HAProxy likewise stops
// polling a side it cannot read). A peer's FIN (EPOLLRDHUP) and errors
// still wake it. Should the change fail, e stays registered as it was,
// which costs only the wake-ups.
//
// EPOLLOUT goes too unless bytes wait to be written to e. A modified
// registration is checked against the socket's state at once, and e, whose
// send buffer has room, would report EPOLLOUT right away: one wake-up for
// nothing per stall. Should bytes for e get stuck later, pump puts EPOLLOUT
// back (watchOut) before it waits.
func (c *conn) mute(e *endpoint) {
	if e.muted {
		return
	}
	ev := uint32(connEvents &^ (loop.In | loop.Out))
	if c.into(e).holding() {
		ev |= loop.Out
	}
	if c.p.loop.Modify(e.fd, ev) == nil {
		e.muted = true
		e.noOut = ev&loop.Out == 0
	}
}

// watchOut adds EPOLLOUT back to the registration of e, muted without it,
// because bytes for e wait for room in its send buffer. Room made since the
// write that failed is reported by the change itself, so no edge is missed.
// A failure ends the connection: the bytes would never be written.
func (c *conn) watchOut(e *endpoint) error {
	if err := c.p.loop.Modify(e.fd, connEvents&^loop.In); err != nil {
		return &localError{err: err}
	}
	e.noOut = false
	return nil
}

// unmute registers e for EPOLLIN again, once its half holds nothing. Bytes
// that arrived while e was muted make the change report e readable, so none
// wait unseen. A failure is the host's, and ends the connection: e would
// never be read again.
func (c *conn) unmute(e *endpoint) error {
	if err := c.p.loop.Modify(e.fd, connEvents); err != nil {
		return &localError{err: err}
	}
	e.muted = false
	e.noOut = false
	return nil
}

// localError is a failure of this host's (the loop could not change a
// registration), not of either peer.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }

// from returns the half of c that reads from e.
func (c *conn) from(e *endpoint) *half {
	if e.isClient {
		return &c.up
	}
	return &c.down
}

// into returns the half of c that writes to e.
func (c *conn) into(e *endpoint) *half {
	if e.isClient {
		return &c.down
	}
	return &c.up
}

// other returns the half of c that is not h.
func (c *conn) other(h *half) *half {
	if h == &c.up {
		return &c.down
	}
	return &c.up
}

func (c *conn) useSplice(h *half) bool {
	switch c.p.cfg.Splice {
	case SpliceAlways:
		return true
	case SpliceAuto:
		return h.splice
	}
	return false
}

// copy reads up to max bytes from src into the loop buffer and writes them
// to dst; what dst does not take is kept in h.buf. It returns the bytes
// read, with unix.EAGAIN when src had none, or a *pumpError.
func (c *conn) copy(h *half, src, dst *endpoint, max int) (int, error) {
	p := c.p
	n, err := splice.Read(src.fd, p.buf[:max])
	if err != nil {
		if err == unix.EAGAIN || err == unix.EINTR {
			return 0, unix.EAGAIN
		}
		return 0, &pumpError{at: src, err: err}
	}
	if n == 0 {
		return 0, nil
	}
	if n < max && !src.hup {
		// A short read emptied the receive queue. Edge-triggered epoll
		// reports any byte that arrives from now on as a new edge, so
		// the read that would only say EAGAIN is skipped. Not once a
		// FIN was reported: its edge has passed, and only a read sees
		// the end of stream.
		src.readable = false
	}
	w, err := splice.Write(dst.fd, p.buf[:n])
	if err != nil {
		if err != unix.EAGAIN && err != unix.EINTR {
			return 0, &pumpError{at: dst, err: err}
		}
		dst.writable = false
		w = 0
	}
	if w < n {
		if w > 0 {
			dst.writable = false // a short write means the send buffer filled
		}
		h.buf = append(p.getBuf(), p.buf[w:n]...)
	}
	return n, nil
}

// flush writes what h holds to dst until it is empty or dst would block.
// A write that moves bytes counts as activity for the idle timeout.
func (c *conn) flush(h *half, dst *endpoint) error {
	for h.pipe != nil && h.pipe.Len > 0 {
		n, err := h.pipe.Drain(dst.fd)
		if n > 0 {
			c.lastActive = c.p.loop.Now()
		}
		if err == unix.EAGAIN {
			dst.writable = false
			return nil
		}
		if err != nil && err != unix.EINTR {
			return &pumpError{at: dst, err: err}
		}
	}
	for len(h.buf) > 0 {
		n, err := splice.Write(dst.fd, h.buf)
		if err == unix.EAGAIN {
			dst.writable = false
			return nil
		}
		if err != nil && err != unix.EINTR {
			return &pumpError{at: dst, err: err}
		}
		if n > 0 {
			c.lastActive = c.p.loop.Now()
		}
		h.buf = h.buf[n:]
	}
	if h.buf != nil {
		c.p.putBuf(h.buf)
		h.buf = nil
	}
	return nil
}

// release drops c's claim on its backend's connection count.
func (c *conn) release() {
	if c.be != nil {
		c.be.Active.Add(-1)
		c.p.lb.Open.Add(-1)
		c.be = nil
	}
}

// closeBackend unregisters and closes the backend socket, if any.
func (c *conn) closeBackend(reset bool) {
	if c.backend.fd < 0 {
		return
	}
	closeSocket(c.p.loop, c.backend.fd, reset)
	c.backend.fd = -1
}

// finish ends the connection: both sockets are closed (with a reset unless
// the reason is a clean end or the idle timeout, so that the peer sees an
// abort),
// pipes and buffers go back, and the slot is released.
func (c *conn) finish(reason closeReason) {
	if c.state == stateClosed {
		return
	}
	p := c.p
	c.state = stateClosed
	// An idle timeout with bytes still held for a peer that stopped
	// reading ends in a reset too: a FIN would pass the cut stream off as
	// complete.
	reset := reason.reset() || (reason == reasonIdle && (c.up.holding() || c.down.holding()))
	if p.access != nil {
		p.logAccess(c, reason)
	}
	p.loop.Cancel(&c.timer)
	closeSocket(p.loop, c.client.fd, reset)
	c.client.fd = -1
	c.closeBackend(reset)
	c.release()
	for _, h := range []*half{&c.up, &c.down} {
		if h.pipe != nil {
			p.pool.Put(h.pipe) // closes it if it still holds bytes
			h.pipe = nil
		}
		if h.buf != nil {
			p.putBuf(h.buf)
			h.buf = nil
		}
	}
	last := len(p.conns) - 1
	p.conns[c.idx] = p.conns[last]
	p.conns[c.idx].idx = c.idx
	p.conns[last] = nil
	p.conns = p.conns[:last]
	c.snap = nil
	p.stats.Closed.Add(1)
	p.limiter.Release()
	if p.paused.Load() {
		p.resume()
	}
	p.limiter.wake(p)
	p.checkDrained()
}

// closeSocket forgets fd in the loop and closes it; with reset, SO_LINGER 0
// makes the close send RST instead of FIN.
func closeSocket(l *loop.Loop, fd int, reset bool) {
	if fd < 0 {
		return
	}
	l.Forget(fd)
	if reset {
		_ = rawsys.LingerZero(fd)
	}
	rawsys.Close(fd)
}
