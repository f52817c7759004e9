// Package server wires sluice together: it builds the event loops, opens one
// listening socket per loop, publishes the backend set to the proxies, and
// runs the lifecycle: serve until the context ends, then drain and exit.
package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/loop"
	"github.com/sluice-lb/sluice/internal/tcpproxy"
)

// Server is a running balancer. Create it with New (which binds the
// listening sockets, so bind errors surface before anything runs), then
// call Run once.
type Server struct {
	cfg     config.Config
	log     *zap.Logger
	addr    netip.AddrPort
	pool    *balancer.Pool
	limiter *tcpproxy.Limiter
	loops   []*loop.Loop
	proxies []*tcpproxy.Proxy // proxies[i] runs on loops[i]
	wg      sync.WaitGroup    // the loop goroutines
	ready   chan struct{}
}

// New builds the server: backend table, loops, and one SO_REUSEPORT
// listening socket per loop. On error everything acquired is released.
func New(cfg config.Config, log *zap.Logger) (s *Server, err error) {
	snap, err := balancer.NewSnapshot(cfg.Backends, 0)
	if err != nil {
		return nil, err
	}
	s = &Server{
		cfg:     cfg,
		log:     log,
		pool:    balancer.NewPool(snap),
		limiter: tcpproxy.NewLimiter(cfg.MaxConns),
		ready:   make(chan struct{}),
	}
	defer func() {
		if err != nil {
			for _, p := range s.proxies {
				p.Drain() // closes its listener; the loop has not run
			}
			s.closeLoops()
		}
	}()
	addr := cfg.Listen
	for i := 0; i < cfg.Workers; i++ {
		l, err := loop.New()
		if err != nil {
			return nil, fmt.Errorf("create event loop: %w", err)
		}
		s.loops = append(s.loops, l)
		p := tcpproxy.New(l, cfg.Proxy, s.pool, s.limiter, log.Named("tcp"))
		s.proxies = append(s.proxies, p)
		fd, bound, err := tcpproxy.Listen(addr, cfg.Proxy.Backlog)
		if err != nil {
			return nil, err
		}
		// The loop is not running yet, so registering from here is safe.
		if err := p.Listen(fd); err != nil {
			return nil, fmt.Errorf("register listener: %w", err)
		}
		addr = bound // port 0: every loop binds the port the first one got
	}
	s.addr = addr
	return s, nil
}

// Addr returns the bound listening address.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Ready is closed once the loops are running.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Stats sums the proxies' counters.
func (s *Server) Stats() Totals {
	var t Totals
	for _, p := range s.proxies {
		st := p.Stats()
		t.Accepted += st.Accepted.Load()
		t.Closed += st.Closed.Load()
		t.ConnectFailures += st.ConnectFailures.Load()
		t.ConnectTimeouts += st.ConnectTimeouts.Load()
		t.NoBackend += st.NoBackend.Load()
		t.Resets += st.Resets.Load()
		t.IdleTimeouts += st.IdleTimeouts.Load()
		t.AcceptErrors += st.AcceptErrors.Load()
		t.BytesUp += st.BytesUp.Load()
		t.BytesDown += st.BytesDown.Load()
		t.SplicedBytes += st.SplicedBytes.Load()
	}
	return t
}

// Totals are the proxies' counters summed over loops.
type Totals struct {
	Accepted, Closed, ConnectFailures, ConnectTimeouts, NoBackend, Resets,
	IdleTimeouts, AcceptErrors, BytesUp, BytesDown, SplicedBytes uint64
}

// Run serves until ctx is done, then stops accepting, lets open connections
// finish for up to the drain timeout, resets the rest, and returns. It
// returns nil after a clean drain.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, len(s.loops))
	for _, l := range s.loops {
		s.wg.Add(1)
		go s.runLoop(l, errc)
	}
	close(s.ready)
	s.log.Info("sluice started",
		zap.Stringer("listen", s.addr),
		zap.Int("workers", s.cfg.Workers),
		zap.Stringers("backends", backendNames(s.cfg.Backends)),
		zap.Stringer("hash_key", s.cfg.Proxy.HashKey),
		zap.Stringer("splice", s.cfg.Proxy.Splice),
		zap.Int("pipe_size", s.cfg.Proxy.Pool.PipeSize),
		zap.Int("pipes_per_loop", s.cfg.Proxy.Pool.MaxPipes),
		zap.Int("max_conns", s.cfg.MaxConns),
		zap.Duration("connect_timeout", s.cfg.Proxy.ConnectTimeout),
		zap.Int("connect_retries", s.cfg.Proxy.ConnectRetries),
		zap.Duration("idle_timeout", s.cfg.Proxy.IdleTimeout),
		zap.Duration("drain_timeout", s.cfg.DrainTimeout),
	)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		s.log.Error("event loop failed", zap.Error(runErr))
	}
	s.drain()
	s.stopLoops()
	t := s.Stats()
	s.log.Info("sluice stopped",
		zap.Uint64("connections", t.Accepted),
		zap.Uint64("bytes_up", t.BytesUp),
		zap.Uint64("bytes_down", t.BytesDown),
		zap.Uint64("connect_failures", t.ConnectFailures+t.ConnectTimeouts),
		zap.Uint64("resets", t.Resets))
	return runErr
}

func (s *Server) runLoop(l *loop.Loop, errc chan<- error) {
	defer s.wg.Done()
	if err := l.Run(); err != nil && !errors.Is(err, loop.ErrStopped) {
		errc <- err
	}
}

// drain stops every listener and waits for open connections to finish, up
// to the drain timeout; then it resets those left.
func (s *Server) drain() {
	var chans []<-chan struct{}
	for i, p := range s.proxies {
		ch := make(chan (<-chan struct{}), 1)
		p := p
		if !s.loops[i].Submit(func() { ch <- p.Drain() }) {
			continue
		}
		chans = append(chans, <-ch)
	}
	open := s.limiter.Open()
	if open > 0 {
		s.log.Info("draining connections", zap.Int64("open", open), zap.Duration("timeout", s.cfg.DrainTimeout))
	}
	deadline := time.NewTimer(s.cfg.DrainTimeout)
	defer deadline.Stop()
wait:
	for _, ch := range chans {
		select {
		case <-ch:
		case <-deadline.C:
			s.log.Warn("drain timeout, resetting open connections", zap.Int64("open", s.limiter.Open()))
			break wait
		}
	}
	s.closeAll()
}

// closeAll resets every connection left, releases the pipe pools, and waits
// until each loop has done so.
func (s *Server) closeAll() {
	var wg sync.WaitGroup
	for i, p := range s.proxies {
		p := p
		wg.Add(1)
		if !s.loops[i].Submit(func() { p.CloseAll(); wg.Done() }) {
			wg.Done()
		}
	}
	wg.Wait()
}

func (s *Server) stopLoops() {
	for _, l := range s.loops {
		l.Stop()
	}
	s.wg.Wait()
	s.closeLoops()
}

func (s *Server) closeLoops() {
	for _, l := range s.loops {
		l.Close()
	}
	s.loops = nil
}

func backendNames(bs []balancer.Backend) []fmt.Stringer {
	out := make([]fmt.Stringer, len(bs))
	for i, b := range bs {
		out[i] = b.Addr
	}
	return out
}
