// Package firewall loads and drives the XDP program of bpf/firewall.c: deny
// and allow lists and per-source rate limits for the balancer's protected
// ports, enforced before packets reach the network stack.
//
// One Firewall holds one loaded program and its maps; Attach hooks it to as
// many interfaces as wanted, each through a bpf_link, so that the program
// goes away with the process. Update changes the rules by map updates while
// the program stays attached.
//
// What the program does with each kind of packet is documented at the top
// of bpf/firewall.c.
package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Mode is how the program is attached to an interface.
type Mode int

const (
	// ModeAuto, the zero value, attaches in native mode, or in generic
	// mode if native mode fails (a driver without XDP support).
	ModeAuto Mode = iota
	// ModeNative runs the program in the driver, before an skb exists.
	ModeNative
	// ModeGeneric runs the program on the skb, for any driver, slower.
	ModeGeneric
)

// String returns the mode as ParseMode accepts it.
func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses "auto", "native" or "generic".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "auto":
		return ModeAuto, nil
	case "native":
		return ModeNative, nil
	case "generic":
		return ModeGeneric, nil
	}
	return 0, fmt.Errorf("xdp mode %q is not auto, native or generic", s)
}

// Attachment is an interface the program is attached to.
type Attachment struct {
	Iface string
	Mode  Mode // ModeNative or ModeGeneric: what ModeAuto settled on
}

// Firewall is the loaded program with its maps and links. Its methods are
// safe for concurrent use. It owns kernel objects: Close releases them. The
// zero value is not usable: use New.
//
// A process needs one Firewall, attached to every interface its services
// are reached through, and none at all when there is no interface to attach
// to: without one, nothing BPF should be loaded.
type Firewall struct {
	// mu guards every field below and serialises map updates, so that the
	// maps always hold what applied describes.
	mu      sync.Mutex
	objs    firewallObjects
	applied rules // what the maps hold now
	sources uint32
	links   []attached
	closed  bool
}

type attached struct {
	Attachment
	link link.Link
}

// New loads the program and fills its maps from cfg; nothing is attached
// yet. It needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN) and Linux 5.12
// or later; without them the error names what is missing and wraps
// ErrPermission or ErrUnsupported.
func New(cfg Config) (*Firewall, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("check firewall config: %w", err)
	}
	spec, err := loadFirewall()
	if err != nil {
		return nil, fmt.Errorf("read xdp firewall object: %w", err)
	}
	f := &Firewall{sources: cfg.RateSources}
	if f.sources == 0 {
		f.sources = DefaultRateSources
	}
	spec.Maps[firewallMapRateBuckets].MaxEntries = f.sources
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		return nil, explain("load xdp firewall", err, false, currentPrivileges(), kernelRelease())
	}
	f.applied = compile(Config{})
	if err := f.apply(compile(cfg)); err != nil {
		f.objs.Close()
		return nil, fmt.Errorf("fill xdp firewall maps: %w", err)
	}
	return f, nil
}

// Attach hooks the program to the interface named iface, in mode. With
// ModeAuto it tries native mode first, then generic. The program stays
// attached until Close or until the process exits.
func (f *Firewall) Attach(iface string, mode Mode) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	for _, a := range f.links {
		if a.Iface == iface {
			return fmt.Errorf("attach xdp to %s: already attached", iface)
		}
	}
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %w", iface, err)
	}
	if err := checkEthernet(iface); err != nil {
		return fmt.Errorf("attach xdp to %s: %w", iface, err)
	}
	var try []Mode
	switch mode {
	case ModeAuto:
		try = []Mode{ModeNative, ModeGeneric}
	case ModeNative, ModeGeneric:
		try = []Mode{mode}
	default:
		return fmt.Errorf("attach xdp to %s: unknown %v", iface, mode)
	}
	var errs error
	for _, m := range try {
		flags := link.XDPGenericMode
		if m == ModeNative {
			flags = link.XDPDriverMode
		}
		l, err := link.AttachXDP(link.XDPOptions{
			Program:   f.objs.XdpFirewall,
			Interface: ifc.Index,
			Flags:     flags,
		})
		if err == nil {
			f.links = append(f.links, attached{Attachment{iface, m}, l})
			return nil
		}
		if mode == ModeNative && errors.Is(err, unix.EOPNOTSUPP) {
			// Asked for by name, so no generic fallback: the operator
			// must choose, and no restart will change the driver.
			return fmt.Errorf("attach xdp to %s: native mode: %w: its driver has no XDP support; use --xdp-mode generic, or auto to fall back to it (%v)", iface, ErrInterface, err)
		}
		err = fmt.Errorf("%v mode: %w", m, err)
		if errs == nil {
			errs = err
		} else {
			errs = fmt.Errorf("%w; %w", errs, err)
		}
		if isPermission(err) {
			break // generic mode needs the same capability
		}
	}
	return explain("attach xdp to "+iface, errs, true, currentPrivileges(), kernelRelease())
}

