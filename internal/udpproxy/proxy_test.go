package udpproxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

var lo4 = netip.MustParseAddrPort("127.0.0.1:0")

// testConfig is DefaultConfig with a small batch, so that the tests also
// cover batches that fill.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Batch = 4
	return cfg
}

// TestManyClients sends request/response traffic from many client
// addresses through two loops to three backends: every reply reaches its
// client from the service address, intact; each client sticks to the
// backend Maglev gives its address; every backend is used.
func TestManyClients(t *testing.T) {
	checkFDs(t)
	ids := []*idServer{startID(t, 0, "udp", "127.0.0.1"), startID(t, 1, "udp", "127.0.0.1"), startID(t, 2, "udp", "127.0.0.1")}
	backends := []netip.AddrPort{ids[0].addr, ids[1].addr, ids[2].addr}
	r := startRig(t, lo4, backends, testConfig(), nil, 2)
	snap := r.pool.Load()

	const clients, rounds = 64, 40
	cs := make([]*client, clients)
	for i := range cs {
		cs[i] = newClient(t, fmt.Sprintf("127.0.1.%d", i+1))
	}
	// Scrape the per-backend counters while traffic flows (for -race).
	stopScrape := make(chan struct{})
	var scrapes sync.WaitGroup
	scrapes.Add(1)
	go func() {
		defer scrapes.Done()
		for {
			select {
			case <-stopScrape:
				return
			case <-time.After(time.Millisecond):
			}
			r.traffic()
		}
	}()

	got := make([]int, clients) // backend id each client saw
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = -1
			for k := range rounds {
				req := fmt.Appendf(nil, "client %d request %d", i, k)
				rep, err := c.roundTrip(r.addr, req)
				if err != nil {
					errs <- fmt.Errorf("client %d round %d: %w", i, k, err)
					return
				}
				if len(rep) != 1+len(req) || !bytes.Equal(rep[1:], req) {
					errs <- fmt.Errorf("client %d round %d: reply %q to %q", i, k, rep, req)
					return
				}
				if got[i] >= 0 && int(rep[0]) != got[i] {
					errs <- fmt.Errorf("client %d moved from backend %d to %d", i, got[i], rep[0])
					return
				}
				got[i] = int(rep[0])
			}
		}()
	}
	wg.Wait()
	close(stopScrape)
	scrapes.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	used := make(map[int]int)
	for i, c := range cs {
		want := snap.Pick(balancer.HashSrcIP.Hash(c.addr.Addr(), c.addr.Port()))
		if got[i] != want {
			t.Errorf("client %s went to backend %d, Maglev says %d", c.addr, got[i], want)
		}
		used[got[i]]++
	}
	if len(used) != len(ids) {
		t.Errorf("backends used: %v, want all %d", used, len(ids))
	}
	// One session, hence one source address at the backend, per client.
	for i, id := range ids {
		if n := id.peerCount(); n != used[i] {
			t.Errorf("backend %d saw %d source addresses for %d clients", i, n, used[i])
		}
	}
	if n := r.sum(func(s *Stats) uint64 { return s.SessionsCreated.Load() }); n != clients {
		t.Errorf("sessions created: %d, want %d", n, clients)
	}
	// A reply is counted once sendmmsg returns, which may be just after the
	// client has it.
	var up, down, bytesUp, bytesDown uint64
	count := func() bool {
		t := r.traffic()
		up, down, bytesUp, bytesDown = t.DatagramsUp, t.DatagramsDown, t.BytesUp, t.BytesDown
		return up == clients*rounds && down == clients*rounds && bytesDown == bytesUp+clients*rounds
	}
	for deadline := time.Now().Add(time.Second); !count() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if !count() {
		t.Errorf("datagrams up %d down %d, bytes up %d down %d; want %d datagrams each way and one more byte down per datagram", up, down, bytesUp, bytesDown, clients*rounds)
	}
	for _, reason := range DropReasons {
		if n := r.sum(func(s *Stats) uint64 { return s.Drops(reason) }); n != 0 {
			t.Errorf("drops %s: %d", reason, n)
		}
	}
}

