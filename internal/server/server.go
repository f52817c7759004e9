// Package server wires sluice together: it builds the event loops, opens one
// listening socket per loop and service, runs each service's membership,
// health checks and backends-file watch, serves the admin endpoint, and
// runs the lifecycle: serve until the context ends, then drain and exit.
package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/admin"
	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/discovery"
	"github.com/sluice-lb/sluice/internal/firewall"
	"github.com/sluice-lb/sluice/internal/handoff"
	"github.com/sluice-lb/sluice/internal/health"
	"github.com/sluice-lb/sluice/internal/loop"
	"github.com/sluice-lb/sluice/internal/splice"
	"github.com/sluice-lb/sluice/internal/tcpproxy"
	"github.com/sluice-lb/sluice/internal/udpproxy"
)

// fileCheckInterval is how often backends files are checked for changes.
const fileCheckInterval = time.Second

// Server is a running balancer. Create it with New (which binds every
// listening socket, so bind errors surface before anything runs), then call
// Run once.
type Server struct {
	cfg      config.Config
	log      *zap.Logger
	limiter  *tcpproxy.Limiter
	sessions *udpproxy.SessionLimiter
	loops    []*loop.Loop
	services []*service
	admin    *admin.Server
	fw       *firewall.Firewall   // nil without --xdp-iface
	proxied  tcpproxy.SourceRules // the firewall's lists, for PROXY-claimed addresses
	opts     Options
	inherit  []handoff.Socket // handed-over sockets not yet claimed by New
	// handedOver lists every listener the predecessor handed over,
	// claimed or not: the address checks leave those addresses alone.
	handedOver []protoAddr
	upgraded   chan struct{} // closed when a successor took over
	stopping   chan struct{} // closed when Run stops for any other reason (SIGTERM, a loop's failure)
	// upMu orders the two: an upgrade and a stop that meet end as one or
	// the other, never as a successor serving after a stop was asked for.
	upMu sync.Mutex
	// hup receives SIGHUP and SIGUSR2 while Run serves; Upgrade takes
	// SIGHUP off it while it forks.
	hup      chan os.Signal
	registry *prometheus.Registry
	checkDur *prometheus.HistogramVec

	wg        sync.WaitGroup // loop goroutines and background workers
	ready     chan struct{}
	listening atomic.Bool
	reloadMu  sync.Mutex // serialises Reload
	// bg is the context of Run's background work (health checks, DNS
	// discovery), set before Run starts any. Guarded by reloadMu.
	bg context.Context
	// stateMu orders the admin API's backend state changes (drain,
	// enable) with an upgrade's hand-over: a change checks handingOver
	// and is applied under the read lock; handingOver is set under the
	// write lock, so no change is applied after the states are read for
	// the successor.
	stateMu sync.RWMutex
	// handingOver is true while an upgrade hands this process's backend
	// states over, and in an upgrade's successor until it has taken over:
	// a change applied then would be lost (the other process does not see
	// it, and a failed successor takes its own with it), so it is refused.
	// Guarded by stateMu.
	handingOver bool
	// reapMu guards reapers and reaped.
	reapMu sync.Mutex
	// reapers are the successors told to stop that Upgrade left to exit
	// in their own time; Run waits for them before it returns (see reap).
	reapers []*reaper
	reaped  bool // Run has waited for reapers: a later reap waits itself
	// idlePipes is how many empty pipes each TCP service's pool keeps on
	// each loop (see splice.IdleFor); 0 without a TCP service.
	idlePipes int
	// closeUDPAtDrain is set, before upgraded is closed, when the
	// successor is of a release that may not read every UDP socket handed
	// over: the drain then closes the UDP sockets and sessions at once.
	closeUDPAtDrain bool
}

// hasUDP reports whether a service is UDP.
func (s *Server) hasUDP() bool {
	for _, sv := range s.services {
		if sv.cfg.Proto == "udp" {
			return true
		}
	}
	return false
}

