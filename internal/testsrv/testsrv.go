// Package testsrv runs the backends that sluice is tested and benchmarked
// against: a TCP echo, a TCP sink, a TCP source and a UDP echo.
//
// A Server owns one listening socket, the goroutines that serve it and every
// connection it accepted; Close stops all of them and waits for them. Servers
// count what they do (Stats) and never log. They are meant for loopback and
// network-namespace tests: nothing here authenticates or rate-limits a peer.
//
// The TCP echo is built for benchmarks: small messages are echoed with a
// per-connection 8 KiB buffer (read, write), and a connection whose read
// fills that buffer switches to io.Copy between the two halves of the same
// *net.TCPConn, which the Go runtime turns into splice(2). An idle
// connection holds its goroutine and the small buffer, never a pipe. When the
// peer shuts down its write side the echo finishes writing what it read and
// then shuts down its own write side (TCP half-close), so a client can send
// everything, CloseWrite, and read the whole echo up to io.EOF.
//
// For tests, StartTB ties a server to a test's life, and Netns makes a
// network namespace that goes with the test.
package testsrv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Kind says what a Server does with the bytes it gets.
type Kind int

// The kinds of server. Sink and Source are TCP only.
const (
	// Echo writes back every byte (TCP) or datagram (UDP) it receives.
	Echo Kind = iota + 1
	// Sink reads and discards until the peer closes.
	Sink
	// Source writes a fixed pattern endlessly until the peer closes; it
	// reads nothing.
	Source
)

// String returns the kind's name as used on the command line: echo, sink,
// source.
func (k Kind) String() string {
	switch k {
	case Echo:
		return "echo"
	case Sink:
		return "sink"
	case Source:
		return "source"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Config describes one server. The zero value is not valid: Kind must be set;
// the other fields take the defaults of DefaultConfig when left zero.
type Config struct {
	// Kind is what the server does.
	Kind Kind
	// Network is "tcp", "tcp4", "tcp6", "udp", "udp4" or "udp6".
	// Default "tcp". UDP supports only Echo.
	Network string
	// Addr is the address to listen on, host:port with a literal IP.
	// Port 0 picks a free port; Server.Addr tells which.
	// Default "127.0.0.1:0" ("[::1]:0" for tcp6 and udp6).
	Addr string
	// ChunkSize is the size in bytes of each read of Sink and each write of
	// Source, and of the UDP receive buffer (at least 65535 for UDP).
	// Default 256 KiB.
	ChunkSize int
}

// DefaultConfig returns the defaults for an echo server on a free loopback
// TCP port.
func DefaultConfig() Config {
	return Config{
		Kind:      Echo,
		Network:   "tcp",
		Addr:      "127.0.0.1:0",
		ChunkSize: 256 << 10,
	}
}

// smallBuf is the per-connection buffer of the TCP echo. A read that fills it
// moves the connection to splice.
const smallBuf = 8 << 10

// spliceChunk bounds each io.CopyN of the spliced echo, so that Stats
// of a long bulk connection move every few MiB rather than at its end.
const spliceChunk = 4 << 20

// maxRemoteIPs bounds the set of distinct remote addresses a server keeps.
const maxRemoteIPs = 1 << 16

var (
	errKind    = errors.New("unknown server kind")
	errNetwork = errors.New("unsupported network")
)

// Stats are a server's counters. Bytes are payload bytes (TCP stream bytes or
// UDP datagram payloads). All counters are monotonic.
type Stats struct {
	// Accepted is the number of TCP connections accepted.
	Accepted uint64
	// Active is the number of TCP connections open now.
	Active int64
	// BytesIn is the number of bytes read from peers. For an echo connection
	// that has moved to splice, bytes are added per 4 MiB and when the
	// connection ends.
	BytesIn uint64
	// BytesOut is the number of bytes written to peers, counted like BytesIn.
	BytesOut uint64
	// DatagramsIn and DatagramsOut count UDP datagrams received and sent.
	DatagramsIn  uint64
	DatagramsOut uint64
	// Errors counts connections that ended with an error other than the
	// peer's close or reset, and UDP sends that failed.
	Errors uint64
	// RemoteIPs is the number of distinct peer IP addresses seen (at most
	// 65536 are remembered).
	RemoteIPs int
}

// Server is one running listener with its connections. Its methods are safe
// for concurrent use.
type Server struct {
	cfg  Config
	addr netip.AddrPort

	// Exactly one of ln and pc is set.
	ln *net.TCPListener
	pc *net.UDPConn

	ctx    context.Context // done when the server is closing
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept or read loop, every connection, the ctx watcher

	accepted     atomic.Uint64
	active       atomic.Int64
	bytesIn      atomic.Uint64
	bytesOut     atomic.Uint64
	datagramsIn  atomic.Uint64
	datagramsOut atomic.Uint64
	errs         atomic.Uint64

	// mu guards conns, closed and remotes.
	mu      sync.Mutex
	conns   map[*net.TCPConn]struct{} // open TCP connections, closed by Close
	closed  bool                      // set by Close; no connection is added after
	remotes map[netip.Addr]struct{}   // distinct peer addresses, at most maxRemoteIPs

	closeOnce sync.Once
}

// Start listens according to cfg and serves until ctx is done or Close is
// called. After ctx is done, Close must still be called to wait for the
// server's goroutines; it is cheap.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		conns:   make(map[*net.TCPConn]struct{}),
		remotes: make(map[netip.Addr]struct{}),
	}
	var lc net.ListenConfig
	switch cfg.Network {
	case "tcp", "tcp4", "tcp6":
		l, err := lc.Listen(ctx, cfg.Network, cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s %s: %w", cfg.Network, cfg.Addr, err)
		}
		s.ln = l.(*net.TCPListener)
		s.addr = s.ln.Addr().(*net.TCPAddr).AddrPort()
	default:
		c, err := lc.ListenPacket(ctx, cfg.Network, cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s %s: %w", cfg.Network, cfg.Addr, err)
		}
		s.pc = c.(*net.UDPConn)
		s.addr = s.pc.LocalAddr().(*net.UDPAddr).AddrPort()
		// Best effort: a larger receive buffer drops fewer datagrams
		// under bursts; the kernel caps it at net.core.rmem_max.
		_ = s.pc.SetReadBuffer(4 << 20)
		_ = s.pc.SetWriteBuffer(4 << 20)
	}
	s.addr = netip.AddrPortFrom(s.addr.Addr().Unmap(), s.addr.Port())

	s.ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Add(2)
	go s.closeOnDone()
	if s.ln != nil {
		go s.acceptLoop()
	} else {
		go s.udpEchoLoop()
	}
	return s, nil
}

