package main

import (
	"errors"
	"math"
	"net/netip"
	"strconv"
	"strings"

	"github.com/sluice-lb/sluice/internal/loadgen"
)

// addrValue is a pflag.Value for IP:PORT; "localhost" means 127.0.0.1.
type addrValue netip.AddrPort

func parseAddr(s string) (netip.AddrPort, error) {
	if rest, ok := strings.CutPrefix(s, "localhost:"); ok {
		s = "127.0.0.1:" + rest
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, errors.New("want IP:PORT, like 127.0.0.1:7000 or [::1]:7000")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func (v *addrValue) Set(s string) error {
	ap, err := parseAddr(s)
	if err != nil {
		return err
	}
	*v = addrValue(ap)
	return nil
}

func (v *addrValue) String() string {
	if !netip.AddrPort(*v).IsValid() {
		return ""
	}
	return netip.AddrPort(*v).String()
}

func (v *addrValue) Type() string { return "addr" }

// prefixValue is a pflag.Value for an address range like 127.0.0.0/16.
type prefixValue netip.Prefix

func (v *prefixValue) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return errors.New("want an address range, like 127.0.0.0/16")
	}
	*v = prefixValue(p)
	return nil
}

func (v *prefixValue) String() string {
	if !netip.Prefix(*v).IsValid() {
		return ""
	}
	return netip.Prefix(*v).String()
}

func (v *prefixValue) Type() string { return "cidr" }

// sizeValue is a pflag.Value for a size in bytes with an optional binary
// suffix: 64, 64B, 16K, 16KiB, 1M, 1MiB, 1G.
type sizeValue int

func (v *sizeValue) Set(s string) error {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"b", 1}} {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 63)
	if err != nil || n > math.MaxInt32/uint64(mult) {
		return errors.New("want a size in bytes, like 64, 16K or 1M (K = 1024)")
	}
	*v = sizeValue(int(n) * mult)
	return nil
}

func (v *sizeValue) String() string {
	n := int(*v)
	switch {
	case n == 0:
		return "0"
	case n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "M"
	case n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "K"
	}
	return strconv.Itoa(n)
}

func (v *sizeValue) Type() string { return "bytes" }

// directionValue is a pflag.Value for a stream direction.
type directionValue loadgen.Direction

func (v *directionValue) Set(s string) error {
	switch d := loadgen.Direction(s); d {
	case loadgen.Push, loadgen.Pull, loadgen.Both:
		*v = directionValue(d)
		return nil
	}
	return errors.New("want push, pull or both")
}

func (v *directionValue) String() string { return string(*v) }

func (v *directionValue) Type() string { return "push|pull|both" }
