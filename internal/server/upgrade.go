package server

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/handoff"
)

// upgradeEnv names the environment variable that tells a new sluice the fd
// of the unix socket its predecessor hands its sockets over on.
const upgradeEnv = "SLUICE_UPGRADE_FD"

// upgradeTimeout bounds the wait for a successor to start serving.
const upgradeTimeout = 30 * time.Second

// Options are the process-level inputs of a server beside its Config.
type Options struct {
	// Inherited is what the process this one replaces handed over.
	Inherited Inheritance
	// Executable is the path re-executed on SIGUSR2 (the binary at the
	// path this process was started from, possibly replaced since).
	Executable string
	// OnReady is called by Run once the loops run (for an upgrade's
	// successor: once its DNS-discovered services have their first
	// answer, see Run).
	OnReady func()
	// Stopped is called by Run instead of OnReady when it was told to
	// stop first: an upgrade's successor tells its predecessor, which
	// keeps serving and leaves it to drain the connections it accepted
	// meanwhile (on the listening sockets they share).
	Stopped func()
	// Kept is called by Run, stopping after OnReady, before it drains a
	// UDP service: it reports whether the predecessor was stopped before
	// it saw this process take over, and drains reading the sockets the
	// two share (handoff.Kept). This process then leaves them to it, as
	// after an upgrade: two readers would each take the other's
	// sessions' datagrams, and drop them. It may wait a few seconds.
	Kept func() bool
}

// Inheritance is what a predecessor hands over in an upgrade.
type Inheritance struct {
	// Sockets are its listening sockets, admin socket and XDP links; New
	// adopts those that match a configured service, the admin endpoint
	// or an interface, and closes the rest.
	Sockets []handoff.Socket
	// Backends are its services' drains and health verdicts. New starts
	// each service from those of the service of the same name, before
	// it serves (see balancer.ServiceConfig.Inherited). A predecessor
	// older than the handoff's version 2 sends none.
	Backends []handoff.Backend
}

// Inherit returns what a predecessor handed over and the socket to confirm
// readiness on, when this process was started by an upgrade; nothing and
// nil otherwise. The environment variable is cleared so that a later
// upgrade of this process does not see it.
func Inherit() (Inheritance, *net.UnixConn, error) {
	v := os.Getenv(upgradeEnv)
	if v == "" {
		return Inheritance{}, nil, nil
	}
	os.Unsetenv(upgradeEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return Inheritance{}, nil, fmt.Errorf("%s=%q: not a descriptor", upgradeEnv, v)
	}
	f := os.NewFile(uintptr(fd), "handoff")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return Inheritance{}, nil, fmt.Errorf("handoff socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return Inheritance{}, nil, errors.New("handoff socket is not a unix socket")
	}
	uc.SetDeadline(time.Now().Add(upgradeTimeout))
	socks, backends, err := handoff.Receive(uc)
	if err != nil {
		uc.Close()
		return Inheritance{}, nil, fmt.Errorf("receive sockets: %w", err)
	}
	uc.SetDeadline(time.Time{})
	return Inheritance{Sockets: socks, Backends: backends}, uc, nil
}

// inheritedStates returns the backend states the predecessor handed over
// for the service name. Without health checks (checked false) nothing
// would bring a backend up again, so only drains are taken.
func (s *Server) inheritedStates(sc config.Service, checked bool) []balancer.BackendState {
	name := sc.Name
	if was := s.renamedFrom(sc); was != "" {
		name = was // a renamed service keeps its backends' states too
	}
	var out []balancer.BackendState
	for _, b := range s.opts.Inherited.Backends {
		addr, err := netip.ParseAddrPort(b.Addr)
		if b.Service != name || err != nil {
			continue
		}
		st := balancer.BackendState{Addr: addr, Drained: b.Drained, Left: b.Left}
		if checked {
			st.Down = b.Down
			if c := b.LastCheck; c != nil {
				st.LastCheck = &balancer.CheckResult{Time: c.Time, OK: c.OK, Error: c.Error, Duration: c.Duration}
			}
		}
		out = append(out, st)
	}
	return out
}

