package balancer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Source names where a backend was configured. When an address comes from
// several sources, the weight of the first in this order wins.
type Source int

const (
	SourceStatic Source = iota // --backend flags or backend lines of the config file
	SourceFile                 // --backends-file
	SourceDNS                  // DNS discovery
	numSources
)

func (s Source) String() string {
	switch s {
	case SourceStatic:
		return "static"
	case SourceFile:
		return "file"
	case SourceDNS:
		return "dns"
	}
	return fmt.Sprintf("Source(%d)", int(s))
}

// State is a backend's state as the balancer applies it.
type State string

const (
	StateUp       State = "up"       // healthy and taking new connections
	StateDown     State = "down"     // failed its health checks or was ejected passively
	StateDraining State = "draining" // an operator drained it: no new connections
	StateNoWeight State = "no-weight"
)

// CheckResult is the outcome of one active health check.
type CheckResult struct {
	Time     time.Time     `json:"time"`
	OK       bool          `json:"ok"`
	Error    string        `json:"error,omitempty"` // empty when OK
	Duration time.Duration `json:"duration_ns"`
}

// BackendInfo describes a backend for the admin API.
type BackendInfo struct {
	Address           string       `json:"address"`
	Weight            int          `json:"weight"`
	State             State        `json:"state"`
	Sources           []string     `json:"sources"`
	ActiveConnections int64        `json:"active_connections"`
	Connections       uint64       `json:"connections_total"`
	ConnectErrors     uint64       `json:"connect_errors_total"`
	LastCheck         *CheckResult `json:"last_check,omitempty"`
}

// AbsentInfo describes, for the admin API, an address that is not a member
// of the service but whose drain it remembers: the backend left drained,
// and returns drained if it comes back before DrainUntil, unless the
// address is enabled first.
type AbsentInfo struct {
	Address string `json:"address"`
	// State is always StateDraining.
	State State `json:"state"`
	// Left is when the backend left the service (for one inherited from
	// an upgrade as a member, the handover).
	Left time.Time `json:"left"`
	// DrainUntil is when the drain is forgotten: Left plus 24 hours.
	DrainUntil time.Time `json:"drain_until"`
}

// ServiceConfig configures a Service.
type ServiceConfig struct {
	// Name labels the service in logs and metrics.
	Name string
	// Loops is the number of event loops (for per-loop counters).
	Loops int
	// TableSize is the Maglev table size (0: maglev.DefaultSize).
	TableSize int
	// PassiveFall ejects a backend after this many consecutive failed
	// connects on the data path, until its active check brings it back;
	// 0 disables passive ejection.
	PassiveFall int
	// Inherited is the state to start from: what the service of this
	// name knew in the process this one replaces (an upgrade), as its
	// States returned it. A member starts drained and down as it was; a
	// state of an address that is not a member is remembered as if the
	// backend had left (a drain until enabled, a down verdict for
	// healthMemory from its leaving), for when it is added.
	Inherited []BackendState
}

// BackendState is what a service knows of a backend beyond its
// configuration: for a successor process to start from.
type BackendState struct {
	Addr    netip.AddrPort
	Drained bool // an operator drained it
	// Down is the health verdict: false is up. Active checks or passive
	// ejection took it down.
	Down      bool
	LastCheck *CheckResult // nil before the first check
	// Left is when the backend left the service, for one remembered
	// after it left; zero for a member.
	Left time.Time
}

// Hooks let the server react to state changes. Each is called without the
// service's lock held, from the goroutine that made the change; nil hooks
// are skipped.
type Hooks struct {
	// Members is called with the full member list after it changes, so the
	// health monitor can start and stop its checks, and with the members
	// that are down for a health reason, so that the checks of a backend
	// that returns down start from that verdict. Calls do not overlap.
	Members func(addrs []netip.AddrPort, down map[netip.AddrPort]bool)
	// Ejected is called when the data path ejects a backend, before the
	// backend is marked down, so the health monitor can reset it to down
	// (it must pass rise checks to return). It may wait for a health
	// report under way (SetHealth), and must: once it returns, no check
	// that started before the call may report the backend up. Calls do
	// not overlap those of Members.
	Ejected func(addr netip.AddrPort)
	// Down is called for each backend that left the usable set for a
	// health reason (for --close-on-down).
	Down func(b *Backend)
}

// ErrUnknownBackend is returned for an address that is not a member.
var ErrUnknownBackend = errors.New("no such backend")

