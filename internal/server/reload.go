package server

import (
	"context"
	"os"
	"reflect"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/discovery"
)

// fileStamp identifies a version of a file cheaply: a rewrite in place or a
// rename over it changes one of these.
type fileStamp struct {
	ino   uint64
	size  int64
	mtime time.Time
	ok    bool
}

func stampOf(path string) fileStamp {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	fs := fileStamp{size: st.Size(), mtime: st.ModTime(), ok: true}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		fs.ino = sys.Ino
	}
	return fs
}

// backendsFile is a service's backends file: its path, which a reload may
// switch, and its last seen state. Guarded by Server.reloadMu.
type backendsFile struct {
	path  string // "" when the service has none
	stamp fileStamp
}

// watchFiles rereads a service's backends file when its stamp changes.
func (s *Server) watchFiles(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(fileCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.reloadMu.Lock()
		for _, sv := range s.services {
			if sv.file.path == "" {
				continue
			}
			if st := stampOf(sv.file.path); st != sv.file.stamp {
				sv.file.stamp = st
				s.log.Info("backends file changed", zap.String("service", sv.cfg.Name), zap.String("file", sv.file.path))
				s.reloadFile(sv)
			}
		}
		s.reloadMu.Unlock()
	}
}

// reloadApplies are the settings a reload puts in force: a service's
// backend lists, and the firewall rules. A reload names every other
// setting that changed in a warning: the running config stays.
var reloadApplies = map[string]bool{
	"backend":       true,
	"backends-file": true,
	"backend-dns":   true,
	"backend-srv":   true,
	"dns-interval":  true,
	"deny-cidr":     true,
	"allow-cidr":    true,
	"rate-limit":    true,
	"rate-burst":    true,
	"protect-port":  true,
}

// upgradeKeeps are the settings an upgrade does not change either: the
// successor adopts the xdp link, which keeps the mode it was attached in.
var upgradeKeeps = map[string]bool{"xdp-mode": true}

// Reload rereads every backends file and, with --config, the config
// file: its services' backend lists and backends-file paths and the
// firewall rules apply; every other change (a setting, a service added or
// removed) is named in a warning and waits for a restart or an upgrade. A
// bad file is rejected whole, logged with the line at fault, and the
// backends in force stay. Safe for concurrent use.
func (s *Server) Reload() {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cfg, err := config.ParseReload(s.cfg.Args)
	if err != nil {
		s.log.Error("configuration rejected, keeping the one in force", zap.String("file", s.cfg.ConfigFile), zap.Error(err))
		for _, sv := range s.services {
			if sv.file.path != "" {
				s.reloadFile(sv)
			}
		}
		return
	}
	// Each service's lists change in one step: a backend that moves
	// between the lists (a file's line made static) never leaves.
	for _, sv := range s.services {
		lists := map[balancer.Source][]balancer.Spec{}
		i := slices.IndexFunc(cfg.Services, func(c config.Service) bool { return c.Name == sv.cfg.Name })
		if i >= 0 && s.cfg.ConfigFile != "" {
			lists[balancer.SourceStatic] = cfg.Services[i].Backends
		}
		if i >= 0 {
			s.switchFile(sv, cfg.Services[i].BackendsFile)
			if s.switchDiscovery(sv, cfg.Services[i].DNS) {
				lists[balancer.SourceDNS] = nil
			}
		}
		if sv.file.path == "" {
			lists[balancer.SourceFile] = nil
		} else if specs, ok := s.readFile(sv); ok {
			lists[balancer.SourceFile] = specs
		}
		if err := sv.bal.SetSources(lists); err != nil {
			s.log.Error("apply reloaded backends", zap.String("service", sv.cfg.Name), zap.Error(err))
		}
		// A restarted discovery's first answer replaces the old names'
		// backends after this.
		s.startDiscovery(sv)
	}
	s.updateFirewall(cfg.Firewall)
	s.warnUnapplied(cfg)
}

// switchFile makes sv read the backends file at path from now on; the
// caller applies it (or, with no path, takes the file's backends away).
// Caller holds reloadMu.
func (s *Server) switchFile(sv *service, path string) {
	if path == sv.file.path {
		return
	}
	s.log.Info("backends file switched", zap.String("service", sv.cfg.Name), zap.String("from", sv.file.path), zap.String("to", path))
	sv.file = backendsFile{path: path}
}

