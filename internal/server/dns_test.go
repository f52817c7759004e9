package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// zone is a tiny authoritative DNS server on loopback whose A records the
// test changes.
type zone struct {
	mu sync.Mutex // guards a
	a  map[string][]netip.Addr
	s  *dns.Server
}

func startZone(tb testing.TB) *zone {
	tb.Helper()
	z := &zone{a: map[string][]netip.Addr{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	started := make(chan struct{})
	z.s = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve), NotifyStartedFunc: func() { close(started) }}
	go z.s.ActivateAndServe()
	<-started
	tb.Cleanup(func() { z.s.Shutdown() })
	return z
}

func (z *zone) set(name string, addrs ...netip.Addr) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.a[dns.Fqdn(name)] = addrs
}

func (z *zone) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	z.mu.Lock()
	for _, q := range req.Question {
		if q.Qtype != dns.TypeA {
			continue
		}
		for _, a := range z.a[q.Name] {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: a.AsSlice()})
		}
	}
	z.mu.Unlock()
	w.WriteMsg(m)
}

func (z *zone) resolver() *net.Resolver {
	addr := z.s.PacketConn.LocalAddr().String()
	return &net.Resolver{PreferGo: true, StrictErrors: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// TestDNSDiscovery: backends found by --backend-dns join the membership
// and take traffic; a change of the records is followed.
func TestDNSDiscovery(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	// Two backends on one port but different loopback addresses.
	port := a.Addr().Port()
	b, err := testsrv.Start(context.Background(), testsrv.Config{Kind: testsrv.Echo, Addr: fmt.Sprintf("127.0.0.2:%d", port)})
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2:%d: %v", port, err)
	}
	t.Cleanup(func() { b.Close() })
	z := startZone(t)
	z.set("db.test", netip.MustParseAddr("127.0.0.1"))
	cfg := parse(t, []string{"--listen", "127.0.0.1:0", "--backend-dns", fmt.Sprintf("db.test:%d", port), "--dns-interval", "1s"}...)
	cfg.Services[0].DNS.Resolver = z.resolver()
	s := startCfg(t, cfg, zap.NewNop())
	want := func(addrs ...string) func() bool {
		return func() bool { return fmt.Sprint(s.Service("default").Members()) == fmt.Sprint(addrs) }
	}
	waitFor(t, "first resolution", want(a.Addr().String()))
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("through a discovered backend: %v", err)
	}
	c.Close()
	z.set("db.test", netip.MustParseAddr("127.0.0.2"))
	waitFor(t, "re-resolution", want(b.Addr().String()))
}
