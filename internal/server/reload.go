package server

import (
	"context"
	"os"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/config"
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
		for _, sv := range s.services {
			if sv.cfg.BackendsFile == "" {
				continue
			}
			s.reloadMu.Lock()
			if st := stampOf(sv.cfg.BackendsFile); st != sv.file {
				sv.file = st
				s.log.Info("backends file changed", zap.String("service", sv.cfg.Name), zap.String("file", sv.cfg.BackendsFile))
				s.reloadFile(sv)
			}
			s.reloadMu.Unlock()
		}
	}
}

// Reload rereads every backends file and, with --config, the backend lists
// of the config file's services and the firewall rules. A bad file is rejected whole, logged with
// the line at fault, and the backends in force stay. Settings other than
// backend lists are not changed by a reload. Safe for concurrent use.
func (s *Server) Reload() {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	for _, sv := range s.services {
		if sv.cfg.BackendsFile != "" {
			sv.file = stampOf(sv.cfg.BackendsFile)
			s.reloadFile(sv)
		}
	}
	cfg, err := config.ParseReload(s.cfg.Args)
	if err != nil {
		s.log.Error("configuration rejected, keeping the one in force", zap.String("file", s.cfg.ConfigFile), zap.Error(err))
		return
	}
	s.updateFirewall(cfg.Firewall)
	if s.cfg.ConfigFile == "" {
		return
	}
	for _, sv := range s.services {
		i := slices.IndexFunc(cfg.Services, func(c config.Service) bool { return c.Name == sv.cfg.Name })
		if i < 0 {
			s.log.Warn("service missing from the reloaded config file; adding or removing services needs a restart", zap.String("service", sv.cfg.Name))
			continue
		}
		if err := sv.bal.SetSource(balancer.SourceStatic, cfg.Services[i].Backends); err != nil {
			s.log.Error("apply reloaded backends", zap.String("service", sv.cfg.Name), zap.Error(err))
		}
	}
}

// reloadFile applies sv's backends file. Caller holds reloadMu.
func (s *Server) reloadFile(sv *service) {
	specs, err := config.ReadBackendsFile(sv.cfg.BackendsFile)
	if err != nil {
		s.log.Error("backends file rejected, keeping the backends in force",
			zap.String("service", sv.cfg.Name), zap.String("file", sv.cfg.BackendsFile), zap.Error(err))
		return
	}
	if err := sv.bal.SetSource(balancer.SourceFile, specs); err != nil {
		s.log.Error("apply backends file", zap.String("service", sv.cfg.Name), zap.Error(err))
	}
}
