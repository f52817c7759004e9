// Package admin serves sluice's admin HTTP endpoint: liveness, readiness,
// the backend list, drain/enable of a backend, and Prometheus metrics.
//
// The endpoint has no authentication: anyone who can reach it can drain
// backends. It binds to loopback unless told otherwise; expose it only
// through something that authenticates. What it does refuse is a web
// browser used as a relay: a POST from another site's page (cross-site
// request forgery), and a POST whose Host is a DNS name (DNS rebinding,
// where a hostile name resolves to the endpoint's address).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/net/netutil"

	"github.com/sluice-lb/sluice/internal/balancer"
)

// Deps is what the endpoint reports on and acts upon.
type Deps struct {
	// Services returns the running services.
	Services []*balancer.Service
	// Listening reports whether every service's listeners are open.
	Listening func() bool
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// Hold, if set, is taken for each backend state change (drain,
	// enable) and released once it is answered. An error refuses the
	// change for now (an upgrade hands the states over): it is answered
	// 503 with Retry-After, for the client to repeat.
	Hold func() (release func(), err error)
}

// Handler returns the admin routes.
func Handler(d Deps, log *zap.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !d.Listening() {
			http.Error(w, "not listening\n", http.StatusServiceUnavailable)
			return
		}
		for _, s := range d.Services {
			if !s.Up() {
				http.Error(w, "service "+s.Name()+" has no backend up\n", http.StatusServiceUnavailable)
				return
			}
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /backends", func(w http.ResponseWriter, r *http.Request) {
		type svc struct {
			Service  string                 `json:"service"`
			Backends []balancer.BackendInfo `json:"backends"`
			// Absent are the addresses that left drained and return
			// drained: not members, so not among Backends.
			Absent []balancer.AbsentInfo `json:"absent"`
		}
		out := []svc{}
		for _, s := range d.Services {
			out = append(out, svc{Service: s.Name(), Backends: s.Info(), Absent: s.Absent()})
		}
		writeJSON(w, http.StatusOK, out)
	})
	setDrained := func(drained bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if d.Hold != nil {
				release, err := d.Hold()
				if err != nil {
					w.Header().Set("Retry-After", "1")
					writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
					return
				}
				defer release()
			}
			// The rules a backend's address was given by: one they
			// refuse (port 0, an IPv6 zone) is a bad request, not a
			// backend that is missing.
			addr, err := balancer.ParseAddr(r.PathValue("addr"))
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "backend address: " + err.Error()})
				return
			}
			only := r.URL.Query().Get("service")
			var changed []string
			named := false // a service is named only
			for _, s := range d.Services {
				if only != "" && s.Name() != only {
					continue
				}
				named = true
				err := s.SetDrained(addr, drained)
				if errors.Is(err, balancer.ErrUnknownBackend) {
					continue
				}
				if err != nil {
					writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
					return
				}
				changed = append(changed, s.Name())
			}
			switch {
			case only != "" && !named:
				writeJSON(w, http.StatusNotFound, map[string]string{"error": "no service " + strconv.Quote(only)})
				return
			case only != "" && len(changed) == 0:
				writeJSON(w, http.StatusNotFound, map[string]string{"error": "service " + strconv.Quote(only) + " has no backend " + addr.String()})
				return
			case len(changed) == 0:
				writeJSON(w, http.StatusNotFound, map[string]string{"error": "no service has backend " + addr.String()})
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"backend": addr.String(), "drained": drained, "services": changed})
		}
	}
	mux.HandleFunc("POST /backends/{addr}/drain", guard(setDrained(true)))
	mux.HandleFunc("POST /backends/{addr}/enable", guard(setDrained(false)))
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.Gatherer, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(log)}))
	return mux
}

// guard refuses a state-changing request that a browser could have been
// made to send: one from another origin, or one whose Host is a DNS name.
// A page served from a hostile name that later resolves to the endpoint's
// address is same-origin to the browser, so only the Host tells it apart.
// Tools such as curl name the endpoint by address and pass.
func guard(h http.HandlerFunc) http.HandlerFunc {
	cop := http.NewCrossOriginProtection()
	return func(w http.ResponseWriter, r *http.Request) {
		if !literalHost(r.Host) {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "refused: Host " + strconv.Quote(r.Host) +
				" is not an IP address or localhost; name the admin endpoint by its address (this guards against DNS rebinding)"})
			return
		}
		if err := cop.Check(r); err != nil {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "refused: " + err.Error()})
			return
		}
		h(w, r)
	}
}

// literalHost reports whether a Host header names an IP address or
// localhost, with or without a port.
func literalHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else {
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// idleTimeout closes a keep-alive connection that has sent no request for
// this long. Without it an idle one stays open for good, and each holds a
// file descriptor out of the open-file limit that --max-conns is derived
// from. A Prometheus scrape every 15–60 s keeps its connection.
const idleTimeout = 2 * time.Minute

// requestTimeout bounds the reading of a request (its body included) and
// the writing of its answer. The API's requests are small and its answers
// a few hundred kilobytes at most (/metrics with thousands of backends),
// so only a client that stalls on purpose needs longer; without a bound,
// MaxConns such clients would hold every place and a drain would wait.
const requestTimeout = 30 * time.Second

// MaxConns bounds the admin connections open at once, each a file
// descriptor out of the open-file limit that --max-conns is derived from
// (config counts them apart from the connections proxied). A connection
// beyond it is not refused: it waits in the listening socket's accept
// queue until one of these closes. Scrapes, probes and an operator's curl
// need a few; an idle keep-alive connection holds its place until
// idleTimeout.
const MaxConns = 64

// Server is the admin HTTP server.
type Server struct {
	srv *http.Server
	ln  net.Listener // the listening socket, for FD and Addr
	// limited is ln accepting at most MaxConns connections at once: it
	// waits to accept another until one of them is closed.
	limited net.Listener
	done    chan error
}

// Listen binds addr, or adopts inherited (a listening socket handed over by
// an upgrade) when it is not nil; Start starts answering.
func Listen(addr netip.AddrPort, inherited *os.File, h http.Handler, log *zap.Logger) (*Server, error) {
	var ln net.Listener
	var err error
	if inherited != nil {
		ln, err = net.FileListener(inherited)
		inherited.Close() // FileListener made its own copy
	} else {
		ln, err = net.Listen("tcp", addr.String())
	}
	if err != nil {
		return nil, err
	}
	return &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       requestTimeout,
			WriteTimeout:      requestTimeout,
			IdleTimeout:       idleTimeout,
			ErrorLog:          zap.NewStdLog(log),
		},
		ln:      ln,
		limited: netutil.LimitListener(ln, MaxConns),
	}, nil
}

// FD returns the listening socket's descriptor, for an upgrade's handoff;
// it stays owned by the server.
func (s *Server) FD() int {
	fd := -1
	if sc, ok := s.ln.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Control(func(u uintptr) { fd = int(u) })
		}
	}
	return fd
}

// Addr returns the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Start serves on its own goroutine until Close.
func (s *Server) Start() {
	s.done = make(chan error, 1)
	go func() { s.done <- s.srv.Serve(s.limited) }()
}

// closeGrace bounds how long Close lets requests in flight finish.
const closeGrace = 2 * time.Second

// Close stops accepting at once, lets the requests in flight finish for up
// to closeGrace (a scrape or a drain answered during an upgrade's hand-over
// is not cut), closes the rest, and waits for the server's goroutine.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	if s.done != nil {
		<-s.done
	}
	return err
}
