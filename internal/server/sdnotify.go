package server

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// notifyMainPID tells the service manager on $NOTIFY_SOCKET (systemd's
// sd_notify protocol) that pid is the service's main process now, then
// waits with a BARRIER until the manager has read it, so that this process
// may exit without the manager taking its exit for the service's. Without
// $NOTIFY_SOCKET it does nothing.
func notifyMainPID(pid int) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] != '/' && path[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET %q: not a unix socket path", path)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrUnix{Name: path} // a leading '@' is the abstract namespace
	if err := unix.Sendmsg(fd, []byte("MAINPID="+strconv.Itoa(pid)), nil, to, 0); err != nil {
		return fmt.Errorf("send MAINPID to %s: %w", path, err)
	}
	// BARRIER=1 carries the write end of a pipe; the manager closes it once
	// it has processed every earlier message, which the read end sees as
	// POLLHUP.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return os.NewSyscallError("pipe2", err)
	}
	defer unix.Close(p[0])
	err = unix.Sendmsg(fd, []byte("BARRIER=1"), unix.UnixRights(p[1]), to, 0)
	unix.Close(p[1])
	if err != nil {
		return fmt.Errorf("send BARRIER to %s: %w", path, err)
	}
	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return os.NewSyscallError("poll", err)
		}
		if n == 0 {
			return errors.New("the service manager did not confirm the new main pid within 5s")
		}
		return nil
	}
}