// renamedFrom returns the name the predecessor gave sc, when sc was
// renamed between the releases: no listening socket was handed over under
// sc's name at sc's address, and one of sc's protocol was, bound there,
// under another. The service then takes those sockets (rather than bind
// new ones and leave the old ones, with the connections in their accept
// queues, to be closed) and its backends' states.
func (s *Server) renamedFrom(sc config.Service) string {
	if sc.Listen.Port() == 0 {
		return ""
	}
	was := ""
	for _, so := range s.inherit {
		if so.Kind != handoff.KindListener || so.Proto != sc.Proto || so.Addr != sc.Listen.String() {
			continue
		}
		if so.Service == sc.Name {
			return ""
		}
		was = so.Service
	}
	return was
}

// joinGroups opens, in an upgrade's successor that is taking over, the
// listening sockets of the loops its predecessor handed none over for
// (see openListeners), each on its loop, which accepts or reads from it
// at once. Until then the kernel has given the new connections and
// datagrams to the sockets handed over, which the predecessor serves too.
// A socket that cannot be opened is logged: its loop takes no new
// connections of that service, which the others serve.
func (s *Server) joinGroups() {
	for _, sv := range s.services {
		for i := sv.joinFrom; sv.join != nil && i < len(s.loops); i++ {
			errc := make(chan error, 1)
			if !s.loops[i].Submit(func() { errc <- sv.join(i) }) {
				continue
			}
			if err := <-errc; err != nil {
				s.log.Error("open a listening socket at the takeover: this loop takes none of the service's new connections",
					zap.String("service", sv.cfg.Name), zap.Int("loop", i), zap.Error(err))
			}
		}
		sv.join = nil
	}
}

// backendStates lists what every service knows of its backends, for the
// successor.
func (s *Server) backendStates() []handoff.Backend {
	var out []handoff.Backend
	for _, sv := range s.services {
		for _, st := range sv.bal.States() {
			b := handoff.Backend{Service: sv.cfg.Name, Addr: st.Addr.String(), Drained: st.Drained, Down: st.Down, Left: st.Left}
			if c := st.LastCheck; c != nil {
				b.LastCheck = &handoff.Check{Time: c.Time, OK: c.OK, Error: c.Error, Duration: c.Duration}
			}
			out = append(out, b)
		}
	}
	return out
}

// claimAll takes the inherited sockets of a kind for a service: same
// service name and protocol, and the configured address unless its port is
// 0 (then any address the old process bound for that service). A renamed
// service names itself by its old name (see renamedFrom).
func (s *Server) claimAll(kind, service, proto string, addr netip.AddrPort) []int {
	var fds []int
	rest := s.inherit[:0]
	for _, so := range s.inherit {
		if so.Kind == kind && so.Service == service && so.Proto == proto && (addr.Port() == 0 || so.Addr == addr.String()) {
			fds = append(fds, so.FD)
			continue
		}
		rest = append(rest, so)
	}
	s.inherit = rest
	return fds
}

// claim takes one inherited socket as a file, or returns nil.
func (s *Server) claim(kind, service, proto string, addr netip.AddrPort) *os.File {
	fds := s.claimAll(kind, service, proto, addr)
	for _, fd := range fds[min(1, len(fds)):] {
		unix.Close(fd)
	}
	if len(fds) == 0 {
		return nil
	}
	return os.NewFile(uintptr(fds[0]), "inherited")
}

// closeUnclaimed closes handed-over sockets that no service wanted (the
// configuration dropped them).
func (s *Server) closeUnclaimed() {
	for _, so := range s.inherit {
		s.log.Warn("closing a handed-over socket the configuration no longer uses", zap.String("kind", so.Kind), zap.String("service", so.Service), zap.String("addr", so.Addr))
		unix.Close(so.FD)
	}
	s.inherit = nil
}

var (
	// errStopping is Upgrade's error when Run stopped (SIGTERM) before
	// the successor took over.
	errStopping = errors.New("this process is stopping")
	// errSuccessorStopped is Upgrade's error when the successor was
	// stopped (SIGTERM) before it took over.
	errSuccessorStopped = errors.New("the new process was stopped before it took over")
	// errHandingOver is Upgrade's error when the backends' states are
	// being handed over already.
	errHandingOver = errors.New("an upgrade is under way, or this process has not taken over from the one it replaces yet")
)