// service is one configured service and its per-loop proxies.
type service struct {
	cfg     config.Service
	bal     *balancer.Service
	monitor *health.Monitor
	proxies []*tcpproxy.Proxy // TCP: proxies[i] runs on loops[i]
	udp     []*udpproxy.Proxy // UDP: udp[i] runs on loops[i]
	each    []loopProxy       // either, for the lifecycle
	addr    netip.AddrPort
	file    backendsFile // guarded by Server.reloadMu
	dns     discoveryRun // guarded by Server.reloadMu
	// join opens and registers, on loop i, the listening socket of a loop
	// that an upgrade's successor opens only when it takes over (see
	// joinGroups): loops from joinFrom on. Nil when there are none, and
	// once they are open. Run's goroutine only, after New.
	join func(i int) error
	// joinFrom stays set once they are open: until this process hands
	// them over, those loops' sockets are its alone (see drain); 0 when
	// there are none.
	joinFrom int
}

// discoveryRun is a service's DNS discovery: its configuration, which a
// reload may change, and the goroutine resolving it, if one runs.
type discoveryRun struct {
	cfg    discovery.Config
	cancel context.CancelFunc
	done   chan struct{}
	first  <-chan struct{} // closed after the watcher's first round
}

// loopProxy is what the lifecycle needs of a TCP or UDP proxy. Its methods
// run on the proxy's loop.
type loopProxy interface {
	Drain() <-chan struct{}
	CloseAll() int                    // ends what is left; returns how many connections or sessions
	CloseBackend(b *balancer.Backend) // --close-on-down
	ListenerFDs() []int
}

// New builds the server. On error everything acquired is released.
func New(cfg config.Config, log *zap.Logger, opts Options) (_ *Server, err error) {
	s := &Server{
		cfg:      cfg,
		opts:     opts,
		upgraded: make(chan struct{}),
		stopping: make(chan struct{}),
		inherit:  opts.Inherited.Sockets,
		log:      log,
		limiter:  tcpproxy.NewLimiter(cfg.MaxConns),
		sessions: udpproxy.NewSessionLimiter(cfg.UDPMaxSessions, cfg.Workers),
		ready:    make(chan struct{}),
		registry: prometheus.NewRegistry(),
		// An upgrade's successor (told to report readiness) does not
		// own its backends' states until it has taken over.
		handingOver: opts.OnReady != nil,
	}
	for _, so := range opts.Inherited.Sockets {
		if a, err := netip.ParseAddrPort(so.Addr); err == nil && so.Kind == handoff.KindListener {
			s.handedOver = append(s.handedOver, protoAddr{so.Proto, a})
		}
	}
	s.checkDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sluice_health_check_duration_seconds",
		Help:    "Duration of active health checks.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"service", "backend", "result"})
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	// A busy loop keeps its P while it waits in epoll (see loop.wait); one
	// P more leaves room for health checks, the admin endpoint and the GC.
	if n := cfg.Workers + 1; runtime.GOMAXPROCS(0) < n {
		runtime.GOMAXPROCS(n)
	}
	for i := 0; i < cfg.Workers; i++ {
		l, err := loop.New()
		if err != nil {
			return nil, fmt.Errorf("create event loop: %w", err)
		}
		s.loops = append(s.loops, l)
	}
	for _, sc := range cfg.Services {
		if err := s.addService(sc); err != nil {
			return nil, err
		}
	}
	defer s.closeUnclaimed()
	if err := s.startFirewall(); err != nil {
		return nil, err
	}
	s.registry.MustRegister(s.checkDur, &collector{s: s})
	if cfg.AdminAddr.IsValid() {
		var svcs []*balancer.Service
		for _, sv := range s.services {
			svcs = append(svcs, sv.bal)
		}
		h := admin.Handler(admin.Deps{Services: svcs, Listening: s.isListening, Gatherer: s.registry, Hold: s.holdStates}, log.Named("admin"))
		s.admin, err = admin.Listen(cfg.AdminAddr, s.claim(handoff.KindAdmin, "", "", cfg.AdminAddr), h, log.Named("admin"))
		if err != nil {
			return nil, fmt.Errorf("admin endpoint: %w", err)
		}
	}
	return s, nil
}

