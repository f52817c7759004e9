// Command sluice is a layer-4 TCP load balancer. See the README for the
// flag reference, or run sluice --help.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
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
	case errors.Is(err, firewall.ErrPermission), errors.Is(err, firewall.ErrUnsupported):
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
	if exe, err := os.Executable(); err == nil {
		opts.Executable = exe
	}
	if predecessor != nil {
		defer predecessor.Close()
		opts.OnReady = func() {
			if err := handoff.SendReady(predecessor); err != nil {
				log.Error("tell the old process this one serves", zap.Error(err))
			}
		}
	}
	s, err := server.New(cfg, log, opts)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}
