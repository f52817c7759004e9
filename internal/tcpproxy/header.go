package tcpproxy

import (
	"errors"
	"net/netip"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/splice"
	"github.com/sluice-lb/sluice/pkg/proxyproto"
)

// trusted reports whether peer may send a PROXY header.
func (p *Proxy) trusted(peer netip.Addr) bool {
	for _, pr := range p.cfg.TrustedProxies {
		if pr.Contains(peer) {
			return true
		}
	}
	return false
}

// readHeader peeks at the client's first bytes for a PROXY header. The
// header is consumed only once it is whole, so nothing is buffered per
// connection meanwhile: the bytes wait in the socket. A header that is
// malformed, too long, or not there at all closes the connection, counted.
func (c *conn) readHeader() {
	p := c.p
	max := min(p.cfg.MaxHeader, len(p.buf))
	n, err := peek(c.client.fd, p.buf[:max])
	if err == unix.EAGAIN {
		c.client.readable = false
		return
	}
	if err != nil || n == 0 {
		c.finish(reasonProxyHeader) // the client left before sending a header
		return
	}
	h, used, err := proxyproto.Parser{MaxV2Len: max}.Parse(p.buf[:n])
	if errors.Is(err, proxyproto.ErrIncomplete) && n < max && !c.client.hup {
		// The rest will raise a new edge when it arrives.
		c.client.readable = false
		return
	}
	if err != nil {
		p.stats.ProxyMalformed.Add(1)
		if p.debug {
			p.log.Debug("bad PROXY header", zap.Stringer("peer", c.peer), zap.Error(err))
		}
		c.finish(reasonProxyHeader)
		return
	}
	// Consume exactly the header; the client's own bytes stay queued.
	if got, err := splice.Read(c.client.fd, p.buf[:used]); err != nil || got != used {
		c.finish(reasonProxyHeader)
		return
	}
	// Only a stream's addresses stand for this connection's client: a
	// header that claims a datagram is accepted with the connection's own
	// addresses, as HAProxy does.
	if h.Command == proxyproto.Proxy && h.Transport == proxyproto.TCP && h.Src.IsValid() {
		c.peer = h.Src
		c.local = h.Dst
		if !p.cfg.ProxiedRules.Admit(c.peer.Addr()) {
			p.stats.ProxyDenied.Add(1)
			c.finish(reasonProxyHeader)
			return
		}
	}
	p.loop.Cancel(&c.timer)
	c.choose()
}

// peek is recv(2) with MSG_PEEK, without a scheduler hand-off.
func peek(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_PEEK, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// proxyHeader appends the PROXY header sent to the backend for c.
func (c *conn) proxyHeader(b []byte) []byte {
	dst := c.local
	if !dst.IsValid() {
		dst = c.p.localAddr(c.client.fd)
	}
	if c.p.cfg.SendProxy == 1 {
		return proxyproto.AppendV1(b, c.peer, dst)
	}
	return proxyproto.AppendV2(b, c.peer, dst)
}

// localAddr is the address a client connected to: the listening address,
// or for a wildcard listener the socket's own address.
func (p *Proxy) localAddr(fd int) netip.AddrPort {
	if p.local.Addr().IsValid() && !p.local.Addr().IsUnspecified() {
		return p.local
	}
	if sa, err := unix.Getsockname(fd); err == nil {
		return addrPortOf(sa)
	}
	return p.local
}