func (s *Server) addService(sc config.Service) error {
	sv := &service{cfg: sc, dns: discoveryRun{cfg: sc.DNS}}
	static := sc.Backends
	var fileSpecs []balancer.Spec
	if sc.BackendsFile != "" {
		specs, err := config.ReadBackendsFile(sc.BackendsFile)
		if err != nil {
			return fmt.Errorf("service %s: backends file %s: %w", sc.Name, sc.BackendsFile, err)
		}
		fileSpecs = specs
		sv.file = backendsFile{path: sc.BackendsFile, stamp: stampOf(sc.BackendsFile)}
	}
	checker, err := health.NewCheckerLog(sc.Health, s.log.Named("health").With(zap.String("service", sc.Name)))
	if err != nil {
		return fmt.Errorf("service %s: %w", sc.Name, err)
	}
	name := sc.Name
	series := &checkSeries{vec: s.checkDur, service: name, seen: map[netip.AddrPort]bool{}}
	sv.monitor = health.NewMonitor(sc.Health, checker, func(addr netip.AddrPort, up bool, r health.Result) {
		res := balancer.CheckResult{Time: r.Time, OK: r.Err == nil, Duration: r.Duration}
		label := "ok"
		if r.Err != nil {
			res.Error = r.Err.Error()
			label = "fail"
		}
		series.observe(addr, label, r.Duration)
		sv.bal.SetHealth(addr, up, res)
	})
	hooks := balancer.Hooks{
		Members: func(addrs []netip.AddrPort, down map[netip.AddrPort]bool) {
			sv.monitor.Sync(addrs, down)
			series.prune(addrs)
			s.refreshUDP(sv)
		},
		Ejected: sv.monitor.ForceDown,
	}
	if sc.CloseOnDown {
		hooks.Down = func(b *balancer.Backend) { s.closeBackend(sv, b) }
	}
	// The predecessor's drains and verdicts apply before the first
	// snapshot, and before the first Members call starts the checks (from
	// the verdicts).
	inherited := s.inheritedStates(sc, checker != nil)
	sv.bal, err = balancer.NewService(balancer.ServiceConfig{
		Name:        sc.Name,
		Loops:       len(s.loops),
		PassiveFall: sc.PassiveFall,
		Inherited:   inherited,
	}, static, hooks, s.log.Named("balancer"))
	if err != nil {
		return fmt.Errorf("service %s: %w", sc.Name, err)
	}
	if len(inherited) > 0 {
		drained, down := 0, 0
		for _, st := range inherited {
			if st.Drained {
				drained++
			}
			if st.Down {
				down++
			}
		}
		s.log.Info("backend states taken over from the previous process", zap.String("service", sc.Name),
			zap.Int("backends", len(inherited)), zap.Int("drained", drained), zap.Int("down", down))
	}
	if fileSpecs != nil {
		if err := sv.bal.SetSource(balancer.SourceFile, fileSpecs); err != nil {
			return fmt.Errorf("service %s: %w", sc.Name, err)
		}
	}
	s.services = append(s.services, sv)
	if sc.Proto == "udp" {
		return s.addUDP(sv)
	}
	pc := sc.Proxy
	if pc.AcceptProxy && len(s.cfg.Firewall.Ifaces) > 0 {
		pc.ProxiedRules = &s.proxied
	}
	pc.Pool.PipeSize = s.cfg.PipeSize
	pc.Pool.MaxPipes = s.cfg.MaxPipes / len(s.cfg.Services)
	pools := 0 // one per TCP service on each loop
	for _, c := range s.cfg.Services {
		if c.Proto != "udp" {
			pools += len(s.loops)
		}
	}
	pc.Pool.MaxIdle = min(splice.IdleFor(pc.Pool.PipeSize, pools), pc.Pool.MaxPipes)
	s.idlePipes = pc.Pool.MaxIdle
	for i, l := range s.loops {
		p := tcpproxy.New(l, i, pc, sv.bal, s.limiter, s.log.Named("tcp").With(zap.String("service", sc.Name)))
		sv.proxies = append(sv.proxies, p)
		sv.each = append(sv.each, p)
	}
	tcpproxy.Group(sv.proxies)
	extra, err := s.openListeners(sv,
		func(a netip.AddrPort) (int, netip.AddrPort, error) { return tcpproxy.Listen(a, pc.Backlog) },
		func(i, fd int) error { return sv.proxies[i].Listen(fd) })
	if err != nil {
		return err
	}
	// More inherited sockets than loops (the old process had more
	// workers): every one keeps being served, some loops take two.
	for i, fd := range extra {
		if err := sv.proxies[i%len(sv.proxies)].Listen(fd); err != nil {
			for _, fd := range extra[i:] {
				unix.Close(fd)
			}
			return fmt.Errorf("service %s: register listener: %w", sc.Name, err)
		}
	}
	return nil
}

