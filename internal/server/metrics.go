package server

import (
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-lb/sluice/internal/balancer"
)

// collector exports the per-loop counters, summed at scrape time: the loops
// never touch a shared metric on the data path.
type collector struct{ s *Server }

var (
	descActive      = prometheus.NewDesc("sluice_backend_active_connections", "Connections open to the backend.", []string{"service", "backend"}, nil)
	descConns       = prometheus.NewDesc("sluice_backend_connections_total", "Connections established to the backend.", []string{"service", "backend"}, nil)
	descConnErrs    = prometheus.NewDesc("sluice_backend_connect_errors_total", "Connect attempts to the backend that failed or timed out.", []string{"service", "backend"}, nil)
	descBytes       = prometheus.NewDesc("sluice_backend_bytes_total", "Bytes proxied to (up) and from (down) the backend.", []string{"service", "backend", "direction"}, nil)
	descUp          = prometheus.NewDesc("sluice_backend_up", "1 when the backend takes new connections, 0 when down, draining or weight 0.", []string{"service", "backend"}, nil)
	descAccepted    = prometheus.NewDesc("sluice_connections_accepted_total", "Client connections accepted.", []string{"service"}, nil)
	descOpen        = prometheus.NewDesc("sluice_connections_active", "Client connections open.", []string{"service"}, nil)
	descRefused     = prometheus.NewDesc("sluice_connections_failed_total", "Client connections closed without a backend, by reason.", []string{"service", "reason"}, nil)
	descResets      = prometheus.NewDesc("sluice_connection_resets_total", "Connections ended by a reset from either side.", []string{"service"}, nil)
	descIdle        = prometheus.NewDesc("sluice_idle_timeouts_total", "Connections closed by the idle timeout.", []string{"service"}, nil)
	descAcceptErrs  = prometheus.NewDesc("sluice_accept_errors_total", "accept(2) failures such as EMFILE.", []string{"service"}, nil)
	descAcceptPause = prometheus.NewDesc("sluice_accept_pauses_total", "Times accepting paused (fd exhaustion or --max-conns).", []string{"service"}, nil)
	descProxyErrs   = prometheus.NewDesc("sluice_proxy_protocol_errors_total", "Connections closed for their PROXY header, by reason.", []string{"service", "reason"}, nil)
	descSpliced     = prometheus.NewDesc("sluice_spliced_bytes_total", "Bytes moved with splice(2) rather than read/write.", []string{"service"}, nil)
	descHandedOver  = prometheus.NewDesc("sluice_connections_handed_over_total", "Client connections accepted on one event loop and run on a less busy one, to even out the loops.", []string{"service"}, nil)
	descPipeFall    = prometheus.NewDesc("sluice_pipe_fallbacks_total", "Reads that wanted a splice pipe, had none (the pool's cap, the open-file limit, or an unprivileged user's fs.pipe-user-pages-soft) and copied through the loop's buffer instead.", []string{"service"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descConns, descConnErrs, descBytes, descUp, descAccepted, descOpen,
		descRefused, descResets, descIdle, descAcceptErrs, descAcceptPause, descSpliced, descPipeFall, descHandedOver, descFirewall, descProxyErrs} {
		ch <- d
	}
	for _, d := range udpDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.s.collectFirewall(ch)
	for _, sv := range c.s.services {
		name := sv.cfg.Name
		for _, bi := range sv.bal.Info() {
			up := 0.0
			if bi.State == balancer.StateUp {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, name, bi.Address)
		}
		if sv.cfg.Proto == "udp" {
			collectUDP(ch, sv)
			continue
		}
		for _, b := range sv.bal.Backends() {
			addr := b.Addr.String()
			t := b.Counts()
			ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(b.Active.Load()), name, addr)
			ch <- prometheus.MustNewConstMetric(descConns, prometheus.CounterValue, float64(t.Connections), name, addr)
			ch <- prometheus.MustNewConstMetric(descConnErrs, prometheus.CounterValue, float64(t.ConnectErrors), name, addr)
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(t.BytesUp), name, addr, "up")
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(t.BytesDown), name, addr, "down")
		}
		var accepted, closed, noBackend, resets, idle, acceptErrs, pauses, spliced, pipeFall, handed, ppBad, ppUntrusted, ppTimeout, ppDenied, localErrs uint64
		for _, p := range sv.proxies {
			st := p.Stats()
			// Closed first: a connection accepted and closed between
			// the two loads then counts in both, never in closed alone.
			closed += st.Closed.Load()
			accepted += st.Accepted.Load()
			noBackend += st.NoBackend.Load()
			resets += st.Resets.Load()
			idle += st.IdleTimeouts.Load()
			acceptErrs += st.AcceptErrors.Load()
			pauses += st.AcceptPauses.Load()
			spliced += st.SplicedBytes.Load()
			pipeFall += st.PipeFallbacks.Load()
			handed += st.HandedOver.Load()
			ppBad += st.ProxyMalformed.Load()
			ppUntrusted += st.ProxyUntrusted.Load()
			ppTimeout += st.ProxyTimeouts.Load()
			ppDenied += st.ProxyDenied.Load()
			localErrs += st.LocalErrors.Load()
		}
		ch <- prometheus.MustNewConstMetric(descProxyErrs, prometheus.CounterValue, float64(ppDenied), name, "denied")
		ch <- prometheus.MustNewConstMetric(descProxyErrs, prometheus.CounterValue, float64(ppBad), name, "malformed")
		ch <- prometheus.MustNewConstMetric(descProxyErrs, prometheus.CounterValue, float64(ppUntrusted), name, "untrusted")
		ch <- prometheus.MustNewConstMetric(descProxyErrs, prometheus.CounterValue, float64(ppTimeout), name, "timeout")
		ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(accepted), name)
		ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(accepted-closed), name)
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(noBackend), name, "no_backend")
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(localErrs), name, "local_resources")
		ch <- prometheus.MustNewConstMetric(descResets, prometheus.CounterValue, float64(resets), name)
		ch <- prometheus.MustNewConstMetric(descIdle, prometheus.CounterValue, float64(idle), name)
		ch <- prometheus.MustNewConstMetric(descAcceptErrs, prometheus.CounterValue, float64(acceptErrs), name)
		ch <- prometheus.MustNewConstMetric(descAcceptPause, prometheus.CounterValue, float64(pauses), name)
		ch <- prometheus.MustNewConstMetric(descSpliced, prometheus.CounterValue, float64(spliced), name)
		ch <- prometheus.MustNewConstMetric(descPipeFall, prometheus.CounterValue, float64(pipeFall), name)
		ch <- prometheus.MustNewConstMetric(descHandedOver, prometheus.CounterValue, float64(handed), name)
	}
}

// checkSeries is a service's share of the health-check duration histogram:
// it remembers the backends observed, so that one that leaves the service
// takes its series with it (DNS churn would pile them up otherwise). Safe
// for concurrent use: checks report from their own goroutines.
type checkSeries struct {
	vec     *prometheus.HistogramVec
	service string
	mu      sync.Mutex
	seen    map[netip.AddrPort]bool
	// members is the membership prune last saw, nil before: a check that
	// ends just after its backend left does not bring its series back.
	members map[netip.AddrPort]bool
}

func (c *checkSeries) observe(addr netip.AddrPort, result string, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.members != nil && !c.members[addr] {
		return
	}
	c.seen[addr] = true
	c.vec.WithLabelValues(c.service, addr.String(), result).Observe(d.Seconds())
}

// prune deletes the series of the backends not in members.
func (c *checkSeries) prune(members []netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.members = make(map[netip.AddrPort]bool, len(members))
	for _, a := range members {
		c.members[a] = true
	}
	for a := range c.seen {
		if !c.members[a] {
			c.vec.DeletePartialMatch(prometheus.Labels{"service": c.service, "backend": a.String()})
			delete(c.seen, a)
		}
	}
}
