package earlysig

import (
	"os/signal"
	"syscall"
	"testing"
)

func TestIgnoredFromInit(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR2} {
		if !signal.Ignored(sig) {
			t.Errorf("%v is not ignored after init", sig)
		}
	}
}