// TestIPv6 runs clients, proxy and backends over ::1, with the client port
// in the hash key, and the largest IPv6 datagram.
func TestIPv6(t *testing.T) {
	checkFDs(t)
	ids := []*idServer{startID(t, 0, "udp6", "::1"), startID(t, 1, "udp6", "::1"), startID(t, 2, "udp6", "::1")}
	cfg := testConfig()
	cfg.HashKey = balancer.HashSrcIPPort
	r := startRig(t, netip.MustParseAddrPort("[::1]:0"), []netip.AddrPort{ids[0].addr, ids[1].addr, ids[2].addr}, cfg, nil, 2)
	snap := r.pool.Load()
	used := make(map[byte]bool)
	for i := range 24 {
		c := newClient(t, "::1")
		want := snap.Pick(balancer.HashSrcIPPort.Hash(c.addr.Addr(), c.addr.Port()))
		for k := range 5 {
			req := fmt.Appendf(nil, "v6 client %d request %d", i, k)
			rep, err := c.roundTrip(r.addr, req)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rep[1:], req) || int(rep[0]) != want {
				t.Fatalf("client %s: reply %q from backend %d, want %q from %d", c.addr, rep[1:], rep[0], req, want)
			}
			used[rep[0]] = true
		}
	}
	if len(used) != 3 {
		t.Errorf("backends used: %v", used)
	}

	echo := testsrv.StartTB(t, testsrv.Echo, "udp6")
	r2 := startRig(t, netip.MustParseAddrPort("[::1]:0"), []netip.AddrPort{echo.Addr()}, cfg, nil, 1)
	c := newClient(t, "::1")
	for _, size := range []int{0, 1, 65527} {
		req := pattern(size)
		rep, err := c.roundTrip(r2.addr, req)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if !bytes.Equal(rep, req) {
			t.Errorf("%d bytes: got %d bytes back, not the same", size, len(rep))
		}
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// TestDatagramSizes passes empty, small, MTU-sized and maximum IPv4
// datagrams both ways through an echo, intact, with batched and unbatched
// I/O.
func TestDatagramSizes(t *testing.T) {
	for _, batch := range []int{1, 4} {
		t.Run(fmt.Sprintf("batch=%d", batch), func(t *testing.T) {
			checkFDs(t)
			echo := testsrv.StartTB(t, testsrv.Echo, "udp")
			cfg := DefaultConfig()
			cfg.Batch = batch
			r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, cfg, nil, 1)
			c := newClient(t, "127.0.0.1")
			for _, size := range []int{0, 1, 1472, 9000, 65507, 0} {
				req := pattern(size)
				rep, err := c.roundTrip(r.addr, req)
				if err != nil {
					t.Fatalf("%d bytes: %v", size, err)
				}
				if !bytes.Equal(rep, req) {
					t.Errorf("%d bytes: got %d bytes back, not the same", size, len(rep))
				}
			}
			bytesUp := r.traffic().BytesUp
			if want := uint64(1 + 1472 + 9000 + 65507); bytesUp != want {
				t.Errorf("bytes up %d, want %d", bytesUp, want)
			}
		})
	}
}

// TestBurst sends many datagrams before reading any reply, so that the
// listener and the session sockets have full batches to read.
func TestBurst(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, testConfig(), nil, 1)
	c := newClient(t, "127.0.0.1")
	const n = 100
	for i := range n {
		if _, err := c.conn.WriteToUDPAddrPort(fmt.Appendf(nil, "%d", i), r.addr); err != nil {
			t.Fatal(err)
		}
	}
	seen := make(map[string]bool)
	c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(seen) < n {
		m, _, err := c.conn.ReadFromUDPAddrPort(c.buf)
		if err != nil {
			t.Fatalf("after %d replies: %v", len(seen), err)
		}
		seen[string(c.buf[:m])] = true
	}
}

// TestExpiry ends a session after the idle timeout, and not before while
// datagrams keep it active.
func TestExpiry(t *testing.T) {
	checkFDs(t)
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	cfg := testConfig()
	cfg.SessionTimeout = 150 * time.Millisecond
	r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, cfg, nil, 1)
	st := r.proxies[0].Stats()
	c := newClient(t, "127.0.0.1")

	// Active for three timeouts: the session stays.
	for start := time.Now(); time.Since(start) < 3*cfg.SessionTimeout; time.Sleep(cfg.SessionTimeout / 5) {
		if _, err := c.roundTrip(r.addr, []byte("keep")); err != nil {
			t.Fatal(err)
		}
	}
	if e, n := st.SessionsExpired.Load(), st.SessionsCreated.Load(); e != 0 || n != 1 {
		t.Fatalf("while active: %d expired, %d created; want 0 and 1", e, n)
	}
	// Idle: it expires, its socket closes, and the limiter slot is free.
	eventually(t, "expiry", func() bool { return st.SessionsExpired.Load() == 1 })
	// Expired is counted as the session begins to end; a call on the loop
	// waits for the rest of its ending.
	if n := len(r.sessions()); st.Active() != 0 || r.limiter.Open() != 0 || n != 0 {
		t.Errorf("after expiry: %d active, %d limiter slots, %d sessions", st.Active(), r.limiter.Open(), n)
	}
	if _, err := c.roundTrip(r.addr, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if n := st.SessionsCreated.Load(); n != 2 {
		t.Errorf("created %d sessions, want 2", n)
	}
}