func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Network == "" {
		c.Network = d.Network
	}
	switch c.Kind {
	case Echo:
	case Sink, Source:
		switch c.Network {
		case "tcp", "tcp4", "tcp6":
		default:
			return c, fmt.Errorf("start %s server on %q: %w", c.Kind, c.Network, errNetwork)
		}
	default:
		return c, fmt.Errorf("start server: %w %d", errKind, int(c.Kind))
	}
	switch c.Network {
	case "tcp", "tcp4", "udp", "udp4":
	case "tcp6", "udp6":
		d.Addr = "[::1]:0"
	default:
		return c, fmt.Errorf("start %s server on %q: %w", c.Kind, c.Network, errNetwork)
	}
	if c.Addr == "" {
		c.Addr = d.Addr
	}
	if c.ChunkSize <= 0 {
		c.ChunkSize = d.ChunkSize
	}
	if c.Network[:3] == "udp" && c.ChunkSize < 65535 {
		c.ChunkSize = 65535
	}
	return c, nil
}

// Addr returns the address the server listens on, with the port chosen by the
// kernel when Config.Addr had port 0.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Kind returns what the server does.
func (s *Server) Kind() Kind { return s.cfg.Kind }

// Network returns the server's network, "tcp…" or "udp…".
func (s *Server) Network() string { return s.cfg.Network }

// Stats returns a snapshot of the server's counters. After Close has returned
// the snapshot is final.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.remotes)
	s.mu.Unlock()
	return Stats{
		Accepted:     s.accepted.Load(),
		Active:       s.active.Load(),
		BytesIn:      s.bytesIn.Load(),
		BytesOut:     s.bytesOut.Load(),
		DatagramsIn:  s.datagramsIn.Load(),
		DatagramsOut: s.datagramsOut.Load(),
		Errors:       s.errs.Load(),
		RemoteIPs:    n,
	}
}