type member struct {
	b         *Backend
	sources   [numSources]bool
	healthy   bool // active checks (or passive ejection) say so
	drained   bool // an operator drained it
	lastCheck *CheckResult
}

// healthMemory is how long a service remembers that a backend which left
// it was down: one that returns within it (DNS dropped it for a round, a
// reload re-added it) starts down, and its checks must pass Rise times.
// One that returns later is taken for a new instance at the same address
// and starts up, as every new backend does.
const healthMemory = 5 * time.Minute

// drainMemory is how long a service remembers that a backend which left
// it was drained, unless the operator enables the address first: long
// enough for a DNS round or a reload to bring it back, short enough that
// a new instance given a recycled address (a pod's) does not start
// drained days later. maxDeparted bounds what is remembered: past it, the
// longest gone is forgotten first.
const (
	drainMemory = 24 * time.Hour
	maxDeparted = 4096
)

// at returns what d still says at now: its drain for drainMemory, its
// down verdict for healthMemory.
func (d departed) at(now time.Time) (drained, down bool) {
	age := now.Sub(d.left)
	return d.drained && age < drainMemory, d.down && age < healthMemory
}

// remembered reports whether d still says anything at now.
func (d departed) remembered(now time.Time) bool {
	drained, down := d.at(now)
	return drained || down
}

// departed is what a service remembers of a backend that left it drained
// or down.
type departed struct {
	drained   bool
	down      bool
	lastCheck *CheckResult
	left      time.Time
}

func (m *member) state() State {
	switch {
	case m.drained:
		return StateDraining
	case !m.healthy:
		return StateDown
	case m.b.Weight == 0:
		return StateNoWeight
	}
	return StateUp
}

// Service owns the backend membership and states of one service and
// publishes the usable set to its Pool. Safe for concurrent use: every
// method takes the lock, except ReportConnect, which the event loops call.
type Service struct {
	cfg   ServiceConfig
	log   *zap.Logger
	pool  *Pool
	hooks Hooks
	eject chan *Backend // passive ejections from the loops, handled by Run

	// hookMu orders the Members calls of concurrent SetSource calls (DNS
	// discovery, a reload): the last list the hook sees is the last one
	// made. An ejection holds it too, so the members do not change
	// between its Ejected call and the member's marking down. Taken
	// before mu.
	hookMu sync.Mutex
	// mu guards the fields below.
	mu      sync.Mutex
	sources [numSources][]Spec
	members map[netip.AddrPort]*member
	// departed are the backends that left drained, or down less than
	// healthMemory ago.
	departed map[netip.AddrPort]departed
	usable   int // backends in the published snapshot; -1 before the first
	// now is the clock of departures; time.Now but in tests.
	now func() time.Time
}

// NewService returns a service with the static backends and publishes its
// first snapshot. Every new backend starts up; health checks take it down.
// A backend that returns keeps its drain, and for a while its down verdict
// (see healthMemory), and so does one with an inherited state
// (cfg.Inherited).
func NewService(cfg ServiceConfig, static []Spec, hooks Hooks, log *zap.Logger) (*Service, error) {
	s := &Service{
		cfg:      cfg,
		log:      log,
		hooks:    hooks,
		pool:     &Pool{},
		eject:    make(chan *Backend, 64),
		members:  make(map[netip.AddrPort]*member),
		departed: make(map[netip.AddrPort]departed),
		usable:   -1,
		now:      time.Now,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inherit(cfg.Inherited)
	s.sources[SourceStatic] = static
	s.merge()
	for _, st := range cfg.Inherited {
		// An up member keeps its last check too.
		if m := s.members[st.Addr]; m != nil && m.lastCheck == nil && st.Left.IsZero() {
			m.lastCheck = st.LastCheck
		}
	}
	if _, err := s.publish(); err != nil {
		return nil, err
	}
	return s, nil
}

// inherit records inherited states as departures, for merge to apply to
// the members and remember for the rest. Caller holds mu.
func (s *Service) inherit(states []BackendState) {
	now := s.now()
	for _, st := range states {
		if !st.Drained && !st.Down {
			continue
		}
		left := st.Left
		if left.IsZero() || left.After(now) {
			left = now // a member then: it leaves at the handover
		}
		s.departed[st.Addr] = departed{drained: st.Drained, down: st.Down, lastCheck: st.LastCheck, left: left}
	}
}

// States returns what the service knows of its backends beyond their
// configuration, for a successor process (ServiceConfig.Inherited): every
// member's drain, verdict and last check, and the backends remembered
// after they left drained, or down less than healthMemory ago. Sorted by
// address, members first.
func (s *Service) States() []BackendState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]BackendState, 0, len(s.members)+len(s.departed))
	for _, a := range s.addrsLocked() {
		m := s.members[a]
		out = append(out, BackendState{Addr: a, Drained: m.drained, Down: !m.healthy, LastCheck: m.lastCheck})
	}
	gone := make([]BackendState, 0, len(s.departed))
	now := s.now()
	for a, d := range s.departed {
		if drained, down := d.at(now); drained || down {
			gone = append(gone, BackendState{Addr: a, Drained: drained, Down: down, LastCheck: d.lastCheck, Left: d.left})
		}
	}
	slices.SortFunc(gone, func(a, b BackendState) int { return a.Addr.Compare(b.Addr) })
	return append(out, gone...)
}

