package udpproxy

import (
	"time"

	"github.com/sluice-lb/sluice/internal/balancer"
)

// Config is the per-service behaviour of a UDP proxy. The process-wide
// session cap is not here: it is the SessionLimiter shared by every loop's
// Proxy, each loop owning a share of it (see SessionLimiter).
type Config struct {
	// SessionTimeout ends a session after this long with no datagram in
	// either direction. Positive.
	SessionTimeout time.Duration
	// DrainIdle bounds SessionTimeout once the proxy drains (an upgrade,
	// Proxy.Drain, or a stop, Proxy.DrainAlone): a session ends after
	// this long with no datagram either way. In an upgrade the successor
	// reads the clients' datagrams, so a session can only still receive
	// its backend's answers to what was sent on before; in a stop the
	// clients of open sessions go on sending, and each datagram restarts
	// the wait. The default, 2 s, leaves a request/reply backend (DNS,
	// RADIUS, SNMP, NTP answer in milliseconds) ample time, yet a stop or
	// an upgrade does not wait on sessions that will hear nothing more
	// (syslog and statsd never answer): the drain is over 2 s after the
	// last datagram. 0 ends every session when the drain begins.
	DrainIdle time.Duration
	// HashKey selects the part of the client address that is hashed to
	// pick a session's backend.
	HashKey balancer.HashKey
	// Batch is the most datagrams moved by one recvmmsg(2) or sendmmsg(2)
	// call, 1 to MaxBatch; 1 uses recvmsg/sendmsg instead. Each proxy
	// holds Batch buffers of 64 KiB so that any datagram fits (2 MiB of
	// address space at 32; the kernel writes only what arrives, so small
	// datagrams touch one page of each).
	Batch int
	// SocketBuffer is the SO_RCVBUF and SO_SNDBUF, in bytes, that Listen
	// asks for on the listening socket; best effort (SO_RCVBUFFORCE when
	// the process may, else capped by net.core.rmem_max and wmem_max).
	// 0 keeps the kernel default.
	SocketBuffer int
}

// MaxBatch bounds Config.Batch.
const MaxBatch = 256

// DefaultConfig returns the defaults the flags start from.
func DefaultConfig() Config {
	return Config{
		SessionTimeout: 30 * time.Second,
		DrainIdle:      2 * time.Second,
		HashKey:        balancer.HashSrcIP,
		Batch:          32,
		SocketBuffer:   4 << 20,
	}
}
