package udpproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/loop"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rig is a running proxy: one Proxy per loop, each loop on its own
// goroutine, all sharing one pool and limiter.
type rig struct {
	tb      testing.TB
	addr    netip.AddrPort
	pool    *balancer.Pool
	limiter *SessionLimiter
	loops   []*loop.Loop
	proxies []*Proxy
	wg      sync.WaitGroup
	closed  bool
	others  []*rig // services added on these loops (addService), ended with r's
}

// startRig starts nloops proxies listening on listen (port 0 picks one)
// toward backends, and stops them with tb.Cleanup.
func startRig(tb testing.TB, listen netip.AddrPort, backends []netip.AddrPort, cfg Config, limiter *SessionLimiter, nloops int) *rig {
	tb.Helper()
	addr := listen
	return newRig(tb, backends, cfg, limiter, nloops, func() (int, netip.AddrPort, error) {
		fd, bound, err := Listen(addr, cfg.SocketBuffer)
		if err == nil {
			addr = bound
		}
		return fd, bound, err
	})
}

// successor starts proxies on loops of their own that read r's listening
// sockets, as an upgrade's successor does: each reads a duplicate of one
// of r's sockets (the same open file), and sends on toward backends. Its
// cleanup runs before r's.
func (r *rig) successor(backends []netip.AddrPort, cfg Config) *rig {
	r.tb.Helper()
	var fds []int
	for i := range r.proxies {
		r.do(i, func(p *Proxy) { fds = append(fds, p.ListenerFDs()...) })
	}
	next := 0
	return newRig(r.tb, backends, cfg, nil, len(fds), func() (int, netip.AddrPort, error) {
		fd, err := unix.FcntlInt(uintptr(fds[next]), unix.F_DUPFD_CLOEXEC, 0)
		next++
		return fd, r.addr, err
	})
}

// newRig starts nloops proxies, proxy i listening on the socket that the
// i-th call of listen returns.
func newRig(tb testing.TB, backends []netip.AddrPort, cfg Config, limiter *SessionLimiter, nloops int, listen func() (int, netip.AddrPort, error)) *rig {
	tb.Helper()
	return newRigOn(tb, balancer.NewPool(snapshot(tb, nloops, backends...)), cfg, limiter, nloops, listen)
}

// startServiceRig starts one proxy on loopback toward the backends of
// svc, a service of one loop, as the server does.
func startServiceRig(tb testing.TB, svc *balancer.Service, cfg Config) *rig {
	tb.Helper()
	return newRigOn(tb, svc.Pool(), cfg, nil, 1, func() (int, netip.AddrPort, error) { return Listen(lo4, cfg.SocketBuffer) })
}

// newRigOn is newRig for the backends in pool.
func newRigOn(tb testing.TB, pool *balancer.Pool, cfg Config, limiter *SessionLimiter, nloops int, listen func() (int, netip.AddrPort, error)) *rig {
	tb.Helper()
	if limiter == nil {
		limiter = NewSessionLimiter(0, nloops)
	}
	r := &rig{tb: tb, pool: pool, limiter: limiter}
	for i := range nloops {
		l, err := loop.New()
		if err != nil {
			r.close()
			tb.Fatal(err)
		}
		p := New(l, i, cfg, r.pool, limiter, zap.NewNop())
		r.loops = append(r.loops, l)
		r.proxies = append(r.proxies, p)
		fd, bound, err := listen()
		if err != nil {
			r.close()
			tb.Fatal(err)
		}
		if err := p.Listen(fd); err != nil {
			closeFD(fd)
			r.close()
			tb.Fatal(err)
		}
		r.addr = bound
	}
	for _, l := range r.loops {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := l.Run(); !errors.Is(err, loop.ErrStopped) {
				tb.Errorf("loop: %v", err)
			}
		}()
	}
	tb.Cleanup(r.close)
	return r
}

// addService starts another service on r's loops, as the server does: one
// proxy per loop, each with its own listening socket, sharing r's limiter.
// The returned rig does not own the loops; r's cleanup ends its sessions.
func (r *rig) addService(backends []netip.AddrPort, cfg Config) *rig {
	r.tb.Helper()
	o := &rig{tb: r.tb, pool: balancer.NewPool(snapshot(r.tb, len(r.loops), backends...)), limiter: r.limiter, loops: r.loops, closed: true}
	r.others = append(r.others, o)
	addr := lo4
	for i, l := range r.loops {
		o.proxies = append(o.proxies, New(l, i, cfg, o.pool, r.limiter, zap.NewNop()))
		fd, bound, err := Listen(addr, cfg.SocketBuffer)
		if err != nil {
			r.tb.Fatal(err)
		}
		o.do(i, func(p *Proxy) { err = p.Listen(fd) })
		if err != nil {
			closeFD(fd)
			r.tb.Fatal(err)
		}
		addr = bound
	}
	o.addr = addr
	return o
}

