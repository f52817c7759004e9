// Package splice moves bytes between sockets inside the kernel with
// splice(2), through pipes lent from a per-loop pool.
//
// A Pool belongs to one event loop and is not safe for concurrent use. A pipe
// is lent to a connection only while bytes are in flight: the connection
// takes one when it has something to move and gives it back as soon as the
// pipe is empty again, so idle connections hold no pipe and no buffer. A pipe
// that still holds bytes is never returned to the pool (Put closes it
// instead), so a pipe taken from the pool is always empty.
//
// The syscalls here are made with RawSyscall: every fd involved is
// non-blocking, so no call can block the loop thread, and the scheduler
// hand-off of a regular Syscall would be pure overhead.
package splice

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Flags used for every splice: never block, move pages rather than copy
// where the kernel can.
const spliceFlags = unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE

// Pipe is a kernel pipe used as a splice buffer. Len is the number of bytes
// in it, maintained by Fill and Drain.
type Pipe struct {
	r, w int
	// Len is the number of bytes currently in the pipe.
	Len int
	// Cap is the pipe's capacity in bytes as set by F_SETPIPE_SZ.
	Cap int
}

// newPipe creates a non-blocking pipe and tries to size it to size bytes.
// When the kernel refuses the size (above /proc/sys/fs/pipe-max-size for an
// unprivileged process) the default size is kept and reported in Cap.
func newPipe(size int) (*Pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &Pipe{r: fds[0], w: fds[1]}
	got, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, size)
	if err != nil {
		got, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			p.close()
			return nil, os.NewSyscallError("fcntl F_GETPIPE_SZ", err)
		}
	}
	p.Cap = got
	return p, nil
}

func (p *Pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// Fill splices up to max bytes from the socket fd into the pipe and returns
// how many moved. (0, nil) means end of stream on fd. unix.EAGAIN means fd
// had nothing to read or the pipe had no room: when the pipe was empty on
// entry, it can only mean the former.
func (p *Pipe) Fill(fd, max int) (int, error) {
	n, err := rawSplice(fd, p.w, max)
	if n > 0 {
		p.Len += n
	}
	return n, err
}

// Drain splices up to Len bytes from the pipe into the socket fd and returns
// how many moved. unix.EAGAIN means fd's send buffer is full.
func (p *Pipe) Drain(fd int) (int, error) {
	n, err := rawSplice(p.r, fd, p.Len)
	if n > 0 {
		p.Len -= n
	}
	return n, err
}

// Write copies b into the pipe (a user-space to kernel copy, for bytes that
// were read into a buffer but could not be sent yet). It returns how many
// bytes fit.
func (p *Pipe) Write(b []byte) (int, error) {
	n, err := Write(p.w, b)
	if n > 0 {
		p.Len += n
	}
	return n, err
}

func rawSplice(in, out, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceFlags)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Read reads from a non-blocking fd without a scheduler hand-off.
func Read(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Write writes to a non-blocking fd without a scheduler hand-off. A write to
// a reset socket fails with EPIPE: the Go runtime ignores SIGPIPE for fds
// other than standard output and error.
func Write(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Errno returns err as a syscall.Errno when it is one, else 0.
func Errno(err error) syscall.Errno {
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return 0
}