// boundDeparted forgets the backends gone longest until at most
// maxDeparted are remembered. Caller holds mu.
func (s *Service) boundDeparted() {
	if len(s.departed) <= maxDeparted {
		return
	}
	addrs := make([]netip.AddrPort, 0, len(s.departed))
	for a := range s.departed {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, func(a, b netip.AddrPort) int { return s.departed[a].left.Compare(s.departed[b].left) })
	for _, a := range addrs[:len(addrs)-maxDeparted] {
		delete(s.departed, a)
	}
}

// Name returns the service's name.
func (s *Service) Name() string { return s.cfg.Name }

// Pool returns the pool the loops read snapshots from.
func (s *Service) Pool() *Pool { return s.pool }

// Run handles passive ejections from the loops until ctx is done.
func (s *Service) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-s.eject:
			s.ejectBackend(b)
		}
	}
}

// SetSource replaces the backends a source contributes. Addresses that stay
// keep their state and counters; removed ones leave the table, and their
// open connections finish undisturbed.
func (s *Service) SetSource(src Source, specs []Spec) error {
	return s.SetSources(map[Source][]Spec{src: specs})
}

// SetSources replaces the backend lists of several sources in one change,
// published once: a backend that moves from one source to another (a
// reload that turns a backends file into static lines) stays a member
// throughout, with its state and its connections' counts.
func (s *Service) SetSources(lists map[Source][]Spec) error {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.mu.Lock()
	for src, specs := range lists {
		s.sources[src] = slices.Clone(specs)
	}
	s.merge()
	down, err := s.publish()
	addrs, unhealthy := s.addrsLocked(), s.unhealthyLocked()
	s.mu.Unlock()
	s.notifyDown(down)
	if s.hooks.Members != nil {
		s.hooks.Members(addrs, unhealthy)
	}
	return err
}

// NotifyMembers calls the Members hook with the current members, as a
// change would: for the caller to start the health checks of the members
// it was created with.
func (s *Service) NotifyMembers() {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.mu.Lock()
	addrs, unhealthy := s.addrsLocked(), s.unhealthyLocked()
	s.mu.Unlock()
	if s.hooks.Members != nil {
		s.hooks.Members(addrs, unhealthy)
	}
}

// unhealthyLocked returns the members that are down for a health reason.
// Caller holds mu.
func (s *Service) unhealthyLocked() map[netip.AddrPort]bool {
	out := make(map[netip.AddrPort]bool)
	for a, m := range s.members {
		if !m.healthy {
			out[a] = true
		}
	}
	return out
}

// Members returns the member addresses, sorted.
func (s *Service) Members() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrsLocked()
}

func (s *Service) addrsLocked() []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(s.members))
	for a := range s.members {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out
}