// TestEviction fills the session cap and checks that the least recently
// active session makes room for a new client.
func TestEviction(t *testing.T) {
	checkFDs(t)
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, testConfig(), NewSessionLimiter(3, 1), 1)
	st := r.proxies[0].Stats()
	cs := make([]*client, 5)
	for i := range cs {
		cs[i] = newClient(t, fmt.Sprintf("127.0.2.%d", i+1))
	}
	send := func(i int) {
		t.Helper()
		if _, err := cs[i].roundTrip(r.addr, []byte("x")); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	have := func(want ...int) {
		t.Helper()
		got := r.sessions()
		for _, i := range want {
			if _, ok := got[cs[i].addr]; !ok {
				t.Errorf("client %d has no session", i)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%d sessions, want %d", len(got), len(want))
		}
	}
	send(0)
	send(1)
	send(2)
	send(0) // 1 is now the least recently active
	send(3)
	have(0, 2, 3)
	send(4)
	have(0, 3, 4)
	if n := st.SessionsEvicted.Load(); n != 2 {
		t.Errorf("evicted %d, want 2", n)
	}
	if n := r.limiter.Open(); n != 3 {
		t.Errorf("limiter holds %d, want 3", n)
	}
}

// TestEvictionAcrossServices: at the session cap, a new client of a
// service with few sessions takes the slot of the least recently active
// session of the service that holds the most on the loop, so a flood of
// new clients on one service cannot keep another from opening sessions;
// a service that holds the most (or as many) recycles its own.
func TestEvictionAcrossServices(t *testing.T) {
	checkFDs(t)
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	a := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, testConfig(), NewSessionLimiter(4, 1), 1)
	b := a.addService([]netip.AddrPort{echo.Addr()}, testConfig())
	var ac, bc []*client
	for i := range 5 {
		ac = append(ac, newClient(t, fmt.Sprintf("127.0.5.%d", i+1)))
		bc = append(bc, newClient(t, fmt.Sprintf("127.0.6.%d", i+1)))
	}
	send := func(r *rig, c *client) {
		t.Helper()
		if _, err := c.roundTrip(r.addr, []byte("x")); err != nil {
			t.Fatalf("client %s: %v", c.addr, err)
		}
	}
	have := func(step string, r *rig, want ...*client) {
		t.Helper()
		got := r.sessions()
		for _, c := range want {
			if _, ok := got[c.addr]; !ok {
				t.Errorf("%s: client %s has no session", step, c.addr)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: %d sessions, want %d", step, len(got), len(want))
		}
	}
	for _, c := range ac[:4] { // service a fills the cap
		send(a, c)
	}
	send(b, bc[0]) // a holds the most: its least recently active goes
	have("b's first client", a, ac[1], ac[2], ac[3])
	have("b's first client", b, bc[0])
	send(a, ac[4]) // a still holds the most: it recycles its own
	have("a's fifth client", a, ac[2], ac[3], ac[4])
	have("a's fifth client", b, bc[0])
	send(b, bc[1]) // 3 against 1: a gives up another
	have("b's second client", a, ac[3], ac[4])
	send(b, bc[2]) // 2 against 2: b recycles its own
	have("b's third client", a, ac[3], ac[4])
	have("b's third client", b, bc[1], bc[2])

	sa, sb := a.proxies[0].Stats(), b.proxies[0].Stats()
	if ea, eb := sa.SessionsEvicted.Load(), sb.SessionsEvicted.Load(); ea != 3 || eb != 1 {
		t.Errorf("evicted %d of a's sessions and %d of b's, want 3 and 1", ea, eb)
	}
	if d := sa.Drops(DropSessionLimit) + sb.Drops(DropSessionLimit); d != 0 {
		t.Errorf("%d datagrams dropped at the session limit", d)
	}
	if n := a.limiter.Open(); n != 4 {
		t.Errorf("limiter holds %d, want 4", n)
	}
}

// TestRemap removes a backend from the set: its clients move to the key's
// new choice on their next datagram, the other clients keep their backend.
func TestRemap(t *testing.T) {
	checkFDs(t)
	ids := []*idServer{startID(t, 0, "udp", "127.0.0.1"), startID(t, 1, "udp", "127.0.0.1"), startID(t, 2, "udp", "127.0.0.1")}
	addrs := []netip.AddrPort{ids[0].addr, ids[1].addr, ids[2].addr}
	r := startRig(t, lo4, addrs, testConfig(), nil, 1)
	st := r.proxies[0].Stats()
	r.do(0, func(p *Proxy) { p.log, p.debug = zaptest.NewLogger(t), true }) // the per-session debug lines

	cs := make([]*client, 30)
	before := make([]byte, len(cs))
	perBackend := make(map[byte]int)
	ask := func(i int) byte {
		t.Helper()
		rep, err := cs[i].roundTrip(r.addr, []byte("who"))
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		return rep[0]
	}
	for i := range cs {
		cs[i] = newClient(t, fmt.Sprintf("127.0.3.%d", i+1))
		before[i] = ask(i)
		perBackend[before[i]]++
	}
	down := byte(0)
	for id, n := range perBackend {
		if n > perBackend[down] {
			down = id
		}
	}
	fds := openFDs(t)

	var rest []netip.AddrPort
	for i, a := range addrs {
		if byte(i) != down {
			rest = append(rest, a)
		}
	}
	newSnap := snapshot(t, 1, rest...)
	r.pool.Store(newSnap)
	for i, c := range cs {
		got := ask(i)
		if before[i] != down {
			if got != before[i] {
				t.Errorf("client %d moved from %d to %d though its backend stayed", i, before[i], got)
			}
			continue
		}
		want := ids[0].id
		for _, id := range ids {
			if id.addr == newSnap.Backends[newSnap.Pick(balancer.HashSrcIP.Hash(c.addr.Addr(), 0))].Addr {
				want = id.id
			}
		}
		if got != want {
			t.Errorf("client %d of the removed backend went to %d, want %d", i, got, want)
		}
		// Sticks to the new backend.
		if again := ask(i); again != got {
			t.Errorf("client %d moved again, to %d", i, again)
		}
	}
	if n := st.Remaps.Load(); n != uint64(perBackend[down]) {
		t.Errorf("remaps %d, want %d", n, perBackend[down])
	}
	if st.SessionsCreated.Load() != uint64(len(cs)) || st.Active() != int64(len(cs)) {
		t.Errorf("remap changed the session count: %d created, %d active", st.SessionsCreated.Load(), st.Active())
	}
	if now := openFDs(t); now != fds {
		t.Errorf("open fds %d after remapping, %d before: old session sockets not closed", now, fds)
	}

	// A set with no usable backend: a new client's datagram is dropped,
	// and an existing session whose backend went ends.
	zero, err := balancer.NewStatic(1, balancer.Spec{Addr: addrs[0], Weight: 0})
	if err != nil {
		t.Fatal(err)
	}
	r.pool.Store(zero)
	extra := newClient(t, "127.0.3.200")
	extra.conn.WriteToUDPAddrPort([]byte("nobody"), r.addr)
	eventually(t, "no_backend drop", func() bool { return st.Drops(DropNoBackend) == 1 })
	// A session on a backend that left; one still on addrs[0], which is
	// in the set (with weight 0), would rightly keep it.
	moved := -1
	now := r.sessions()
	for i, c := range cs {
		if now[c.addr] != addrs[0] {
			moved = i
			break
		}
	}
	cs[moved].conn.WriteToUDPAddrPort([]byte("gone"), r.addr)
	eventually(t, "session ended for want of a backend", func() bool { return st.Drops(DropNoBackend) == 2 })
	if st.Active() != int64(len(cs)-1) {
		t.Errorf("%d active sessions, want %d", st.Active(), len(cs)-1)
	}
}

// TestBackendRefused checks that an ICMP port unreachable from a backend
// that is gone is counted, and that the session goes on working when the
// backend comes back on the same port.
func TestBackendRefused(t *testing.T) {
	id := startID(t, 7, "udp", "127.0.0.1")
	addr := id.addr
	r := startRig(t, lo4, []netip.AddrPort{addr}, testConfig(), nil, 1)
	st := r.proxies[0].Stats()
	c := newClient(t, "127.0.0.1")
	if _, err := c.roundTrip(r.addr, []byte("a")); err != nil {
		t.Fatal(err)
	}
	id.close()
	c.conn.WriteToUDPAddrPort([]byte("lost"), r.addr)
	eventually(t, "backend_refused", func() bool { return st.Drops(DropBackendRefused) >= 1 })
}

// TestDrainKeepsReplies is an upgrade: a successor reads the listening
// sockets too, and the proxies drain. The replies a slow backend sends
// after the drain began still reach their clients, from the service
// address, while the clients' next datagrams are the successor's alone.
// The drain ends once the sessions have been idle for DrainIdle, and the
// sockets close with CloseAll.
func TestDrainKeepsReplies(t *testing.T) {
	checkFDs(t)
	be, backend := quietBackend(t)
	cfg := testConfig()
	r := startRig(t, lo4, []netip.AddrPort{backend}, cfg, nil, 2)

	const n = 16
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = newClient(t, fmt.Sprintf("127.0.7.%d", i+1))
	}
	// The backend answers none yet: each request is in flight when the
	// drain begins.
	froms, reqs := heldRequests(t, be, r.addr, clients)

	next := startID(t, 'S', "udp", "127.0.0.1")
	succ := r.successor([]netip.AddrPort{next.addr}, cfg)
	drained := make([]<-chan struct{}, len(r.proxies))
	for i := range r.proxies {
		r.do(i, func(p *Proxy) { drained[i] = p.Drain() })
	}
	// The clients' next datagrams go to the successor only.
	for i, c := range clients {
		req := fmt.Sprintf("next-%d", i)
		got, err := c.roundTrip(r.addr, []byte(req))
		if err != nil || string(got) != "S"+req {
			t.Fatalf("client %d after the drain began: %q, %v; want the successor's %q", i, got, err, "S"+req)
		}
	}
	if up := r.traffic().DatagramsUp; up != n {
		t.Errorf("the draining proxies sent %d datagrams on, want only the %d before the drain", up, n)
	}
	checkDraining(t, drained)

	// The backend answers now, after the drain began.
	for i, from := range froms {
		if _, err := be.WriteToUDPAddrPort([]byte("re:"+reqs[i]), from); err != nil {
			t.Fatal(err)
		}
	}
	expectReplies(t, clients, r.addr)
	// With nothing more to relay, the sessions end after DrainIdle.
	r.awaitDrained(t, drained, cfg.DrainIdle, n)
	// The successor serves on alone.
	if got, err := clients[0].roundTrip(succ.addr, []byte("last")); err != nil || string(got) != "Slast" {
		t.Fatalf("after the old proxies closed: %q, %v", got, err)
	}
}

