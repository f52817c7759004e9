package server

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// The warnings a reload gives for what it does not apply.
const (
	warnRestart   = "settings changed in the config file are not applied by a reload; a restart or an upgrade (SIGUSR2) applies them"
	warnStopStart = "settings changed in the config file are not applied by a reload nor by an upgrade, whose xdp link keeps its mode; stop and start sluice to apply them"
	warnAdded     = "service added to the config file is not started by a reload; a restart or an upgrade (SIGUSR2) starts it"
	warnRemoved   = "service removed from the config file keeps running; a restart or an upgrade (SIGUSR2) stops it"
)

// logged returns the entries logged with msg as "service: settings"
// ("-" for a field the entry lacks), sorted.
func logged(logs *observer.ObservedLogs, msg string) []string {
	var out []string
	for _, e := range logs.FilterMessage(msg).All() {
		m := e.ContextMap()
		field := func(k string) string {
			if v, ok := m[k]; ok {
				return fmt.Sprint(v)
			}
			return "-"
		}
		out = append(out, field("service")+": "+field("settings"))
	}
	slices.Sort(out)
	return out
}

// TestReloadFollowsBackendsFileAndNamesTheRest: a reload switches a
// service to the backends file the config file now names, and watches
// that one from then on; every other setting that changed, and a service
// added or removed, is named in one warning per service (and one for the
// global settings), not passed over in silence.
func TestReloadFollowsBackendsFileAndNamesTheRest(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	b := testsrv.StartTB(t, testsrv.Echo, "tcp")
	dir := t.TempDir()
	aFile, bFile, conf := filepath.Join(dir, "a.backends"), filepath.Join(dir, "b.backends"), filepath.Join(dir, "sluice.conf")
	writeFile(t, aFile, a.Addr().String())
	writeFile(t, bFile, b.Addr().String())
	one := []string{"[service one]", "listen 127.0.0.1:0", "health-interval 1h"}
	two := []string{"[service two]", "listen 127.0.0.1:0", "health-interval 1h", "backend " + a.Addr().String()}
	writeFile(t, conf, slices.Concat(one, []string{"backends-file " + aFile}, two)...)
	core, logs := observer.New(zapcore.InfoLevel)
	s := startCfg(t, parse(t, "--config", conf), zap.New(core))
	members := func(want ...netip.AddrPort) {
		t.Helper()
		slices.SortFunc(want, netip.AddrPort.Compare)
		if got := s.Service("one").Members(); !slices.Equal(got, want) {
			t.Fatalf("service one has %v, want %v", got, want)
		}
	}
	members(a.Addr())

	writeFile(t, conf, slices.Concat(
		[]string{"drain-timeout 7s"},
		one, []string{"backends-file " + bFile, "idle-timeout 5s", "hash-key src-ip-port"},
		[]string{"[service cache]", "listen 127.0.0.1:0", "backend " + a.Addr().String()},
	)...)
	s.Reload()
	if got := logged(logs, "backends file switched"); len(got) != 1 {
		t.Errorf("backends file switch logged %q, want once", got)
	}
	for msg, want := range map[string][]string{
		warnRestart:   {"-: [drain-timeout]", "one: [hash-key idle-timeout]"},
		warnAdded:     {"cache: -"},
		warnRemoved:   {"two: -"},
		warnStopStart: nil,
	} {
		if got := logged(logs, msg); !slices.Equal(got, want) {
			t.Errorf("warnings %q: %q, want %q", msg, got, want)
		}
	}
	if s.Service("cache") != nil {
		t.Error("a reload started service cache")
	}
	members(b.Addr())

	// The file watched is the new one.
	writeFile(t, bFile, a.Addr().String(), b.Addr().String())
	waitFor(t, "the backends of the switched-to file", func() bool { return len(s.Service("one").Members()) == 2 })
	members(a.Addr(), b.Addr())

	// Without a backends file the file's backends go.
	writeFile(t, conf, slices.Concat(one, []string{"backend " + b.Addr().String()}, two)...)
	s.Reload()
	members(b.Addr())
}

