package config

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// writeCertPair writes a certificate and its key as PEM files cert.pem
// and key.pem (with prefix) in dir.
func writeCertPair(tb testing.TB, dir, prefix string) (certFile, keyFile string) {
	tb.Helper()
	leaf := testsrv.NewCA(tb, "sluice test CA").Issue(tb, "sluice", nil, nil, true)
	certFile, keyFile = filepath.Join(dir, prefix+"cert.pem"), filepath.Join(dir, prefix+"key.pem")
	for f, b := range map[string][]byte{certFile: leaf.CertPEM, keyFile: leaf.KeyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return certFile, keyFile
}

func TestHealthTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCertPair(t, dir, "")
	base := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001", "--health-check", "grpc"}
	cfg, err := Parse(append(base, "--health-tls", "--health-tls-ca", cert, "--health-tls-server-name", "db.test",
		"--health-tls-cert", cert, "--health-tls-key", key), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := cfg.Services[0].Health
	if !h.TLS || h.TLSCA != cert || h.TLSServerName != "db.test" || h.TLSCert != cert || h.TLSKey != key {
		t.Fatalf("health %+v", h)
	}
	if s := cfg.Services[0].Settings; s["health-tls"] != "true" || s["health-tls-ca"] != cert {
		t.Fatalf("settings %v", s)
	}

	// In a config file, relative paths are beside the file.
	if err := os.WriteFile(filepath.Join(dir, "sluice.conf"), []byte("[service cache]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\n"+
		"health-check redis\nhealth-tls\nhealth-tls-ca cert.pem\nhealth-tls-cert cert.pem\nhealth-tls-key key.pem\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = Parse([]string{"--config", filepath.Join(dir, "sluice.conf")}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if h := cfg.Services[0].Health; !h.TLS || h.TLSCA != cert || h.TLSCert != cert || h.TLSKey != key {
		t.Fatalf("health from the file %+v, want the files beside it", h)
	}
}

// TestHealthTLSErrors: each bad use of the --health-tls flags, and a bad
// --health-timeout, is one problem naming the flags (and file) at fault.
func TestHealthTLSErrors(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCertPair(t, dir, "")
	_, otherKey := writeCertPair(t, dir, "other-")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	base := []string{"--listen", "127.0.0.1:7000", "--backend", "127.0.0.1:7001"}
	for _, tc := range []struct {
		name string
		args []string
		want []string // the one problem contains each
	}{
		{"postgres", []string{"--health-check", "postgres", "--health-tls"}, []string{"--health-tls with --health-check postgres"}},
		{"mysql", []string{"--health-check", "mysql", "--health-tls"}, []string{"--health-tls with --health-check mysql"}},
		{"udp", []string{"--proto", "udp", "--health-check", "send-expect", "--health-expect", "x", "--health-tls"}, []string{"--health-tls with --proto udp"}},
		{"udp default check", []string{"--proto", "udp", "--health-tls"}, []string{"--health-tls with --proto udp"}},
		{"none", []string{"--health-check", "none", "--health-tls"}, []string{"--health-tls with --health-check none"}},
		{"CA without TLS", []string{"--health-tls-ca", cert}, []string{"--health-tls-ca", "without --health-tls"}},
		{"cert without key", []string{"--health-tls", "--health-tls-cert", cert}, []string{"--health-tls-cert", "needs --health-tls-key"}},
		{"key without cert", []string{"--health-tls", "--health-tls-key", key}, []string{"--health-tls-key", "needs --health-tls-cert"}},
		{"missing CA", []string{"--health-tls", "--health-tls-ca", missing}, []string{"--health-tls-ca", missing, "no such file"}},
		{"CA not PEM", []string{"--health-tls", "--health-tls-ca", notPEM}, []string{"--health-tls-ca", notPEM, "no PEM CERTIFICATE"}},
		{"key not PEM", []string{"--health-tls", "--health-tls-cert", cert, "--health-tls-key", notPEM}, []string{"--health-tls-key", notPEM, "no PEM PRIVATE KEY"}},
		{"key of another cert", []string{"--health-tls", "--health-tls-cert", cert, "--health-tls-key", otherKey},
			[]string{"--health-tls-key", otherKey, "--health-tls-cert", cert, "does not match"}},
		{"timeout of two hours", []string{"--health-timeout", "2h"}, []string{`--health-timeout "2h0m0s": want 1ms to 10m0s`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(append(append([]string{}, base...), tc.args...), io.Discard)
			var ue *UsageError
			if !errors.As(err, &ue) || len(ue.Problems) != 1 {
				t.Fatalf("Parse: %v, want one problem", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(ue.Problems[0], w) {
					t.Fatalf("problem %q does not contain %q", ue.Problems[0], w)
				}
			}
		})
	}
	// In a config file the problem names its line.
	conf := writeConf(t, "[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\nhealth-tls\nhealth-tls-ca "+missing+"\n")
	_, err := Parse([]string{"--config", conf}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "sluice.conf:5: service a: --health-tls-ca \""+missing+"\"") {
		t.Fatalf("missing CA in a config file: %v", err)
	}
	conf = writeConf(t, "[service a]\nlisten 127.0.0.1:2\nbackend 127.0.0.1:3\nhealth-check postgres\nhealth-tls\n")
	_, err = Parse([]string{"--config", conf}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "sluice.conf:5: service a: --health-tls with --health-check postgres") {
		t.Fatalf("postgres over TLS in a config file: %v", err)
	}
}