// TestDrainEndsIdleSessions: sessions already idle for DrainIdle when the
// drain begins end at once, and with none left the drain is over; the
// listening socket is no longer read. CloseAll then frees the port.
func TestDrainEndsIdleSessions(t *testing.T) {
	for _, idle := range []time.Duration{0, 50 * time.Millisecond} {
		t.Run(idle.String(), func(t *testing.T) {
			checkFDs(t)
			echo := testsrv.StartTB(t, testsrv.Echo, "udp")
			cfg := testConfig()
			cfg.DrainIdle = idle
			r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, cfg, nil, 1)
			for i := range 10 {
				c := newClient(t, fmt.Sprintf("127.0.4.%d", i+1))
				if _, err := c.roundTrip(r.addr, []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(idle) // the sessions' idle time: the scenario
			var ch <-chan struct{}
			r.do(0, func(p *Proxy) { ch = p.Drain() })
			select {
			case <-ch:
			default:
				t.Fatal("drain channel not closed")
			}
			if n := r.sum(func(s *Stats) uint64 { return s.SessionsEnded.Load() }); n != 10 || r.limiter.Open() != 0 {
				t.Errorf("after drain: %d sessions ended, %d limiter slots", n, r.limiter.Open())
			}
			// The socket is open but no longer read.
			c := newClient(t, "127.0.4.99")
			c.conn.WriteToUDPAddrPort([]byte("unread"), r.addr)
			var queued int
			eventually(t, "the datagram queued unread", func() bool {
				r.do(0, func(p *Proxy) { queued, _ = unix.IoctlGetInt(p.lnfd, unix.SIOCINQ) })
				return queued > 0
			})
			if n := r.sum(func(s *Stats) uint64 { return s.SessionsCreated.Load() }); n != 10 {
				t.Errorf("%d sessions created, want 10: the draining proxy read a datagram", n)
			}
			r.do(0, func(p *Proxy) { p.CloseAll() })
			// The port is free: a bind without SO_REUSEPORT succeeds
			// (Listen's would join the socket still bound).
			again, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(r.addr))
			if err != nil {
				t.Fatalf("listen again on %s: %v", r.addr, err)
			}
			again.Close()
		})
	}
}

