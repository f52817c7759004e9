package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/firewall"
	"github.com/sluice-lb/sluice/internal/tcpproxy"
	"github.com/sluice-lb/sluice/internal/testsrv"
	"github.com/sluice-lb/sluice/pkg/proxyproto"
)

// headerBackend accepts one connection, parses the PROXY header it starts
// with and sends back "src dst|" followed by an echo of the client's bytes.
func headerBackend(tb testing.TB, network, addr string) string {
	tb.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		tb.Skipf("listen %s %s: %v", network, addr, err)
	}
	done := make(chan struct{})
	tb.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 0, 1024)
		tmp := make([]byte, 1024)
		for {
			n, err := c.Read(tmp)
			buf = append(buf, tmp[:n]...)
			h, used, perr := proxyproto.Parse(buf)
			if perr == nil {
				fmt.Fprintf(c, "v%d %s %s|", h.Version, h.Src, h.Dst)
				c.Write(buf[used:])
				io.Copy(c, c)
				return
			}
			if !errors.Is(perr, proxyproto.ErrIncomplete) || err != nil {
				fmt.Fprintf(c, "bad header %q: %v|", buf, perr)
				return
			}
		}
	}()
	return ln.Addr().String()
}

// roundTrip dials addr from src (may be nil), sends payload and reads the
// backend's "header|" line plus the echo.
func roundTrip(tb testing.TB, network string, src net.Addr, addr netip.AddrPort, prefix, payload string) (string, net.Conn) {
	tb.Helper()
	d := net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
	c, err := d.Dial(network, addr.String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(prefix + payload)); err != nil {
		tb.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 512)
	for !bytes.HasSuffix(got, []byte(payload)) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			tb.Fatalf("read %q: %v", got, err)
		}
	}
	return string(got), c
}

// TestSendProxyProtocol checks the v1 and v2 headers a backend gets, for
// IPv4 and IPv6 clients.
func TestSendProxyProtocol(t *testing.T) {
	for _, tc := range []struct{ version, network, loop string }{
		{"v1", "tcp4", "127.0.0.1"}, {"v2", "tcp4", "127.0.0.1"},
		{"v1", "tcp6", "::1"}, {"v2", "tcp6", "::1"},
	} {
		t.Run(tc.version+"/"+tc.network, func(t *testing.T) {
			backend := headerBackend(t, tc.network, net.JoinHostPort(tc.loop, "0"))
			r := start(t, "--listen", net.JoinHostPort(tc.loop, "0"), "--backend", backend, "--proxy-protocol", tc.version, "--health-interval", "1h")
			got, c := roundTrip(t, tc.network, nil, r.Addr(), "", "payload")
			want := fmt.Sprintf("%s %s %s|payload", tc.version, c.LocalAddr(), r.Addr())
			if got != want {
				t.Fatalf("backend saw %q, want %q", got, want)
			}
		})
	}
}

// TestAcceptProxyProtocol: a trusted peer's header sets the client address
// (seen by the backend through --proxy-protocol v2 and used for hashing);
// an untrusted peer, a malformed header and a missing one are closed and
// counted.
func TestAcceptProxyProtocol(t *testing.T) {
	backend := headerBackend(t, "tcp4", "127.0.0.1:0")
	r := start(t, "--backend", backend, "--proxy-protocol", "v2", "--accept-proxy-protocol",
		"--proxy-protocol-trusted", "127.0.0.1/32", "--health-interval", "1h", "--connect-timeout", "2s")
	claimed := netip.MustParseAddrPort("198.18.7.9:4321")
	dst := netip.MustParseAddrPort("198.18.0.1:443")
	hdr := string(proxyproto.AppendV1(nil, claimed, dst))
	got, _ := roundTrip(t, "tcp4", nil, r.Addr(), hdr, "hello")
	if want := fmt.Sprintf("v2 %s %s|hello", claimed, dst); got != want {
		t.Fatalf("backend saw %q, want %q", got, want)
	}

	expectClosed := func(src net.Addr, send string) {
		t.Helper()
		d := net.Dialer{LocalAddr: src}
		c, err := d.Dial("tcp4", r.Addr().String())
		if err != nil {
			return // refused at once is closed too
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte(send))
		n, err := c.Read(make([]byte, 64))
		if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
			t.Fatalf("sent %q from %v: read %d, %v; want the connection closed", send, src, n, err)
		}
	}
	// Untrusted peer (127.0.0.2 is outside 127.0.0.1/32) with a valid header.
	expectClosed(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, hdr+"hello")
	// Trusted peer, malformed header and no header at all.
	expectClosed(nil, "PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\nhello")
	expectClosed(nil, "GET / HTTP/1.0\r\n\r\n")
	waitFor(t, "counts", func() bool {
		return sumStats(r, func(s *tcpproxy.Stats) uint64 { return s.ProxyMalformed.Load() }) == 2 &&
			sumStats(r, func(s *tcpproxy.Stats) uint64 { return s.ProxyUntrusted.Load() }) == 1
	})
}

