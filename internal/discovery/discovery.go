// Package discovery finds backends in DNS: the A and AAAA records of a
// NAME:PORT target (--backend-dns), and the SRV records of a
// _service._proto.NAME target (--backend-srv), re-resolved every interval.
// It works with Kubernetes headless services and Consul DNS.
//
// A Watcher resolves all its targets once per round and merges the answers
// into one deduplicated, sorted set, which it hands to its caller only when
// the set changes. A target whose resolution fails (a timeout, SERVFAIL, an
// oversized or unusable answer) keeps its last good answer, so a DNS outage
// never empties a service; the failure is logged when the target starts
// failing and again when it recovers, not every round.
//
// # Names that are gone
//
// An answer that says the name does not exist (NXDOMAIN) or has no records
// of the types asked (NODATA) is different: the DNS is working and says
// there are no backends, as when a Kubernetes service is deleted or scaled
// to zero. The target keeps its last good answer for Config.Hold after the
// first such answer, like HAProxy's "hold nx", so that a record briefly
// missing during an update does not empty the service; the first answer of
// a round at least Hold after it that still says the name is gone removes
// the target's backends. Any other failure in between neither removes them
// nor restarts the hold, and an answer with records ends it. Both the start
// of a hold and the removal are logged. For an SRV target, an answer whose
// records all say "no service here" (target "."), or whose record targets
// all do not exist, counts as gone too. An SRV record's target name that is
// gone is held by the same rules (see below).
//
// # SRV records
//
// Only the records of the lowest priority that has a usable record are used
// (RFC 2782's rule; lower priorities are not a fallback for unhealthy
// backends, since health checking is not this package's job). A record is
// usable when its target resolves, through A and AAAA lookups, to at least
// one address, or is held. A target name that is gone (NXDOMAIN, or no A
// or AAAA records) is held as a name is: it keeps the addresses it last
// resolved to for Config.Hold from the first answer saying so, and the
// first answer at least Hold after it that still says it is gone removes
// them; a target that had no addresses is skipped at once. A target that
// fails to resolve for another reason (a timeout, SERVFAIL) contributes the
// addresses it had when it last resolved, if any, neither ending nor
// restarting its hold, and the other targets are used as they resolve now.
// So a target held beside one that fails keeps its addresses until its hold
// ends, the failing one keeps its last, and the SRV target does not fail: a
// name that is gone is an answer. A failing target fails the whole SRV
// target, which keeps its last good answer (held addresses included), only
// when in that round no target of the priority resolved, was held or came
// to the end of its hold. A target in its hold whose lookup fails counts as
// failing, not held, and its hold runs on: the first answer at least Hold
// after the hold began that still says it is gone removes its addresses.
// When a hold ends in a round in which no target of the priority resolved
// or was held, the failing targets' last addresses are used without the
// held ones'; when they have none, the priority has no usable record. When
// the holds of the last held targets end and no record is usable, the SRV
// target's backends go at once: they have been held already. A record
// target that starts or stops resolving, and the start and end of its hold,
// are logged once. Records with target "." (service not available) are
// skipped.
//
// Go's resolver drops the SRV records whose target is not a valid domain
// name and reports an error beside the others; those others are used as
// any answer's are. An answer that has such records is logged when the
// last good answer had none, and the next good answer without them is
// logged too, not every round. When the others give no usable record, the
// answer is a failure (the last good answer stays), not a name that is
// gone: the records dropped may have named the backends.
//
// An SRV weight (0 to 65535) becomes a backend weight (1 to MaxWeight) as
// follows: weights up to MaxWeight are kept, and when the largest weight at
// the chosen priority is above MaxWeight all of them are scaled so that it
// becomes MaxWeight, rounding to nearest. A weight of 0, RFC 2782's "very
// small chance", becomes 1, the smallest weight that still takes
// connections. Every address of a target gets its record's weight; an
// address that several records name (a record repeated, two target names
// for one address) gets the largest of their weights and counts once
// against Config.MaxAddrs.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// MaxWeight is the largest backend weight, the same bound as the
// balancer's.
const MaxWeight = 1000

// Kind is the kind of DNS lookup a Target needs.
type Kind uint8