// openListeners gives each loop a listening socket for sv and sets
// sv.addr: the sockets handed over by the process this one replaces come
// first (a new socket would miss the connections waiting in their queues),
// then new ones made by bind; with port 0 every loop binds the port the
// first one got. listen registers socket i with loop i's proxy; the loops
// are not running yet, so that is safe from here (sv.join calls bind and
// listen on loop i). Inherited sockets beyond
// the loop count are returned for the caller to place or close.
//
// An upgrade's successor with more loops than sockets handed over opens
// the others' only when it takes over (see joinGroups): bound now, they
// would join the handed-over sockets' SO_REUSEPORT group, and the kernel
// would give them a share of the new connections (of the clients'
// datagrams) while the predecessor still serves. A successor that stops
// or fails before it takes over would then reset the connections waiting
// in their queues, and drop those datagrams, when it closed them.
func (s *Server) openListeners(sv *service, bind func(netip.AddrPort) (int, netip.AddrPort, error), listen func(i, fd int) error) ([]int, error) {
	sc := sv.cfg
	name := sc.Name
	if was := s.renamedFrom(sc); was != "" {
		s.log.Info("taking over the listening sockets of a renamed service",
			zap.String("service", sc.Name), zap.String("was", was), zap.String("addr", sc.Listen.String()))
		name = was
	}
	inherited := s.claimAll(handoff.KindListener, name, sc.Proto, sc.Listen)
	addr := sc.Listen
	if len(inherited) == 0 && !s.ownListener(sv, addr) && addr.Port() != 0 {
		// New sockets only, and not beside sluice's own: those sockets
		// are this process's or its predecessor's. The probe and the
		// binds hold the port's lock, so that another sluice cannot
		// probe in between.
		release, err := bindLock(sc.Proto, addr.Port())
		if err != nil {
			s.log.Warn("probing the listening port without its lock", zap.String("service", sc.Name), zap.Error(err))
		}
		defer release()
		if err := checkFree(sc.Proto, addr); err != nil {
			return nil, fmt.Errorf("service %s: %w", sc.Name, err)
		}
	}
	loops := len(s.loops)
	if s.opts.OnReady != nil && len(inherited) > 0 && len(inherited) < loops {
		loops = len(inherited) // the others' when it takes over
	}
	for i := range loops {
		var fd int
		if i < len(inherited) {
			fd = inherited[i]
			if bound, err := tcpproxy.BoundAddr(fd); err == nil {
				addr = bound
			}
		} else {
			var bound netip.AddrPort
			var err error
			if fd, bound, err = bind(addr); err != nil {
				closeAll(inherited[i:])
				return nil, fmt.Errorf("service %s: %w", sc.Name, err)
			}
			addr = bound
		}
		if err := listen(i, fd); err != nil {
			unix.Close(fd)
			closeAll(inherited[min(i+1, len(inherited)):])
			return nil, fmt.Errorf("service %s: register listener: %w", sc.Name, err)
		}
	}
	sv.addr = addr
	if loops < len(s.loops) {
		sv.joinFrom = loops
		sv.join = func(i int) error {
			fd, _, err := bind(addr)
			if err != nil {
				return err
			}
			if err := listen(i, fd); err != nil {
				unix.Close(fd)
				return fmt.Errorf("register listener: %w", err)
			}
			return nil
		}
	}
	return inherited[min(len(inherited), len(s.loops)):], nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// closeBackend resets b's connections, or ends its UDP sessions, on every
// loop (--close-on-down).
func (s *Server) closeBackend(sv *service, b *balancer.Backend) {
	for i, l := range s.loops {
		p := sv.each[i]
		l.Submit(func() { p.CloseBackend(b) })
	}
}

// release frees what New acquired, for a failed New.
func (s *Server) release() {
	if s.fw != nil {
		s.fw.Close()
	}
	for _, sv := range s.services {
		for _, p := range sv.each {
			p.Drain() // closes a TCP proxy's listeners; the loop has not run
			p.CloseAll()
		}
	}
	for _, l := range s.loops {
		l.Close()
	}
	s.loops = nil
}

// Addr returns the first service's bound listening address.
func (s *Server) Addr() netip.AddrPort { return s.services[0].addr }

// ServiceAddr returns the bound address of the named service.
func (s *Server) ServiceAddr(name string) netip.AddrPort {
	for _, sv := range s.services {
		if sv.cfg.Name == name {
			return sv.addr
		}
	}
	return netip.AddrPort{}
}

// Service returns the named service's balancer, or nil.
func (s *Server) Service(name string) *balancer.Service {
	for _, sv := range s.services {
		if sv.cfg.Name == name {
			return sv.bal
		}
	}
	return nil
}

// AdminAddr returns the admin endpoint's address, "" when off.
func (s *Server) AdminAddr() string {
	if s.admin == nil {
		return ""
	}
	return s.admin.Addr().String()
}

// Ready is closed once the loops are running.
func (s *Server) Ready() <-chan struct{} { return s.ready }

func (s *Server) isListening() bool {
	return s.listening.Load()
}

// Totals are the proxies' counters summed over loops and services.
type Totals struct {
	Accepted, Closed, ConnectFailures, ConnectTimeouts, NoBackend, Resets,
	IdleTimeouts, AcceptErrors, BytesUp, BytesDown, SplicedBytes uint64
}

// Stats sums the proxies' counters.
func (s *Server) Stats() Totals {
	var t Totals
	for _, sv := range s.services {
		for _, p := range sv.proxies {
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
	}
	return t
}

// Run serves until ctx is done, then stops accepting, lets open connections
// finish for up to the drain timeout, resets the rest, and returns. SIGHUP
// rereads backends files and the config file's backend lists. It returns
// nil after a clean drain.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, len(s.loops))
	for _, l := range s.loops {
		s.wg.Add(1)
		go s.runLoop(l, errc)
	}
	bg, stopBG := context.WithCancel(context.Background())
	s.reloadMu.Lock()
	s.bg = bg
	for _, sv := range s.services {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); sv.bal.Run(bg) }()
		sv.bal.NotifyMembers() // starts the health checks
		s.startDiscovery(sv)
	}
	s.reloadMu.Unlock()
	s.wg.Add(1)
	go s.watchFiles(bg)
	s.hup = make(chan os.Signal, 1)
	signal.Notify(s.hup, syscall.SIGHUP, syscall.SIGUSR2)
	s.wg.Add(1)
	go s.onSignals(bg, s.hup)
	if s.admin != nil {
		s.admin.Start()
	}
	s.listening.Store(true)
	close(s.ready)
	s.logStart()

	// A stop that came first (a SIGTERM to an upgrade's successor while
	// it started) is not readiness. The predecessor is told, and keeps
	// serving; this process drains the connections it accepted on the
	// listening sockets they share, like any stop, and gives up the admin
	// socket they share at once (below).
	stoppedFirst, tookOver := false, false
	if s.opts.OnReady != nil {
		s.awaitDiscovery(ctx)
		if ctx.Err() == nil {
			// Committed to taking over: the states are this process's,
			// and every loop listens.
			s.joinGroups()
			s.setHandingOver(false)
			tookOver = true
			s.opts.OnReady()
		} else {
			stoppedFirst = true
			s.log.Info("stopped before taking over: the previous process keeps serving; draining the connections this one accepted")
			if s.opts.Stopped != nil {
				s.opts.Stopped()
			}
		}
	}
	var runErr error
	select {
	case <-ctx.Done():
	case <-s.upgraded:
	case runErr = <-errc:
		s.log.Error("event loop failed", zap.Error(runErr))
	}
	s.upMu.Lock()
	upgraded := false
	select {
	case <-s.upgraded:
		upgraded = true
	default:
		// An upgrade under way is abandoned, its successor stopped.
		close(s.stopping)
	}
	s.upMu.Unlock()
	if upgraded {
		s.log.Info("upgrade done: the new process serves; draining this one")
	}
	// After an upgrade the admin socket is shared with the successor, and
	// for a successor stopped before it took over, with the predecessor:
	// stop accepting on it at once, or probes and drains would meet this
	// draining process (the requests it is answering finish). s.admin
	// itself stays: an Upgrade under way may read it.
	adminOpen := s.admin != nil
	if adminOpen && (upgraded || stoppedFirst) {
		s.admin.Close()
		adminOpen = false
	}
	s.listening.Store(false)
	signal.Stop(s.hup)
	// Draining, this process neither reloads nor upgrades, but a SIGHUP
	// (a `pkill -HUP sluice` meant for the successor) must not kill it
	// and reset the connections it is finishing.
	signal.Ignore(syscall.SIGHUP, syscall.SIGUSR2)
	// After an upgrade, and in a successor stopped before it took over,
	// another process reads the UDP sockets too; so does the predecessor
	// of a successor that took over as the predecessor was stopped (it
	// stops this one, see Upgrade).
	shared := upgraded || stoppedFirst
	kept := !shared && tookOver && s.hasUDP() && s.opts.Kept != nil && s.opts.Kept()
	if kept {
		s.log.Info("the previous process was stopped before it saw this one take over: it drains reading the UDP sockets the two share, and this one leaves them to it and closes those it opened at the takeover")
	}
	reset, ended := s.drain(shared || kept, kept)
	stopBG()
	for _, sv := range s.services {
		sv.monitor.Close()
	}
	if adminOpen {
		s.admin.Close()
	}
	s.stopFirewall()
	s.stopLoops()
	s.endReapers()
	t := s.Stats()
	s.log.Info("sluice stopped",
		zap.Uint64("connections", t.Accepted),
		zap.Uint64("bytes_up", t.BytesUp),
		zap.Uint64("bytes_down", t.BytesDown),
		zap.Uint64("connect_failures", t.ConnectFailures+t.ConnectTimeouts),
		zap.Uint64("resets", t.Resets),
		zap.Int("reset_at_drain_timeout", reset),
		zap.Int("udp_sessions_ended_at_drain_timeout", ended))
	return runErr
}

