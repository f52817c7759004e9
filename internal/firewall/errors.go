package firewall

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

var (
	// ErrPermission is in the chain of errors from New and Attach when the
	// process lacks a capability; the message names which.
	ErrPermission = errors.New("not permitted")
	// ErrUnsupported is in the chain of errors from New and Attach when the
	// kernel lacks a feature the firewall needs.
	ErrUnsupported = errors.New("not supported by the kernel")
	// ErrInterface is in the chain of errors from Attach when the
	// interface cannot carry the program (a layer-3 device): a fault of
	// the invocation, as ErrUnsupported is.
	ErrInterface = errors.New("the interface cannot carry the firewall")
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("firewall closed")
)

// minKernel is the oldest kernel the program runs on: XDP bpf_links came in
// 5.9 and BPF compare-and-swap, which the rate limiter uses, in 5.12.
const minKernel = "5.12"

// privileges is what the kernel checks before it loads and attaches an XDP
// program.
type privileges struct {
	bpf      bool // CAP_BPF or CAP_SYS_ADMIN: create maps, load programs
	netAdmin bool // CAP_NET_ADMIN or CAP_SYS_ADMIN: load and attach XDP
	// perfmon is CAP_PERFMON or CAP_SYS_ADMIN: without it the verifier
	// refuses the packet-pointer arithmetic of the parsers ("pointer
	// arithmetic with it prohibited for !root"), as measured on 6.18.
	perfmon bool
}

// currentPrivileges reads the effective capabilities of the calling thread
// (all threads of a Go program have the same). If they cannot be read it
// reports all present, so that explanations do not blame a capability.
func currentPrivileges() privileges {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return privileges{bpf: true, netAdmin: true, perfmon: true}
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	sys := has(unix.CAP_SYS_ADMIN)
	return privileges{
		bpf:      sys || has(unix.CAP_BPF),
		netAdmin: sys || has(unix.CAP_NET_ADMIN),
		perfmon:  sys || has(unix.CAP_PERFMON),
	}
}

// missing names what p lacks for loading (attach false) or attaching.
func (p privileges) missing(attach bool) string {
	var m []string
	if !p.bpf && !attach {
		m = append(m, "CAP_BPF")
	}
	if !p.netAdmin {
		m = append(m, "CAP_NET_ADMIN")
	}
	if !p.perfmon && !attach {
		m = append(m, "CAP_PERFMON")
	}
	if len(m) > 1 {
		return strings.Join(m[:len(m)-1], ", ") + " and " + m[len(m)-1]
	}
	return strings.Join(m, "")
}

// kernelRelease returns uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// olderThan reports whether release (as from uname -r) is a kernel version
// below min ("major.minor"). Unparsable releases are not older.
func olderThan(release, min string) bool {
	parse := func(s string) (int, int, bool) {
		s, _, _ = strings.Cut(s, "-")
		maj, rest, ok := strings.Cut(s, ".")
		if !ok {
			return 0, 0, false
		}
		mi, _, _ := strings.Cut(rest, ".")
		a, err1 := strconv.Atoi(maj)
		b, err2 := strconv.Atoi(mi)
		return a, b, err1 == nil && err2 == nil
	}
	a, b, ok := parse(release)
	x, y, ok2 := parse(min)
	if !ok || !ok2 {
		return false
	}
	return a < x || (a == x && b < y)
}

// explain turns an error from loading (attach false) or attaching the
// program into one that says what is missing: a capability or a newer
// kernel. what says what failed ("load xdp firewall"); the result wraps err
// and, where it applies, ErrPermission or ErrUnsupported.
func explain(what string, err error, attach bool, p privileges, release string) error {
	switch {
	case isPermission(err):
		if m := p.missing(attach); m != "" {
			return fmt.Errorf("%s: %w: the process lacks %s: %w", what, ErrPermission, m, err)
		}
		return fmt.Errorf("%s: %w although the process has CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (kernel lockdown, an LSM or seccomp?): %w", what, ErrPermission, err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("%s: %w: kernel %s, need %s or later: %w", what, ErrUnsupported, release, minKernel, err)
	case olderThan(release, minKernel):
		// Old verifiers reject what they do not know with EINVAL and a
		// log, not ErrNotSupported: the version is the likeliest cause.
		return fmt.Errorf("%s: %w: kernel %s, need %s or later: %w", what, ErrUnsupported, release, minKernel, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func isPermission(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
}
