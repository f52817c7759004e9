// Package loop is a single-threaded event loop: one epoll instance, one
// eventfd for wake-ups, and a timer heap, all owned by the goroutine that
// calls Run. That goroutine is locked to its OS thread for the loop's life.
//
// Everything except Submit, Stop and Now-free helpers must be called on the
// loop goroutine (from a Handler, a timer callback or a submitted func). Other
// goroutines reach loop-owned state only through Submit.
package loop

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/rawsys"
)

// Event bits passed to handlers; they are the epoll bits.
const (
	In    = unix.EPOLLIN
	Out   = unix.EPOLLOUT
	RdHup = unix.EPOLLRDHUP
	Hup   = unix.EPOLLHUP
	Err   = unix.EPOLLERR
	// Edge requests edge-triggered notification.
	Edge = unix.EPOLLET
)

// Handler receives the readiness events of one registered fd.
type Handler interface {
	// HandleEvent is called on the loop goroutine with the epoll event bits.
	HandleEvent(events uint32)
}

// ErrStopped is returned by Run when the loop was stopped with Stop.
var ErrStopped = errors.New("loop stopped")

// entry is the registration of one fd. gen distinguishes successive
// registrations of the same fd number, so an event queued for a closed fd is
// never delivered to a newer registration that reuses the number.
type entry struct {
	h   Handler
	gen int32
}

// Loop is an epoll event loop. Create it with New, run it with Run on a
// goroutine of its own, stop it with Stop. The zero value is not usable.
type Loop struct {
	epfd int
	evfd int

	// mu guards queue and woken; everything else is owned by the loop goroutine.
	mu     sync.Mutex
	queue  []func()
	woken  bool
	closed bool

	entries []entry
	nextGen int32
	events  []unix.EpollEvent
	timers  timerHeap
	start   time.Time
	now     int64
	stopped bool
	running []func() // scratch slice for the submitted queue being run

	// lastEvent is the loop clock of the last wait that returned events;
	// QuietAfter without one and the loop counts as idle (see wait).
	lastEvent int64
	// wakeups counts returns from epoll_wait, for tests.
	wakeups int

	// deferred are the funcs to run once the events of the current
	// wake-up have been handled (Defer); flushing is their scratch slice.
	deferred, flushing []func()
}

// New creates a loop with its epoll instance and wake-up eventfd.
func New() (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	l := &Loop{epfd: epfd, evfd: evfd, events: make([]unix.EpollEvent, 256), start: time.Now()}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	return l, nil
}

// Add registers fd for events and routes them to h. Loop goroutine only (or
// before Run starts).
func (l *Loop) Add(fd int, events uint32, h Handler) error {
	if fd < 0 {
		return fmt.Errorf("add fd %d: negative fd", fd)
	}
	for fd >= len(l.entries) {
		l.entries = append(l.entries, make([]entry, len(l.entries)+64)...)
	}
	l.nextGen++
	gen := l.nextGen
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: gen}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl add", err)
	}
	l.entries[fd] = entry{h: h, gen: gen}
	return nil
}

// Modify changes the events fd is registered for. Loop goroutine only.
func (l *Loop) Modify(fd int, events uint32) error {
	if fd < 0 || fd >= len(l.entries) || l.entries[fd].h == nil {
		return fmt.Errorf("modify fd %d: not registered", fd)
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: l.entries[fd].gen}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl mod", err)
	}
	return nil
}

// Remove unregisters fd. Events already fetched for it are dropped. The
// caller still owns fd and closes it. Loop goroutine only.
func (l *Loop) Remove(fd int) error {
	if fd < 0 || fd >= len(l.entries) || l.entries[fd].h == nil {
		return fmt.Errorf("remove fd %d: not registered", fd)
	}
	l.entries[fd] = entry{}
	if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return os.NewSyscallError("epoll_ctl del", err)
	}
	return nil
}

// Forget drops the registration of fd without an epoll_ctl call, for a
// caller that is about to close fd. Closing removes it from the epoll set
// only if no other descriptor (a dup, or a copy passed to another process)
// refers to the same open file: use Remove for shared sockets. Loop
// goroutine only.
func (l *Loop) Forget(fd int) {
	if fd >= 0 && fd < len(l.entries) {
		l.entries[fd] = entry{}
	}
}

// Submit queues fn to run on the loop goroutine and wakes the loop. Safe for
// concurrent use. It returns false, without queueing, once the loop has
// stopped.
func (l *Loop) Submit(fn func()) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.queue = append(l.queue, fn)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		l.wake()
	}
	return true
}

func (l *Loop) wake() {
	var one = [8]byte{1}
	// EAGAIN means the counter is saturated, which still wakes the loop.
	_, _ = unix.Write(l.evfd, one[:])
}

// Stop asks the loop to return from Run after the current iteration. Safe for
// concurrent use.
func (l *Loop) Stop() {
	l.Submit(func() { l.stopped = true })
}

// Now returns the loop's cached monotonic clock in nanoseconds since the loop
// was created; it advances once per wake-up. Loop goroutine only.
func (l *Loop) Now() int64 { return l.now }