// checkEthernet fails unless iface's frames start with an Ethernet header,
// which the program parses: Ethernet devices (veth, bridges, bonds, VLAN
// devices, and tunnels that carry Ethernet: gretap, VXLAN, Geneve) and
// loopback, whose frames carry a zeroed one. On a layer-3 device (tun,
// WireGuard, ipip, gre, sit) the program would read the IP header as an
// Ethernet header and pass every packet unpoliced.
func checkEthernet(iface string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(iface)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFHWADDR, ifr); err != nil {
		return os.NewSyscallError("ioctl SIOCGIFHWADDR", err)
	}
	// The hardware address's family is the link type, ARPHRD_*.
	if t := ifr.Uint16(); t != unix.ARPHRD_ETHER && t != unix.ARPHRD_LOOPBACK {
		return fmt.Errorf("%w: link type %d is not Ethernet: the program parses Ethernet frames and would pass this device's packets unpoliced", ErrInterface, t)
	}
	return nil
}

// LinkFD is an attachment with its bpf_link descriptor, for an upgrade's
// handoff to a successor process.
type LinkFD struct {
	Attachment
	FD int // owned by the Firewall: the receiver gets its own copy
}

// LinkFDs returns every attachment's bpf_link descriptor.
func (f *Firewall) LinkFDs() []LinkFD {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []LinkFD
	for _, a := range f.links {
		if l, ok := a.link.(interface{ FD() int }); ok {
			out = append(out, LinkFD{a.Attachment, l.FD()})
		}
	}
	return out
}

// Adopt takes over a link a predecessor attached to iface, given its
// bpf_link descriptor (received over the upgrade handoff; Adopt owns it
// from then on, also on error). The link's program is swapped for this
// firewall's in one BPF_LINK_UPDATE, so the interface is never without a
// program; the predecessor closing its own descriptor later leaves the link
// to this process. Counters and rate-limit buckets start afresh with the
// new maps.
func (f *Firewall) Adopt(iface string, mode Mode, fd int) error {
	l, err := link.NewFromFD(fd)
	if err != nil {
		return fmt.Errorf("adopt xdp link on %s: %w", iface, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		l.Close()
		return ErrClosed
	}
	if err := l.Update(f.objs.XdpFirewall); err != nil {
		l.Close()
		return fmt.Errorf("adopt xdp link on %s: replace program: %w", iface, err)
	}
	f.links = append(f.links, attached{Attachment{iface, mode}, l})
	return nil
}

// Reclaim swaps this firewall's program back into every link it holds.
// It is for an upgrade that failed after the successor adopted the links:
// the successor swapped its own program in, whose maps this process cannot
// update and which would keep enforcing the successor's rules.
func (f *Firewall) Reclaim() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	var errs []error
	for _, a := range f.links {
		if err := a.link.Update(f.objs.XdpFirewall); err != nil {
			errs = append(errs, fmt.Errorf("reclaim xdp link on %s: %w", a.Iface, err))
		}
	}
	return errors.Join(errs...)
}

