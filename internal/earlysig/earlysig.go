// Package earlysig ignores SIGHUP and SIGUSR2 from the moment its init runs,
// which is early in the program's initialisation: it depends on nothing but
// os/signal and syscall. sluice handles both signals once it serves (reload
// and upgrade); until then their default action, terminating the process,
// must not apply. An upgrade's new process, or a `kill -HUP` sent while
// sluice starts, would otherwise kill it. Import it for its side effect from
// the main package.
package earlysig

import (
	"os/signal"
	"syscall"
)

func init() {
	signal.Ignore(syscall.SIGHUP, syscall.SIGUSR2)
}