// Upgrade starts the binary at Options.Executable with the same arguments,
// hands it every listening socket, and waits until it serves. Then Run
// stops accepting, drains and returns. If the new process fails to start
// or to become ready, it is killed and this one keeps serving. One that
// was stopped (SIGTERM) before it served says so: it is left to drain the
// connections it accepted on the sockets the two share, and this one
// keeps serving. A process that is itself an upgrade's successor does not
// upgrade until it has taken over, nor does one whose upgrade is under way.
//
// A stop of this process (SIGTERM) before the successor has taken over
// ends the upgrade: a stop is meant for the service, and a successor left
// serving would outlive it (under systemd, until the stop timeout's
// SIGKILL). The successor is sent SIGTERM, so that any connection it has
// already accepted is drained, not reset.
//
// A successor told to stop, by either, is reaped in the background: Run
// returns once it has exited, or has been killed for outliving the drain
// timeout by reapGrace (see reap).
func (s *Server) Upgrade() error {
	select {
	case <-s.upgraded:
		return errors.New("already upgraded; this process is draining")
	case <-s.stopping:
		return errStopping
	default:
	}
	if s.opts.Executable == "" {
		return errors.New("the path of the executable is unknown")
	}
	// From here until the upgrade is done or has failed, the backends'
	// states are the successor's to take: the admin API refuses to
	// change them (see holdStates). After an upgrade the
	// refusal stays until this process's admin endpoint closes. A
	// process that refuses already does not upgrade: an upgrade is under
	// way, or this is a successor that has not taken over, whose states
	// are not its own yet (a SIGUSR2 meant for its predecessor), and whose
	// refusal must hold until it reports ready.
	if !s.beginHandover() {
		return errHandingOver
	}
	upgraded := false
	defer func() {
		if !upgraded {
			s.setHandingOver(false)
		}
	}()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socketpair", err)
	}
	ours := os.NewFile(uintptr(pair[0]), "handoff")
	theirs := os.NewFile(uintptr(pair[1]), "handoff-child")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return fmt.Errorf("handoff socket: %w", err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()

	cmd := exec.Command(s.opts.Executable, s.cfg.Args...)
	cmd.Env = append(os.Environ(), upgradeEnv+"=3")
	cmd.ExtraFiles = []*os.File{theirs} // fd 3 in the child
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// The successor starts with SIGHUP and SIGUSR2 ignored: an ignored
	// signal stays ignored across exec, so one that arrives before its Go
	// runtime installs its handlers (`pkill -USR2 sluice` during an
	// upgrade) cannot kill it with the default action. The runtime keeps
	// an inherited SIG_IGN for SIGHUP until the program asks for it, and
	// replaces it for SIGUSR2 with a handler that drops the signal until
	// the program asks for that; package earlysig ignores both from its
	// init. This process ignores them for the fork and exec: a SIGHUP
	// arriving then is dropped, which loses nothing once the successor
	// serves (it reads every file afresh), only if the upgrade then
	// fails; a SIGUSR2 would find an upgrade under way anyway.
	if s.hup != nil {
		signal.Ignore(syscall.SIGHUP, syscall.SIGUSR2)
	}
	err = cmd.Start()
	if s.hup != nil {
		signal.Notify(s.hup, syscall.SIGHUP, syscall.SIGUSR2)
	}
	theirs.Close()
	if err != nil {
		return fmt.Errorf("start %s: %w", s.opts.Executable, err)
	}
	pid := cmd.Process.Pid
	// cut is closed once the goroutine that cuts the handoff short at a
	// stop (below) is done with conn.
	cut := make(chan struct{})
	// stopChild tells the successor to stop and drain, for a stop of this
	// process. It is reaped in the background (see reap), given this
	// process's drain timeout: it says its own only in a Stopping frame,
	// which is not waited for here.
	//
	// This process drains reading the UDP sockets the two share (it has
	// not upgraded), so the successor, should it have reported ready
	// meanwhile, must leave them to it (see Options.Kept): it is told so
	// first, and has that to read when the SIGTERM comes.
	stopChild := func(why string) error {
		<-cut // stopping is closed: it has set the deadline that cut the handoff short
		conn.SetDeadline(time.Now().Add(time.Second))
		handoff.SendKeep(conn) // a successor that has exited, or that does not read it, stops all the same
		cmd.Process.Signal(syscall.SIGTERM)
		s.reap(cmd, s.cfg.DrainTimeout)
		return fmt.Errorf("%w: the new process (pid %d) %s and was sent SIGTERM", errStopping, pid, why)
	}
	fail := func(err error) error {
		select {
		case <-s.stopping:
			return stopChild("had not taken over")
		default:
		}
		cmd.Process.Kill()
		cmd.Wait()
		s.reclaimFirewall()
		return err
	}
	// A stop cuts the handoff short: the deadline makes Send or WaitReady
	// return at once.
	handed := make(chan struct{})
	go func() {
		defer close(cut)
		select {
		case <-s.stopping:
			conn.SetDeadline(time.Now())
		case <-handed:
		}
	}()
	defer close(handed)
	socks := s.sockets()
	// No drain or enable can come after this: the admin API refuses them.
	backends := s.backendStates()
	conn.SetDeadline(time.Now().Add(upgradeTimeout))
	if err := handoff.Send(conn, socks, backends); err != nil {
		return fail(fmt.Errorf("new process (pid %d) did not take the %d sockets: %w", pid, len(socks), err))
	}
	version, err := handoff.WaitReady(conn)
	if stop := (*handoff.StoppingError)(nil); errors.As(err, &stop) {
		// Told to stop (SIGTERM) before it served, it drains what it
		// accepted on the sockets this process still serves: killing it
		// would cut those connections. It is reaped in the background
		// (see reap), given the drain timeout it has, which may not be
		// this process's.
		drain := stop.Drain
		if drain == 0 {
			drain = s.cfg.DrainTimeout // a release that does not say
		}
		s.reap(cmd, drain)
		s.reclaimFirewall()
		return fmt.Errorf("%w (pid %d): it drains the connections it accepted, and exits", errSuccessorStopped, pid)
	}
	if err != nil {
		return fail(fmt.Errorf("new process (pid %d) did not become ready: %w", pid, err))
	}
	s.upMu.Lock()
	defer s.upMu.Unlock()
	select {
	case <-s.stopping:
		return stopChild("was ready")
	default:
	}
	s.log.Info("new process serves", zap.Int("pid", pid), zap.Int("sockets", len(socks)), zap.Int("backend_states", len(backends)))
	// Under systemd, the successor becomes the service's main process
	// before this one exits, or systemd would stop the service with it.
	if err := notifyMainPID(pid); err != nil {
		s.log.Warn("tell systemd the new main pid", zap.Error(err))
	}
	// A successor of an older release closes the UDP sockets beyond its
	// loop count: this process must not keep them while it drains.
	s.closeUDPAtDrain = version < handoff.ReadsEveryUDPSocket
	if s.closeUDPAtDrain && s.hasUDP() {
		s.log.Warn("the new process is of an older release, which may not read every UDP socket handed over: this one closes its UDP sockets and sessions at once, and replies on their way are lost",
			zap.Int("pid", pid), zap.Int("version", version))
	}
	// The child is not waited for: it outlives this process, which exits
	// after its drain.
	upgraded = true
	close(s.upgraded)
	return nil
}