// Run runs the loop on the calling goroutine, locked to its OS thread, until
// Stop is called. It returns ErrStopped then, or the error that broke the
// loop. Submitted funcs not yet run when Run returns are run before it does.
func (l *Loop) Run() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer l.finish()
	for !l.stopped {
		n, err := l.wait(l.timeout())
		if err != nil && err != unix.EINTR {
			return os.NewSyscallError("epoll_wait", err)
		}
		l.wakeups++
		l.now = int64(time.Since(l.start))
		if n > 0 {
			l.lastEvent = l.now
		}
		for i := 0; i < n; i++ {
			ev := &l.events[i]
			fd := int(ev.Fd)
			if fd == l.evfd {
				l.drainWake()
				continue
			}
			if fd < len(l.entries) {
				if e := l.entries[fd]; e.h != nil && e.gen == ev.Pad {
					e.h.HandleEvent(ev.Events)
				}
			}
		}
		l.runDeferred()
		if n == len(l.events) && len(l.events) < 4096 {
			l.events = make([]unix.EpollEvent, 2*len(l.events))
		}
		l.runTimers()
		l.runDeferred()
	}
	return ErrStopped
}

// Defer runs fn once, after the handlers of every event of the current
// wake-up have run (or, from a timer, after the timers due): the place to
// flush work gathered from several events, such as datagrams for one
// socket collected from several others and sent with one sendmmsg(2). Each
// call runs fn once; a func deferred by a deferred func runs in the same
// round. Loop goroutine only.
func (l *Loop) Defer(fn func()) { l.deferred = append(l.deferred, fn) }

func (l *Loop) runDeferred() {
	for len(l.deferred) > 0 {
		l.flushing, l.deferred = l.deferred, l.flushing[:0]
		for i, fn := range l.flushing {
			fn()
			l.flushing[i] = nil
		}
	}
}

// QuietAfter is how long a loop goes without events before it counts as
// idle and waits in a regular system call (see wait). A variable for tests.
var QuietAfter = time.Second

// wait is epoll_wait(2). While the loop is busy it is made with
// RawSyscall: the goroutine keeps its P while the thread waits in the
// kernel, so a wake-up costs no scheduler work. With a regular Syscall on
// every wait, the runtime's sysmon takes the P of a thread that sleeps in
// the kernel and then polls every 20 µs for a while, which under load costs
// more than it saves (measured 2026-11-22 on the 2-core test VM: sysmon's
// nanosleeps rose from about 100 to 1,500–2,400 a second under rr and
// connect load).
//
// A goroutine that keeps its P without scheduling is preempted by sysmon
// every 10 ms: a signal ends the wait with EINTR and, since the goroutine is
// locked to its thread, the P is handed to another thread and back. That
// is a few thread switches per loop every 10 ms, busy or idle: an idle
// sluice with two loops made about 480 context switches a second and used
// about 1.8% of a CPU doing nothing. So once the loop has had no event for
// QuietAfter, its waits are regular Syscalls: the goroutine is then in a
// system call and is not preempted, sysmon takes back the P after 10 ms
// and, once every P is idle, sleeps itself. The first event after such a
// wait is handled on a P whose goroutine looks 10 ms stale to sysmon, which
// preempts it at once, on the request's path: with QuietAfter at a second,
// that happens at most once per second of silence, while traffic with
// shorter gaps keeps the raw waits, whose preemptions fall mostly while
// the loop waits.
//
// Either way garbage collection and other goroutines are not starved; the
// server gives the runtime one P more than it has loops.
func (l *Loop) wait(msec int) (int, error) {
	var r uintptr
	var e unix.Errno
	if msec != 0 && l.now-l.lastEvent >= int64(QuietAfter) {
		r, _, e = unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), uintptr(msec), 0, 0)
	} else {
		r, _, e = unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), uintptr(msec), 0, 0)
	}
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// finish marks the loop closed so that no more funcs are queued, and runs
// the ones already queued so that their owners are not left waiting.
func (l *Loop) finish() {
	l.mu.Lock()
	l.closed = true
	q := l.queue
	l.queue = nil
	l.mu.Unlock()
	for _, fn := range q {
		fn()
	}
}

func (l *Loop) drainWake() {
	var buf [8]byte
	_, _ = unix.Read(l.evfd, buf[:])
	l.mu.Lock()
	l.running, l.queue = l.queue, l.running[:0]
	l.woken = false
	l.mu.Unlock()
	for i, fn := range l.running {
		fn()
		l.running[i] = nil
	}
}

// timeout is the epoll_wait timeout in milliseconds until the next timer,
// rounded up so that a timer never fires early; -1 when none is scheduled.
func (l *Loop) timeout() int {
	if len(l.timers) == 0 {
		return -1
	}
	now := int64(time.Since(l.start))
	d := l.timers[0].when - now
	if d <= 0 {
		return 0
	}
	ms := (d + int64(time.Millisecond) - 1) / int64(time.Millisecond)
	if ms > 1<<30 {
		ms = 1 << 30
	}
	return int(ms)
}

// Close releases the epoll instance and the eventfd. Call it after Run has
// returned; registered fds are not closed (their owners close them).
func (l *Loop) Close() error {
	err1 := unix.Close(l.epfd)
	err2 := unix.Close(l.evfd)
	if err1 != nil {
		return os.NewSyscallError("close epoll", err1)
	}
	if err2 != nil {
		return os.NewSyscallError("close eventfd", err2)
	}
	return nil
}
