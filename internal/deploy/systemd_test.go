package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	mainUnit     = "scripts/sluice.service"
	templateUnit = "scripts/sluice@.service"
	firewallConf = "scripts/sluice-firewall.conf"
	envExample   = "scripts/sluice.env.example"
	confExample  = "scripts/sluice.conf.example"
	installedBin = "/usr/local/bin/sluice"
)

// TestUnitSettings checks, without systemd, the settings that
// docs/production.md promises of both units.
func TestUnitSettings(t *testing.T) {
	drain := defaultDrain(t)
	for _, path := range []string{mainUnit, templateUnit} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			u := parseUnit(t, path)
			exact := map[string]string{
				"Type":                    "exec",
				"Restart":                 "on-failure",
				"NotifyAccess":            "main",
				"KillSignal":              "SIGTERM",
				"KillMode":                "control-group",
				"NoNewPrivileges":         "yes",
				"DynamicUser":             "yes",
				"AmbientCapabilities":     "CAP_NET_BIND_SERVICE",
				"CapabilityBoundingSet":   "CAP_NET_BIND_SERVICE",
				"ProtectSystem":           "strict",
				"ProtectHome":             "yes",
				"PrivateTmp":              "yes",
				"PrivateDevices":          "yes",
				"ProtectKernelTunables":   "yes",
				"ProtectKernelModules":    "yes",
				"ProtectControlGroups":    "yes",
				"RestrictNamespaces":      "yes",
				"RestrictRealtime":        "yes",
				"LockPersonality":         "yes",
				"MemoryDenyWriteExecute":  "yes",
				"SystemCallArchitectures": "native",
				"SystemCallErrorNumber":   "EPERM",
				"UMask":                   "0077",
			}
			for k, want := range exact {
				if got := u.value(t, "Service", k); got != want {
					t.Errorf("%s=%s, want %s", k, got, want)
				}
			}
			if got := u.value(t, "Service", "ExecReload"); got != "/bin/kill -HUP $MAINPID" {
				t.Errorf("ExecReload=%s, want SIGHUP to $MAINPID", got)
			}
			if n, err := strconv.Atoi(u.value(t, "Service", "LimitNOFILE")); err != nil || n < 1<<20 {
				t.Errorf("LimitNOFILE=%s, want a number of at least %d", u.value(t, "Service", "LimitNOFILE"), 1<<20)
			}
			if stop := parseSeconds(t, u.value(t, "Service", "TimeoutStopSec")); stop < drain+10*time.Second {
				t.Errorf("TimeoutStopSec=%v leaves under 10s beyond the default drain timeout %v", stop, drain)
			}
			if !slices.Contains(strings.Fields(u.value(t, "Service", "RestartPreventExitStatus")), "2") {
				t.Error("RestartPreventExitStatus lacks 2 (bad command line: restarting cannot help)")
			}
			// An allow list first, then privileged calls (bpf among them)
			// taken out; the firewall drop-in adds bpf back.
			filters := u.values("Service", "SystemCallFilter")
			if len(filters) == 0 || filters[0] != "@system-service" {
				t.Errorf("SystemCallFilter=%q, want @system-service first", filters)
			}
			if !slices.ContainsFunc(filters, func(f string) bool {
				return strings.HasPrefix(f, "~") && slices.Contains(strings.Fields(strings.TrimPrefix(f, "~")), "@privileged")
			}) {
				t.Errorf("SystemCallFilter=%q: @privileged is not denied", filters)
			}
			families := strings.Fields(u.value(t, "Service", "RestrictAddressFamilies"))
			for _, f := range []string{"AF_INET", "AF_INET6", "AF_UNIX"} {
				if !slices.Contains(families, f) {
					t.Errorf("RestrictAddressFamilies lacks %s", f)
				}
			}
			if slices.Contains(families, "AF_NETLINK") || slices.Contains(families, "AF_PACKET") {
				t.Errorf("RestrictAddressFamilies=%v: netlink is for the firewall drop-in only", families)
			}
			// PrivateUsers would confine the capabilities to a new user
			// namespace, useless for the host's ports and interfaces.
			if v := u.values("Service", "PrivateUsers"); len(v) > 0 {
				t.Errorf("PrivateUsers=%v set", v)
			}
			for _, s := range u.settings {
				if s.section == "Service" && !s.explained {
					t.Errorf("%s:%d: %s has no comment above it", path, s.line, s.key)
				}
			}
		})
	}
}

