package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/smallfile"
)

// maxTLSFile bounds the CA bundle, certificate and key files read.
const maxTLSFile = 1 << 20

// tlsMaterial is what the TLS files hold: the roots the backend's
// certificate is verified against (nil: not verified) and the client
// certificate (nil: none).
type tlsMaterial struct {
	roots *x509.CertPool
	cert  *tls.Certificate
}

// loadTLSMaterial reads the CA bundle and the client certificate and key
// ("" for none). Each problem names its flag and file.
func loadTLSMaterial(ca, certFile, keyFile string) (tlsMaterial, []string) {
	var m tlsMaterial
	var probs []string
	if ca != "" {
		pool, err := readCAFile(ca)
		if err != nil {
			probs = append(probs, fmt.Sprintf("--health-tls-ca %q: %v", ca, err))
		}
		m.roots = pool
	}
	if certFile == "" || keyFile == "" {
		return m, probs // Validate reports one without the other
	}
	certPEM, err := smallfile.Read(certFile, maxTLSFile)
	if err == nil && !hasPEM(certPEM, func(t string) bool { return t == "CERTIFICATE" }) {
		err = errors.New("no PEM CERTIFICATE block in it")
	}
	if err != nil {
		probs = append(probs, fmt.Sprintf("--health-tls-cert %q: %v", certFile, err))
	}
	keyPEM, kerr := smallfile.Read(keyFile, maxTLSFile)
	if kerr == nil && !hasPEM(keyPEM, func(t string) bool { return strings.HasSuffix(t, "PRIVATE KEY") }) {
		kerr = errors.New("no PEM PRIVATE KEY block in it")
	}
	if kerr != nil {
		probs = append(probs, fmt.Sprintf("--health-tls-key %q: %v", keyFile, kerr))
	}
	if err != nil || kerr != nil {
		return m, probs
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		probs = append(probs, keyPairProblem(certFile, keyFile, certPEM, keyPEM, err))
		return m, probs
	}
	m.cert = &pair
	return m, probs
}

// keyPairProblem names the file at fault in err, tls.X509KeyPair's error
// for certPEM and keyPEM: the certificate, when its first CERTIFICATE
// block (the one used) does not parse; else the key, which does not parse
// (an encrypted one says so) or is not the certificate's.
func keyPairProblem(certFile, keyFile string, certPEM, keyPEM []byte, err error) string {
	if b := firstPEM(certPEM, func(t string) bool { return t == "CERTIFICATE" }); b != nil {
		if _, perr := x509.ParseCertificate(b.Bytes); perr != nil {
			return fmt.Sprintf("--health-tls-cert %q: certificate 1: %v", certFile, perr)
		}
	}
	if b := firstPEM(keyPEM, func(t string) bool { return t == "PRIVATE KEY" || strings.HasSuffix(t, " PRIVATE KEY") }); b != nil &&
		(b.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED")) {
		return fmt.Sprintf("--health-tls-key %q: the key is encrypted, and there is no passphrase to decrypt it: want an unencrypted key", keyFile)
	}
	if strings.Contains(err.Error(), "does not match") {
		return fmt.Sprintf("--health-tls-key %q: not the key of --health-tls-cert %q: %v", keyFile, certFile, err)
	}
	return fmt.Sprintf("--health-tls-key %q: %v", keyFile, err)
}

// readCAFile reads a PEM bundle of one or more certificates. Every
// CERTIFICATE block must parse: one that does not is more likely a
// damaged file than something to skip.
func readCAFile(path string) (*x509.CertPool, error) {
	data, err := smallfile.Read(path, maxTLSFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		n++
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n, err)
		}
		pool.AddCert(c)
	}
	if n == 0 {
		return nil, errors.New("no PEM CERTIFICATE block in it")
	}
	return pool, nil
}

// hasPEM reports whether data holds a PEM block whose type satisfies ok.
func hasPEM(data []byte, ok func(typ string) bool) bool { return firstPEM(data, ok) != nil }

// firstPEM returns the first PEM block in data whose type satisfies ok, or
// nil.
func firstPEM(data []byte, ok func(typ string) bool) *pem.Block {
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil || ok(b.Type) {
			return b
		}
	}
}

// fileStamp tells one version of a file from another without reading it:
// a rename over it changes the inode, a rewrite in place the time or size.
// The zero stamp is a file that could not be looked at.
type fileStamp struct {
	mod       time.Time
	size      int64
	dev, ino  uint64
	statError bool
}

// stamp returns the stamp of the file at path, "" for none.
func (s *tlsSource) stamp(path string) fileStamp {
	if path == "" {
		return fileStamp{}
	}
	st, err := s.stat(path)
	if err != nil {
		return fileStamp{statError: true}
	}
	f := fileStamp{mod: st.ModTime(), size: st.Size()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		f.dev, f.ino = uint64(sys.Dev), sys.Ino
	}
	return f
}

