package deploy

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/internal/config"
)

// repoPath returns the path of a repository file; tests run in this
// package's directory, two levels below the top.
func repoPath(rel string) string {
	return filepath.Join("..", "..", filepath.FromSlash(rel))
}

func readRepoFile(tb testing.TB, rel string) string {
	tb.Helper()
	b, err := os.ReadFile(repoPath(rel))
	if err != nil {
		tb.Fatalf("read %s: %v", rel, err)
	}
	return string(b)
}

// setting is one Key=Value line of a unit file.
type setting struct {
	section, key, value string
	line                int
	// explained is true when a comment line stands right above this line,
	// or above the run of settings it belongs to.
	explained bool
}

// unit is a parsed unit file or drop-in, settings in file order.
type unit struct {
	path     string
	settings []setting
}

// parseUnit reads a systemd unit file: [Section] headers, Key=Value lines,
// # and ; comments, backslash continuations. It keeps repeated keys.
func parseUnit(tb testing.TB, rel string) unit {
	tb.Helper()
	u := unit{path: rel}
	sc := bufio.NewScanner(strings.NewReader(readRepoFile(tb, rel)))
	section := ""
	prevComment, prevSetting, prevExplained := false, false, false
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		start := n
		for strings.HasSuffix(line, "\\") && sc.Scan() {
			n++
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(sc.Text())
		}
		switch {
		case line == "":
			prevComment, prevSetting = false, false
		case strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
			prevComment, prevSetting = true, false
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			prevComment, prevSetting = false, false
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok {
				tb.Fatalf("%s:%d: not Key=Value: %q", rel, start, line)
			}
			explained := prevComment || (prevSetting && prevExplained)
			u.settings = append(u.settings, setting{section, strings.TrimSpace(key), strings.TrimSpace(value), start, explained})
			prevComment, prevSetting, prevExplained = false, true, explained
		}
	}
	return u
}

// values returns every value given to section.key, in order.
func (u unit) values(section, key string) []string {
	var out []string
	for _, s := range u.settings {
		if s.section == section && s.key == key {
			out = append(out, s.value)
		}
	}
	return out
}

// value returns the one value of section.key and fails the test when it is
// missing or given more than once.
func (u unit) value(tb testing.TB, section, key string) string {
	tb.Helper()
	v := u.values(section, key)
	if len(v) != 1 {
		tb.Fatalf("%s: [%s] %s given %d times, want once", u.path, section, key, len(v))
		return ""
	}
	return v[0]
}

// parseSeconds reads a systemd time span of the forms the units use: plain
// seconds or a Go-style duration such as 45s or 2min.
func parseSeconds(tb testing.TB, v string) time.Duration {
	tb.Helper()
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(n) * time.Second
	}
	d, err := time.ParseDuration(strings.ReplaceAll(v, "min", "m"))
	if err != nil {
		tb.Fatalf("time span %q: %v", v, err)
	}
	return d
}

// parseSluice runs sluice's own flag and config file parser on args.
func parseSluice(tb testing.TB, what string, args []string) config.Config {
	tb.Helper()
	cfg, err := config.Parse(args, io.Discard)
	if err != nil {
		if ue, ok := err.(*config.UsageError); ok {
			tb.Fatalf("%s: sluice rejects %q:\n%s", what, args, strings.Join(ue.Problems, "\n"))
		}
		tb.Fatalf("%s: sluice rejects %q: %v", what, args, err)
	}
	return cfg
}

// defaultDrain is sluice's --drain-timeout when none is given.
func defaultDrain(tb testing.TB) time.Duration {
	tb.Helper()
	return parseSluice(tb, "defaults", []string{"--listen", "127.0.0.1:1", "--backend", "127.0.0.1:2"}).DrainTimeout
}

// writeTemp writes data to a new file in a test temporary directory.
func writeTemp(tb testing.TB, name, data string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}
