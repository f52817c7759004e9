package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Tests that need no privileges: configuration, modes, error mapping.

func TestValidate(t *testing.T) {
	tooMany := make([]Port, MaxPorts+1)
	for i := range tooMany {
		tooMany[i] = Port{"tcp", uint16(i + 1)}
	}
	tests := []struct {
		name string
		cfg  Config
		errs []string // substrings, one per expected problem
	}{
		{"zero", Config{}, nil},
		{"default", DefaultConfig(), nil},
		{"full", Config{
			Ports:     []Port{{"tcp", 443}, {"udp", 53}},
			Deny:      prefixes("198.18.0.0/15", "2001:db8::/32"),
			Allow:     prefixes("198.18.0.0/24"),
			RateLimit: 100, RateBurst: 200,
		}, nil},
		{"bad proto and port", Config{Ports: []Port{{"sctp", 1}, {"tcp", 0}}}, []string{`protocol "sctp"`, "port 0"}},
		{"too many ports", Config{Ports: tooMany}, []string{"1025 protected ports"}},
		{"invalid prefix", Config{Deny: []netip.Prefix{{}}, Allow: []netip.Prefix{{}}}, []string{"deny prefix", "allow prefix"}},
		{"rate too high", Config{RateLimit: MaxRateLimit + 1}, []string{"above the maximum"}},
		{"burst without rate", Config{RateBurst: 5}, []string{"without a rate limit"}},
		{"table too big", Config{RateSources: MaxRateSources + 1}, []string{"rate limiter table"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.errs) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.errs) {
				t.Errorf("got %d problems, want %d: %v", len(lines), len(tt.errs), err)
			}
			for _, want := range tt.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestCompile(t *testing.T) {
	r := compile(Config{
		Ports:     []Port{{"tcp", 443}, {"udp", 443}, {"tcp", 443}},
		Deny:      prefixes("198.18.0.7/24", "198.18.0.0/24", "::ffff:198.19.0.0/112", "2001:db8::1/32"),
		Allow:     prefixes("198.18.5.0/24"),
		RateLimit: 3,
	})
	if len(r.ports) != 2 {
		t.Errorf("ports %v, want tcp/443 and udp/443", r.ports)
	}
	for _, k := range []firewallPortKey{{Proto: 6, Port: 443}, {Proto: 17, Port: 443}} {
		if _, ok := r.ports[k]; !ok {
			t.Errorf("port %v missing", k)
		}
	}
	wantDeny := prefixes("198.18.0.0/24", "198.19.0.0/16", "2001:db8::/32")
	if len(r.deny) != len(wantDeny) {
		t.Errorf("deny %v, want %v", r.deny, wantDeny)
	}
	for _, p := range wantDeny {
		if _, ok := r.deny[p]; !ok {
			t.Errorf("deny %v missing %s", r.deny, p)
		}
	}
	if r.conf.Flags != firewallConfigFlagCONFIG_ALLOW_LIST {
		t.Errorf("flags %v, want the allow list on", r.conf.Flags)
	}
	// 1e9/3 rounds to 333333333; the burst defaults to the rate.
	if r.conf.RateIntervalNs != 333333333 || r.conf.RateBurstNs != 3*333333333 {
		t.Errorf("interval %d, burst %d", r.conf.RateIntervalNs, r.conf.RateBurstNs)
	}
	if c := compile(Config{}).conf; c != (firewallRuleConfig{}) {
		t.Errorf("empty config compiles to %+v", c)
	}
	c := compile(Config{RateLimit: MaxRateLimit, RateBurst: ^uint32(0)}).conf
	if c.RateIntervalNs != 100 || c.RateBurstNs != 100*uint64(^uint32(0)) {
		t.Errorf("extreme rate compiles to %+v", c)
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModeAuto, ModeNative, ModeGeneric} {
		got, err := ParseMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseMode("offload"); err == nil {
		t.Error("ParseMode accepted offload")
	}
}

func TestCountersLabels(t *testing.T) {
	// Every verdict the program counts has its own field and label.
	var c Counters
	seen := map[*uint64]bool{}
	for v := firewallVerdict(0); v < firewallVerdictVERDICT_MAX; v++ {
		p := c.field(v)
		if seen[p] {
			t.Errorf("verdict %d shares a field", v)
		}
		seen[p] = true
		*p = uint64(v) + 1
	}
	vs := c.Verdicts()
	if len(vs) != int(firewallVerdictVERDICT_MAX) {
		t.Fatalf("%d labels for %d verdicts", len(vs), firewallVerdictVERDICT_MAX)
	}
	for i, v := range vs {
		if v.Packets != uint64(i)+1 {
			t.Errorf("label %s has %d, want the count of verdict %d", v.Verdict, v.Packets, i)
		}
	}
	want := "passed=1 denied=2 not_allowed=3 rate_limited=4 malformed=5 unprotected=6 fragment=7"
	if s := c.String(); s != want {
		t.Errorf("String() = %q, want %q", s, want)
	}
}

func TestExplain(t *testing.T) {
	eperm := fmt.Errorf("map create: %w", unix.EPERM)
	unsupported := fmt.Errorf("link: %w", ebpf.ErrNotSupported)
	einval := fmt.Errorf("load program: %w", unix.EINVAL)
	all := privileges{bpf: true, netAdmin: true, perfmon: true}
	tests := []struct {
		name    string
		err     error
		attach  bool
		p       privileges
		release string
		is      error
		says    string
	}{
		{"no caps", eperm, false, privileges{}, "6.1.0", ErrPermission, "lacks CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"},
		{"no bpf", eperm, false, privileges{netAdmin: true, perfmon: true}, "6.1.0", ErrPermission, "lacks CAP_BPF:"},
		{"no net admin", eperm, false, privileges{bpf: true, perfmon: true}, "6.1.0", ErrPermission, "lacks CAP_NET_ADMIN:"},
		{"no perfmon", fmt.Errorf("load program: %w", unix.EACCES), false, privileges{bpf: true, netAdmin: true}, "6.18.0", ErrPermission, "lacks CAP_PERFMON:"},
		{"attach no net admin", eperm, true, privileges{}, "6.1.0", ErrPermission, "lacks CAP_NET_ADMIN:"},
		{"all caps still refused", eperm, false, all, "6.1.0", ErrPermission, "lockdown"},
		{"not supported", unsupported, true, all, "5.4.0-150-generic", ErrUnsupported, "kernel 5.4.0-150-generic, need 5.12 or later"},
		{"old verifier", einval, false, all, "5.10.0-28-amd64", ErrUnsupported, "kernel 5.10.0-28-amd64, need 5.12"},
		{"new kernel other error", einval, false, all, "6.18.44", nil, "load: load program: invalid argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := explain("load", tt.err, tt.attach, tt.p, tt.release)
			if !errors.Is(err, tt.err) {
				t.Errorf("%v does not wrap %v", err, tt.err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("%v is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.says) {
				t.Errorf("%q does not say %q", err, tt.says)
			}
		})
	}
}

func TestOlderThan(t *testing.T) {
	for _, tt := range []struct {
		release string
		want    bool
	}{
		{"5.11.0", true}, {"5.12.0", false}, {"4.19.0-27-amd64", true}, {"6.1.0-rc1", false},
		{"5.15", false}, {"5.9-foo", true}, {"garbage", false}, {"", false},
	} {
		if got := olderThan(tt.release, "5.12"); got != tt.want {
			t.Errorf("olderThan(%q) = %v", tt.release, got)
		}
	}
}

// TestNewUnprivileged runs where the others skip: without the capabilities,
// New must fail with an error that names them.
func TestNewUnprivileged(t *testing.T) {
	m := currentPrivileges().missing(false)
	if m == "" {
		t.Skip("the process has CAP_BPF and CAP_NET_ADMIN: nothing to refuse (TestExplain covers the mapping)")
	}
	f, err := New(DefaultConfig())
	if err == nil {
		f.Close()
		t.Fatal("New succeeded without " + m)
	}
	if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), m) {
		t.Errorf("New: %v; want ErrPermission naming %s", err, m)
	}
	t.Logf("New: %v", err)
}
