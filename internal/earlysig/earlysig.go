// Package earlysig ignores SIGHUP and SIGUSR2 from the moment its init runs,
// which is early in the program's initialisation: it depends on nothing but
// os/signal and syscall. sluice handles both once it serves (reload and
// upgrade). Until then SIGHUP's default action, terminating the process,
// must not apply: an upgrade's new process meeting a `pkill -HUP sluice`
// would die. (SIGUSR2 is caught and dropped by the Go runtime's own handler
// once that is installed, before any package init; it is ignored here too
// so that both signals are handled the same way.) Import it for its side
// effect from the main package.
package earlysig

import (
	"os/signal"
	"syscall"
)

func init() {
	signal.Ignore(syscall.SIGHUP, syscall.SIGUSR2)
}
