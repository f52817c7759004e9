package udpproxy

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/rawsys"
)

// bufSize is the size of every datagram buffer. The largest UDP payload is
// 65507 bytes over IPv4 and 65527 over IPv6 (without jumbograms), so a
// datagram that does not fit is reported with MSG_TRUNC and dropped.
const bufSize = 64 << 10

// batch is a set of datagram slots for recvmmsg/sendmmsg: slot i is msgs[i]
// with its iovec iovs[i] over bufs[i], its address names[i] and its
// control message ctrls[i]. The slices are allocated once and never grow,
// so the pointers inside msgs stay valid. A batch belongs to one loop.
type batch struct {
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	ctrls []rxqCmsg
	bufs  [][]byte // bufSize each

	// calls and moved count the recv and send syscalls made and the
	// datagrams they moved, for the benchmarks' datagrams-per-call figure;
	// sends counts the send syscalls alone.
	calls, moved, sends uint64
}

func newBatch(n int) *batch {
	b := &batch{
		msgs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		ctrls: make([]rxqCmsg, n),
		bufs:  make([][]byte, n),
	}
	mem := make([]byte, n*bufSize)
	for i := range n {
		b.bufs[i] = mem[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(bufSize)
		b.msgs[i].Hdr.Iov = &b.iovs[i]
		b.msgs[i].Hdr.SetIovlen(1)
	}
	return b
}

// data returns the payload of slot i after a receive.
func (b *batch) data(i int) []byte { return b.bufs[i][:b.msgs[i].Len] }

// recv receives up to hi-lo datagrams from fd into slots lo..hi-1 and
// returns how many arrived; with names (an unconnected socket), each
// slot's source address is stored in names. The drop count the kernel may
// attach is stored in ctrls (see newDrops), so the caller clears Control
// before sending from the slot. unix.EAGAIN means none was waiting. One
// slot uses recvmsg, more use recvmmsg.
func (b *batch) recv(fd, lo, hi int, names bool) (int, error) {
	for i := lo; i < hi; i++ {
		h := &b.msgs[i].Hdr
		b.iovs[i].SetLen(bufSize)
		if names {
			h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			h.Namelen = unix.SizeofSockaddrInet6
		} else {
			h.Name = nil
			h.Namelen = 0
		}
		h.Control = (*byte)(unsafe.Pointer(&b.ctrls[i]))
		h.SetControllen(int(unsafe.Sizeof(b.ctrls[i])))
		h.Flags = 0
	}
	b.calls++
	if hi-lo == 1 {
		r, _, e := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[lo].Hdr)), unix.MSG_DONTWAIT)
		if e != 0 {
			return 0, e
		}
		b.msgs[lo].Len = uint32(r)
		b.moved++
		return 1, nil
	}
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[lo])), uintptr(hi-lo), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	b.moved += uint64(r)
	return int(r), nil
}

// rxqCmsg is room for the one control message the proxy's sockets carry:
// the kernel's count of the datagrams the socket has dropped, attached (with
// SO_RXQ_OVFL on, see countDropsInline) to every datagram queued after the
// first drop, as it was when that datagram was queued. Drops are so counted
// as datagrams come in, whether or not a read finds a backlog (a queue of
// large datagrams overflows with few in it), at no syscall.
type rxqCmsg struct {
	hdr   unix.Cmsghdr
	drops uint32
	_     uint32 // CMSG_SPACE pads the data to the header's alignment
}

// newDrops returns how many drops the count received with slot i adds to
// *last, the socket's count as last seen, and moves *last on.
func (b *batch) newDrops(i int, last *uint32) int {
	c := &b.ctrls[i]
	if int(b.msgs[i].Hdr.Controllen) < unix.CmsgLen(4) || c.hdr.Level != unix.SOL_SOCKET || c.hdr.Type != unix.SO_RXQ_OVFL {
		return 0
	}
	d := int32(c.drops - *last)
	if d <= 0 {
		return 0
	}
	*last = c.drops
	return int(d)
}

// countDropsInline has the kernel attach its drop count to the datagrams
// fd receives (see rxqCmsg). Best effort: without it, drops are counted
// when the socket is read for the last time.
func countDropsInline(fd int) {
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
}

// send sends slots lo..hi-1 on fd, each with its iovec length set to its
// payload and its Name set to its destination, and returns how many went.
// An error is returned only when the first of them failed, as sendmmsg
// does. One slot uses sendmsg, more use sendmmsg.
func (b *batch) send(fd, lo, hi int) (int, error) {
	b.calls++
	b.sends++
	if hi-lo == 1 {
		_, _, e := unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[lo].Hdr)), unix.MSG_DONTWAIT)
		if e != 0 {
			return 0, e
		}
		b.moved++
		return 1, nil
	}
	r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[lo])), uintptr(hi-lo), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	b.moved += uint64(r)
	return int(r), nil
}

// sendConnected sends p as one datagram on the connected socket fd. A
// zero-length p sends an empty datagram.
func sendConnected(fd int, p []byte) error {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(ptr), uintptr(len(p)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// addrOfRaw returns the address in a raw sockaddr written by the kernel.
func addrOfRaw(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), rawsys.Ntohs(sa4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), rawsys.Ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// rawOf returns ap as a raw sockaddr of the given family and its length.
func rawOf(ap netip.AddrPort, family int) (unix.RawSockaddrInet6, uint32) {
	var sa unix.RawSockaddrInet6
	if family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		sa4.Family = unix.AF_INET
		sa4.Port = rawsys.Htons(ap.Port())
		sa4.Addr = ap.Addr().Unmap().As4()
		return sa, unix.SizeofSockaddrInet4
	}
	sa.Family = unix.AF_INET6
	sa.Port = rawsys.Htons(ap.Port())
	sa.Addr = ap.Addr().As16()
	return sa, unix.SizeofSockaddrInet6
}

func sockaddrOf(ap netip.AddrPort) (unix.Sockaddr, int) {
	if ap.Addr().Is4() || ap.Addr().Is4In6() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, unix.AF_INET6
}

func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// socketDrops returns the kernel's count of datagrams dropped at socket fd
// (SK_MEMINFO_DROPS: receive queue full, or no memory), or 0 if it cannot
// be read. The count wraps at 2^32; callers take differences.
func socketDrops(fd int) uint32 {
	var info [unix.SK_MEMINFO_VARS]uint32
	size := uint32(unsafe.Sizeof(info))
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO, uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
	if e != 0 {
		return 0
	}
	return info[unix.SK_MEMINFO_DROPS]
}
