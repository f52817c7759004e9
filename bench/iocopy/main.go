// Command iocopy is the naive Go proxy that sluice is compared with in
// bench/run.sh: one goroutine pair per connection, each doing io.Copy
// between two *net.TCPConn (which the Go runtime turns into splice(2) with
// pooled pipes). It is a benchmark peer, not product code: no timeouts, no
// retries, no limits, on purpose.
//
// Usage:
//
//	iocopy --route LISTEN=BACKEND[,BACKEND...] [--route ...]
//
// Each route listens on LISTEN and sends a client to one of its backends
// chosen by a hash of the client's IP address (like the peers' source
// hashing). It runs until SIGINT or SIGTERM, then closes its listeners and
// open connections and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "iocopy: %v\n", err)
		os.Exit(1)
	}
}

// route is one listening address and the backends behind it.
type route struct {
	listen   string
	backends []string
}

// routeList is the repeatable --route flag.
type routeList []route

func (rl *routeList) String() string { return fmt.Sprint(*rl) }

func (rl *routeList) Set(s string) error {
	l, b, ok := strings.Cut(s, "=")
	if !ok || l == "" || b == "" {
		return fmt.Errorf("want LISTEN=BACKEND[,BACKEND...], got %q", s)
	}
	*rl = append(*rl, route{listen: l, backends: strings.Split(b, ",")})
	return nil
}

// run listens on every route, prints "ready" on stdout once all listeners
// are bound, and proxies until ctx is done.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("iocopy", flag.ContinueOnError)
	var routes routeList
	fs.Var(&routes, "route", "LISTEN=BACKEND[,BACKEND...] (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(routes) == 0 {
		return errors.New("no --route given")
	}
	p := &proxy{conns: map[net.Conn]struct{}{}}
	var lns []net.Listener
	for _, r := range routes {
		ln, err := net.Listen("tcp", r.listen)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("listen on %s: %w", r.listen, err)
		}
		lns = append(lns, ln)
	}
	fmt.Fprintln(stdout, "ready")

	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.acceptLoop(ln, routes[i].backends)
		}()
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait() // no accept loop adds to p.wg after this
	p.closeAll()
	return nil
}

// proxy tracks the open connections so that shutdown can close them.
type proxy struct {
	mu     sync.Mutex // guards conns and closed
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // one per proxied connection pair
}

// track adds c to the open set; it reports false after closeAll.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// closeAll closes every open connection and waits for their goroutines.
func (p *proxy) closeAll() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// acceptLoop accepts until ln is closed. Other errors (EMFILE when the
// file descriptors run out) are retried after a pause that doubles up to
// a second, as net/http does; the client waits in the accept queue.
func (p *proxy) acceptLoop(ln net.Listener, backends []string) {
	var pause time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			time.Sleep(pause)
			continue
		}
		pause = 0
		p.wg.Add(1)
		go p.serve(c.(*net.TCPConn), backends)
	}
}

// pick hashes the client IP to a backend.
func pick(client net.Addr, backends []string) string {
	h := fnv.New32a()
	if ta, ok := client.(*net.TCPAddr); ok {
		h.Write(ta.IP)
	}
	return backends[h.Sum32()%uint32(len(backends))]
}

// serve proxies one client connection: dial the backend, then io.Copy in
// each direction, passing a half-close on with CloseWrite.
func (p *proxy) serve(client *net.TCPConn, backends []string) {
	defer p.wg.Done()
	defer client.Close()
	bc, err := net.Dial("tcp", pick(client.RemoteAddr(), backends))
	if err != nil {
		return
	}
	backend := bc.(*net.TCPConn)
	defer backend.Close()
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	if !p.track(backend) {
		return
	}
	defer p.untrack(backend)

	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(backend, client)
	}()
	pipe(client, backend)
	<-done
}

// pipe copies src to dst until EOF or an error, then shuts down dst's write
// side so that the peer sees the end of the stream.
func pipe(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		// An error (reset) on one side: reset both.
		src.Close()
		dst.Close()
		return
	}
	dst.CloseWrite()
}
