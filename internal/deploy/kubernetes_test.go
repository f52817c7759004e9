package deploy

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	daemonSet  = "deploy/kubernetes/daemonset.yaml"
	pgHeadless = "deploy/kubernetes/pg-headless.yaml"
	// confPath is where the DaemonSet mounts the ConfigMap's file.
	confPath = "/etc/sluice/sluice.conf"
)

// The module has no YAML decoder, and these tests add none: they check the
// manifests' structure line by line and hand the embedded sluice config and
// the container's arguments to sluice's own parser.

// yamlDocs splits a multi-document YAML file and checks that each document
// names its apiVersion and kind at the top level and that no tab indents.
func yamlDocs(tb testing.TB, rel string) map[string]string {
	tb.Helper()
	text := readRepoFile(tb, rel)
	if strings.Contains(text, "\t") {
		tb.Errorf("%s contains a tab; YAML indents with spaces", rel)
	}
	docs := map[string]string{}
	for i, doc := range strings.Split(text, "\n---\n") {
		kind := regexp.MustCompile(`(?m)^kind: (\w+)$`).FindStringSubmatch(doc)
		if kind == nil || !regexp.MustCompile(`(?m)^apiVersion: \S+$`).MatchString(doc) {
			tb.Fatalf("%s: document %d lacks a top-level apiVersion or kind", rel, i+1)
		}
		if _, dup := docs[kind[1]]; dup {
			tb.Fatalf("%s: two %s documents", rel, kind[1])
		}
		docs[kind[1]] = doc
	}
	return docs
}

// indented returns the lines under the line that reads header (after
// trimming): those indented deeper than it, up to the next that is not.
func indented(tb testing.TB, doc, header string) []string {
	tb.Helper()
	lines := strings.Split(doc, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != header {
			continue
		}
		depth := len(l) - len(strings.TrimLeft(l, " "))
		var out []string
		for _, b := range lines[i+1:] {
			if strings.TrimSpace(b) != "" && len(b)-len(strings.TrimLeft(b, " ")) <= depth {
				break
			}
			out = append(out, b)
		}
		return out
	}
	tb.Fatalf("no line %q", header)
	return nil
}

// blockScalar returns the literal block "key: |", dedented.
func blockScalar(tb testing.TB, doc, key string) string {
	tb.Helper()
	lines := indented(tb, doc, key+": |")
	indent := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == "" {
			lines[i] = ""
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, " "))
		if indent < 0 {
			indent = n
		}
		if n < indent {
			tb.Fatalf("block %s: line %q indented less than the first", key, l)
		}
		lines[i] = l[indent:]
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n") + "\n"
}

// field returns the value of the one line "name: value" in doc.
func field(tb testing.TB, doc, name string) string {
	tb.Helper()
	m := regexp.MustCompile(`(?m)^\s*`+regexp.QuoteMeta(name)+`:\s*(.*?)\s*$`).FindAllStringSubmatch(doc, -1)
	if len(m) != 1 {
		tb.Fatalf("%d lines %q, want one", len(m), name+":")
	}
	return m[0][1]
}

func TestKubernetesDaemonSet(t *testing.T) {
	docs := yamlDocs(t, daemonSet)
	for _, k := range []string{"Namespace", "ConfigMap", "DaemonSet"} {
		if _, ok := docs[k]; !ok {
			t.Fatalf("%s has no %s", daemonSet, k)
		}
	}
	ds := docs["DaemonSet"]

	// The container's arguments, with the ConfigMap's file where the pod
	// mounts it, must satisfy sluice.
	conf := blockScalar(t, docs["ConfigMap"], "sluice.conf")
	if field(t, ds, "mountPath") != "/etc/sluice" {
		t.Errorf("the ConfigMap is not mounted at /etc/sluice")
	}
	var args []string
	if err := json.Unmarshal([]byte(field(t, ds, "args")), &args); err != nil {
		t.Fatalf("args: %v", err)
	}
	i := slices.Index(args, confPath)
	if i < 0 {
		t.Fatalf("args %q do not read %s", args, confPath)
	}
	args[i] = writeTemp(t, "sluice.conf", conf)
	cfg := parseSluice(t, daemonSet, args)

	// The SRV alternative shown in a comment must parse too.
	srv := regexp.MustCompile(`(?m)^#\s+backend-srv (\S+)$`).FindStringSubmatch(conf)
	if srv == nil {
		t.Fatal("the config shows no backend-srv alternative")
	}
	alt := regexp.MustCompile(`(?m)^backend-dns .*$`).ReplaceAllString(conf, "backend-srv "+srv[1])
	args[i] = writeTemp(t, "srv.conf", alt)
	parseSluice(t, daemonSet+" (SRV variant)", args)

	grace, err := strconv.Atoi(field(t, ds, "terminationGracePeriodSeconds"))
	if err != nil || time.Duration(grace)*time.Second < cfg.DrainTimeout+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %d leaves under 10s beyond drain-timeout %v", grace, cfg.DrainTimeout)
	}
	// A host-network pod resolves cluster names only with this policy.
	if field(t, ds, "hostNetwork") == "true" && field(t, ds, "dnsPolicy") != "ClusterFirstWithHostNet" {
		t.Error("hostNetwork without dnsPolicy: ClusterFirstWithHostNet cannot resolve the headless service")
	}
	// The probes reach the admin endpoint where the config binds it.
	admin := cfg.AdminAddr
	if !admin.IsValid() || !admin.Addr().IsLoopback() {
		t.Fatalf("admin-addr %v: want it on loopback, probed by the kubelet on the host network", admin)
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		body := strings.Join(indented(t, ds, probe+":"), "\n")
		want := map[string]string{"host": admin.Addr().String(), "port": strconv.Itoa(int(admin.Port())), "path": path}
		for k, v := range want {
			if !regexp.MustCompile(`(?m)^\s*` + k + `: ` + regexp.QuoteMeta(v) + `$`).MatchString(body) {
				t.Errorf("%s: no %s: %s", probe, k, v)
			}
		}
	}
	for _, want := range []string{"allowPrivilegeEscalation: false", "readOnlyRootFilesystem: true", "runAsNonRoot: true", `drop: ["ALL"]`} {
		if !strings.Contains(ds, want) {
			t.Errorf("securityContext lacks %s", want)
		}
	}
	for _, want := range []string{"requests:", "limits:", "memory:"} {
		if !strings.Contains(ds, want) {
			t.Errorf("resources lack %s", want)
		}
	}

	// The discovered names are those of the headless Service.
	svc := yamlDocs(t, pgHeadless)["Service"]
	name, ns := field(t, svc, "name"), field(t, svc, "namespace")
	if field(t, svc, "clusterIP") != "None" {
		t.Error("the Service is not headless (clusterIP: None)")
	}
	port := regexp.MustCompile(`(?m)^\s*- name: (\S+)\n\s*port: (\d+)$`).FindStringSubmatch(svc)
	if port == nil {
		t.Fatal("the Service has no named port")
	}
	host := fmt.Sprintf("%s.%s.svc.cluster.local", name, ns)
	if !strings.Contains(conf, "backend-dns "+host+":"+port[2]+"\n") {
		t.Errorf("the config does not discover %s:%s", host, port[2])
	}
	if want := fmt.Sprintf("_%s._tcp.%s", port[1], host); srv[1] != want {
		t.Errorf("backend-srv %s, want %s (the SRV name of port %q)", srv[1], want, port[1])
	}
}