// TestReloadWarnsOfIgnoredFirewall: a reload that adds firewall rules to a
// process started without the XDP firewall, or changes its interfaces or
// mode, says that they are not applied rather than nothing.
func TestReloadWarnsOfIgnoredFirewall(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	service := []string{"[service one]", "listen 127.0.0.1:0", "backend " + a.Addr().String(), "health-interval 1h"}
	writeFile(t, conf, service...)
	core, logs := observer.New(zapcore.WarnLevel)
	s := startCfg(t, parse(t, "--config", conf), zap.New(core))
	writeFile(t, conf, append([]string{"deny-cidr 198.18.0.3/32", "xdp-iface lo", "xdp-mode generic"}, service...)...)
	s.Reload()
	for msg, want := range map[string][]string{
		"firewall rules ignored: this process runs without the xdp firewall (no --xdp-iface at start); restart or upgrade (SIGUSR2) to load it": {"-: -"},
		warnRestart:   {"-: [xdp-iface]"},
		warnStopStart: {"-: [xdp-mode]"},
	} {
		if got := logged(logs, msg); !slices.Equal(got, want) {
			t.Errorf("warnings %q: %q, want %q; all: %v", msg, got, want, logs.All())
		}
	}
}

// TestReloadMovesBackendBetweenLists: a reload that turns a backends file's
// line into a static one (and back) changes both lists in one step: the
// backend never leaves, so it keeps its connections' counts and no client
// meets an empty service.
func TestReloadMovesBackendBetweenLists(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	dir := t.TempDir()
	file, conf := filepath.Join(dir, "a.backends"), filepath.Join(dir, "sluice.conf")
	writeFile(t, file, a.Addr().String())
	head := []string{"[service db]", "listen 127.0.0.1:0", "health-interval 1h"}
	writeFile(t, conf, slices.Concat(head, []string{"backends-file " + file})...)
	core, logs := observer.New(zapcore.InfoLevel)
	s := startCfg(t, parse(t, "--config", conf), zap.New(core))
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("through the backend: %v", err)
	}
	info := func() string {
		var out []string
		for _, bi := range s.Service("db").Info() {
			out = append(out, fmt.Sprintf("%s %v active=%d total=%d", bi.Address, bi.Sources, bi.ActiveConnections, bi.Connections))
		}
		return fmt.Sprint(out)
	}
	want := func(source string) string {
		return fmt.Sprintf("[%s [%s] active=1 total=1]", a.Addr(), source)
	}
	if got := info(); got != want("file") {
		t.Fatalf("before the reload: %s, want %s", got, want("file"))
	}
	writeFile(t, conf, slices.Concat(head, []string{"backend " + a.Addr().String()})...)
	s.Reload()
	if got := info(); got != want("static") {
		t.Fatalf("after the file's line became static: %s, want %s", got, want("static"))
	}
	writeFile(t, conf, slices.Concat(head, []string{"backends-file " + file})...)
	s.Reload()
	if got := info(); got != want("file") {
		t.Fatalf("after it went back to the file: %s, want %s", got, want("file"))
	}
	if n := logs.FilterMessage("backend removed").Len(); n != 0 {
		t.Fatalf("%d backend removed lines: the backend left the service", n)
	}
}