const (
	// Host targets are resolved with A and AAAA lookups.
	Host Kind = iota + 1
	// SRV targets are resolved with an SRV lookup, then A and AAAA lookups
	// of each record's target.
	SRV
)

// String returns "host" or "srv".
func (k Kind) String() string {
	switch k {
	case Host:
		return "host"
	case SRV:
		return "srv"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Target is one DNS name to resolve into backends.
type Target struct {
	// Kind says how to resolve Name.
	Kind Kind
	// Name is the DNS name: "web.default.svc.cluster.local" for Host,
	// "_http._tcp.web.default.svc.cluster.local" for SRV. A trailing dot
	// makes it absolute (no search domains).
	Name string
	// Port is the backends' port for Host targets (1 to 65535); SRV
	// records carry their own ports.
	Port uint16
}

// String returns the target in its flag syntax: "NAME:PORT" or the SRV
// name.
func (t Target) String() string {
	if t.Kind == Host {
		return t.Name + ":" + strconv.Itoa(int(t.Port))
	}
	return t.Name
}

// ParseHost parses a --backend-dns value, "NAME:PORT".
func ParseHost(s string) (Target, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return Target{}, fmt.Errorf("parse %q: want NAME:PORT", s)
	}
	name, portStr := s[:i], s[i+1:]
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return Target{}, fmt.Errorf("parse %q: port %q: want a number from 1 to 65535", s, portStr)
	}
	if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return Target{}, fmt.Errorf("parse %q: %q is an IP address, not a DNS name: use --backend", s, name)
	}
	if err := checkName(name); err != nil {
		return Target{}, fmt.Errorf("parse %q: %w", s, err)
	}
	return Target{Kind: Host, Name: name, Port: uint16(port)}, nil
}

// ParseSRV parses a --backend-srv value, "_service._proto.NAME".
func ParseSRV(s string) (Target, error) {
	if err := checkName(s); err != nil {
		return Target{}, fmt.Errorf("parse %q: %w", s, err)
	}
	labels := strings.Split(strings.TrimSuffix(s, "."), ".")
	if len(labels) < 3 || len(labels[0]) < 2 || labels[0][0] != '_' || len(labels[1]) < 2 || labels[1][0] != '_' {
		return Target{}, fmt.Errorf("parse %q: want _service._proto.NAME, as in _http._tcp.web.default.svc.cluster.local", s)
	}
	return Target{Kind: SRV, Name: s}, nil
}

// checkName checks the syntax of a DNS name: labels of 1 to 63 letters,
// digits, hyphens and underscores, not starting or ending with a hyphen,
// 253 characters at most, and an optional trailing dot.
func checkName(name string) error {
	n := strings.TrimSuffix(name, ".")
	if n == "" {
		return errors.New("empty DNS name")
	}
	if len(n) > 253 {
		return fmt.Errorf("DNS name of %d characters, more than 253", len(n))
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("DNS label %q: want 1 to 63 characters", l)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("DNS label %q starts or ends with a hyphen", l)
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("DNS label %q: character %q not allowed", l, c)
			}
		}
	}
	return nil
}

// Backend is a discovered backend address and its weight (1 to
// MaxWeight).
type Backend struct {
	Addr   netip.AddrPort
	Weight int
}

// String returns "ip:port" or "ip:port,weight=N" when the weight is not 1,
// the syntax of --backend.
func (b Backend) String() string {
	if b.Weight == 1 {
		return b.Addr.String()
	}
	return b.Addr.String() + ",weight=" + strconv.Itoa(b.Weight)
}

// Config configures a Watcher. Zero durations and limits take their
// defaults.
type Config struct {
	// Targets are the names to resolve; at least one.
	Targets []Target
	// Interval is the time from the end of one round of resolution to the
	// start of the next (so a round that waits for its Timeout does not
	// run the next back to back), plus a random jitter of up to a tenth
	// of it so that many balancers do not query in step (--dns-interval).
	// Default 30s.
	Interval time.Duration
	// Timeout bounds the resolution of one target in one round, SRV
	// target lookups included. Default 5s.
	Timeout time.Duration
	// MaxAddrs bounds the backends of one target: a bigger answer is a
	// failure, and the last good answer is kept. Default 1024.
	MaxAddrs int
	// Hold is how long a target whose name is gone (NXDOMAIN, or no
	// records) keeps its last backends, counted from the first answer
	// saying so; see the package documentation. Default 30s.
	Hold time.Duration
	// Resolver resolves the names. nil means a resolver configured like
	// net.DefaultResolver but with StrictErrors set, so that a timeout or
	// SERVFAIL on the AAAA query fails the lookup instead of returning the
	// A answer alone, which would drop the IPv6 backends for a round. A
	// caller's resolver should set StrictErrors too.
	Resolver *net.Resolver
}

