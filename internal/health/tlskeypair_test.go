package health

import (
	"encoding/pem"
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestTLSKeyPairProblems: a certificate and key that tls.X509KeyPair
// refuses are reported against the file at fault, and only a key that is
// not the certificate's is called so. Each used to be "--health-tls-key:
// not the key of --health-tls-cert", a damaged certificate and an
// encrypted key included.
func TestTLSKeyPairProblems(t *testing.T) {
	t.Parallel()
	ca := testsrv.NewCA(t, "sluice test CA")
	client, other := ca.Issue(t, "client", nil, nil, true), ca.Issue(t, "other", nil, nil, true)
	dir := t.TempDir()
	cert := writeFile(t, dir, "cert.pem", client.CertPEM)
	key := writeFile(t, dir, "key.pem", client.KeyPEM)
	garbage := []byte("not DER at all")
	for _, tc := range []struct {
		name      string
		cert, key string
		want      []string // the one problem contains each
		notWant   string
	}{
		{"key of another certificate", cert, writeFile(t, dir, "other-key.pem", other.KeyPEM),
			[]string{`--health-tls-key "` + dir + `/other-key.pem": not the key of --health-tls-cert`, "does not match"}, ""},
		{"certificate that does not parse",
			writeFile(t, dir, "bad-cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: garbage})), key,
			[]string{`--health-tls-cert "` + dir + `/bad-cert.pem": certificate 1: x509: `}, "--health-tls-key"},
		{"encrypted PKCS #8 key", cert,
			writeFile(t, dir, "enc-key.pem", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: garbage})),
			[]string{`--health-tls-key "` + dir + `/enc-key.pem": the key is encrypted`}, "not the key of"},
		{"encrypted legacy key", cert,
			writeFile(t, dir, "enc-ec-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY",
				Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00000000000000000000000000000000"}, Bytes: garbage})),
			[]string{`--health-tls-key "` + dir + `/enc-ec-key.pem": the key is encrypted`}, "not the key of"},
		{"key that does not parse", cert,
			writeFile(t, dir, "bad-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: garbage})),
			[]string{`--health-tls-key "` + dir + `/bad-key.pem": tls: failed to parse private key`}, "not the key of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tlsCheckConfig("tcp")
			c.TLSCert, c.TLSKey = tc.cert, tc.key
			probs := c.CheckFiles()
			if len(probs) != 1 {
				t.Fatalf("problems %q, want 1", probs)
			}
			for _, w := range tc.want {
				if !strings.Contains(probs[0], w) {
					t.Errorf("problem %q does not contain %q", probs[0], w)
				}
			}
			if tc.notWant != "" && strings.Contains(probs[0], tc.notWant) {
				t.Errorf("problem %q contains %q", probs[0], tc.notWant)
			}
		})
	}
}