// TestReloadWarnsOnlyOfChangedValues: a reload names the settings whose
// values changed, not those merely spelled another way: an address
// written another way, a log level in capitals, a default written out,
// the entries of a list in another order. It names them again at every
// reload until a restart applies them: each reload's log says all that
// the file asks and the process does not do.
func TestReloadWarnsOnlyOfChangedValues(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	service := func(listen, trusted, extra string) []string {
		return []string{"[service one]", "listen " + listen, "backend " + a.Addr().String(), "health-interval 1h",
			"accept-proxy-protocol true", trusted, extra}
	}
	writeFile(t, conf, slices.Concat([]string{"log-level info", "admin-addr 127.0.0.1:0"},
		service("127.0.0.1:0", "proxy-protocol-trusted 10.0.0.0/8\nproxy-protocol-trusted 192.0.2.1/32", ""))...)
	core, logs := observer.New(zapcore.WarnLevel)
	s := startCfg(t, parse(t, "--config", conf), zap.New(core))
	writeFile(t, conf, slices.Concat([]string{"log-level INFO", "admin-addr [::ffff:127.0.0.1]:0"},
		service("[::ffff:127.0.0.1]:0", "proxy-protocol-trusted 192.0.2.1\nproxy-protocol-trusted 10.0.0.0/8", "health-check tcp"))...)
	s.Reload()
	if got := logs.All(); len(got) != 0 {
		t.Errorf("a reload of the same settings spelled otherwise warned: %v", got)
	}
	writeFile(t, conf, slices.Concat([]string{"log-level info", "admin-addr 127.0.0.1:0"},
		service("127.0.0.1:0", "proxy-protocol-trusted 10.0.0.0/8", "idle-timeout 5s"))...)
	for range 2 {
		s.Reload()
	}
	want := []string{"one: [idle-timeout proxy-protocol-trusted]", "one: [idle-timeout proxy-protocol-trusted]"}
	if got := logged(logs, warnRestart); !slices.Equal(got, want) {
		t.Errorf("warnings of two reloads of changed settings: %q, want %q; all: %v", got, want, logs.All())
	}
}

// TestReloadPassiveFallMoot: --passive-fall does nothing for a TCP service
// with --health-check none (passive ejection is off there: nothing would
// bring an ejected backend back) or for a UDP service (no connects on the
// data path to count), so a reload that changes only it there warns of
// nothing. Where it acts, its change is named. A check added names the
// check, and --passive-fall too only if its value was changed with it.
func TestReloadPassiveFallMoot(t *testing.T) {
	a := testsrv.StartTB(t, testsrv.Echo, "tcp")
	u := testsrv.StartTB(t, testsrv.Echo, "udp")
	conf := filepath.Join(t.TempDir(), "sluice.conf")
	file := func(noneFall, checkedFall, udpFall, noneCheck string) []string {
		return []string{
			"[service none]", "listen 127.0.0.1:0", "backend " + a.Addr().String(), "health-check " + noneCheck, "health-interval 1h", "passive-fall " + noneFall,
			"[service checked]", "listen 127.0.0.1:0", "backend " + a.Addr().String(), "health-interval 1h", "passive-fall " + checkedFall,
			"[service dgram]", "proto udp", "listen 127.0.0.1:0", "backend " + u.Addr().String(), "passive-fall " + udpFall,
		}
	}
	writeFile(t, conf, file("3", "3", "3", "none")...)
	core, logs := observer.New(zapcore.WarnLevel)
	s := startCfg(t, parse(t, "--config", conf), zap.New(core))

	writeFile(t, conf, file("5", "3", "5", "none")...)
	s.Reload()
	if got := logs.TakeAll(); len(got) != 0 {
		t.Errorf("a reload that changed --passive-fall only where it does nothing warned: %v", got)
	}
	writeFile(t, conf, file("5", "5", "5", "none")...)
	s.Reload()
	if got, want := logged(logs, warnRestart), []string{"checked: [passive-fall]"}; !slices.Equal(got, want) {
		t.Errorf("--passive-fall changed where it acts: warnings %q, want %q", got, want)
	}
	for _, c := range []struct {
		noneFall string
		want     []string
	}{
		{"3", []string{"none: [health-check]"}},
		{"5", []string{"none: [health-check passive-fall]"}},
	} {
		logs.TakeAll()
		writeFile(t, conf, file(c.noneFall, "3", "3", "tcp")...)
		s.Reload()
		if got := logged(logs, warnRestart); !slices.Equal(got, c.want) {
			t.Errorf("an active check added, --passive-fall %s: warnings %q, want %q", c.noneFall, got, c.want)
		}
	}
}