// TestListenSeveral: a proxy given two sockets of the group (an upgrade's
// successor with fewer loops than its predecessor) reads both, and every
// client gets its replies from the service address.
func TestListenSeveral(t *testing.T) {
	checkFDs(t)
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, testConfig(), nil, 1)
	fd, _, err := Listen(r.addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.do(0, func(p *Proxy) { err = p.Listen(fd) })
	if err != nil {
		closeFD(fd)
		t.Fatal(err)
	}
	var fds []int
	r.do(0, func(p *Proxy) { fds = p.ListenerFDs() })
	if len(fds) != 2 {
		t.Fatalf("ListenerFDs: %v, want two", fds)
	}
	// The kernel hashes each client to one of the two sockets: with 32
	// clients, that both are read is all but certain to show (a chance of
	// 2^-31 that one gets none).
	const n = 32
	for i := range n {
		c := newClient(t, fmt.Sprintf("127.0.8.%d", i+1))
		if got, err := c.roundTrip(r.addr, []byte("x")); err != nil || string(got) != "x" {
			t.Fatalf("client %d: %q, %v", i, got, err)
		}
	}
	if s := r.sum(func(s *Stats) uint64 { return s.SessionsCreated.Load() }); s != n {
		t.Errorf("%d sessions, want %d", s, n)
	}
}