func (s *Server) logStart() {
	s.log.Info("sluice started",
		zap.Int("workers", s.cfg.Workers),
		zap.Int("max_conns", s.cfg.MaxConns),
		zap.Int("pipe_size", s.cfg.PipeSize),
		zap.Int("pipes_per_loop", s.cfg.MaxPipes),
		zap.Int("idle_pipes_per_pool", s.idlePipes),
		zap.Duration("drain_timeout", s.cfg.DrainTimeout),
		zap.String("admin", s.AdminAddr()))
	if s.idlePipes > 0 { // a TCP service splices
		if got, err := splice.Probe(s.cfg.PipeSize); err == nil && got < s.cfg.PipeSize {
			s.log.Warn("splice pipes are smaller than --pipe-size: this process may not make them that large (above fs.pipe-max-size it needs CAP_SYS_RESOURCE; an unprivileged user over fs.pipe-user-pages-soft gets small pipes); see docs/production.md, Pipes and memory",
				zap.Int("pipe_size", s.cfg.PipeSize), zap.Int("pipe_size_given", got))
		}
	}
	for _, sv := range s.services {
		c := sv.cfg
		s.log.Info("service",
			zap.String("name", c.Name),
			zap.String("proto", c.Proto),
			zap.Stringer("listen", sv.addr),
			zap.Stringers("backends", sv.bal.Members()),
			zap.String("backends_file", c.BackendsFile),
			zap.Int("dns_targets", len(c.DNS.Targets)),
			zap.Stringer("hash_key", c.Proxy.HashKey),
			zap.Float64("hash_balance_factor", c.Proxy.BalanceFactor),
			zap.Stringer("splice", c.Proxy.Splice),
			zap.Duration("connect_timeout", c.Proxy.ConnectTimeout),
			zap.Int("connect_retries", c.Proxy.ConnectRetries),
			zap.Duration("idle_timeout", c.Proxy.IdleTimeout),
			zap.String("health_check", c.Health.Kind),
			zap.Duration("health_interval", c.Health.Interval),
			zap.Int("passive_fall", c.PassiveFall),
			zap.Bool("close_on_down", c.CloseOnDown))
	}
}