// TestProxyHeaderDatagramAddresses: a v2 header that claims a datagram
// (UDP) client on a TCP connection is accepted, but its addresses are not
// used, as HAProxy does: the backend sees the connection's own.
func TestProxyHeaderDatagramAddresses(t *testing.T) {
	backend := headerBackend(t, "tcp4", "127.0.0.1:0")
	r := start(t, "--backend", backend, "--proxy-protocol", "v2", "--accept-proxy-protocol",
		"--proxy-protocol-trusted", "127.0.0.1/32", "--health-interval", "1h")
	hdr := proxyproto.Header{Version: 2, Command: proxyproto.Proxy, Transport: proxyproto.UDP,
		Src: netip.MustParseAddrPort("198.18.7.9:4321"), Dst: netip.MustParseAddrPort("198.18.0.1:53")}.Append(nil)
	got, c := roundTrip(t, "tcp4", nil, r.Addr(), string(hdr), "hello")
	if want := fmt.Sprintf("v2 %s %s|hello", c.LocalAddr(), r.Addr()); got != want {
		t.Fatalf("backend saw %q, want %q", got, want)
	}
}

// TestProxyHeaderTimeout: a trusted client that sends nothing is closed
// after the header timeout (the connect timeout).
func TestProxyHeaderTimeout(t *testing.T) {
	r := start(t, "--backend", "127.0.0.1:9", "--accept-proxy-protocol", "--proxy-protocol-trusted", "127.0.0.0/8",
		"--health-interval", "1h", "--connect-timeout", "300ms")
	c := r.dial(t)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	begin := time.Now()
	_, err := c.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("read data from a connection that sent no header")
	}
	if el := time.Since(begin); el < 250*time.Millisecond {
		t.Fatalf("closed after %v, before the 300ms header timeout", el)
	}
	waitFor(t, "timeout counted", func() bool {
		return sumStats(r, func(s *tcpproxy.Stats) uint64 { return s.ProxyTimeouts.Load() }) == 1
	})
}

// sumStats sums one counter over the first service's proxies.
func sumStats(r *running, get func(*tcpproxy.Stats) uint64) uint64 {
	var n uint64
	for _, p := range r.services[0].proxies {
		n += get(p.Stats())
	}
	return n
}

// TestProxiedAddressFirewalled: with the firewall on, the deny list also
// applies to the address a trusted upstream claims in its PROXY header
// (the XDP program sees only the upstream). Needs root: loads the XDP
// program on lo, that of a network namespace of its own (lo has room for
// one XDP program, and other packages' tests attach theirs to their lo).
func TestProxiedAddressFirewalled(t *testing.T) {
	if !testsrv.InOwnNetns(t, "loads an XDP program and attaches it to lo") {
		return
	}
	backend := headerBackend(t, "tcp4", "127.0.0.1:0")
	r := start(t, "--backend", backend, "--accept-proxy-protocol", "--proxy-protocol-trusted", "127.0.0.1/32", "--proxy-protocol", "v2",
		"--xdp-iface", "lo", "--xdp-mode", "generic", "--deny-cidr", "198.18.66.0/24", "--deny-cidr", "::ffff:198.18.77.0/120", "--health-interval", "1h")
	dst := netip.MustParseAddrPort("198.18.0.1:443")
	// A denied claimed address is closed and counted; an IPv4-mapped deny
	// prefix covers IPv4 clients, as it does in the XDP program.
	for i, claimed := range []string{"198.18.66.5:1000", "198.18.77.5:1000"} {
		c, err := net.Dial("tcp4", r.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(proxyproto.AppendV1(nil, netip.MustParseAddrPort(claimed), dst))
		if n, err := c.Read(make([]byte, 16)); n != 0 || err == nil {
			t.Fatalf("denied claimed address %s got %d bytes, %v", claimed, n, err)
		}
		waitFor(t, "denial counted", func() bool {
			return sumStats(r, func(s *tcpproxy.Stats) uint64 { return s.ProxyDenied.Load() }) == uint64(i+1)
		})
	}
	// An allowed one goes through, its claimed address passed on.
	got, _ := roundTrip(t, "tcp4", nil, r.Addr(), string(proxyproto.AppendV1(nil, netip.MustParseAddrPort("198.18.7.9:1000"), dst)), "x")
	if want := "v2 198.18.7.9:1000 198.18.0.1:443|x"; got != want {
		t.Fatalf("allowed claimed address: backend said %q, want %q", got, want)
	}
}

// TestProxiedRateLimitWarning: with a per-source rate limit, a service
// that takes PROXY headers gets a warning at start (its upstream counts as
// one source); without the limit, or without PROXY, there is none.
func TestProxiedRateLimitWarning(t *testing.T) {
	backend := headerBackend(t, "tcp4", "127.0.0.1:0")
	core, logs := observer.New(zapcore.WarnLevel)
	cfg := parse(t, "--listen", "127.0.0.1:0", "--backend", backend, "--accept-proxy-protocol",
		"--proxy-protocol-trusted", "127.0.0.1/32", "--health-interval", "1h")
	s, err := New(cfg, zap.New(core), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.release()
	s.warnProxiedRateLimit(config.Firewall{})
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d warnings without a rate limit", n)
	}
	s.warnProxiedRateLimit(config.Firewall{Rules: firewall.Config{RateLimit: 100}})
	got := logs.FilterMessageSnippet("PROXY-protocol upstream").All()
	if len(got) != 1 || got[0].ContextMap()["service"] != "default" {
		t.Fatalf("warnings: %v; want one for service default", logs.All())
	}

	plain, err := New(parse(t, "--listen", "127.0.0.1:0", "--backend", backend, "--health-interval", "1h"), zap.New(core), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.release()
	plain.warnProxiedRateLimit(config.Firewall{Rules: firewall.Config{RateLimit: 100}})
	if n := logs.Len(); n != 1 {
		t.Fatalf("a service without PROXY headers was warned about: %v", logs.All())
	}
}