func TestListen(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		wantErr error
	}{
		{"127.0.0.1:0", nil},
		{"[::1]:0", nil},
		{"[::ffff:127.0.0.1]:0", nil},
		{"0.0.0.0:0", ErrWildcard},
		{"[::]:0", ErrWildcard},
	} {
		fd, bound, err := Listen(netip.MustParseAddrPort(tc.addr), 1<<20)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("Listen(%s): %v, want %v", tc.addr, err, tc.wantErr)
		}
		if err != nil {
			continue
		}
		if bound.Port() == 0 || bound.Addr() != netip.MustParseAddrPort(tc.addr).Addr().Unmap() {
			t.Errorf("Listen(%s) bound %s", tc.addr, bound)
		}
		// A second socket of the group binds the same port.
		fd2, _, err := Listen(bound, 0)
		if err != nil {
			t.Errorf("second Listen(%s): %v", bound, err)
		} else {
			closeFD(fd2)
		}
		closeFD(fd)
	}
}

func TestDropReasonNames(t *testing.T) {
	seen := make(map[string]bool)
	for _, r := range DropReasons {
		name := r.String()
		if name == "" || name == "unknown" || seen[name] {
			t.Errorf("reason %d: bad or duplicate label %q", r, name)
		}
		seen[name] = true
	}
	var _ atomic.Uint64 // the counters are atomics; see Stats
}

// TestQueueDrops stalls the loop while datagrams pour in, so that the
// kernel drops some at the listening socket and at a session socket, and
// checks that every datagram is accounted for: forwarded or counted as
// dropped with the right reason.
func TestQueueDrops(t *testing.T) {
	const burst = 400
	// The backend answers its first datagram with a burst of replies.
	bk := startID(t, 0, "udp", "127.0.0.1")
	bk.close() // only its address is wanted; serve the burst here instead
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(bk.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()

	cfg := testConfig()
	cfg.SocketBuffer = 1 // the kernel's minimum
	r := startRig(t, lo4, []netip.AddrPort{bk.addr}, cfg, nil, 1)
	st := r.proxies[0].Stats()
	stall := func() {
		started := make(chan struct{})
		r.loops[0].Submit(func() { close(started); time.Sleep(300 * time.Millisecond) })
		<-started
	}
	c := newClient(t, "127.0.0.1")
	c.conn.SetReadBuffer(8 << 20)

	// Client → proxy while the loop sleeps: the listening queue overflows.
	if _, err := c.conn.WriteToUDPAddrPort([]byte("first"), r.addr); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	stall()
	payload := make([]byte, 1000)
	for range burst {
		c.conn.WriteToUDPAddrPort(payload, r.addr)
	}
	up := func() uint64 { return r.traffic().DatagramsUp }
	eventually(t, "every client datagram forwarded or counted as dropped", func() bool {
		r.do(0, func(p *Proxy) { p.countListenDrops() }) // as a read of a backlog would
		return up()+st.Drops(DropListenQueue) == 1+burst
	})
	t.Logf("client burst: %d forwarded, %d listen_queue_full", up()-1, st.Drops(DropListenQueue))
	if st.Drops(DropListenQueue) == 0 {
		t.Errorf("no listening-queue drops with a %d-datagram burst into a minimal buffer", burst)
	}

	// Backend → proxy while the loop sleeps: the session queue overflows.
	stall()
	for range burst {
		pc.WriteToUDPAddrPort(payload, from)
	}
	time.Sleep(400 * time.Millisecond) // the loop wakes up and reads the backlog
	var got uint64
	c.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		if _, _, err := c.conn.ReadFromUDPAddrPort(c.buf); err != nil {
			break
		}
		got++
	}
	r.close() // ending the session reads its final drop count
	down := r.traffic().DatagramsDown
	if got != down {
		t.Errorf("client received %d replies, proxy counted %d sent", got, down)
	}
	sq, cf := st.Drops(DropSessionQueue), st.Drops(DropSendClientFailed)
	t.Logf("backend burst: %d forwarded, %d session_queue_full, %d send_client_failed", down, sq, cf)
	if down+sq+cf != burst || sq == 0 {
		t.Errorf("backend sent %d: %d forwarded, %d session_queue_full, %d send_client_failed", burst, down, sq, cf)
	}
}