// merge recomputes members from the sources, and remembers the backends
// that leave drained or down. Caller holds mu.
func (s *Service) merge() {
	now := s.now()
	for a, d := range s.departed {
		if !d.remembered(now) {
			delete(s.departed, a)
		}
	}
	defer s.boundDeparted()
	want := make(map[netip.AddrPort]*member)
	for src := Source(0); src < numSources; src++ {
		for _, sp := range s.sources[src] {
			if m := want[sp.Addr]; m != nil {
				m.sources[src] = true
				continue
			}
			old := s.members[sp.Addr]
			m := &member{healthy: true}
			if old != nil {
				*m = *old
				m.sources = [numSources]bool{}
			} else if d, ok := s.departed[sp.Addr]; ok {
				drained, down := d.at(now)
				m.drained = drained
				if down {
					m.healthy, m.lastCheck = false, d.lastCheck
				}
				delete(s.departed, sp.Addr)
			}
			switch {
			case old == nil:
				m.b = NewBackend(sp, s.cfg.Loops)
			case old.b.Weight != sp.Weight:
				// A new weight makes a new Backend (snapshots are
				// immutable); it shares the old one's counters.
				s.log.Info("backend weight changed", zap.String("service", s.cfg.Name), zap.Stringer("backend", sp.Addr),
					zap.Int("from", old.b.Weight), zap.Int("to", sp.Weight))
				m.b = old.b.reweighted(sp.Weight)
			}
			m.sources[src] = true
			want[sp.Addr] = m
		}
	}
	for a, m := range s.members {
		if want[a] == nil {
			s.log.Info("backend removed", zap.String("service", s.cfg.Name), zap.Stringer("backend", a), zap.String("state", string(m.state())))
			if m.drained || !m.healthy {
				s.departed[a] = departed{drained: m.drained, down: !m.healthy, lastCheck: m.lastCheck, left: now}
			}
		}
	}
	for a, m := range want {
		if s.members[a] == nil {
			s.log.Info("backend added", zap.String("service", s.cfg.Name), zap.Stringer("backend", a), zap.Int("weight", m.b.Weight),
				zap.String("state", string(m.state())))
		}
	}
	s.members = want
}

// publish builds and stores the snapshot of usable backends. Caller holds
// mu. It returns the backends that were usable and are now down for a
// health reason, for the caller to pass to notifyDown once unlocked.
func (s *Service) publish() ([]*Backend, error) {
	var usable []*Backend
	for _, m := range s.members {
		if m.state() == StateUp {
			usable = append(usable, m.b)
		}
	}
	slices.SortFunc(usable, func(a, b *Backend) int { return a.Addr.Compare(b.Addr) })
	snap, err := NewSnapshot(usable, s.cfg.TableSize)
	if err != nil {
		return nil, err
	}
	snap.members = make(map[netip.AddrPort]*Backend, len(s.members))
	for addr, m := range s.members {
		snap.members[addr] = m.b
	}
	prev := s.pool.Load()
	s.pool.Store(snap)
	switch {
	case len(usable) == 0 && s.usable != 0:
		s.log.Error("no backend is up: new connections are refused", zap.String("service", s.cfg.Name), zap.Int("members", len(s.members)))
	case len(usable) > 0 && s.usable == 0:
		s.log.Info("backends available again", zap.String("service", s.cfg.Name), zap.Int("up", len(usable)))
	}
	s.usable = len(usable)
	var down []*Backend
	if prev != nil {
		for _, b := range prev.Backends {
			if m := s.members[b.Addr]; m != nil && m.b == b && !m.healthy {
				down = append(down, b)
			}
		}
	}
	return down, nil
}

func (s *Service) notifyDown(down []*Backend) {
	if s.hooks.Down == nil {
		return
	}
	for _, b := range down {
		s.hooks.Down(b)
	}
}

// SetHealth records an active check result and the check's rise/fall
// verdict for addr. A change of verdict republishes the table.
func (s *Service) SetHealth(addr netip.AddrPort, up bool, r CheckResult) {
	s.mu.Lock()
	m := s.members[addr]
	if m == nil {
		s.mu.Unlock()
		return
	}
	m.lastCheck = &r
	if m.healthy == up {
		s.mu.Unlock()
		return
	}
	m.healthy = up
	if up {
		m.b.failStreak.Store(0)
	}
	fields := []zap.Field{zap.String("service", s.cfg.Name), zap.Stringer("backend", addr)}
	if up {
		s.log.Info("backend up", fields...)
	} else {
		s.log.Warn("backend down", append(fields, zap.String("reason", r.Error))...)
	}
	down, err := s.publish()
	s.mu.Unlock()
	if err != nil {
		s.log.Error("rebuild backend table", zap.Error(err))
	}
	s.notifyDown(down)
}

// ReportConnect records a data-path connect outcome. Called by the event
// loops; it never blocks: an ejection is handed to Run.
func (s *Service) ReportConnect(b *Backend, ok bool) {
	if ok {
		if b.failStreak.Load() != 0 {
			b.failStreak.Store(0)
		}
		return
	}
	if s.cfg.PassiveFall > 0 && int(b.failStreak.Add(1)) == s.cfg.PassiveFall {
		select {
		case s.eject <- b:
		default: // Run is behind; the next failure streak will retry
			b.failStreak.Store(0)
		}
	}
}