// DefaultConfig returns the defaults, with no targets.
func DefaultConfig() Config {
	return Config{Interval: 30 * time.Second, Timeout: 5 * time.Second, MaxAddrs: 1024, Hold: 30 * time.Second}
}

// Validate reports every problem with c (after defaults are applied to its
// zero fields), joined.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if len(c.Targets) == 0 {
		errs = append(errs, errors.New("no DNS targets"))
	}
	for _, t := range c.Targets {
		switch {
		case t.Kind == Host && t.Port == 0:
			errs = append(errs, fmt.Errorf("target %s: port 0", t))
		case t.Kind != Host && t.Kind != SRV:
			errs = append(errs, fmt.Errorf("target %s: unknown kind %v", t, t.Kind))
		}
		if err := checkName(t.Name); err != nil {
			errs = append(errs, fmt.Errorf("target %s: %w", t, err))
		}
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("interval %v: want a positive duration", c.Interval))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %v: want a positive duration", c.Timeout))
	}
	if c.MaxAddrs < 0 {
		errs = append(errs, fmt.Errorf("max addresses %d: want a positive number", c.MaxAddrs))
	}
	if c.Hold < 0 {
		errs = append(errs, fmt.Errorf("hold %v: want a positive duration", c.Hold))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Interval == 0 {
		c.Interval = d.Interval
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.MaxAddrs == 0 {
		c.MaxAddrs = d.MaxAddrs
	}
	if c.Hold == 0 {
		c.Hold = d.Hold
	}
	if c.Resolver == nil {
		c.Resolver = &net.Resolver{StrictErrors: true}
	}
	return c
}

// Watcher resolves its targets periodically. It holds no state between
// calls of Run: each Run starts afresh. Create it with New.
type Watcher struct {
	cfg   Config // defaults applied; checked by the caller with Validate
	log   *zap.Logger
	first chan struct{} // closed when Run's first round is over
}

// New returns a Watcher for cfg, which the caller has checked with
// Validate; zero fields take their defaults. log receives the failure,
// recovery, hold and change lines, named "discovery".
func New(cfg Config, log *zap.Logger) *Watcher {
	return &Watcher{cfg: cfg.withDefaults(), log: log.Named("discovery"), first: make(chan struct{})}
}

// FirstRound returns a channel closed once Run's first round of
// resolution is over, its backends (if any resolved) passed to update:
// for a caller that must not say it serves before it knows its backends.
func (w *Watcher) FirstRound() <-chan struct{} { return w.first }

// errNoUsableSRV says an SRV answer names no backend: every record's
// target is "." or does not exist. Like NXDOMAIN, it starts a hold.
var errNoUsableSRV = errors.New("no SRV record with a resolvable target")

// invalidNamesDetail is the Err of the *net.DNSError that net.Resolver's
// LookupSRV returns beside the valid records when it dropped records whose
// target is not a valid domain name (net's errMalformedDNSRecordsDetail,
// unexported).
const invalidNamesDetail = "DNS response contained records which contain invalid names"

// invalidNames reports whether err says only that a lookup dropped records
// with invalid names, so the records it returned are good.
func invalidNames(err error) bool {
	var dnsErr *net.DNSError
	return errors.As(err, &dnsErr) && dnsErr.Err == invalidNamesDetail
}

// target is the state of one target across rounds; Run's goroutine owns
// it.
type target struct {
	Target
	last    []Backend // last good answer; nil before the first and after a hold ends
	failing bool      // the last round failed, and that was logged
	// goneSince is when the answers saying the name is gone began; zero
	// when there is no hold (the last answer had records, or none said
	// it was gone).
	goneSince time.Time
	// srv is what the last good answer's record targets resolved to, for
	// an SRV target.
	srv map[srvKey]srvState
	// invalid: the last good answer had SRV records with invalid target
	// names, ignored, and that was logged. False after a hold ends.
	invalid bool
}

// gone reports whether err is an answer saying the name is gone, rather
// than a failure to get an answer.
func gone(err error) bool {
	var dnsErr *net.DNSError
	return errors.Is(err, errNoUsableSRV) || errors.As(err, &dnsErr) && dnsErr.IsNotFound
}

// Run resolves the targets at once and then every Interval (with jitter)
// until ctx is done, and calls update with the merged set (deduplicated,
// sorted by address) whenever it differs from the last call's, starting
// from an empty set. update runs on Run's goroutine and owns the slice it
// is given; Run waits for it, so it should be quick. Run returns when ctx
// is done, after every goroutine it started has returned.
func (w *Watcher) Run(ctx context.Context, update func([]Backend)) {
	targets := make([]target, len(w.cfg.Targets))
	for i, t := range w.cfg.Targets {
		targets[i].Target = t
	}
	var current []Backend
	// published: update has been called. Until then an empty result is
	// passed on too, once every target has answered or has been gone for
	// the hold: a caller that restarts a Watcher with new names (a
	// reload) must learn that they have no backends, or it would keep
	// the old names' for ever. A failure to get an answer is not enough.
	published := false
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		w.round(ctx, targets)
		if ctx.Err() != nil {
			return
		}
		if next := merge(targets); !slices.Equal(next, current) || !published && w.settled(targets, time.Now()) {
			added, removed := diff(current, next)
			w.log.Info("backends changed",
				zap.Int("backends", len(next)), zap.Int("added", added), zap.Int("removed", removed))
			current, published = next, true
			update(slices.Clone(next))
		}
		select {
		case <-w.first:
		default:
			close(w.first)
		}
		timer.Reset(w.cfg.Interval + time.Duration(rand.Int64N(int64(w.cfg.Interval/10)+1)))
	}
}

