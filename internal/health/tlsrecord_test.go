package health

import (
	"net"
	"strings"
	"testing"
)

// TestTLSBadRecordFromTLSServer: a backend that answers with a TLS
// handshake record header, but a record no TLS peer may send (longer than
// the protocol allows), fails with crypto/tls's reason; it is not said
// not to speak TLS, which used to be the message of every
// tls.RecordHeaderError, whatever it said.
func TestTLSBadRecordFromTLSServer(t *testing.T) {
	t.Parallel()
	ch := newChecker(t, tlsCheckConfig("tcp"))
	p := startPeer(t, "127.0.0.1", func(c net.Conn) {
		c.Write([]byte("\x16\x03\x03\xff\xff")) // handshake, TLS 1.2, 65535 bytes
		silent(c)
	})
	err := runCheck(ch, p.addr)
	wantErr(t, err, "TLS handshake: tls: oversized record received with length 65535")
	if strings.Contains(err.Error(), "does not speak TLS") {
		t.Fatalf("check error %q says the backend does not speak TLS", err)
	}
}