// ejectBackend takes b down after a streak of failed connects, until
// Rise active checks started after the ejection pass.
func (s *Service) ejectBackend(b *Backend) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.mu.Lock()
	m := s.members[b.Addr]
	healthy := m != nil && m.healthy
	s.mu.Unlock()
	if !healthy {
		return
	}
	// First, and without mu: the hook waits for a report under way, which
	// takes mu in SetHealth. A check that started before the ejection and
	// says up lands now, not after the member is marked down, which it
	// would undo until the next check.
	if s.hooks.Ejected != nil {
		s.hooks.Ejected(b.Addr)
	}
	s.mu.Lock()
	m = s.members[b.Addr]
	if m == nil || !m.healthy {
		s.mu.Unlock()
		return // a report took it down meanwhile
	}
	m.healthy = false
	s.log.Warn("backend ejected after consecutive connect failures", zap.String("service", s.cfg.Name), zap.Stringer("backend", b.Addr), zap.Int("failures", s.cfg.PassiveFall))
	down, err := s.publish()
	s.mu.Unlock()
	if err != nil {
		s.log.Error("rebuild backend table", zap.Error(err))
	}
	s.notifyDown(down)
}

// SetDrained drains (no new connections; open ones finish) or re-enables a
// backend. For an address that left the service drained, and is listed by
// Absent, a drain changes nothing and an enable makes it return enabled;
// another address that is not a member is ErrUnknownBackend.
func (s *Service) SetDrained(addr netip.AddrPort, drained bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.members[addr]
	if d, ok := s.departed[addr]; ok && m == nil {
		if stillDrained, down := d.at(s.now()); stillDrained {
			if drained {
				return nil
			}
			d.drained = false
			s.departed[addr] = d
			if !down {
				delete(s.departed, addr)
			}
			s.log.Info("backend enabled, for when it returns", zap.String("service", s.cfg.Name), zap.Stringer("backend", addr))
			return nil
		}
	}
	if m == nil {
		return fmt.Errorf("%w: %s", ErrUnknownBackend, addr)
	}
	if m.drained == drained {
		return nil
	}
	m.drained = drained
	if drained {
		s.log.Info("backend draining", zap.String("service", s.cfg.Name), zap.Stringer("backend", addr))
	} else {
		s.log.Info("backend enabled", zap.String("service", s.cfg.Name), zap.Stringer("backend", addr))
	}
	_, err := s.publish() // a drain is not a health failure: nothing to close
	return err
}

// Info describes every member, sorted by address.
func (s *Service) Info() []BackendInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]BackendInfo, 0, len(s.members))
	for _, a := range s.addrsLocked() {
		m := s.members[a]
		c := m.b.Counts()
		bi := BackendInfo{
			Address:           a.String(),
			Weight:            m.b.Weight,
			State:             m.state(),
			ActiveConnections: m.b.Active.Load(),
			Connections:       c.Connections,
			ConnectErrors:     c.ConnectErrors,
			LastCheck:         m.lastCheck,
		}
		for src, on := range m.sources {
			if on {
				bi.Sources = append(bi.Sources, Source(src).String())
			}
		}
		out = append(out, bi)
	}
	return out
}

// Absent describes the addresses that are not members but whose drain the
// service remembers (see AbsentInfo), sorted by address. Info does not
// list them.
func (s *Service) Absent() []AbsentInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var addrs []netip.AddrPort
	for a, d := range s.departed {
		if drained, _ := d.at(now); drained {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.AddrPort.Compare)
	out := make([]AbsentInfo, 0, len(addrs))
	for _, a := range addrs {
		d := s.departed[a]
		out = append(out, AbsentInfo{Address: a.String(), State: StateDraining, Left: d.left, DrainUntil: d.left.Add(drainMemory)})
	}
	return out
}

// Backends returns the member backends (for metrics), sorted by address.
func (s *Service) Backends() []*Backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Backend, 0, len(s.members))
	for _, a := range s.addrsLocked() {
		out = append(out, s.members[a].b)
	}
	return out
}

// Up reports whether at least one backend is usable.
func (s *Service) Up() bool { return len(s.pool.Load().Backends) > 0 }