// round resolves every target concurrently and records the outcomes,
// logging the targets whose state changed. It returns when every lookup
// has returned.
func (w *Watcher) round(ctx context.Context, targets []target) {
	type result struct {
		backends []Backend
		srv      map[srvKey]srvState
		invalid  error // records were ignored for their invalid names
		err      error
	}
	results := make([]result, len(targets))
	var wg sync.WaitGroup
	for i := range targets {
		wg.Go(func() {
			tctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
			defer cancel()
			r := &results[i]
			r.backends, r.srv, r.invalid, r.err = w.resolve(tctx, targets[i].Target, targets[i].srv)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // cancelled: the outcomes say nothing about DNS
	}
	now := time.Now()
	for i := range targets {
		t, r := &targets[i], results[i]
		switch {
		case r.err == nil:
			if t.failing {
				w.log.Info("resolve recovered",
					zap.Stringer("target", t.Target), zap.Int("backends", len(r.backends)))
			}
			switch {
			case r.invalid != nil && !t.invalid:
				w.log.Warn("SRV answer has records with invalid target names, ignoring them",
					zap.Stringer("target", t.Target), zap.Int("backends", len(r.backends)), zap.Error(r.invalid))
			case r.invalid == nil && t.invalid:
				w.log.Info("SRV answer has no records with invalid target names again",
					zap.Stringer("target", t.Target), zap.Int("backends", len(r.backends)))
			}
			t.failing, t.goneSince = false, time.Time{}
			t.last, t.srv, t.invalid = r.backends, r.srv, r.invalid != nil
		case gone(r.err):
			w.hold(t, now, t.goneFrom(now, r.err), r.err)
		case !t.failing:
			t.failing = true
			w.log.Warn("resolve failed, keeping last good backends",
				zap.Stringer("target", t.Target), zap.Int("kept", len(t.last)), zap.Error(r.err))
		}
	}
}

// settled reports whether every target's last round answered, or its name
// has been gone for at least the hold.
func (w *Watcher) settled(targets []target, now time.Time) bool {
	for i := range targets {
		t := &targets[i]
		if t.failing && (t.goneSince.IsZero() || now.Sub(t.goneSince) < w.cfg.Hold) {
			return false
		}
	}
	return true
}

// hold records an answer at now saying t's name is gone: the first starts
// the hold (as of since, normally now), and the first at least Hold after
// its start removes t's backends.
func (w *Watcher) hold(t *target, now, since time.Time, err error) {
	wasFailing := t.failing
	t.failing = true
	if t.goneSince.IsZero() {
		t.goneSince = since
		if now.Sub(since) < w.cfg.Hold {
			switch {
			case len(t.last) > 0:
				w.log.Warn("name is gone, holding its last backends",
					zap.Stringer("target", t.Target), zap.Int("kept", len(t.last)),
					zap.Duration("hold", w.cfg.Hold), zap.Error(err))
			case !wasFailing:
				w.log.Warn("resolve failed, keeping last good backends",
					zap.Stringer("target", t.Target), zap.Int("kept", 0), zap.Error(err))
			}
			return
		}
	}
	if len(t.last) > 0 && now.Sub(t.goneSince) >= w.cfg.Hold {
		w.log.Warn("name is still gone after the hold, removing its backends",
			zap.Stringer("target", t.Target), zap.Int("removed", len(t.last)),
			zap.Duration("gone_for", now.Sub(t.goneSince)), zap.Error(err))
		t.last, t.srv, t.invalid = nil, nil, false
	}
}

// goneFrom returns when the hold that an answer at now saying t's name is
// gone starts, given the answer's error: now, except for an SRV answer with
// no usable record (errNoUsableSRV) whose last backends all came from
// record targets that were held, whose holds have ended: the hold began
// when the last of those did, so that the backends are not held twice.
func (t *target) goneFrom(now time.Time, err error) time.Time {
	if !errors.Is(err, errNoUsableSRV) {
		return now
	}
	var since time.Time
	for _, st := range t.srv {
		if len(st.addrs) == 0 {
			continue
		}
		if st.goneSince.IsZero() {
			return now // a target that was not held: its record went
		}
		if st.goneSince.After(since) {
			since = st.goneSince
		}
	}
	if since.IsZero() {
		return now
	}
	return since
}

// resolve returns the backends of t, sorted and deduplicated, and for an
// SRV target the state of its record targets, given their last state, and
// the error saying records with invalid names were ignored, if they were.
func (w *Watcher) resolve(ctx context.Context, t Target, srv map[srvKey]srvState) ([]Backend, map[srvKey]srvState, error, error) {
	var bs []Backend
	var invalid, err error
	if t.Kind == SRV {
		bs, srv, invalid, err = w.resolveSRV(ctx, t.Name, srv)
	} else {
		bs, err = w.resolveHost(ctx, t.Name, t.Port, 1)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	bs = dedup(bs)
	if len(bs) == 0 {
		return nil, nil, nil, errors.New("no usable addresses")
	}
	if len(bs) > w.cfg.MaxAddrs {
		return nil, nil, nil, fmt.Errorf("%d addresses, more than the limit of %d", len(bs), w.cfg.MaxAddrs)
	}
	return bs, srv, invalid, nil
}

// resolveHost returns name's A and AAAA addresses at port. It drops
// addresses no backend can have (unspecified, multicast, broadcast) and
// fails if none is left.
func (w *Watcher) resolveHost(ctx context.Context, name string, port uint16, weight int) ([]Backend, error) {
	addrs, err := w.cfg.Resolver.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return nil, err
	}
	if len(addrs) > w.cfg.MaxAddrs {
		return nil, fmt.Errorf("%s: %d addresses, more than the limit of %d", name, len(addrs), w.cfg.MaxAddrs)
	}
	bs := make([]Backend, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			continue
		}
		bs = append(bs, Backend{Addr: netip.AddrPortFrom(a, port), Weight: weight})
	}
	if len(bs) == 0 {
		return nil, fmt.Errorf("%s: no usable addresses in %d", name, len(addrs))
	}
	return bs, nil
}

// usableSRV reports whether an SRV record names a backend: not RFC 2782's
// "." (no service here), and not port 0, which no backend listens on.
func usableSRV(s *net.SRV) bool {
	return s.Target != "." && s.Target != "" && s.Port != 0
}

// srvKey is an SRV record's target and port.
type srvKey struct {
	target string
	port   uint16
}

// srvResult is the resolution of one srvKey.
type srvResult struct {
	got []Backend
	err error
}

// maxParallelLookups bounds the concurrent lookups of an SRV answer's
// targets.
const maxParallelLookups = 16

// resolveTargets resolves the usable targets of group, each distinct
// target and port once, up to maxParallelLookups at a time. One after
// another, a large answer from a DNS server a few milliseconds away would
// outlast the round's timeout, and the service would never get a backend.
func (w *Watcher) resolveTargets(ctx context.Context, group []*net.SRV) map[srvKey]srvResult {
	out := make(map[srvKey]srvResult, len(group))
	seen := make(map[srvKey]bool, len(group))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelLookups)
	for _, s := range group {
		k := srvKey{s.Target, s.Port}
		if !usableSRV(s) || seen[k] {
			continue
		}
		seen[k] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			got, err := w.resolveHost(ctx, k.target, k.port, 0)
			mu.Lock()
			out[k] = srvResult{got, err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// srvState is what a watcher knows of one record target of an SRV name.
type srvState struct {
	// addrs is what it resolved to when it last did (weights unset); nil
	// once its hold has ended.
	addrs   []Backend
	failing bool // it did not resolve last time, and that was logged
	// goneSince is when the answers saying its name is gone began, as for
	// a target; zero when it last resolved, or no answer said so.
	goneSince time.Time
}

// resolveSRV returns the backends of the lowest usable priority of name's
// SRV records, and the state of the record targets it looked at, given
// their state after the last good answer (prev, which it does not modify);
// see the package documentation. When the answer had records with invalid
// target names, which the resolver dropped, invalid is the resolver's error
// saying so. The record targets' lines are logged only when the answer is
// good: when it is not, the SRV target's failure is the line.
func (w *Watcher) resolveSRV(ctx context.Context, name string, prev map[srvKey]srvState) (bs []Backend, next map[srvKey]srvState, invalid, err error) {
	_, srvs, err := w.cfg.Resolver.LookupSRV(ctx, "", "", name)
	if err != nil {
		if !invalidNames(err) || len(srvs) == 0 {
			return nil, nil, nil, err
		}
		invalid = err // the records returned are the valid ones
	}
	if len(srvs) > w.cfg.MaxAddrs {
		return nil, nil, nil, fmt.Errorf("%d SRV records, more than the limit of %d", len(srvs), w.cfg.MaxAddrs)
	}
	slices.SortStableFunc(srvs, func(a, b *net.SRV) int { return int(a.Priority) - int(b.Priority) })
	next = make(map[srvKey]srvState)
	var lines []func() // the record targets' lines
	for len(srvs) > 0 {
		prio := srvs[0].Priority
		n := 1
		for n < len(srvs) && srvs[n].Priority == prio {
			n++
		}
		group := srvs[:n]
		srvs = srvs[n:]
		found := w.resolveTargets(ctx, group)
		now := time.Now()
		resolved := 0    // record targets that resolved now
		held := 0        // record targets gone but in their hold
		ended := 0       // record targets whose hold ends now
		kept := 0        // record targets that failed, keeping addresses
		var failed error // the first that failed other than by being gone
		for _, s := range group {
			k := srvKey{s.Target, s.Port}
			r, ok := found[k]
			if _, done := next[k]; !ok || done {
				continue // unusable, or a record with the target and port of another
			}
			was := prev[k]
			fields := []zap.Field{zap.String("srv", name), zap.String("target", k.target), zap.Uint16("port", k.port)}
			var dnsErr *net.DNSError
			switch {
			case r.err == nil:
				resolved++
				next[k] = srvState{addrs: r.got}
				if was.failing {
					lines = append(lines, func() { w.log.Info("SRV target resolves again", fields...) })
				}
			case errors.As(r.err, &dnsErr) && dnsErr.IsNotFound:
				st := srvState{failing: true, goneSince: was.goneSince}
				if st.goneSince.IsZero() {
					st.goneSince = now
				}
				goneFor := now.Sub(st.goneSince)
				switch {
				case len(was.addrs) > 0 && goneFor < w.cfg.Hold:
					held++
					st.addrs = was.addrs
					if was.goneSince.IsZero() {
						lines = append(lines, func() {
							w.log.Warn("SRV target does not exist, holding its last addresses",
								append(fields, zap.Int("kept", len(was.addrs)), zap.Duration("hold", w.cfg.Hold), zap.Error(r.err))...)
						})
					}
				case len(was.addrs) > 0:
					ended++
					lines = append(lines, func() {
						w.log.Warn("SRV target still does not exist after the hold, removing its addresses",
							append(fields, zap.Int("removed", len(was.addrs)), zap.Duration("gone_for", goneFor), zap.Error(r.err))...)
					})
				case !was.failing:
					lines = append(lines, func() { w.log.Warn("SRV target does not exist, skipping it", append(fields, zap.Error(r.err))...) })
				}
				next[k] = st
			default:
				if failed == nil {
					failed = fmt.Errorf("SRV target %s: %w", k.target, r.err)
				}
				next[k] = srvState{addrs: was.addrs, failing: true, goneSince: was.goneSince}
				if len(was.addrs) > 0 {
					kept++
				}
				if !was.failing {
					lines = append(lines, func() {
						w.log.Warn("SRV target failed to resolve, keeping its last addresses",
							append(fields, zap.Int("kept", len(was.addrs)), zap.Error(r.err))...)
					})
				}
			}
		}
		if resolved == 0 && held == 0 {
			// A hold that ends now is news the last good answer does
			// not have: the failing targets' addresses go on without
			// the held ones'.
			if failed != nil && ended == 0 {
				return nil, nil, nil, failed
			}
			if kept == 0 {
				continue // every target is gone: the next priority
			}
		}
		// Each distinct address once, with the largest weight of the
		// records naming it: a record repeated, or two names for the
		// same addresses, count once against the limit.
		keyWeights := make(map[srvKey]uint16)
		var keys []srvKey // of keyWeights, in the records' order
		for _, s := range group {
			k := srvKey{s.Target, s.Port}
			if !usableSRV(s) {
				continue
			}
			if have, ok := keyWeights[k]; !ok {
				keys = append(keys, k)
			} else if have >= s.Weight {
				continue
			}
			keyWeights[k] = s.Weight
		}
		srvWeights := make(map[netip.AddrPort]uint16)
		var maxW uint16
		for _, k := range keys {
			for _, b := range next[k].addrs {
				if have, ok := srvWeights[b.Addr]; !ok || keyWeights[k] > have {
					srvWeights[b.Addr] = keyWeights[k]
					maxW = max(maxW, keyWeights[k])
				}
			}
			if len(srvWeights) > w.cfg.MaxAddrs {
				return nil, nil, nil, fmt.Errorf("more than the limit of %d addresses", w.cfg.MaxAddrs)
			}
		}
		bs = make([]Backend, 0, len(srvWeights))
		for a, sw := range srvWeights {
			bs = append(bs, Backend{Addr: a, Weight: srvWeight(sw, maxW)})
		}
		for _, l := range lines {
			l()
		}
		return bs, next, invalid, nil
	}
	if invalid != nil {
		// The records dropped may have named the backends: not a name
		// that is gone.
		return nil, nil, nil, invalid
	}
	return nil, nil, nil, errNoUsableSRV
}

// srvWeight maps an SRV weight to a backend weight, given the largest SRV
// weight in its group.
func srvWeight(w, maxW uint16) int {
	v := int(w)
	if maxW > MaxWeight {
		v = (int(w)*MaxWeight + int(maxW)/2) / int(maxW)
	}
	return max(v, 1)
}

// dedup sorts bs by address and keeps one backend per address, with the
// largest weight given for it.
func dedup(bs []Backend) []Backend {
	slices.SortFunc(bs, func(a, b Backend) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return b.Weight - a.Weight
	})
	return slices.CompactFunc(bs, func(a, b Backend) bool { return a.Addr == b.Addr })
}

// merge returns the deduplicated, sorted union of the targets' last good
// answers.
func merge(targets []target) []Backend {
	var all []Backend
	for _, t := range targets {
		all = append(all, t.last...)
	}
	return dedup(all)
}

// diff counts the backends added and removed between two sorted sets; a
// weight change counts as neither.
func diff(old, next []Backend) (added, removed int) {
	i, j := 0, 0
	for i < len(old) || j < len(next) {
		switch {
		case j == len(next) || (i < len(old) && old[i].Addr.Compare(next[j].Addr) < 0):
			removed++
			i++
		case i == len(old) || old[i].Addr.Compare(next[j].Addr) > 0:
			added++
			j++
		default:
			i++
			j++
		}
	}
	return added, removed
}
