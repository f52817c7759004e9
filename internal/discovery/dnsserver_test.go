package discovery

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Failure modes of dnsServer for one name.
const (
	answer   = iota // answer from the records (NXDOMAIN if there are none)
	servfail        // answer SERVFAIL
	drop            // never answer: the client times out
)

// dnsServer is an authoritative DNS server on 127.0.0.1, over UDP and TCP,
// whose records and failures a test changes while it runs.
type dnsServer struct {
	udpAddr, tcpAddr string
	// queries receives the name and type of each query ("tick.test. A")
	// before it is answered; when it is full, queries are not recorded.
	queries chan string

	// delay holds each answer back, in nanoseconds, as a server some
	// distance away would.
	delay atomic.Int64

	mu      sync.Mutex          // guards the fields below
	records map[string][]dns.RR // by lower-case owner name
	modes   map[string]int      // by lower-case name; absent means answer
}

func newDNSServer(tb testing.TB) *dnsServer {
	tb.Helper()
	s := &dnsServer{
		queries: make(chan string, 4096),
		records: map[string][]dns.RR{},
		modes:   map[string]int{},
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pc.Close()
		tb.Fatal(err)
	}
	s.udpAddr, s.tcpAddr = pc.LocalAddr().String(), ln.Addr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: ln, Handler: s}} {
		started := make(chan struct{})
		done := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() {
			defer close(done)
			if err := srv.ActivateAndServe(); err != nil {
				tb.Errorf("dns server: %v", err)
			}
		}()
		<-started
		tb.Cleanup(func() {
			if err := srv.Shutdown(); err != nil {
				tb.Errorf("dns server shutdown: %v", err)
			}
			<-done
		})
	}
	return s
}

// resolver returns a pure-Go resolver that sends every query to s, whatever
// /etc/resolv.conf says.
//
// Its connections also stop waiting for an answer when the lookup is
// cancelled. The resolver does not do that by itself: a lookup whose caller
// gave up goes on reading until resolv.conf's timeout, and the leak check
// would see its goroutine. The resolver cancels the context it dials with
// when the exchange ends, so the AfterFunc always runs. (The conn is not
// wrapped: the resolver tells UDP from TCP by its type.)
func (s *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo:     true,
		StrictErrors: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			addr := s.udpAddr
			if strings.HasPrefix(network, "tcp") {
				addr = s.tcpAddr
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
			return c, nil
		},
	}
}

// set replaces the records of name with rrs, given in zone file syntax
// without the owner name ("A 127.0.0.1", "SRV 10 5 8080 a.test.").
func (s *dnsServer) set(tb testing.TB, name string, rrs ...string) {
	tb.Helper()
	var parsed []dns.RR
	for _, r := range rrs {
		rr, err := dns.NewRR(name + " 1 IN " + r)
		if err != nil {
			tb.Fatalf("record %q: %v", r, err)
		}
		parsed = append(parsed, rr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[strings.ToLower(name)] = parsed
}

// setRR replaces the records of name with rrs, built by the caller: for
// records that zone file syntax cannot give, such as an SRV target name
// with a space in it. Their owner names are set to name.
func (s *dnsServer) setRR(name string, rrs ...dns.RR) {
	for _, rr := range rrs {
		rr.Header().Name = name
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[strings.ToLower(name)] = rrs
}

// setMode sets how s answers queries for name, or for one type of query
// when name is followed by a space and the type ("web.test. AAAA").
func (s *dnsServer) setMode(name string, mode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name, qtype, _ := strings.Cut(name, " ")
	key := strings.ToLower(name)
	if qtype != "" {
		key += " " + qtype
	}
	s.modes[key] = mode
}

// ServeDNS answers from the records. A name with no records is NXDOMAIN; a
// name with records but none of the type asked is an empty answer.
func (s *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	time.Sleep(time.Duration(s.delay.Load()))
	m := new(dns.Msg)
	if len(r.Question) != 1 {
		m.SetRcode(r, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	select {
	case s.queries <- q.Name + " " + dns.TypeToString[q.Qtype]:
	default:
	}
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	mode := max(s.modes[name], s.modes[name+" "+dns.TypeToString[q.Qtype]])
	all := s.records[name]
	s.mu.Unlock()
	switch mode {
	case drop:
		return
	case servfail:
		m.SetRcode(r, dns.RcodeServerFailure)
		w.WriteMsg(m)
		return
	}
	m.SetReply(r)
	m.Authoritative = true
	if len(all) == 0 {
		m.Rcode = dns.RcodeNameError
	}
	for _, rr := range all {
		if rr.Header().Rrtype == q.Qtype {
			m.Answer = append(m.Answer, rr)
		}
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size) // sets TC, and the client retries over TCP
	}
	w.WriteMsg(m)
}

// settle returns once a round of resolution that started after the call
// has finished, updates and logs included. It counts the rounds by the A
// queries for tickName, a target every test watcher has that answers at
// once, so is queried exactly once a round; and rounds are sequential, so
// by the third such query after the call, the round of the second has
// finished and it started after the call.
func (s *dnsServer) settle(tb testing.TB) {
	tb.Helper()
	for {
		select {
		case <-s.queries:
			continue
		default:
		}
		break
	}
	timeout := time.After(10 * time.Second)
	for n := 0; n < 3; {
		select {
		case q := <-s.queries:
			if q == tickName+" A" {
				n++
			}
		case <-timeout:
			tb.Fatal("no round of resolution in 10s")
		}
	}
}
