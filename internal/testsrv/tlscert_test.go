package testsrv

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
)

// TestCAIssue: a server certificate verifies against its CA for its IP
// address and name, a client certificate for client use; the PEM pair
// loads as the same certificate, and the CA's PEM is its certificate.
func TestCAIssue(t *testing.T) {
	ca := NewCA(t, "test CA")
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	srv := ca.Issue(t, "srv", []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"srv.test"}, false)
	client := ca.Issue(t, "client", nil, nil, true)
	for _, c := range []struct {
		leaf  Leaf
		name  string
		usage x509.ExtKeyUsage
	}{
		{srv, "127.0.0.1", x509.ExtKeyUsageServerAuth},
		{srv, "srv.test", x509.ExtKeyUsageServerAuth},
		{client, "", x509.ExtKeyUsageClientAuth},
	} {
		cert, err := x509.ParseCertificate(c.leaf.TLS.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: c.name, KeyUsages: []x509.ExtKeyUsage{c.usage}}); err != nil {
			t.Errorf("%s for %q: %v", cert.Subject.CommonName, c.name, err)
		}
		pair, err := tls.X509KeyPair(c.leaf.CertPEM, c.leaf.KeyPEM)
		if err != nil {
			t.Fatalf("%s: PEM pair: %v", cert.Subject.CommonName, err)
		}
		if !cert.Equal(pair.Leaf) {
			t.Errorf("%s: the PEM pair is another certificate", cert.Subject.CommonName)
		}
	}
	if b, _ := pem.Decode(ca.PEM); b == nil || !bytes.Equal(b.Bytes, ca.Cert.Raw) {
		t.Fatal("the CA's PEM is not its certificate")
	}
}
