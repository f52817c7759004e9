package server

import (
	"fmt"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/udpproxy"
)

// addUDP builds a UDP service's proxies, one per loop, each with its own
// SO_REUSEPORT socket (or one handed over by an upgrade).
func (s *Server) addUDP(sv *service) error {
	sc := sv.cfg
	uc := udpproxy.DefaultConfig()
	uc.SessionTimeout = sc.UDPSessionTimeout
	uc.HashKey = sc.Proxy.HashKey
	log := s.log.Named("udp").With(zap.String("service", sc.Name))
	for i, l := range s.loops {
		p := udpproxy.New(l, i, uc, sv.bal.Pool(), s.sessions, log)
		sv.udp = append(sv.udp, p)
		sv.each = append(sv.each, p)
	}
	extra, err := s.openListeners(sv,
		func(a netip.AddrPort) (int, netip.AddrPort, error) { return udpproxy.Listen(a, uc.SocketBuffer) },
		func(i, fd int) error { return sv.udp[i].Listen(fd) })
	if err != nil {
		return err
	}
	// More inherited sockets than loops (the old process had more
	// workers): every one is read, some loops read two. Closing one would
	// not take it out of its SO_REUSEPORT group while the old process,
	// draining, holds it for its sessions' replies: the datagrams the
	// kernel gives it would be lost until then.
	for i, fd := range extra {
		if err := sv.udp[i%len(sv.udp)].Listen(fd); err != nil {
			closeAll(extra[i:])
			return fmt.Errorf("service %s: register listener: %w", sc.Name, err)
		}
	}
	return nil
}

// refreshUDP tells sv's UDP proxies that its members changed, so that the
// sessions to a backend that left and came back count there at once, not
// from their clients' next datagrams (udpproxy.Proxy.Refresh).
func (s *Server) refreshUDP(sv *service) {
	for i, p := range sv.udp {
		s.loops[i].Submit(p.Refresh)
	}
}

var (
	descUDPActive   = prometheus.NewDesc("sluice_udp_sessions_active", "UDP sessions open.", []string{"service"}, nil)
	descUDPSessions = prometheus.NewDesc("sluice_udp_sessions_total", "UDP session events: created, expired (idle timeout), evicted (at --udp-max-sessions), remapped (backend left).", []string{"service", "event"}, nil)
	descUDPDgrams   = prometheus.NewDesc("sluice_udp_datagrams_total", "UDP datagrams forwarded, per backend and direction.", []string{"service", "backend", "direction"}, nil)
	descUDPBytes    = prometheus.NewDesc("sluice_udp_bytes_total", "UDP payload bytes forwarded, per backend and direction.", []string{"service", "backend", "direction"}, nil)
	descUDPDrops    = prometheus.NewDesc("sluice_udp_drops_total", "UDP datagrams dropped, by reason.", []string{"service", "reason"}, nil)
)

var udpDescs = []*prometheus.Desc{descUDPActive, descUDPSessions, descUDPDgrams, descUDPBytes, descUDPDrops}

// collectUDP sums a UDP service's per-loop counters into a scrape. The
// per-backend series are those of the service's members, as TCP's are: a
// backend that leaves takes its series with it.
func collectUDP(ch chan<- prometheus.Metric, sv *service) {
	name := sv.cfg.Name
	var active int64
	var created, expired, evicted, remapped uint64
	var drops [len(udpproxy.DropReasons)]uint64
	for _, p := range sv.udp {
		st := p.Stats()
		active += st.Active()
		created += st.SessionsCreated.Load()
		expired += st.SessionsExpired.Load()
		evicted += st.SessionsEvicted.Load()
		remapped += st.Remaps.Load()
		for i, r := range udpproxy.DropReasons {
			drops[i] += st.Drops(r)
		}
	}
	ch <- prometheus.MustNewConstMetric(descUDPActive, prometheus.GaugeValue, float64(active), name)
	for ev, v := range map[string]uint64{"created": created, "expired": expired, "evicted": evicted, "remapped": remapped} {
		ch <- prometheus.MustNewConstMetric(descUDPSessions, prometheus.CounterValue, float64(v), name, ev)
	}
	for i, r := range udpproxy.DropReasons {
		ch <- prometheus.MustNewConstMetric(descUDPDrops, prometheus.CounterValue, float64(drops[i]), name, r.String())
	}
	for _, b := range sv.bal.Backends() {
		a, t := b.Addr.String(), b.Counts()
		ch <- prometheus.MustNewConstMetric(descUDPDgrams, prometheus.CounterValue, float64(t.DatagramsUp), name, a, "up")
		ch <- prometheus.MustNewConstMetric(descUDPDgrams, prometheus.CounterValue, float64(t.DatagramsDown), name, a, "down")
		ch <- prometheus.MustNewConstMetric(descUDPBytes, prometheus.CounterValue, float64(t.BytesUp), name, a, "up")
		ch <- prometheus.MustNewConstMetric(descUDPBytes, prometheus.CounterValue, float64(t.BytesDown), name, a, "down")
	}
}