// Attachments returns the interfaces the program is attached to, in the
// order of Attach.
func (f *Firewall) Attachments() []Attachment {
	f.mu.Lock()
	defer f.mu.Unlock()
	as := make([]Attachment, len(f.links))
	for i, a := range f.links {
		as[i] = a.Attachment
	}
	return as
}

// Update replaces the rules by updating the maps, with the program left
// attached. cfg is validated first and an invalid one changes nothing.
//
// The change is not atomic, but ordered so that meanwhile a packet is
// admitted only if the old or the new rules admit it: new deny and allow
// prefixes are added before the old ones are removed (there is never a
// moment without the deny list), the allow list is switched on only once
// filled and off before it is emptied, and new ports become protected after
// their rules are in place. The maps have room for the old and the new
// rules together, so any valid cfg fits. If a map update fails midway,
// Update puts the old rules back and returns the error.
func (f *Firewall) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("check firewall config: %w", err)
	}
	if cfg.RateSources != 0 && cfg.RateSources != f.sources {
		return fmt.Errorf("check firewall config: rate limiter table size %d differs from %d, which only New can set", cfg.RateSources, f.sources)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	old := f.applied.clone()
	if err := f.apply(compile(cfg)); err != nil {
		if rerr := f.apply(old); rerr != nil {
			return fmt.Errorf("update xdp firewall: %w (and restore old rules: %w)", err, rerr)
		}
		return fmt.Errorf("update xdp firewall: %w", err)
	}
	return nil
}

// apply makes the maps hold want, by differences from f.applied, which it
// keeps true after every single map operation. Called with f.mu held (or
// before f is shared).
func (f *Firewall) apply(want rules) error {
	cur := &f.applied
	for p := range want.deny {
		if _, ok := cur.deny[p]; !ok {
			if err := f.putPrefix(f.objs.DenyV4, f.objs.DenyV6, p); err != nil {
				return fmt.Errorf("add deny prefix %s: %w", p, err)
			}
			cur.deny[p] = struct{}{}
		}
	}
	for p := range want.allow {
		if _, ok := cur.allow[p]; !ok {
			if err := f.putPrefix(f.objs.AllowV4, f.objs.AllowV6, p); err != nil {
				return fmt.Errorf("add allow prefix %s: %w", p, err)
			}
			cur.allow[p] = struct{}{}
		}
	}
	if want.conf != cur.conf {
		if err := f.objs.Config.Update(uint32(0), want.conf, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("set rule config: %w", err)
		}
		cur.conf = want.conf
	}
	for k := range want.ports {
		if _, ok := cur.ports[k]; !ok {
			if err := f.objs.ProtectedPorts.Update(k, uint8(1), ebpf.UpdateAny); err != nil {
				return fmt.Errorf("protect port %d/%d: %w", k.Proto, k.Port, err)
			}
			cur.ports[k] = struct{}{}
		}
	}
	for k := range cur.ports {
		if _, ok := want.ports[k]; !ok {
			if err := deleteKey(f.objs.ProtectedPorts, k); err != nil {
				return fmt.Errorf("unprotect port %d/%d: %w", k.Proto, k.Port, err)
			}
			delete(cur.ports, k)
		}
	}
	for p := range cur.allow {
		if _, ok := want.allow[p]; !ok {
			if err := f.deletePrefix(f.objs.AllowV4, f.objs.AllowV6, p); err != nil {
				return fmt.Errorf("remove allow prefix %s: %w", p, err)
			}
			delete(cur.allow, p)
		}
	}
	for p := range cur.deny {
		if _, ok := want.deny[p]; !ok {
			if err := f.deletePrefix(f.objs.DenyV4, f.objs.DenyV6, p); err != nil {
				return fmt.Errorf("remove deny prefix %s: %w", p, err)
			}
			delete(cur.deny, p)
		}
	}
	return nil
}

// lpmKey returns the LPM trie key for p, which must be masked and unmapped.
func lpmKey(p netip.Prefix) any {
	if p.Addr().Is4() {
		return firewallLpmV4Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As4()}
	}
	return firewallLpmV6Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
}