// startDiscovery starts resolving sv.dns.cfg's names, if it has any and
// none runs, once Run has begun. Caller holds reloadMu.
func (s *Server) startDiscovery(sv *service) {
	if s.bg == nil || sv.dns.cancel != nil || len(sv.dns.cfg.Targets) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(s.bg)
	done := make(chan struct{})
	w := discovery.New(sv.dns.cfg, s.log.Named("discovery").With(zap.String("service", sv.cfg.Name)))
	sv.dns.cancel, sv.dns.done, sv.dns.first = cancel, done, w.FirstRound()
	s.wg.Add(1)
	go func() {
		defer close(done)
		s.discover(ctx, sv, w)
	}()
}

// awaitDiscovery waits until every service's DNS discovery has had its
// first round, or its timeout has passed, or ctx is done: an upgrade's
// successor must not tell its predecessor that it serves while a service
// that has only DNS backends still has none. Run calls it before the
// loops take connections from it alone.
//
// A reload meanwhile may stop a discovery before its first round (new
// names, or none): the discovery that replaces it, if any, is waited for
// instead, within the same deadline.
func (s *Server) awaitDiscovery(ctx context.Context) {
	// A round's lookups are bounded by the DNS timeout (default 5s;
	// a reload keeps it); what is left of the upgrade's 30s is ample for
	// the rest.
	s.reloadMu.Lock()
	wait := discovery.DefaultConfig().Timeout
	for _, sv := range s.services {
		wait = max(wait, sv.dns.cfg.Timeout)
	}
	s.reloadMu.Unlock()
	var deadline <-chan time.Time
	for {
		first, done := s.pendingDiscovery()
		if first == nil {
			return
		}
		if deadline == nil {
			t := time.NewTimer(wait + time.Second)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-first:
		case <-done: // stopped by a reload: look again
		case <-deadline:
			s.log.Warn("DNS discovery has not answered yet: reporting ready without its backends")
			return
		case <-ctx.Done():
			return
		}
	}
}