// TestListenDropsCountedWithoutFullReads: when the listening queue
// overflows with fewer datagrams than a batch in it (large datagrams, or a
// receive buffer capped by net.core.rmem_max), no read is full, yet the
// kernel's drops are counted while traffic goes on.
func TestListenDropsCountedWithoutFullReads(t *testing.T) {
	bk := startID(t, 'A', "udp", "127.0.0.1")
	cfg := testConfig()
	cfg.Batch = 32
	cfg.SocketBuffer = 1 // the kernel's minimum: a few 8 KB datagrams fill it
	r := startRig(t, lo4, []netip.AddrPort{bk.addr}, cfg, nil, 1)
	st := r.proxies[0].Stats()
	c := newClient(t, "127.0.0.1")
	c.conn.SetReadBuffer(8 << 20)
	if _, err := c.roundTrip(r.addr, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	r.loops[0].Submit(func() { close(started); time.Sleep(300 * time.Millisecond) })
	<-started
	big := make([]byte, 8000)
	for range 100 {
		c.conn.WriteToUDPAddrPort(big, r.addr)
	}
	// Traffic goes on, a datagram every 20ms, until the drops show (the
	// kernel's count comes with the datagrams queued after a drop).
	deadline := time.Now().Add(5 * time.Second)
	for st.Drops(DropListenQueue) == 0 {
		if time.Now().After(deadline) {
			var kernel uint32
			r.do(0, func(p *Proxy) { kernel = socketDrops(p.lnfd) })
			t.Fatalf("the kernel dropped %d datagrams at the listening socket; none counted in 5s", kernel)
		}
		c.conn.WriteToUDPAddrPort([]byte("x"), r.addr)
		time.Sleep(20 * time.Millisecond) // the traffic's pace, not synchronisation
	}
}

// TestSessionDropsCountedWithoutFullReads: when a session socket's queue
// overflows with fewer datagrams than a batch in it (large datagrams, or
// a small net.core.rmem_default), no read is full, yet the kernel's drops
// are counted as the backend's datagrams go on, while the session lives.
func TestSessionDropsCountedWithoutFullReads(t *testing.T) {
	be, backend := quietBackend(t)
	cfg := testConfig()
	cfg.Batch = 32
	r := startRig(t, lo4, []netip.AddrPort{backend}, cfg, nil, 1)
	c := newClient(t, "127.0.0.1")
	c.conn.SetReadBuffer(4 << 20)
	if _, err := c.conn.WriteToUDPAddrPort([]byte("hi"), r.addr); err != nil {
		t.Fatal(err)
	}
	be.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, session, err := be.ReadFromUDPAddrPort(make([]byte, 64))
	if err != nil {
		t.Fatal(err)
	}

	// Hold the loop while a burst of large replies overflows the session
	// socket's queue (a loopback send has queued or dropped its datagram
	// when it returns), and read the kernel's drop count meanwhile.
	blocked, release := make(chan struct{}), make(chan struct{})
	fd := -1
	if !r.loops[0].Submit(func() {
		for _, s := range r.proxies[0].sessions {
			fd = s.fd
		}
		close(blocked)
		<-release
	}) {
		t.Fatal("submit refused")
	}
	<-blocked
	const burst = 40
	big := make([]byte, 60000)
	for range burst {
		be.WriteToUDPAddrPort(big, session)
	}
	kernel := socketDrops(fd)
	close(release)
	if kernel == 0 || kernel >= burst {
		t.Fatalf("the kernel dropped %d of %d datagrams of %d bytes at the session socket; the test needs some to pass, some dropped", kernel, burst, len(big))
	}
	readReplies := func(n int) {
		t.Helper()
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for i := range n {
			if _, _, err := c.conn.ReadFromUDPAddrPort(c.buf); err != nil {
				t.Fatalf("reply %d of %d: %v", i+1, n, err)
			}
		}
	}
	readReplies(burst - int(kernel)) // the session queue is empty again
	st := r.proxies[0].Stats()
	if n := st.Drops(DropSessionQueue); n > uint64(kernel) {
		t.Fatalf("%d session_queue_full counted, the kernel dropped %d", n, kernel)
	}
	// The backend goes on: its next datagram brings the count.
	be.WriteToUDPAddrPort([]byte("next"), session)
	readReplies(1)
	if n := st.Drops(DropSessionQueue); n != uint64(kernel) || st.Active() != 1 {
		t.Errorf("%d session_queue_full counted with %d sessions open; the kernel dropped %d", n, st.Active(), kernel)
	}
}

// TestSessionSize keeps the per-session memory in check: a session is one
// of these, a map entry and a socket.
func TestSessionSize(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 176 {
		t.Errorf("session is %d bytes; keep it at most 176", n)
	}
}

// TestRepliesGathered checks that the replies of several sessions that are
// ready in one wake-up of the loop go to their clients together: one
// sendmmsg per Batch replies, not one send each, and each reply to its own
// client.
func TestRepliesGathered(t *testing.T) {
	be, backend := quietBackend(t)
	cfg := testConfig()
	r := startRig(t, netip.MustParseAddrPort("127.0.0.1:0"), []netip.AddrPort{backend}, cfg, nil, 1)

	const n = 10
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = newClient(t, "127.0.0.1")
	}
	// The backend takes every request before answering any, so that all
	// sessions are open and their replies can be queued together.
	froms, reqs := heldRequests(t, be, r.addr, clients)

	// Hold the loop while the replies land in the session sockets (a
	// loopback send has queued its datagram when it returns).
	blocked, release := make(chan struct{}), make(chan struct{})
	if !r.loops[0].Submit(func() { close(blocked); <-release }) {
		t.Fatal("submit refused")
	}
	<-blocked
	sends0 := r.proxies[0].buf.sends
	for i, from := range froms {
		if _, err := be.WriteToUDPAddrPort([]byte("re:"+reqs[i]), from); err != nil {
			close(release)
			t.Fatal(err)
		}
	}
	close(release)
	expectReplies(t, clients, r.addr)
	var sends, down uint64
	r.do(0, func(p *Proxy) {
		sends = p.buf.sends - sends0
		down = r.traffic().DatagramsDown
	})
	if want := uint64((n + cfg.Batch - 1) / cfg.Batch); sends != want {
		t.Errorf("%d replies went out in %d sends, want %d (batches of %d)", n, sends, want, cfg.Batch)
	}
	if down != n {
		t.Errorf("backend counters: %d datagrams down, want %d", down, n)
	}
}