// close ends every session, stops and closes the loops.
func (r *rig) close() {
	if r.closed {
		return
	}
	r.closed = true
	for _, o := range r.others {
		for i := range o.proxies {
			o.do(i, func(p *Proxy) { p.CloseAll() })
		}
	}
	for i := range r.proxies {
		r.do(i, func(p *Proxy) { p.CloseAll() })
		r.loops[i].Stop()
	}
	r.wg.Wait()
	for _, l := range r.loops {
		l.Close()
	}
}

// do runs fn on loop i's goroutine (or directly once the loop is stopped
// or not yet running) and waits for it.
func (r *rig) do(i int, fn func(p *Proxy)) {
	done := make(chan struct{})
	if !r.loops[i].Submit(func() { fn(r.proxies[i]); close(done) }) {
		fn(r.proxies[i])
		return
	}
	<-done
}

// sum adds up a counter over the proxies.
func (r *rig) sum(f func(s *Stats) uint64) uint64 {
	var n uint64
	for _, p := range r.proxies {
		n += f(p.Stats())
	}
	return n
}

// traffic sums the per-loop counters of the backends in r's pool now.
// Safe from any goroutine.
func (r *rig) traffic() balancer.Counts {
	var t balancer.Counts
	for _, b := range r.pool.Load().Backends {
		c := b.Counts()
		t.Connections += c.Connections
		t.DatagramsUp += c.DatagramsUp
		t.DatagramsDown += c.DatagramsDown
		t.BytesUp += c.BytesUp
		t.BytesDown += c.BytesDown
	}
	return t
}

// sessions returns the client addresses with a session, over all loops.
func (r *rig) sessions() map[netip.AddrPort]netip.AddrPort {
	out := make(map[netip.AddrPort]netip.AddrPort)
	for i := range r.proxies {
		r.do(i, func(p *Proxy) {
			for c, s := range p.sessions {
				out[c] = s.t.be.Addr
			}
		})
	}
	return out
}

// checkDraining fails the test for each drain channel that is closed:
// the proxies have sessions still to carry.
func checkDraining(tb testing.TB, drained []<-chan struct{}) {
	tb.Helper()
	for i, ch := range drained {
		select {
		case <-ch:
			tb.Errorf("proxy %d drained with its sessions still to carry datagrams", i)
		default:
		}
	}
}

// awaitDrained waits for each of the drain channels of r's proxies (each
// should close after idle with no datagram, the test allows 5 s more),
// then checks that n sessions ended and freed their slots, and that
// CloseAll finds none left.
func (r *rig) awaitDrained(tb testing.TB, drained []<-chan struct{}, idle time.Duration, n int) {
	tb.Helper()
	for i, ch := range drained {
		select {
		case <-ch:
		case <-time.After(idle + 5*time.Second):
			tb.Fatalf("proxy %d still draining %v after the last datagram", i, idle+5*time.Second)
		}
	}
	if e, o := r.sum(func(s *Stats) uint64 { return s.SessionsEnded.Load() }), r.limiter.Open(); e != uint64(n) || o != 0 {
		tb.Errorf("after the drain: %d sessions ended, %d limiter slots; want %d and 0", e, o, n)
	}
	for i := range r.proxies {
		r.do(i, func(p *Proxy) {
			if k := p.CloseAll(); k != 0 {
				tb.Errorf("proxy %d: CloseAll ended %d sessions after the drain", i, k)
			}
		})
	}
}

// quietBackend returns a UDP backend on loopback that sends nothing of
// its own accord (the test reads it and answers), and its address. It is
// closed at the test's cleanup.
func quietBackend(tb testing.TB) (*net.UDPConn, netip.AddrPort) {
	tb.Helper()
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { be.Close() })
	return be, be.LocalAddr().(*net.UDPAddr).AddrPort()
}