// pendingDiscovery returns the first-round channel of a service's running
// DNS discovery that has not had its first round yet, and the channel
// closed when that discovery stops; nil when there is none.
func (s *Server) pendingDiscovery() (first, done <-chan struct{}) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	for _, sv := range s.services {
		if sv.dns.first == nil || sv.dns.done == nil {
			continue
		}
		select {
		case <-sv.dns.first:
			continue
		case <-sv.dns.done:
			continue
		default:
		}
		return sv.dns.first, sv.dns.done
	}
	return nil, nil
}

// stopDiscovery stops sv's DNS discovery and waits for it. The backends it
// found stay. Caller holds reloadMu.
func (s *Server) stopDiscovery(sv *service) {
	if sv.dns.cancel != nil {
		sv.dns.cancel()
		<-sv.dns.done
		sv.dns.cancel, sv.dns.done = nil, nil
	}
}

// discover merges the backends w finds into sv's membership until ctx
// ends.
func (s *Server) discover(ctx context.Context, sv *service, w *discovery.Watcher) {
	defer s.wg.Done()
	w.Run(ctx, func(found []discovery.Backend) {
		specs := make([]balancer.Spec, len(found))
		for i, b := range found {
			specs[i] = balancer.Spec{Addr: b.Addr, Weight: b.Weight}
		}
		if err := sv.bal.SetSource(balancer.SourceDNS, specs); err != nil {
			s.log.Error("apply discovered backends", zap.String("service", sv.cfg.Name), zap.Error(err))
		}
	})
}

func (s *Server) runLoop(l *loop.Loop, errc chan<- error) {
	defer s.wg.Done()
	if err := l.Run(); err != nil && !errors.Is(err, loop.ErrStopped) {
		errc <- err
	}
}

