// Command sluice is a layer-4 TCP load balancer. See the README for the
// flag reference, or run sluice --help.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/config"
	_ "github.com/sluice-lb/sluice/internal/earlysig" // SIGHUP and SIGUSR2 must not kill a starting process
	"github.com/sluice-lb/sluice/internal/firewall"
	"github.com/sluice-lb/sluice/internal/handoff"
	"github.com/sluice-lb/sluice/internal/server"
)

// exitUsage is the exit status for a bad command line.
const exitUsage = 2

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ue *config.UsageError
	switch {
	case err == nil:
	case errors.Is(err, firewall.ErrPermission), errors.Is(err, firewall.ErrUnsupported), errors.Is(err, firewall.ErrInterface):
		// Missing privileges or kernel support: as much a problem of the
		// invocation as a bad flag.
		fmt.Fprintf(os.Stderr, "sluice: %v\n", err)
		os.Exit(exitUsage)
	case errors.As(err, &ue):
		for _, p := range ue.Problems {
			fmt.Fprintf(os.Stderr, "sluice: %s\n", p)
		}
		fmt.Fprintln(os.Stderr, "run 'sluice --help' for the flag reference")
		os.Exit(exitUsage)
	default:
		fmt.Fprintf(os.Stderr, "sluice: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := config.Parse(args, stdout)
	if errors.Is(err, config.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := server.NewLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	defer log.Sync()
	// Started by an upgrade: take over the predecessor's sockets.
	inherited, predecessor, err := server.Inherit()
	if err != nil {
		return fmt.Errorf("upgrade handoff: %w", err)
	}
	opts := server.Options{Inherited: inherited}
	// The path to re-execute on SIGUSR2; a binary replaced on disk since
	// is what runs next.
	if exe, err := invokedPath(); err == nil {
		opts.Executable = exe
	}
	if predecessor != nil {
		defer predecessor.Close()
		opts.OnReady = func() {
			if err := handoff.SendReady(predecessor); err != nil {
				log.Error("tell the old process this one serves", zap.Error(err))
			}
		}
		opts.Stopped = func() {
			if err := handoff.SendStopping(predecessor, cfg.DrainTimeout); err != nil {
				log.Error("tell the old process this one stops", zap.Error(err))
			}
		}
		opts.Kept = func() bool { return handoff.Kept(predecessor, handoff.KeepWait) }
	}
	s, err := server.New(cfg, log, opts)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// invokedPath returns the path this process was started by, made absolute
// but with its symlinks left alone: an upgrade runs what that path names by
// then, so a release made by repointing a symlink (current ->
// releases/v2) is the one that starts. /proc/self/exe, which
// os.Executable reads, has the symlinks resolved, and names the old
// release. When argv[0] does not name this binary (a wrapper set another),
// it is os.Executable's path.
func invokedPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := os.Args[0]
	if !strings.Contains(p, "/") {
		if p, err = exec.LookPath(p); err != nil {
			return exe, nil
		}
	}
	if p, err = filepath.Abs(p); err != nil {
		return exe, nil
	}
	a, err := os.Stat(p)
	if err != nil {
		return exe, nil
	}
	if b, err := os.Stat(exe); err != nil || !os.SameFile(a, b) {
		return exe, nil
	}
	return p, nil
}