func (f *Firewall) putPrefix(v4, v6 *ebpf.Map, p netip.Prefix) error {
	m := v6
	if p.Addr().Is4() {
		m = v4
	}
	return m.Update(lpmKey(p), uint8(1), ebpf.UpdateAny)
}

func (f *Firewall) deletePrefix(v4, v6 *ebpf.Map, p netip.Prefix) error {
	m := v6
	if p.Addr().Is4() {
		m = v4
	}
	return deleteKey(m, lpmKey(p))
}

// deleteKey deletes key from m; a key already gone is not an error.
func deleteKey(m *ebpf.Map, key any) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// Counters are packet counts by verdict since New, summed over CPUs.
type Counters struct {
	Passed      uint64 // to a protected port, admitted by every rule
	Denied      uint64 // to a protected port, source in the deny list
	NotAllowed  uint64 // to a protected port, source not in the allow list
	RateLimited uint64 // to a protected port, source over its rate
	Malformed   uint64 // dropped: ports unknown, or headers cut short at a protected port
	Unprotected uint64 // passed unpoliced: not to a protected port, or not TCP/UDP
	Fragments   uint64 // passed unpoliced: non-first IP fragments
}

// VerdictCount is one verdict's count, labelled for metrics.
type VerdictCount struct {
	Verdict string // "passed", "denied", "not_allowed", "rate_limited", "malformed", "unprotected", "fragment"
	Packets uint64
}

// Verdicts returns c as label and value pairs, in a fixed order, for a
// metric such as sluice_firewall_packets_total{verdict}.
func (c Counters) Verdicts() []VerdictCount {
	return []VerdictCount{
		{"passed", c.Passed},
		{"denied", c.Denied},
		{"not_allowed", c.NotAllowed},
		{"rate_limited", c.RateLimited},
		{"malformed", c.Malformed},
		{"unprotected", c.Unprotected},
		{"fragment", c.Fragments},
	}
}

// String returns the counters as "passed=1 denied=0 ...", for a log line.
func (c Counters) String() string {
	var b strings.Builder
	for i, v := range c.Verdicts() {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", v.Verdict, v.Packets)
	}
	return b.String()
}

// Counters reads the verdict counters. Each is exact per CPU; the sum is
// not a snapshot across CPUs.
func (f *Firewall) Counters() (Counters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return Counters{}, ErrClosed
	}
	var c Counters
	var perCPU []uint64
	for v := firewallVerdict(0); v < firewallVerdictVERDICT_MAX; v++ {
		if err := f.objs.Verdicts.Lookup(uint32(v), &perCPU); err != nil {
			return Counters{}, fmt.Errorf("read verdict counter %d: %w", v, err)
		}
		dst := c.field(v)
		for _, n := range perCPU {
			*dst += n
		}
	}
	return c, nil
}

// field returns the counter for v, which must be below VERDICT_MAX.
func (c *Counters) field(v firewallVerdict) *uint64 {
	switch v {
	case firewallVerdictVERDICT_PASSED:
		return &c.Passed
	case firewallVerdictVERDICT_DENIED:
		return &c.Denied
	case firewallVerdictVERDICT_NOT_ALLOWED:
		return &c.NotAllowed
	case firewallVerdictVERDICT_RATE_LIMITED:
		return &c.RateLimited
	case firewallVerdictVERDICT_MALFORMED:
		return &c.Malformed
	case firewallVerdictVERDICT_UNPROTECTED:
		return &c.Unprotected
	case firewallVerdictVERDICT_FRAGMENT:
		return &c.Fragments
	}
	panic(fmt.Sprintf("firewall: verdict %d has no counter", v))
}

// Close detaches the program from every interface and releases the maps
// and the program. Later calls return nil.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	var errs []error
	for _, a := range f.links {
		if err := a.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach xdp from %s: %w", a.Iface, err))
		}
	}
	f.links = nil
	if err := f.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close xdp firewall: %w", err))
	}
	return errors.Join(errs...)
}