// TestActiveNeverNegative: sessions opened and ended while Active reads
// its two counters never make it undercount below zero.
func TestActiveNeverNegative(t *testing.T) {
	var s Stats
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s.SessionsCreated.Add(1)
			s.SessionsEnded.Add(1)
		}
	}()
	defer func() { close(stop); <-done }()
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
		if a := s.Active(); a < 0 {
			t.Fatalf("Active() = %d with no session open", a)
		}
	}
}

// TestDrainClosesAfterSlotFreed: Drain's channel closes only once the last
// session's slot of the session cap is free, so whoever it wakes sees the
// cap's count at 0. The session ends on the drain's idle timer, on the
// loop, while the test waits on the channel: a race that many rounds bring
// out.
func TestDrainClosesAfterSlotFreed(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	cfg := testConfig()
	cfg.DrainIdle = 2 * time.Millisecond
	for i := range 200 {
		r := startRig(t, lo4, []netip.AddrPort{echo.Addr()}, cfg, nil, 1)
		c := newClient(t, "127.0.0.1")
		if _, err := c.roundTrip(r.addr, []byte("x")); err != nil {
			t.Fatal(err)
		}
		var ch <-chan struct{}
		r.do(0, func(p *Proxy) { ch = p.Drain() })
		<-ch
		if n := r.limiter.Open(); n != 0 {
			t.Fatalf("round %d: drain over with %d slots of the cap still held", i, n)
		}
		r.close()
		c.conn.Close()
	}
}

// TestSessionFollowsReturningBackend: a backend that leaves the service and
// comes back between two datagrams of a session (a DNS round without it)
// is a new Backend with counters of its own, which the metrics and GET
// /backends read; the session counts there from then on, and its open
// session with it.
func TestSessionFollowsReturningBackend(t *testing.T) {
	echo := testsrv.StartTB(t, testsrv.Echo, "udp")
	spec := []balancer.Spec{{Addr: echo.Addr(), Weight: 1}}
	svc, err := balancer.NewService(balancer.ServiceConfig{Name: "u", Loops: 1}, spec, balancer.Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	r := startServiceRig(t, svc, testConfig())
	c := newClient(t, "127.0.0.1")
	if _, err := c.roundTrip(r.addr, []byte("a")); err != nil {
		t.Fatal(err)
	}
	svc.SetSource(balancer.SourceStatic, nil)
	svc.SetSource(balancer.SourceStatic, spec)
	const more = 10
	for range more {
		if _, err := c.roundTrip(r.addr, []byte("b")); err != nil {
			t.Fatal(err)
		}
	}
	// A reply is counted once sent, so the client may hold the last one
	// before it is counted: the loop's next task runs after that.
	r.do(0, func(*Proxy) {})
	got := svc.Backends()[0].Counts()
	if info := svc.Info()[0]; got.DatagramsUp != more || got.DatagramsDown != more || info.ActiveConnections != 1 {
		t.Fatalf("the returned backend counts %d datagrams up, %d down, %d sessions; want %d, %d and the 1 open",
			got.DatagramsUp, got.DatagramsDown, info.ActiveConnections, more, more)
	}
}