// setHandingOver sets whether the admin API refuses backend state changes;
// setting it waits for the changes under way.
func (s *Server) setHandingOver(on bool) {
	s.stateMu.Lock()
	s.handingOver = on
	s.stateMu.Unlock()
}

// beginHandover is setHandingOver(true) for an upgrade: it reports false,
// changing nothing, when the states are being handed over already.
func (s *Server) beginHandover() bool {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if s.handingOver {
		return false
	}
	s.handingOver = true
	return true
}

// errStatesHandedOver is the admin API's answer to a drain or enable while
// an upgrade hands the backends' states over.
var errStatesHandedOver = errors.New("an upgrade is handing the backends' states over to a new process: retry in a moment")

// holdStates is the admin API's Hold: a backend state change (drain,
// enable) is applied under stateMu's read lock, and while the states are
// being handed over (see Server.handingOver) it is refused, with
// errStatesHandedOver, rather than applied where the serving process will
// not see it. The retry reaches whichever process then serves (the two
// share the admin socket until the old one closes it). The lock is held
// while the change is answered: its answer is a few hundred bytes, which
// a socket's buffer takes without waiting for the client.
func (s *Server) holdStates() (release func(), err error) {
	s.stateMu.RLock()
	if s.handingOver {
		s.stateMu.RUnlock()
		return nil, errStatesHandedOver
	}
	return s.stateMu.RUnlock, nil
}