// tlsSource makes the TLS client configs of a service's checks from the
// files named by --health-tls-*, and rereads the files when they change,
// so that rotated certificates are used without a restart. Safe for
// concurrent use by the checks of every backend.
//
// The files are looked at (a stat of each, and a read if one changed) on
// a goroutine of the source's, which the check that starts the look waits
// for within its context: a stat or read on a stalled filesystem (an NFS
// server gone, a hung FUSE daemon) cannot be interrupted, and must keep
// neither that check past its timeout nor Monitor.Close, which waits for
// the checks. Nor may it fail the check, which is about the backend: the
// check waits at most half its time left, then goes on with the files as
// last read. A look that outlasts its check is left to end when the
// kernel lets it; until then no other look starts, so there is at most
// one such goroutine per source, and the checks use the files as last
// read.
type tlsSource struct {
	ca, certFile, keyFile string
	serverName            string
	// every is the least time between two looks at the files' stamps:
	// the check interval, so one check round looks at most once.
	every time.Duration
	now   func() time.Time
	stat  func(path string) (os.FileInfo, error) // os.Stat; tests stall it
	log   *zap.Logger

	// stamps are the stamps of ca, certFile and keyFile as last read.
	// Only the look under way touches them.
	stamps [3]fileStamp

	// mu guards the fields below.
	mu       sync.Mutex
	nextLook time.Time     // no look at the files before
	cur      tlsMaterial   // the last good files
	looking  chan struct{} // closed when the look under way ends; nil: none is
}

// newTLSSource reads the files of c, which must be good (checked at
// start by CheckFiles).
func newTLSSource(c Config, log *zap.Logger) (*tlsSource, error) {
	s := &tlsSource{ca: c.TLSCA, certFile: c.TLSCert, keyFile: c.TLSKey, serverName: c.TLSServerName,
		every: c.Interval, now: time.Now, stat: os.Stat, log: log}
	s.stamps = s.stampFiles()
	m, probs := loadTLSMaterial(s.ca, s.certFile, s.keyFile)
	if len(probs) > 0 {
		return nil, errors.New(strings.Join(probs, "; "))
	}
	s.cur = m
	s.nextLook = s.now().Add(s.every)
	return s, nil
}

func (s *tlsSource) stampFiles() [3]fileStamp {
	return [3]fileStamp{s.stamp(s.ca), s.stamp(s.certFile), s.stamp(s.keyFile)}
}

// refresh returns the files as last read, once they have been looked at
// again if it is time to (see tlsSource), or once half the time left
// before ctx's deadline has passed in a look it started. It fails when
// ctx is cancelled first. Checks that start while a look is under way do
// not wait for it: they use the files as last read.
func (s *tlsSource) refresh(ctx context.Context) (tlsMaterial, error) {
	s.mu.Lock()
	now := s.now()
	if s.looking != nil || now.Before(s.nextLook) || (s.ca == "" && s.certFile == "") {
		defer s.mu.Unlock()
		return s.cur, nil
	}
	s.nextLook = now.Add(s.every)
	done := make(chan struct{})
	s.looking = done
	s.mu.Unlock()
	go s.look(done)
	wait := time.NewTimer(halfLeft(ctx, math.MaxInt64))
	defer wait.Stop()
	select {
	case <-done:
	case <-wait.C: // the look stalls: the files as last read
	case <-ctx.Done():
		return tlsMaterial{}, fmt.Errorf("look at the TLS files: %w", ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur, nil
}

// look is the look under way: it rereads the files if a stamp changed,
// and closes done when it has taken what it read. A bad new version (half
// written, a key not matching its certificate) is logged once, and the
// last good files stay in use; a later version is read again. The stamps
// are taken before the files are read, so a change during the read is
// seen at the next look.
func (s *tlsSource) look(done chan<- struct{}) {
	defer close(done)
	var m *tlsMaterial
	if st := s.stampFiles(); st != s.stamps {
		s.stamps = st
		read, probs := loadTLSMaterial(s.ca, s.certFile, s.keyFile)
		if len(probs) > 0 {
			s.log.Warn("new health check TLS files are bad; the last good ones stay in use",
				zap.Strings("problems", probs))
		} else {
			s.log.Info("health check TLS files reread", zap.String("ca", s.ca), zap.String("cert", s.certFile))
			m = &read
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m != nil {
		s.cur = *m
	}
	s.looking = nil
}

// config returns the TLS client config for a check of addr, from the
// files as refresh gives them. Without a CA the backend's certificate is
// not verified. With one, it is verified against the CA for the server
// name, or, without a server name, for addr's IP address (IP SANs); no
// SNI is sent for an IP address.
func (s *tlsSource) config(ctx context.Context, addr netip.AddrPort) (*tls.Config, error) {
	m, err := s.refresh(ctx)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: s.serverName}
	if m.roots == nil {
		// Not verified, as HAProxy's "verify none": a health check asks
		// whether the backend serves, not who it is. What the check sends
		// goes to whoever answers: a redis check's AUTH password, a
		// send-expect payload (the client certificate's proof is bound
		// to the handshake, and gives away no key).
		c.InsecureSkipVerify = true
	} else {
		c.RootCAs = m.roots
		if c.ServerName == "" {
			c.ServerName = addr.Addr().String()
		}
	}
	if cert := m.cert; cert != nil {
		// Sent whenever the server asks, as OpenSSL does: Certificates
		// would leave it out when it does not chain to the CAs the
		// server names, and the check would fail for a want of a
		// certificate rather than for the certificate.
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return c, nil
}