// snapshot returns a set of backends of weight 1 with counters for loops
// event loops.
func snapshot(tb testing.TB, loops int, backends ...netip.AddrPort) *balancer.Snapshot {
	tb.Helper()
	specs := make([]balancer.Spec, len(backends))
	for i, a := range backends {
		specs[i] = balancer.Spec{Addr: a, Weight: 1}
	}
	s, err := balancer.NewStatic(loops, specs...)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// idServer is a UDP backend that answers every datagram with its id byte
// followed by the datagram, and remembers the source addresses it saw.
type idServer struct {
	id   byte
	conn *net.UDPConn
	addr netip.AddrPort
	done chan struct{}

	mu    sync.Mutex // guards peers
	peers map[netip.AddrPort]int
}

func startID(tb testing.TB, id byte, network, ip string) *idServer {
	tb.Helper()
	c, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		tb.Fatal(err)
	}
	s := &idServer{id: id, conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), done: make(chan struct{}), peers: make(map[netip.AddrPort]int)}
	go s.serve()
	tb.Cleanup(s.close)
	return s
}

func (s *idServer) serve() {
	defer close(s.done)
	buf := make([]byte, 1+bufSize)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf[1:])
		if err != nil {
			return
		}
		s.mu.Lock()
		s.peers[from]++
		s.mu.Unlock()
		buf[0] = s.id
		s.conn.WriteToUDPAddrPort(buf[:1+n], from)
	}
}

func (s *idServer) close() {
	s.conn.Close()
	<-s.done
}

func (s *idServer) peerCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.peers)
}

// client is a UDP socket bound to a given local address.
type client struct {
	tb   testing.TB
	conn *net.UDPConn
	addr netip.AddrPort
	buf  []byte
}

func newClient(tb testing.TB, ip string) *client {
	tb.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &client{tb: tb, conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), buf: make([]byte, 2*bufSize)}
}

// roundTrip sends req to to and returns the reply; the reply must come from
// to. It returns an error rather than failing, for use on goroutines.
func (c *client) roundTrip(to netip.AddrPort, req []byte) ([]byte, error) {
	if _, err := c.conn.WriteToUDPAddrPort(req, to); err != nil {
		return nil, err
	}
	c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := c.conn.ReadFromUDPAddrPort(c.buf)
	if err != nil {
		return nil, err
	}
	if from != to {
		return nil, errors.New("reply from " + from.String() + ", want " + to.String())
	}
	return c.buf[:n], nil
}

// heldRequests sends "req-i" from client i to the service at to, and
// reads every request at the backend be without answering: it returns
// where each came from (its session's socket) and what it was, in the
// order they arrived.
func heldRequests(tb testing.TB, be *net.UDPConn, to netip.AddrPort, clients []*client) (froms []netip.AddrPort, reqs []string) {
	tb.Helper()
	for i, c := range clients {
		if _, err := c.conn.WriteToUDPAddrPort(fmt.Appendf(nil, "req-%d", i), to); err != nil {
			tb.Fatal(err)
		}
	}
	return testsrv.ReadUDP(tb, be, len(clients), 5*time.Second)
}

// expectReplies checks that client i receives "re:req-i" from the
// service address svc.
func expectReplies(tb testing.TB, clients []*client, svc netip.AddrPort) {
	tb.Helper()
	for i, c := range clients {
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, from, err := c.conn.ReadFromUDPAddrPort(c.buf)
		if err != nil {
			tb.Fatalf("client %d: no reply: %v", i, err)
		}
		if want := fmt.Sprintf("re:req-%d", i); string(c.buf[:k]) != want || from != svc {
			tb.Errorf("client %d got %q from %v, want %q from %v", i, c.buf[:k], from, want, svc)
		}
	}
}

// openFDs counts the process's open file descriptors.
func openFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}

// checkFDs records the open fds now and, at cleanup (registered first, so
// it runs after every later cleanup), checks that as many are open again.
func checkFDs(tb testing.TB) {
	tb.Helper()
	// The runtime's netpoller opens its fds on first use; do that first.
	if c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err == nil {
		c.Close()
	}
	before := openFDs(tb)
	tb.Cleanup(func() {
		var now int
		for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
			if now = openFDs(tb); now == before || time.Now().After(deadline) {
				break
			}
		}
		if now != before {
			tb.Errorf("open fds: %d at start, %d at end", before, now)
		}
	})
}

// eventually polls cond until it holds or a second has passed.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
	}
}

func closeFD(fd int) { unix.Close(fd) }
