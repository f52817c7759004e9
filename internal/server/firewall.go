package server

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/firewall"
	"github.com/sluice-lb/sluice/internal/handoff"
)

// firewallRules returns the rules with the services' listen ports added to
// the --protect-port extras.
func (s *Server) firewallRules(fc config.Firewall) firewall.Config {
	rules := fc.Rules
	rules.Ports = config.ProtectedPorts(fc.Rules.Ports, func(yield func(string, uint16) bool) {
		for _, sv := range s.services {
			if !yield(sv.cfg.Proto, sv.addr.Port()) {
				return
			}
		}
	})
	return rules
}

// startFirewall loads the XDP program and attaches it to every --xdp-iface.
// One program serves every service of the process.
func (s *Server) startFirewall() error {
	fc := s.cfg.Firewall
	if len(fc.Ifaces) == 0 {
		return nil
	}
	s.proxied.Set(firewall.UnmapPrefixes(fc.Rules.Deny), firewall.UnmapPrefixes(fc.Rules.Allow))
	fw, err := firewall.New(s.firewallRules(fc))
	if err != nil {
		return err
	}
	for _, ifc := range fc.Ifaces {
		// After an upgrade the predecessor's link is taken over: a second
		// XDP program cannot be attached to the interface.
		fd, mode, ok := s.claimLink(ifc)
		if !ok {
			if err := fw.Attach(ifc, fc.Mode); err != nil {
				fw.Close()
				return err
			}
			continue
		}
		if err := fw.Adopt(ifc, mode, fd); err != nil {
			fw.Close()
			return err
		}
		// The link keeps its mode. Native and generic programs cannot be
		// on one interface together, so a switch would leave it
		// unpoliced between detach and attach, and on many drivers a
		// native attach or detach reconfigures the NIC's queues: not
		// something a zero-downtime upgrade may do.
		if fc.Mode != firewall.ModeAuto && fc.Mode != mode {
			s.log.Warn("--xdp-mode not applied: the xdp link taken over from the previous process keeps its mode; stop and start sluice to change it",
				zap.String("iface", ifc), zap.Stringer("running_mode", mode), zap.Stringer("configured_mode", fc.Mode))
		}
	}
	s.fw = fw
	for _, a := range fw.Attachments() {
		s.log.Info("xdp firewall attached", zap.String("iface", a.Iface), zap.Stringer("mode", a.Mode))
	}
	s.warnProxiedRateLimit(fc)
	return nil
}

// warnProxiedRateLimit warns, once at start, when the per-source rate limit
// meets a service that takes PROXY headers: the XDP program sees the
// trusted upstream's address, so every client behind one upstream shares
// that upstream's budget, and the limit is not applied to the addresses
// the headers claim (the deny and allow lists are).
func (s *Server) warnProxiedRateLimit(fc config.Firewall) {
	if fc.Rules.RateLimit == 0 {
		return
	}
	for _, sv := range s.services {
		if sv.cfg.Proxy.AcceptProxy {
			s.log.Warn("--rate-limit counts the connections of a PROXY-protocol upstream as one source's: all clients behind it share its budget, and the addresses its headers claim are not limited",
				zap.String("service", sv.cfg.Name), zap.Uint32("rate_limit", fc.Rules.RateLimit))
		}
	}
}

// updateFirewall applies reloaded rules without detaching the program; a
// change of xdp-iface or xdp-mode is left to Reload's warning.
func (s *Server) updateFirewall(fc config.Firewall) {
	if s.fw == nil {
		if len(fc.Rules.Deny) > 0 || len(fc.Rules.Allow) > 0 || fc.Rules.RateLimit > 0 {
			s.log.Warn("firewall rules ignored: this process runs without the xdp firewall (no --xdp-iface at start); restart or upgrade (SIGUSR2) to load it")
		}
		return
	}
	if err := s.fw.Update(s.firewallRules(fc)); err != nil {
		s.log.Error("firewall rules rejected, keeping the rules in force", zap.Error(err))
		return
	}
	s.proxied.Set(firewall.UnmapPrefixes(fc.Rules.Deny), firewall.UnmapPrefixes(fc.Rules.Allow))
	s.log.Info("firewall rules updated", zap.Int("deny", len(fc.Rules.Deny)), zap.Int("allow", len(fc.Rules.Allow)), zap.Uint32("rate_limit", fc.Rules.RateLimit))
}

// stopFirewall logs the verdict counts and detaches the program.
func (s *Server) stopFirewall() {
	if s.fw == nil {
		return
	}
	if c, err := s.fw.Counters(); err == nil {
		s.log.Info("xdp firewall verdicts", zap.Stringer("packets", c))
	}
	if err := s.fw.Close(); err != nil {
		s.log.Error("detach xdp firewall", zap.Error(err))
	}
}

var descFirewall = prometheus.NewDesc("sluice_firewall_packets_total", "Packets judged by the XDP firewall, by verdict.", []string{"verdict"}, nil)

// collectFirewall adds the firewall's counters to a scrape.
func (s *Server) collectFirewall(ch chan<- prometheus.Metric) {
	if s.fw == nil {
		return
	}
	c, err := s.fw.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descFirewall, fmt.Errorf("read firewall counters: %w", err))
		return
	}
	for _, v := range c.Verdicts() {
		ch <- prometheus.MustNewConstMetric(descFirewall, prometheus.CounterValue, float64(v.Packets), v.Verdict)
	}
}

// claimLink takes the inherited bpf_link of iface, if any.
func (s *Server) claimLink(iface string) (fd int, mode firewall.Mode, ok bool) {
	for i, so := range s.inherit {
		if so.Kind == handoff.KindXDPLink && so.Addr == iface {
			s.inherit = append(s.inherit[:i], s.inherit[i+1:]...)
			m, err := firewall.ParseMode(so.Proto)
			if err != nil {
				m = firewall.ModeAuto
			}
			return so.FD, m, true
		}
	}
	return -1, 0, false
}