// TestTemplateMatchesMainUnit keeps the two units from drifting apart: they
// differ only in where the flags come from and in the user's name.
func TestTemplateMatchesMainUnit(t *testing.T) {
	differ := []string{"ExecStart", "EnvironmentFile", "User", "Group"}
	collect := func(u unit) map[string][]string {
		m := map[string][]string{}
		for _, s := range u.settings {
			if s.section == "Service" && !slices.Contains(differ, s.key) {
				m[s.key] = append(m[s.key], s.value)
			}
		}
		return m
	}
	main, tmpl := collect(parseUnit(t, mainUnit)), collect(parseUnit(t, templateUnit))
	for k, v := range main {
		if !slices.Equal(v, tmpl[k]) {
			t.Errorf("%s: %q in %s, %q in %s", k, v, mainUnit, tmpl[k], templateUnit)
		}
	}
	for k, v := range tmpl {
		if _, ok := main[k]; !ok {
			t.Errorf("%s=%q only in %s", k, v, templateUnit)
		}
	}
	u := parseUnit(t, templateUnit)
	if got := u.value(t, "Service", "EnvironmentFile"); got != "/etc/sluice/%i.env" {
		t.Errorf("EnvironmentFile=%s", got)
	}
	// Unbraced: systemd splits the value into separate arguments.
	if got := u.value(t, "Service", "ExecStart"); got != installedBin+" $SLUICE_ARGS" {
		t.Errorf("ExecStart=%s", got)
	}
}

func TestFirewallDropIn(t *testing.T) {
	u := parseUnit(t, firewallConf)
	caps := []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}
	for _, k := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		if got := strings.Fields(u.value(t, "Service", k)); !slices.Equal(got, caps) {
			t.Errorf("%s=%v, want %v", k, got, caps)
		}
	}
	if got := u.value(t, "Service", "SystemCallFilter"); got != "bpf" {
		t.Errorf("SystemCallFilter=%s, want bpf alone", got)
	}
	if got := u.value(t, "Service", "RestrictAddressFamilies"); got != "AF_NETLINK" {
		t.Errorf("RestrictAddressFamilies=%s, want AF_NETLINK", got)
	}
	for _, s := range u.settings {
		if !s.explained {
			t.Errorf("%s:%d: %s has no comment above it", firewallConf, s.line, s.key)
		}
	}
}

