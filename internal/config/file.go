package config

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/smallfile"
)

// maxFileSize bounds the config and backends files read.
const maxFileSize = 4 << 20

var serviceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// freeText are the keys whose value is the rest of the line, # included:
// bytes to send or expect, a password.
var freeText = map[string]bool{"health-send": true, "health-expect": true, "health-redis-password": true}

// readFile reads a config file: "key value" lines whose keys are flag
// names without the dashes, global flags first, then "[service NAME]"
// sections of service flags. A # at the start of a line, or after a space
// or tab (except in a freeText value), starts a comment; blank lines are
// skipped. It returns the global settings as command-line arguments, the
// services' parsed flag values, and every problem found, each prefixed with
// "file:line: ".
func readFile(path string) (globals []string, globalLines map[string]int, svcs []namedService, probs []string, ok bool) {
	data, err := smallfile.Read(path, maxFileSize)
	if err != nil {
		return nil, nil, nil, []string{fmt.Sprintf("--config %q: %v", path, err)}, false
	}
	globalLines = map[string]int{}
	var cur *namedService
	var curFS = newFlagSet()
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for n := 1; sc.Scan(); n++ {
		where := fmt.Sprintf("%s:%d: ", path, n)
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, rest := line, ""
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			key, rest = line[:i], line[i:]
		}
		if !freeText[key] {
			rest = stripComment(rest)
			line = strings.TrimSpace(key + rest)
		}
		value := strings.TrimSpace(rest)
		if strings.HasPrefix(line, "[") {
			name, ok := strings.CutPrefix(strings.TrimSuffix(line, "]"), "[service ")
			name = strings.TrimSpace(name)
			if !ok || !strings.HasSuffix(line, "]") || !serviceName.MatchString(name) {
				probs = append(probs, where+fmt.Sprintf("bad section %q: want [service NAME], NAME of letters, digits, '.', '_' or '-'", line))
				cur = nil
				continue
			}
			if names[name] {
				probs = append(probs, where+fmt.Sprintf("service %q defined twice", name))
			}
			names[name] = true
			svcs = append(svcs, namedService{name: name, path: path, header: n, lines: map[string]int{}})
			cur = &svcs[len(svcs)-1]
			curFS = newFlagSet()
			addServiceFlags(curFS, &cur.vals)
			continue
		}
		args := []string{"--" + key}
		if value != "" {
			args = []string{"--" + key + "=" + value}
		}
		if key == "config" || key == "help" {
			probs = append(probs, where+fmt.Sprintf("%q cannot be set in the config file", key))
			continue
		}
		if cur == nil {
			if isServiceFlag(key) {
				probs = append(probs, where+fmt.Sprintf("%q is a service setting: put it in a [service NAME] section", key))
				continue
			}
			// Checked here, line by line, so that a problem names its
			// line; the globals are parsed together again later.
			gfs := newFlagSet()
			addGlobalFlags(gfs, &globalVals{})
			if err := gfs.Parse(args); err != nil {
				probs = append(probs, where+err.Error())
				continue
			}
			globals = append(globals, args...)
			globalLines[key] = n
			continue
		}
		if isGlobalFlag(key) {
			// A section runs to the next one or the end of the file, so
			// a global after it would be taken for the service's.
			probs = append(probs, where+fmt.Sprintf("%q is a global setting: put it before the first [service NAME] section", key))
			continue
		}
		if err := curFS.Parse(args); err != nil {
			probs = append(probs, where+err.Error())
		}
		switch key {
		case "backends-file":
			cur.vals.backendsFile = besideFile(path, cur.vals.backendsFile)
		case "health-tls-ca":
			cur.vals.health.TLSCA = besideFile(path, cur.vals.health.TLSCA)
		case "health-tls-cert":
			cur.vals.health.TLSCert = besideFile(path, cur.vals.health.TLSCert)
		case "health-tls-key":
			cur.vals.health.TLSKey = besideFile(path, cur.vals.health.TLSKey)
		}
		cur.lines[key] = n
		cur.lines[key+" "+value] = n
		if len(svcs) > 0 && curFS.NArg() > 0 {
			probs = append(probs, where+fmt.Sprintf("unexpected %q", curFS.Arg(0)))
		}
	}
	if err := sc.Err(); err != nil {
		probs = append(probs, fmt.Sprintf("--config %q: %v", path, err))
	}
	return globals, globalLines, svcs, probs, true
}

// besideFile resolves a relative path given in the config file at
// confPath against the config file's own folder, as an operator reads it
// (and as under systemd, whose working directory is /, it must be).
func besideFile(confPath, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	dir, err := filepath.Abs(filepath.Dir(confPath))
	if err != nil {
		return p
	}
	return filepath.Join(dir, p)
}

// stripComment cuts line at its first # that starts the line or follows a
// space or tab.
func stripComment(line string) string {
	for i := 0; i < len(line); i++ {
		if line[i] == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			return line[:i]
		}
	}
	return line
}

// ReadBackendsFile reads a backends file: one backend per line as
// "ip:port [weight=N]" (or "ip:port,weight=N"), # comments and blank lines
// ignored. A bad line rejects the whole file: the error names its line.
func ReadBackendsFile(path string) ([]balancer.Spec, error) {
	data, err := smallfile.Read(path, maxFileSize)
	if err != nil {
		return nil, err
	}
	var out []balancer.Spec
	seen := map[netip.AddrPort]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		sp, err := balancer.ParseSpec(line)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %v", n, strings.TrimSpace(line), err)
		}
		if first, dup := seen[sp.Addr]; dup {
			return nil, fmt.Errorf("line %d: %s already on line %d", n, sp.Addr, first)
		}
		seen[sp.Addr] = n
		out = append(out, sp)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
