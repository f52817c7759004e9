package deploy

import (
	"path"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDockerfile checks what docs/production.md says of the image: a Go
// build stage of the go.mod version, static stripped builds of both
// binaries, a scratch final stage with a non-root numeric user. (No Docker
// engine runs in CI; the same go build command is exercised by hand.)
func TestDockerfile(t *testing.T) {
	df := readRepoFile(t, "Dockerfile")
	gomod := readRepoFile(t, "go.mod")
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	froms := regexp.MustCompile(`(?m)^FROM\s+(\S+)`).FindAllStringSubmatch(df, -1)
	if len(froms) < 2 {
		t.Fatalf("%d FROM lines, want a build stage and a final stage", len(froms))
	}
	if build := froms[0][1]; !strings.HasPrefix(build, "golang:"+m[1]) {
		t.Errorf("build stage %s, want golang:%s to match go.mod", build, m[1])
	}
	if final := froms[len(froms)-1][1]; final != "scratch" {
		t.Errorf("final stage %s, want scratch", final)
	}
	for _, pkg := range []string{"./cmd/sluice", "./cmd/sluice-bench"} {
		re := regexp.MustCompile(`CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o \S+ ` + regexp.QuoteMeta(pkg) + `\b`)
		if !re.MatchString(df) {
			t.Errorf("no static, trimmed, stripped build of %s", pkg)
		}
	}
	u := regexp.MustCompile(`(?m)^USER\s+(\d+)(?::(\d+))?\s*$`).FindStringSubmatch(df)
	if u == nil {
		t.Error("no numeric USER: a scratch image has no /etc/passwd to resolve a name")
	} else if uid, _ := strconv.Atoi(u[1]); uid == 0 {
		t.Error("USER 0: the image should not run as root by default")
	}
	if !strings.Contains(df, `ENTRYPOINT ["/usr/local/bin/sluice"]`) {
		t.Error(`no ENTRYPOINT ["/usr/local/bin/sluice"]`)
	}

	// Files the build needs must survive .dockerignore: the module files,
	// the sources and the committed BPF object the firewall embeds.
	var patterns []string
	for _, line := range strings.Split(readRepoFile(t, ".dockerignore"), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, strings.TrimSuffix(line, "/"))
		}
	}
	for _, f := range []string{"go.mod", "go.sum", "cmd/sluice/main.go", "internal/firewall/firewall_bpfel.o", "internal/firewall/firewall_bpfel.go"} {
		for _, p := range patterns {
			if ignored(p, f) {
				t.Errorf(".dockerignore pattern %q excludes %s, which the build needs", p, f)
			}
		}
	}
}

// ignored reports whether a .dockerignore pattern excludes file: the
// pattern matches the file or one of its parent directories, with a
// leading "**/" matching at any depth.
func ignored(pattern, file string) bool {
	if rest, ok := strings.CutPrefix(pattern, "**/"); ok {
		for p := file; p != "."; p = path.Dir(p) {
			if m, _ := path.Match(rest, path.Base(p)); m {
				return true
			}
		}
		return false
	}
	for p := file; p != "."; p = path.Dir(p) {
		if m, _ := path.Match(pattern, p); m {
			return true
		}
	}
	return false
}