// TestUnitArgumentsParse runs sluice's parser on what the units start it
// with: the main unit's command line with the example config, and the
// example EnvironmentFile's SLUICE_ARGS.
func TestUnitArgumentsParse(t *testing.T) {
	stop := parseSeconds(t, parseUnit(t, mainUnit).value(t, "Service", "TimeoutStopSec"))

	cmdline := strings.Fields(parseUnit(t, mainUnit).value(t, "Service", "ExecStart"))
	if cmdline[0] != installedBin {
		t.Fatalf("ExecStart runs %s", cmdline[0])
	}
	args := slices.Clone(cmdline[1:])
	i := slices.Index(args, "/etc/sluice/sluice.conf")
	if i < 0 {
		t.Fatalf("ExecStart %q does not read /etc/sluice/sluice.conf", cmdline)
	}
	args[i] = repoPath(confExample)
	cfg := parseSluice(t, mainUnit+" with "+confExample, args)
	if len(cfg.Services) < 2 {
		t.Errorf("%s: %d services, want the example to show several", confExample, len(cfg.Services))
	}
	if cfg.DrainTimeout >= stop {
		t.Errorf("%s: drain-timeout %v is not below TimeoutStopSec %v", confExample, cfg.DrainTimeout, stop)
	}
	if !cfg.AdminAddr.Addr().IsLoopback() {
		t.Errorf("%s: admin-addr %v is not on loopback", confExample, cfg.AdminAddr)
	}

	env := parseEnvFile(t, envExample)
	raw, ok := env["SLUICE_ARGS"]
	if !ok {
		t.Fatalf("%s sets no SLUICE_ARGS", envExample)
	}
	if strings.ContainsAny(raw, `"'\`) {
		t.Fatalf("SLUICE_ARGS %q: quotes inside would need systemd's quoting rules, which this test does not model", raw)
	}
	cfg = parseSluice(t, envExample, strings.Fields(raw))
	if cfg.DrainTimeout >= stop {
		t.Errorf("%s: drain-timeout %v is not below TimeoutStopSec %v", envExample, cfg.DrainTimeout, stop)
	}
	if !cfg.AdminAddr.Addr().IsLoopback() {
		t.Errorf("%s: admin-addr %v is not on loopback", envExample, cfg.AdminAddr)
	}
}

// parseEnvFile reads the subset of systemd's EnvironmentFile syntax the
// example uses: # comments, KEY=value and KEY="value" where the quoted
// value may continue over lines ending in a backslash.
func parseEnvFile(tb testing.TB, rel string) map[string]string {
	tb.Helper()
	out := map[string]string{}
	lines := strings.Split(readRepoFile(tb, rel), "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if strings.HasPrefix(val, `"`) {
			val = val[1:]
			for !strings.HasSuffix(val, `"`) {
				if !strings.HasSuffix(val, `\`) || i+1 == len(lines) {
					tb.Fatalf("%s:%d: unterminated quoted value", rel, i+1)
				}
				i++
				val = strings.TrimSuffix(val, `\`) + lines[i]
			}
			val = strings.TrimSuffix(val, `"`)
		}
		out[key] = val
	}
	return out
}

// TestSystemdAnalyzeVerify has systemd check both units and the firewall
// drop-in. verify checks that ExecStart names an executable file but does
// not run it, so a stub stands in for the sluice binary (building the real
// one from a cold cache takes over a minute).
func TestSystemdAnalyzeVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd)")
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "sluice")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	install := func(src, dst string) {
		t.Helper()
		data := strings.ReplaceAll(readRepoFile(t, src), installedBin, stub)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	install(mainUnit, filepath.Join(dir, "sluice.service"))
	install(firewallConf, filepath.Join(dir, "sluice.service.d", "firewall.conf"))
	install(templateUnit, filepath.Join(dir, "sluice@.service"))
	if err := os.Symlink("sluice@.service", filepath.Join(dir, "sluice@pg.service")); err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(dir, "bare")
	install(mainUnit, filepath.Join(bare, "sluice.service"))

	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, analyze, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := run("verify", "--man=no",
		filepath.Join(dir, "sluice.service"), filepath.Join(dir, "sluice@.service"), filepath.Join(dir, "sluice@pg.service"))
	// verify exits 0 after warnings such as an unknown key: any line about
	// our files is a failure. Lines about other units of the machine are not.
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		if strings.Contains(line, dir) || strings.Contains(line, "sluice") {
			t.Errorf("systemd-analyze verify: %s", line)
		} else {
			t.Logf("systemd-analyze verify (not about our units): %s", line)
		}
	}

	// The exposure score of the unit without the drop-in: a regression
	// guard for the hardening, where this systemd can compute it offline.
	cmd := exec.Command(analyze, "security", "--offline=true", "--no-pager", filepath.Join(bare, "sluice.service"))
	sec, err := cmd.CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for sluice\.service: ([0-9.]+)`).FindSubmatch(sec)
	if err != nil || m == nil {
		t.Logf("systemd-analyze security --offline unavailable here (%v); exposure not checked", err)
		return
	}
	if score, _ := strconv.ParseFloat(string(m[1]), 64); score > 2.0 {
		t.Errorf("exposure %s, want at most 2.0 (systemd-analyze security):\n%s", m[1], sec)
	} else {
		t.Logf("systemd-analyze security: exposure %s", m[1])
	}
}