func (s *Server) onSignals(ctx context.Context, hup <-chan os.Signal) {
	defer s.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-hup:
			if sig == syscall.SIGUSR2 {
				s.log.Info("SIGUSR2: upgrading")
				if err := s.Upgrade(); errors.Is(err, errStopping) {
					s.log.Warn("upgrade abandoned: this process is stopping", zap.Error(err))
				} else if errors.Is(err, errSuccessorStopped) {
					s.log.Warn("upgrade abandoned: the new process was stopped; this process keeps serving", zap.Error(err))
				} else if errors.Is(err, errHandingOver) {
					s.log.Warn("upgrade refused", zap.Error(err))
				} else if err != nil {
					s.log.Error("upgrade failed, this process keeps serving", zap.Error(err))
				}
				continue
			}
			s.log.Info("SIGHUP: reloading the configuration")
			s.Reload()
		}
	}
}

// drain stops every listener and waits for open connections to finish and
// UDP sessions to go idle, up to the drain timeout; then it resets the
// connections left, ends the sessions left, and returns how many of each.
// A UDP service's sockets stay open, for its sessions' replies; shared
// (another process reads them too: an upgrade's successor, or the
// predecessor of a successor stopped before it took over), they are no
// longer read, and otherwise they are, for the open sessions' clients.
// kept (the predecessor of a successor that took over reads them, see
// Options.Kept): the sockets this process opened at its takeover
// (joinGroups), which the predecessor has not, are closed at once with
// their sessions, as for a successor of an older release: open and unread
// they would keep their share of the clients' datagrams, the
// predecessor's sessions' among them, for the whole drain.
func (s *Server) drain(shared, kept bool) (reset, ended int) {
	var chans []<-chan struct{}
	for _, sv := range s.services {
		udp := sv.cfg.Proto == "udp"
		for i, p := range sv.each {
			closeNow := udp && (s.closeUDPAtDrain || kept && sv.joinFrom > 0 && i >= sv.joinFrom)
			drain := p.Drain
			if udp && !shared {
				drain = sv.udp[i].DrainAlone
			}
			ch := make(chan (<-chan struct{}), 1)
			if !s.loops[i].Submit(func() {
				if closeNow {
					p.CloseAll()
				}
				ch <- drain()
			}) {
				continue
			}
			chans = append(chans, <-ch)
		}
	}
	if open, sessions := s.limiter.Open(), s.sessions.Open(); open > 0 || sessions > 0 {
		s.log.Info("draining connections", zap.Int64("open", open), zap.Int64("udp_sessions", sessions), zap.Duration("timeout", s.cfg.DrainTimeout))
	}
	deadline := time.NewTimer(s.cfg.DrainTimeout)
	defer deadline.Stop()
wait:
	for _, ch := range chans {
		select {
		case <-ch:
		case <-deadline.C:
			s.logCensus()
			break wait
		}
	}
	return s.closeAll()
}

// logCensus logs what the connections left at a drain timeout are doing.
func (s *Server) logCensus() {
	var connecting, established, half int
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, sv := range s.services {
		for i, p := range sv.proxies {
			wg.Add(1)
			if !s.loops[i].Submit(func() {
				c, e, h := p.Census()
				mu.Lock()
				connecting, established, half = connecting+c, established+e, half+h
				mu.Unlock()
				wg.Done()
			}) {
				wg.Done()
			}
		}
	}
	wg.Wait()
	s.log.Warn("drain timeout, resetting open connections",
		zap.Int("connecting", connecting), zap.Int("established", established), zap.Int("half_closed", half),
		zap.Int64("udp_sessions", s.sessions.Open()))
}

// closeAll resets every connection left, ends every UDP session left and
// closes the UDP sockets, releases the pipe pools, waits until each loop
// has done so, and returns how many connections and sessions it cut.
func (s *Server) closeAll() (reset, ended int) {
	var wg sync.WaitGroup
	var conns, sessions atomic.Int64
	for _, sv := range s.services {
		cut := &conns
		if sv.cfg.Proto == "udp" {
			cut = &sessions
		}
		for i, p := range sv.each {
			wg.Add(1)
			if !s.loops[i].Submit(func() { cut.Add(int64(p.CloseAll())); wg.Done() }) {
				wg.Done()
			}
		}
	}
	wg.Wait()
	return int(conns.Load()), int(sessions.Load())
}

func (s *Server) stopLoops() {
	for _, l := range s.loops {
		l.Stop()
	}
	s.wg.Wait()
	for _, l := range s.loops {
		l.Close()
	}
	s.loops = nil
}
