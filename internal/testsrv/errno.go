package testsrv

import (
	"errors"
	"syscall"
)

// errPipe is what a write returns once the peer has closed its socket.
var errPipe = syscall.EPIPE

func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ENOTCONN)
}