// reclaimFirewall puts this process's XDP program back after an upgrade
// that did not happen: the successor may have adopted the links, swapping
// its program, and rules, in.
func (s *Server) reclaimFirewall() {
	if s.fw == nil {
		return
	}
	if err := s.fw.Reclaim(); err != nil {
		s.log.Error("take the xdp firewall back after the failed upgrade", zap.Error(err))
	}
}

// sockets lists every listening socket, collected on the loops that own
// them, plus the admin endpoint's.
func (s *Server) sockets() []handoff.Socket {
	var mu sync.Mutex
	var out []handoff.Socket
	var wg sync.WaitGroup
	for _, sv := range s.services {
		for i, p := range sv.each {
			wg.Add(1)
			if !s.loops[i].Submit(func() {
				defer wg.Done()
				fds := p.ListenerFDs()
				mu.Lock()
				defer mu.Unlock()
				for _, fd := range fds {
					out = append(out, handoff.Socket{Kind: handoff.KindListener, Service: sv.cfg.Name, Proto: sv.cfg.Proto, Addr: sv.addr.String(), FD: fd})
				}
			}) {
				wg.Done()
			}
		}
	}
	wg.Wait()
	if s.fw != nil {
		for _, l := range s.fw.LinkFDs() {
			out = append(out, handoff.Socket{Kind: handoff.KindXDPLink, Addr: l.Iface, Proto: l.Mode.String(), FD: l.FD})
		}
	}
	if s.admin != nil {
		if fd := s.admin.FD(); fd >= 0 {
			out = append(out, handoff.Socket{Kind: handoff.KindAdmin, Addr: s.cfg.AdminAddr.String(), FD: fd})
		}
	}
	return out
}

// reapGrace is how long past the drain timeout a successor told to stop is
// given to exit, before Run, returning, kills it.
const reapGrace = 2 * time.Second

// reaper waits for a successor that was told to stop (SIGTERM), which
// drains the connections it accepted and exits.
type reaper struct {
	cmd *exec.Cmd
	// deadline is when it should have exited: when it was told to stop,
	// plus the drain timeout and reapGrace.
	deadline time.Time
	done     chan struct{} // closed when cmd.Wait has returned
}

// reap has cmd, a successor that was told to stop just now and drains for
// up to drain, waited for in the background: nothing here needs its end,
// but its process must be reaped. Run, returning, waits for it until its
// deadline, then kills it (see endReapers): it has had its drain timeout
// for its connections, and under systemd it would be killed then anyway.
// Once Run has done so, reap waits itself, in the same way.
func (s *Server) reap(cmd *exec.Cmd, drain time.Duration) {
	r := &reaper{cmd: cmd, deadline: time.Now().Add(drain + reapGrace), done: make(chan struct{})}
	go r.run()
	s.reapMu.Lock()
	late := s.reaped
	if !late {
		s.reapers = append(s.reapers, r)
	}
	s.reapMu.Unlock()
	if late {
		r.await(s.log)
	}
}

// run waits for the process.
func (r *reaper) run() {
	defer close(r.done)
	r.cmd.Wait()
}

// await returns when r.run has: at once if the process has exited, else
// when it does or, at the deadline, once it has been killed.
func (r *reaper) await(log *zap.Logger) {
	select {
	case <-r.done:
		return
	default:
	}
	t := time.NewTimer(time.Until(r.deadline))
	defer t.Stop()
	select {
	case <-r.done:
		return
	case <-t.C:
	}
	log.Warn("the new process told to stop has not exited after the drain timeout: killing it",
		zap.Int("pid", r.cmd.Process.Pid))
	r.cmd.Process.Kill()
	<-r.done
}

// endReapers waits for the successors reaped in the background (see reap),
// killing those that outlive their deadline. Run calls it once no Upgrade
// it started can be running (its signal goroutine has returned); a later
// reap waits itself.
func (s *Server) endReapers() {
	s.reapMu.Lock()
	rs := s.reapers
	s.reapers, s.reaped = nil, true
	s.reapMu.Unlock()
	for _, r := range rs {
		r.await(s.log)
	}
}