// switchDiscovery stops sv's DNS discovery when next changes its names or
// interval, and reports whether the names' backends must go now (no name
// is left). The caller starts the discovery again with startDiscovery,
// once the reloaded lists are applied: the old names' backends stay until
// the new names answer, so that a reload while DNS fails cannot empty the
// service. Caller holds reloadMu.
func (s *Server) switchDiscovery(sv *service, next discovery.Config) (clear bool) {
	// What no flag sets stays as the process started with it (a test's
	// resolver and hold).
	next.Resolver, next.Hold, next.Timeout, next.MaxAddrs = sv.dns.cfg.Resolver, sv.dns.cfg.Hold, sv.dns.cfg.Timeout, sv.dns.cfg.MaxAddrs
	if reflect.DeepEqual(next, sv.dns.cfg) {
		return false
	}
	s.log.Info("DNS discovery restarted with the reloaded names", zap.String("service", sv.cfg.Name),
		zap.Int("names", len(next.Targets)), zap.Duration("interval", next.Interval))
	s.stopDiscovery(sv)
	sv.dns.cfg = next
	sv.dns.first = nil
	return len(next.Targets) == 0
}

// warnUnapplied compares cfg, as reloaded, with the configuration the
// process started with, and logs one warning for each scope (the global
// settings, each service) whose settings changed beyond what a reload
// applies, naming them (not their values: a password is a setting), and
// one for each service added or removed. A later reload warns again of
// what is still not in force: each reload's log says all that the file
// asks and the process does not do, so the latest is enough to read.
func (s *Server) warnUnapplied(cfg config.Config) {
	warn := func(changed []string, fields ...zap.Field) {
		var later, stopStart []string
		for _, name := range changed {
			switch {
			case reloadApplies[name]:
			case upgradeKeeps[name]:
				stopStart = append(stopStart, name)
			default:
				later = append(later, name)
			}
		}
		if len(later) > 0 {
			s.log.Warn("settings changed in the config file are not applied by a reload; a restart or an upgrade (SIGUSR2) applies them",
				append(fields, zap.Strings("settings", later))...)
		}
		if len(stopStart) > 0 {
			s.log.Warn("settings changed in the config file are not applied by a reload nor by an upgrade, whose xdp link keeps its mode; stop and start sluice to apply them",
				append(fields, zap.Strings("settings", stopStart))...)
		}
	}
	warn(s.cfg.Settings.Changed(cfg.Settings))
	for _, sv := range s.services {
		i := slices.IndexFunc(cfg.Services, func(c config.Service) bool { return c.Name == sv.cfg.Name })
		if i < 0 {
			s.log.Warn("service removed from the config file keeps running; a restart or an upgrade (SIGUSR2) stops it", zap.String("service", sv.cfg.Name))
			continue
		}
		warn(sv.cfg.Changed(cfg.Services[i]), zap.String("service", sv.cfg.Name))
	}
	for _, c := range cfg.Services {
		if !slices.ContainsFunc(s.services, func(sv *service) bool { return sv.cfg.Name == c.Name }) {
			s.log.Warn("service added to the config file is not started by a reload; a restart or an upgrade (SIGUSR2) starts it",
				zap.String("service", c.Name), zap.Stringer("listen", c.Listen))
		}
	}
}

// reloadFile applies sv's backends file. Caller holds reloadMu.
func (s *Server) reloadFile(sv *service) {
	specs, ok := s.readFile(sv)
	if !ok {
		return
	}
	if err := sv.bal.SetSource(balancer.SourceFile, specs); err != nil {
		s.log.Error("apply backends file", zap.String("service", sv.cfg.Name), zap.Error(err))
	}
}

// readFile reads sv's backends file and notes its stamp; a bad file is
// logged, and ok is false. Caller holds reloadMu.
func (s *Server) readFile(sv *service) (specs []balancer.Spec, ok bool) {
	sv.file.stamp = stampOf(sv.file.path)
	specs, err := config.ReadBackendsFile(sv.file.path)
	if err != nil {
		s.log.Error("backends file rejected, keeping the backends in force",
			zap.String("service", sv.cfg.Name), zap.String("file", sv.file.path), zap.Error(err))
		return nil, false
	}
	return specs, true
}