// RemoteIPs returns the distinct peer IP addresses seen so far, sorted.
func (s *Server) RemoteIPs() []netip.Addr {
	s.mu.Lock()
	out := make([]netip.Addr, 0, len(s.remotes))
	for a := range s.remotes {
		out = append(out, a)
	}
	s.mu.Unlock()
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Close stops listening, closes every connection the server holds and waits
// for all of the server's goroutines. It is safe to call more than once and
// from several goroutines; every call waits. It always returns nil: errors of
// single connections are counted in Stats.Errors.
func (s *Server) Close() error {
	s.closeOnce.Do(s.cancel)
	s.wg.Wait()
	return nil
}

// closeOnDone closes the socket and all connections once the server's
// context is done, which unblocks every other goroutine of the server.
func (s *Server) closeOnDone() {
	defer s.wg.Done()
	<-s.ctx.Done()
	if s.ln != nil {
		s.ln.Close()
	} else {
		s.pc.Close()
	}
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

func (s *Server) noteRemote(a netip.Addr) {
	a = a.Unmap()
	s.mu.Lock()
	if len(s.remotes) < maxRemoteIPs {
		s.remotes[a] = struct{}{}
	}
	s.mu.Unlock()
}

// acceptLoop accepts TCP connections until the listener is closed and starts
// one goroutine per connection.
func (s *Server) acceptLoop() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: count, back off, and keep
			// accepting; the listener is still good.
			s.errs.Add(1)
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
			}
			t.Stop()
			continue
		}
		backoff = 0
		s.accepted.Add(1)
		s.noteRemote(c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.active.Add(1)
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// serveConn runs one TCP connection to its end and then forgets it.
func (s *Server) serveConn(c *net.TCPConn) {
	defer s.wg.Done()
	var err error
	switch s.cfg.Kind {
	case Echo:
		err = s.echo(c)
	case Sink:
		err = s.sink(c)
	case Source:
		err = s.source(c)
	}
	if err != nil && !benign(err) && s.ctx.Err() == nil {
		s.errs.Add(1)
	}
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
	s.active.Add(-1)
}

// benign reports whether err is the normal way for a peer to go away.
func benign(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		isConnReset(err)
}

// echo copies c's input back to c. It returns nil after the peer's EOF has
// been answered with our own write shutdown.
func (s *Server) echo(c *net.TCPConn) error {
	buf := make([]byte, smallBuf)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			s.bytesIn.Add(uint64(n))
			w, werr := c.Write(buf[:n])
			s.bytesOut.Add(uint64(w))
			if werr != nil {
				return werr
			}
			if n == len(buf) {
				// Bulk: more is likely waiting. Splice the rest.
				return s.echoSplice(c)
			}
		}
		if err == io.EOF {
			return c.CloseWrite()
		}
		if err != nil {
			return err
		}
	}
}

// echoSplice echoes the rest of c with io.CopyN from c to itself, which the
// runtime implements with splice(2) through a pooled pipe.
func (s *Server) echoSplice(c *net.TCPConn) error {
	for {
		n, err := io.CopyN(c, c, spliceChunk)
		s.bytesIn.Add(uint64(n))
		s.bytesOut.Add(uint64(n))
		if err == io.EOF {
			return c.CloseWrite()
		}
		if err != nil {
			return err
		}
	}
}

// sink reads and discards until EOF; then it closes.
func (s *Server) sink(c *net.TCPConn) error {
	buf := make([]byte, s.cfg.ChunkSize)
	for {
		n, err := c.Read(buf)
		s.bytesIn.Add(uint64(n))
		if err != nil {
			return err
		}
	}
}

// source writes a fixed pattern until a write fails, which is how it learns
// that the peer has closed.
func (s *Server) source(c *net.TCPConn) error {
	buf := make([]byte, s.cfg.ChunkSize)
	for i := range buf {
		buf[i] = byte(i)
	}
	for {
		n, err := c.Write(buf)
		s.bytesOut.Add(uint64(n))
		if err != nil {
			if errors.Is(err, errPipe) {
				return nil
			}
			return err
		}
	}
}

// udpEchoLoop echoes every datagram to its sender until the socket is closed.
func (s *Server) udpEchoLoop() {
	defer s.wg.Done()
	buf := make([]byte, s.cfg.ChunkSize)
	var last netip.Addr
	for {
		n, from, err := s.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors reported on the socket (ECONNREFUSED from an
			// earlier send to a peer that went away) are not fatal.
			continue
		}
		s.datagramsIn.Add(1)
		s.bytesIn.Add(uint64(n))
		if a := from.Addr(); a != last {
			last = a
			s.noteRemote(a)
		}
		w, err := s.pc.WriteToUDPAddrPort(buf[:n], from)
		if err != nil {
			s.errs.Add(1)
			continue
		}
		s.datagramsOut.Add(1)
		s.bytesOut.Add(uint64(w))
	}
}
