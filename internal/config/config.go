// Package config is the one place where sluice's command-line flags and
// config file are declared, parsed and checked. Parse returns a Config whose
// every field is valid, or a *UsageError listing every problem found, one
// per line, each naming the flag (and file line) and the value.
//
// A single service is configured with flags alone. Several services need a
// config file (--config), whose keys are the flag names: global flags at the
// top, then one [service NAME] section per service holding service flags.
package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/sluice-lb/sluice/internal/admin"
	"github.com/sluice-lb/sluice/internal/balancer"
	"github.com/sluice-lb/sluice/internal/discovery"
	"github.com/sluice-lb/sluice/internal/firewall"
	"github.com/sluice-lb/sluice/internal/health"
	"github.com/sluice-lb/sluice/internal/tcpproxy"
)

// Config is sluice's whole configuration, plain data.
type Config struct {
	// Workers is the number of event loops, each with its own listening
	// socket per service (SO_REUSEPORT) and OS thread.
	Workers int
	// MaxConns caps the client connections open at once across loops and
	// services.
	MaxConns int
	// DrainTimeout bounds how long open connections may go on after
	// SIGTERM/SIGINT before they are reset.
	DrainTimeout time.Duration
	// PipeSize is the capacity of each splice pipe, bytes.
	PipeSize int
	// MaxPipes is the pipes each loop may have alive, derived from the
	// open-file limit.
	MaxPipes int
	// AdminAddr is the admin HTTP endpoint's address; invalid (zero) when
	// off.
	AdminAddr netip.AddrPort
	// ConfigFile is the --config path, "" when none; reread on SIGHUP for
	// backend lists.
	ConfigFile string
	// Args are the command-line arguments Parse was given, so a reload
	// can parse them again with the config file as it is then.
	Args []string
	// LogLevel is the minimum level logged.
	LogLevel zapcore.Level
	// LogFormat is "json" or "console".
	LogFormat string
	// Services are the services to run, at least one.
	Services []Service
	// Firewall is the optional XDP firewall; off without interfaces.
	Firewall Firewall
	// UDPMaxSessions caps the UDP sessions open at once across loops and
	// services (each holds one socket); 0 when no service is UDP. Each
	// loop owns an even share of it, at least one session.
	UDPMaxSessions int
	// Settings holds the value of every global flag in force, command
	// line and config file together, defaults included.
	Settings Settings
}

// Settings maps each flag of one scope (the global flags, or one
// service's) to its value as the flag prints it, defaults included. Every
// flag is in it, so comparing two Settings (Changed) covers every setting
// without a list of them to keep up to date: a reload names what it does
// not apply. Values that can be written several ways are in one form, so
// that only a change of effect counts: a list's entries are sorted (every
// list flag is a set), and an address, a prefix, a log level and the
// default health check are as parsed. A service's setting that does
// nothing where it is given is left out by Service.Changed.
type Settings map[string]string

// Changed returns the names of the settings whose values differ between s
// and t, sorted. A setting missing from one counts as changed.
func (s Settings) Changed(t Settings) []string {
	var out []string
	for k, v := range s {
		if w, ok := t[k]; !ok || w != v {
			out = append(out, k)
		}
	}
	for k := range t {
		if _, ok := s[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// Firewall configures the XDP program. Nothing BPF is loaded when Ifaces
// is empty.
type Firewall struct {
	// Ifaces are the interfaces the program is attached to.
	Ifaces []string
	// Mode is the XDP attach mode.
	Mode firewall.Mode
	// Rules are the deny/allow lists and rate limits. Rules.Ports holds
	// only the --protect-port extras; the server adds the services' ports.
	Rules firewall.Config
}

// Service is one listening address with its backends and policies.
type Service struct {
	// Name labels the service in logs and metrics ("default" for the
	// flag-only quick path).
	Name string
	// Proto is "tcp" or "udp".
	Proto string
	// Listen is the service's listening address.
	Listen netip.AddrPort
	// Backends is the static backend list (--backend).
	Backends []balancer.Spec
	// BackendsFile is a file of further backends, reread on SIGHUP and
	// when it changes; "" when none.
	BackendsFile string
	// Proxy is the per-connection behaviour of a TCP service.
	Proxy tcpproxy.Config
	// Health configures the active checks.
	Health health.Config
	// PassiveFall ejects a backend after this many consecutive connect
	// failures on the data path; 0 is off.
	PassiveFall int
	// CloseOnDown resets a backend's connections when it goes down.
	CloseOnDown bool
	// DNS discovers further backends; off when it has no targets.
	DNS discovery.Config
	// UDPSessionTimeout ends a UDP session idle this long.
	UDPSessionTimeout time.Duration
	// Settings holds the value of every service flag of this service,
	// defaults included.
	Settings Settings
}

// Changed names the settings whose values differ between s and t, as
// Settings.Changed does, less those that act in neither: --passive-fall
// when the value in force is the same in both (written otherwise where it
// cannot act, see checkService, it changes nothing), and the settings of
// the active check (--health-interval, --health-send, ...) when both run
// none. Where such a setting acts in one of them its change is named, and
// a change of --health-check or --proto that puts it in force or takes it
// out is named by that setting.
func (s Service) Changed(t Service) []string {
	unchecked := s.Health.Kind == "none" && t.Health.Kind == "none"
	return slices.DeleteFunc(s.Settings.Changed(t.Settings), func(name string) bool {
		switch {
		case name == "passive-fall":
			return s.PassiveFall == t.PassiveFall
		case name == "health-check":
			return false
		}
		return unchecked && strings.HasPrefix(name, "health-")
	})
}

// fdReserve is the file descriptors kept back from connections and pipes
// for listeners, epoll and eventfds, logs and health checks. The admin
// endpoint, when on, is kept apart: see adminFDs.
const fdReserve = 256

// adminFDs is what the admin endpoint can hold at once: its listening
// socket and admin.MaxConns connections (more wait to be accepted).
const adminFDs = 1 + admin.MaxConns

// ErrHelp is returned by Parse when --help was asked for; the usage has been
// written to the help writer.
var ErrHelp = errors.New("help requested")

// UsageError lists everything wrong with a command line or config file.
// Each problem is one line naming the flag and the value.
type UsageError struct {
	Problems []string
}

func (e *UsageError) Error() string { return strings.Join(e.Problems, "\n") }

// globalVals and serviceVals hold flag values as parsed, before checks.
type globalVals struct {
	workers, maxConns int
	drain             time.Duration
	pipeSize          byteSize
	admin             string
	config            string
	logLevel          string
	logFormat         string

	udpMaxSessions       int
	xdpIfaces            []string
	xdpMode              string
	deny, allow, protect []string
	rateLimit, rateBurst int
}

type serviceVals struct {
	proto, listen, backendsFile string
	backends                    []string
	hashKey, splice             string
	connectTimeout, idleTimeout time.Duration
	connectRetries              int
	balanceFactor               float64
	health                      health.Config
	passiveFall                 int
	closeOnDown                 bool
	dnsHosts, dnsSRV            []string
	dnsInterval                 time.Duration
	sendProxy                   string
	acceptProxy                 bool
	trusted                     []string
	udpSessionTimeout           time.Duration
	accessLog                   bool
	accessLogSample             float64
}

func addGlobalFlags(fs *pflag.FlagSet, g *globalVals) {
	g.pipeSize = 1 << 20
	fs.StringVar(&g.config, "config", "", "config file listing several services (see the README); flags given too override its global settings")
	fs.IntVar(&g.workers, "workers", runtime.NumCPU(), "event loops, each with its own thread and SO_REUSEPORT listener; defaults to the CPU count")
	fs.IntVar(&g.maxConns, "max-conns", 0, "client connections open at once; beyond it new ones wait in the accept queue (0, the default: derived from the open-file limit)")
	durationVar(fs, &g.drain, "drain-timeout", 30*time.Second, "on SIGTERM/SIGINT, time open connections get to finish before they are reset")
	fs.Var(&g.pipeSize, "pipe-size", "capacity of each splice pipe, bytes (suffixes k, m); pipes are lent only while bytes are in flight. Above 1m needs fs.pipe-max-size raised; an unprivileged user's pipes share fs.pipe-user-pages-soft (64 MiB by default, see docs/production.md)")
	fs.StringVar(&g.admin, "admin-addr", "", "admin HTTP endpoint (health, backends, metrics), ip:port; off when empty. It has no authentication: keep it on loopback")
	fs.StringVar(&g.logLevel, "log-level", "info", "minimum log level: debug, info, warn or error")
	fs.StringVar(&g.logFormat, "log-format", "console", "log encoding: json or console")
	fs.IntVar(&g.udpMaxSessions, "udp-max-sessions", 4096, "UDP sessions open at once (one socket each), split evenly between the loops (at least one each); at its loop's share a new session evicts the least recently active one of the service holding the most on that loop")
	fs.StringArrayVar(&g.xdpIfaces, "xdp-iface", nil, "attach the XDP firewall to this interface (repeatable); without it nothing BPF is loaded")
	fs.StringVar(&g.xdpMode, "xdp-mode", "auto", "XDP attach mode: auto (native when the driver has it, else generic), native or generic")
	fs.StringArrayVar(&g.deny, "deny-cidr", nil, "XDP: drop packets from this source prefix to the protected ports (repeatable, IPv4 or IPv6)")
	fs.StringArrayVar(&g.allow, "allow-cidr", nil, "XDP: when given, admit to the protected ports only these source prefixes (repeatable)")
	fs.IntVar(&g.rateLimit, "rate-limit", 0, "XDP: new connections (TCP SYNs) plus UDP datagrams per second per source IPv4 address or IPv6 /64; 0 is off")
	fs.IntVar(&g.rateBurst, "rate-burst", 0, "XDP: flows a source may open at once before --rate-limit applies (default: one second's worth)")
	fs.StringArrayVar(&g.protect, "protect-port", nil, "XDP: police this port too, as tcp/PORT, udp/PORT or PORT for both (repeatable); the services' listen ports always are")
}

func addServiceFlags(fs *pflag.FlagSet, s *serviceVals) {
	dp := tcpproxy.DefaultConfig()
	dh := health.DefaultConfig()
	fs.StringVar(&s.proto, "proto", "tcp", "protocol of the service: tcp or udp")
	fs.StringVar(&s.listen, "listen", "", "address to accept clients on, ip:port (required)")
	fs.StringArrayVar(&s.backends, "backend", nil, "backend as ip:port[,weight=N] (repeatable; weight 0-1000, default 1)")
	fs.StringVar(&s.backendsFile, "backends-file", "", "file with one backend per line (ip:port [weight=N], # comments), reread on SIGHUP and when it changes")
	fs.StringArrayVar(&s.dnsHosts, "backend-dns", nil, "discover backends from the A/AAAA records of NAME, as NAME:PORT (repeatable; e.g. a Kubernetes headless service)")
	fs.StringArrayVar(&s.dnsSRV, "backend-srv", nil, "discover backends from SRV records, as _service._proto.NAME (repeatable; e.g. Consul DNS); SRV weights become backend weights")
	durationVar(fs, &s.dnsInterval, "dns-interval", discovery.DefaultConfig().Interval, "time between resolutions of --backend-dns/--backend-srv; a failed resolution keeps the last good set")
	fs.StringVar(&s.hashKey, "hash-key", dp.HashKey.String(), "what picks a client's backend: src-ip (all of a client's connections to one backend) or src-ip-port")
	fs.Float64Var(&s.balanceFactor, "hash-balance-factor", 0, "bounded-load hashing: no backend holds more than ceil(F × its share of open connections), e.g. 1.25; 0 is off")
	durationVar(fs, &s.connectTimeout, "connect-timeout", dp.ConnectTimeout, "time allowed for each connect attempt to a backend")
	fs.IntVar(&s.connectRetries, "connect-retries", dp.ConnectRetries, "further backends tried, in the client's hash preference order, after a failed connect")
	durationVar(fs, &s.idleTimeout, "idle-timeout", dp.IdleTimeout, "close a connection after this long with no bytes in either direction; idle pooled database sessions count as idle too, so raise it if your pools keep connections idle longer")
	fs.StringVar(&s.splice, "splice", dp.Splice.String(), "byte moving: auto (read/write for small messages, splice(2) for bulk), always, or never (read/write only)")
	fs.StringVar(&s.health.Kind, "health-check", "", "active check: tcp, send-expect, redis, postgres, mysql, grpc or none (default: tcp for TCP services, none for UDP; UDP services may use send-expect)")
	durationVar(fs, &s.health.Interval, "health-interval", dh.Interval, "time between checks of a backend (jittered; at least 10ms)")
	durationVar(fs, &s.health.Timeout, "health-timeout", dh.Timeout, "time allowed for one check; 1ms to 10m (above the interval, checks run back to back)")
	fs.IntVar(&s.health.Rise, "health-rise", dh.Rise, "consecutive passed checks that bring a down backend up")
	fs.IntVar(&s.health.Fall, "health-fall", dh.Fall, "consecutive failed checks that take an up backend down")
	fs.StringVar(&s.health.Send, "health-send", "", "send-expect: bytes to send (\\r \\n \\t escapes)")
	fs.StringVar(&s.health.Expect, "health-expect", "", "send-expect: the answer must contain this (\\r \\n \\t escapes)")
	fs.StringVar(&s.health.RedisPassword, "health-redis-password", "", "redis check: AUTH with this password before PING")
	fs.StringVar(&s.health.GRPCService, "health-grpc-service", "", "grpc check: service name asked of grpc.health.v1 (empty: the whole server)")
	fs.StringVar(&s.health.PostgresUser, "health-postgres-user", dh.PostgresUser, "postgres check: the user a session is asked for (never authenticated; one pg_hba.conf asks a password of keeps the server's log quiet)")
	fs.StringVar(&s.health.PostgresDatabase, "health-postgres-database", dh.PostgresDatabase, "postgres check: the database a session is asked for (behind pgbouncer: one it serves)")
	fs.StringVar(&s.health.MySQLUser, "health-mysql-user", dh.MySQLUser, "mysql check: log in as this user with no password after the greeting (OK or access denied passes); empty: hang up after it, which MySQL counts toward max_connect_errors, past which it blocks this host")
	fs.BoolVar(&s.health.TLS, "health-tls", false, "run the tcp (passes when the TLS handshake completes and, in TLS 1.3, the server does not then refuse the client certificate it asked for), send-expect, redis or grpc (ALPN h2) check over TLS; not for postgres and mysql, which negotiate TLS themselves, nor UDP")
	fs.StringVar(&s.health.TLSCA, "health-tls-ca", "", "--health-tls: verify the backend's certificate against this PEM bundle. Without it the certificate is NOT verified (a check asks whether the backend serves, not who it is; HAProxy's verify none)")
	fs.StringVar(&s.health.TLSServerName, "health-tls-server-name", "", "--health-tls: SNI sent, and the name verified with --health-tls-ca (default: no SNI; the backend's IP is verified against the certificate's IP SANs)")
	fs.StringVar(&s.health.TLSCert, "health-tls-cert", "", "--health-tls: client certificate (PEM) for backends that require mTLS; with --health-tls-key. The files are reread when they change")
	fs.StringVar(&s.health.TLSKey, "health-tls-key", "", "--health-tls: the client certificate's key (PEM)")
	fs.IntVar(&s.passiveFall, "passive-fall", 3, "consecutive failed connects on the data path that mark a backend down until its active check passes; 0 is off, as it is with --health-check none and for UDP")
	fs.BoolVar(&s.closeOnDown, "close-on-down", false, "reset a backend's open connections when it goes down (default: leave them alone)")
	fs.StringVar(&s.sendProxy, "proxy-protocol", "", "send the client's address to backends in a PROXY protocol header: v1 (text) or v2 (binary); off when empty")
	fs.BoolVar(&s.acceptProxy, "accept-proxy-protocol", false, "take the client address from a PROXY v1/v2 header sent by an upstream balancer (needs --proxy-protocol-trusted)")
	fs.StringArrayVar(&s.trusted, "proxy-protocol-trusted", nil, "peer prefix allowed to send a PROXY header, e.g. 198.18.0.10/32 (repeatable); connections from other peers are closed")
	fs.BoolVar(&s.accessLog, "access-log", false, "log one line per closed TCP connection: client, backend, bytes each way, duration, close reason")
	fs.Float64Var(&s.accessLogSample, "access-log-sample", 1, "fraction of connections the access log records, 0 to 1 (e.g. 0.01)")
	durationVar(fs, &s.udpSessionTimeout, "udp-session-timeout", 30*time.Second, "UDP: end a client's session after this long with no datagram either way")
}

// isServiceFlag reports whether name is a per-service flag.
func isServiceFlag(name string) bool {
	fs := pflag.NewFlagSet("", pflag.ContinueOnError)
	addServiceFlags(fs, &serviceVals{})
	return fs.Lookup(name) != nil
}

// isGlobalFlag reports whether name is a process-wide flag.
func isGlobalFlag(name string) bool {
	fs := pflag.NewFlagSet("", pflag.ContinueOnError)
	addGlobalFlags(fs, &globalVals{})
	return fs.Lookup(name) != nil
}

// settingsOf returns the Settings of vals, the values of the flags that
// add binds (addGlobalFlags or addServiceFlags).
func settingsOf[V any](vals V, add func(*pflag.FlagSet, *V)) Settings {
	var v V
	fs := newFlagSet()
	add(fs, &v)
	// The flags print what their pointers hold: v's fields.
	v = vals
	out := Settings{}
	fs.VisitAll(func(f *pflag.Flag) {
		out[f.Name] = f.Value.String()
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			out.setList(f.Name, sv.GetSlice())
		}
	})
	return out
}

// setList sets the setting name to the list vals, in a form that does not
// depend on their order.
func (s Settings) setList(name string, vals []string) {
	vals = slices.Clone(vals)
	slices.Sort(vals)
	s[name] = "[" + strings.Join(vals, ",") + "]"
}

func newFlagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("sluice", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// Parse parses args (without the program name) and the config file they
// name, if any. On --help it writes the flag reference to help and returns
// ErrHelp. Any other problem comes back as a *UsageError.
func Parse(args []string, help io.Writer) (Config, error) {
	return parse(args, help, openFileLimit(), true)
}

// ParseReload is Parse for a reload: a backends file is not read, because
// a reload applies each service's backends file on its own, so that one
// service's bad file keeps only that service's backends.
func ParseReload(args []string) (Config, error) {
	return parse(args, io.Discard, openFileLimit(), false)
}

// parse is Parse with the open-file limit given; readBackends says whether
// a service's backends file is read and checked.
func parse(args []string, help io.Writer, fdLimit int, readBackends bool) (Config, error) {
	var g globalVals
	var sv serviceVals
	fs := newFlagSet()
	addGlobalFlags(fs, &g)
	addServiceFlags(fs, &sv)
	showHelp := fs.BoolP("help", "h", false, "show this help")
	if err := fs.Parse(args); err != nil {
		return Config{}, usageError([]string{err.Error()})
	}
	if *showHelp {
		fmt.Fprintf(help, "Usage: sluice --listen IP:PORT --backend IP:PORT [--backend IP:PORT ...] [flags]\n"+
			"       sluice --config FILE [global flags]\n\n"+
			"sluice is a layer-4 TCP/UDP load balancer: it hashes each client's address to a backend\n"+
			"with Maglev consistent hashing and moves bytes with splice(2).\n\nFlags:\n%s", fs.FlagUsages())
		return Config{}, ErrHelp
	}
	var probs []string
	if fs.NArg() > 0 {
		probs = append(probs, fmt.Sprintf("unexpected argument %q (flags are --name value)", fs.Arg(0)))
	}
	var svcs []namedService
	// fileGlobal prefixes a problem with a global flag set in the config
	// file (and not on the command line) with its file and line.
	fileGlobal := func(flag, value string) string { return "" }
	if g.config != "" {
		globalArgs, globalLines, fileSvcs, fileProbs, ok := readFile(g.config)
		svcs = fileSvcs
		probs = append(probs, fileProbs...)
		if ok && len(svcs) == 0 {
			probs = append(probs, "no service: the config file has no [service NAME] section")
		}
		onCommandLine := map[string]bool{}
		fs.Visit(func(f *pflag.Flag) {
			onCommandLine[f.Name] = true
			if isServiceFlag(f.Name) {
				probs = append(probs, fmt.Sprintf("--%s: with --config, service flags belong in the file's [service] sections", f.Name))
			}
		})
		// Reparse: the file's globals first, then the command line on top.
		// A flag given on the command line replaces the file's setting,
		// repeatable ones (--deny-cidr) included: the file's lines for it
		// are left out rather than added to.
		var fileArgs []string
		for _, a := range globalArgs {
			name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !onCommandLine[name] {
				fileArgs = append(fileArgs, a)
			}
		}
		path := g.config
		fileGlobal = func(flag, value string) string {
			if n, ok := globalLines[flag]; ok && !onCommandLine[flag] {
				return fmt.Sprintf("%s:%d: ", path, n)
			}
			return ""
		}
		g = globalVals{}
		fs = newFlagSet()
		addGlobalFlags(fs, &g)
		addServiceFlags(fs, &serviceVals{})
		fs.BoolP("help", "h", false, "")
		if err := fs.Parse(fileArgs); err != nil {
			probs = append(probs, fmt.Sprintf("%s: %v", path, err))
		}
		if err := fs.Parse(args); err != nil {
			probs = append(probs, err.Error())
		}
	} else {
		svcs = []namedService{{name: "default", vals: sv}}
	}
	cfg, more := build(g, svcs, fdLimit, readBackends)
	cfg.Args = args
	probs = append(probs, locate(more, fileGlobal)...)
	if len(probs) > 0 {
		return cfg, usageError(probs)
	}
	return cfg, nil
}

// usageError makes each problem one line.
func usageError(probs []string) *UsageError {
	for i, p := range probs {
		probs[i] = oneLine(p)
	}
	return &UsageError{Problems: probs}
}

// oneLine escapes the control characters that flag values or file lines
// may have carried into a problem (a raw CR or newline would break the
// one line per problem that sluice prints), as %q does.
func oneLine(p string) string {
	if !strings.ContainsFunc(p, unicode.IsControl) {
		return p
	}
	var b strings.Builder
	for _, r := range p {
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

type namedService struct {
	name string
	// path is the config file that defines the service, "" for flags;
	// header is the line of its section header, and lines the line that
	// last set each key, and each "key value".
	path   string
	header int
	lines  map[string]int
	vals   serviceVals
}

// where prefixes a problem with "file:line: service NAME: ", naming the
// line that set flag with value (or flag, or else the section header). It
// is "" for a service made of command-line flags.
func (ns namedService) where(flag, value string) string {
	if ns.path == "" {
		return ""
	}
	line := ns.header
	if n, ok := ns.lines[flag+" "+value]; ok {
		line = n
	} else if n, ok := ns.lines[flag]; ok {
		line = n
	}
	return fmt.Sprintf("%s:%d: service %s: ", ns.path, line, ns.name)
}

// locate prefixes each problem of ns with where.
func (ns namedService) locate(probs []string) []string { return locate(probs, ns.where) }

// locate prefixes each problem with where(flag, value): a problem that
// starts with "--flag" or "--flag \"value\"" is about the setting of that
// flag (and value); for any other, flag and value are "".
func locate(probs []string, where func(flag, value string) string) []string {
	for i, p := range probs {
		flag, value := "", ""
		if rest, ok := strings.CutPrefix(p, "--"); ok {
			end := strings.IndexFunc(rest, func(r rune) bool { return !(r == '-' || unicode.IsLower(r) || unicode.IsDigit(r)) })
			if end < 0 {
				end = len(rest)
			}
			flag = rest[:end]
			if q, err := strconv.QuotedPrefix(strings.TrimPrefix(rest[end:], " ")); err == nil {
				value, _ = strconv.Unquote(q)
			}
		}
		probs[i] = where(flag, value) + p
	}
	return probs
}

// build checks the parsed values and turns them into a Config.
func build(g globalVals, svcs []namedService, fdLimit int, readBackends bool) (Config, []string) {
	var probs []string
	bad := func(prefix, flag, value, format string, a ...any) {
		probs = append(probs, fmt.Sprintf("%s--%s %q: %s", prefix, flag, value, fmt.Sprintf(format, a...)))
	}
	cfg := Config{
		Workers:      g.workers,
		MaxConns:     g.maxConns,
		DrainTimeout: g.drain,
		PipeSize:     int(g.pipeSize),
		LogFormat:    g.logFormat,
		ConfigFile:   g.config,
		Settings:     settingsOf(g, addGlobalFlags),
	}
	if g.workers < 1 || g.workers > 256 {
		bad("", "workers", strconv.Itoa(g.workers), "want 1 to 256")
	}
	if g.drain <= 0 {
		bad("", "drain-timeout", g.drain.String(), "want a positive duration such as 5s or 2m")
	}
	if g.pipeSize < 4<<10 || g.pipeSize > 16<<20 {
		bad("", "pipe-size", g.pipeSize.String(), "want 4k to 16m")
	}
	if g.admin != "" {
		if ap, err := parseAddr(g.admin); err != nil {
			bad("", "admin-addr", g.admin, "%v", err)
		} else {
			cfg.AdminAddr = ap
		}
	}
	if lvl, err := zapcore.ParseLevel(g.logLevel); err != nil || lvl < zapcore.DebugLevel || lvl > zapcore.ErrorLevel {
		bad("", "log-level", g.logLevel, "want debug, info, warn or error")
	} else {
		cfg.LogLevel = lvl
		cfg.Settings["log-level"] = lvl.String()
	}
	if cfg.AdminAddr.IsValid() {
		cfg.Settings["admin-addr"] = cfg.AdminAddr.String()
	}
	if g.logFormat != "json" && g.logFormat != "console" {
		bad("", "log-format", g.logFormat, "want json or console")
	}
	probs = append(probs, buildFirewall(&cfg.Firewall, g)...)
	listens := map[string]string{}
	for _, ns := range svcs {
		s, sp := buildService(ns, readBackends)
		probs = append(probs, sp...)
		if s.Listen.IsValid() && s.Listen.Port() != 0 {
			key := s.Proto + " " + s.Listen.String()
			if other, dup := listens[key]; dup {
				probs = append(probs, ns.locate([]string{fmt.Sprintf("--listen %q: also the address of service %q", s.Listen, other)})...)
			}
			listens[key] = s.Name
		}
		cfg.Services = append(cfg.Services, s)
	}
	probs = append(probs, checkFirewallSize(cfg)...)
	for _, sv := range cfg.Services {
		if sv.Proto == "udp" {
			// Each loop owns a share of the cap, at least one
			// session, so fewer than one per loop is one per loop:
			// that many sockets are what the file budget must hold.
			cfg.UDPMaxSessions = max(g.udpMaxSessions, g.workers)
		}
	}
	sizable := g.workers >= 1 && g.workers <= 256
	if g.udpMaxSessions < 1 || g.udpMaxSessions > 1<<20 {
		bad("", "udp-max-sessions", strconv.Itoa(g.udpMaxSessions), "want 1 to 1048576")
		sizable = false
	}
	if g.maxConns < 0 || g.maxConns > maxConnsCap {
		bad("", "max-conns", strconv.Itoa(g.maxConns), "want 1 to %d, or 0 (the default) to derive it from the open-file limit", maxConnsCap)
		sizable = false
	}
	if sizable {
		if p := sizeFDs(&cfg, fdLimit); p != "" {
			probs = append(probs, p)
		}
	}
	return cfg, probs
}

// buildService checks a service's values and makes its Service; each
// problem names the file and line that set the value, for a config file.
func buildService(ns namedService, readBackends bool) (Service, []string) {
	s, probs := checkService(ns.name, ns.vals, readBackends)
	s.Settings = settingsOf(ns.vals, addServiceFlags)
	// As parsed: addresses and prefixes in one spelling, the default
	// check by name.
	if s.Listen.IsValid() {
		s.Settings["listen"] = s.Listen.String()
	}
	s.Settings["health-check"] = s.Health.Kind
	if len(s.Proxy.TrustedProxies) == len(ns.vals.trusted) {
		var trusted []string
		for _, p := range s.Proxy.TrustedProxies {
			trusted = append(trusted, p.String())
		}
		s.Settings.setList("proxy-protocol-trusted", trusted)
	}
	return s, ns.locate(probs)
}

func checkService(name string, v serviceVals, readBackends bool) (Service, []string) {
	var probs []string
	bad := func(flag, value, format string, a ...any) {
		probs = append(probs, fmt.Sprintf("--%s %q: %s", flag, value, fmt.Sprintf(format, a...)))
	}
	s := Service{
		Name:         name,
		Proto:        v.proto,
		BackendsFile: v.backendsFile,
		Proxy:        tcpproxy.DefaultConfig(),
		Health:       v.health,
		PassiveFall:  v.passiveFall,
		CloseOnDown:  v.closeOnDown,
	}
	if v.proto != "tcp" && v.proto != "udp" {
		bad("proto", v.proto, "want tcp or udp")
	}
	s.UDPSessionTimeout = v.udpSessionTimeout
	s.Proxy.AccessLog = v.accessLog
	s.Proxy.AccessLogSample = v.accessLogSample
	if !(v.accessLogSample >= 0 && v.accessLogSample <= 1) { // NaN too
		bad("access-log-sample", strconv.FormatFloat(v.accessLogSample, 'g', -1, 64), "want a fraction from 0 to 1")
	}
	if v.udpSessionTimeout <= 0 {
		bad("udp-session-timeout", v.udpSessionTimeout.String(), "want a positive duration")
	}
	if s.Health.Kind == "" {
		s.Health.Kind = "tcp"
		if v.proto == "udp" {
			s.Health.Kind = "none"
		}
	}
	s.Health.Network = v.proto
	if v.listen == "" {
		probs = append(probs, "--listen is required (e.g. --listen 127.0.0.1:7000)")
	} else if ap, err := parseAddr(v.listen); err != nil {
		bad("listen", v.listen, "%v", err)
	} else if v.proto == "udp" && ap.Addr().IsUnspecified() {
		bad("listen", v.listen, "a UDP service needs a specific address, not a wildcard: replies must come from the address clients sent to")
	} else {
		s.Listen = ap
	}
	if len(v.backends) == 0 && v.backendsFile == "" && len(v.dnsHosts) == 0 && len(v.dnsSRV) == 0 {
		probs = append(probs, "no backend: give at least one --backend ip:port, a --backends-file, --backend-dns or --backend-srv")
	}
	s.DNS = discovery.DefaultConfig()
	for _, h := range v.dnsHosts {
		t, err := discovery.ParseHost(h)
		if err != nil {
			bad("backend-dns", h, "%v", err)
			continue
		}
		s.DNS.Targets = append(s.DNS.Targets, t)
	}
	for _, h := range v.dnsSRV {
		t, err := discovery.ParseSRV(h)
		if err != nil {
			bad("backend-srv", h, "%v", err)
			continue
		}
		s.DNS.Targets = append(s.DNS.Targets, t)
	}
	if v.dnsInterval < time.Second {
		bad("dns-interval", v.dnsInterval.String(), "want 1s or more")
	}
	s.DNS.Interval = v.dnsInterval
	switch v.sendProxy {
	case "":
	case "v1":
		s.Proxy.SendProxy = 1
	case "v2":
		s.Proxy.SendProxy = 2
	default:
		bad("proxy-protocol", v.sendProxy, "want v1 or v2")
	}
	s.Proxy.AcceptProxy = v.acceptProxy
	for _, t := range v.trusted {
		p, err := parsePrefix(t)
		if err != nil {
			bad("proxy-protocol-trusted", t, "%v", err)
			continue
		}
		s.Proxy.TrustedProxies = append(s.Proxy.TrustedProxies, p)
	}
	if v.acceptProxy && len(v.trusted) == 0 {
		probs = append(probs, "--accept-proxy-protocol needs --proxy-protocol-trusted: name the balancers allowed to claim client addresses (0.0.0.0/0 and ::/0 trust everyone)")
	}
	if !v.acceptProxy && len(v.trusted) > 0 {
		probs = append(probs, "--proxy-protocol-trusted without --accept-proxy-protocol has no effect")
	}
	if (v.sendProxy != "" || v.acceptProxy) && v.proto == "udp" {
		probs = append(probs, "the PROXY protocol is for TCP services")
	}
	if v.balanceFactor != 0 && v.proto == "udp" {
		probs = append(probs, "--hash-balance-factor is for TCP services")
	}
	if s.Health.Kind == "none" || v.proto == "udp" {
		// Passive ejection is off where it cannot act: with no active
		// check nothing would bring an ejected backend back, and a UDP
		// service has no connects on the data path to count (only TCP
		// proxying reports them).
		s.PassiveFall = 0
	}
	seen := map[netip.AddrPort]bool{}
	for _, b := range v.backends {
		sp, err := balancer.ParseSpec(b)
		if err != nil {
			bad("backend", b, "%v", err)
			continue
		}
		if seen[sp.Addr] {
			bad("backend", b, "given twice")
			continue
		}
		seen[sp.Addr] = true
		s.Backends = append(s.Backends, sp)
	}
	if v.backendsFile != "" && readBackends {
		if _, err := ReadBackendsFile(v.backendsFile); err != nil {
			bad("backends-file", v.backendsFile, "%v", err)
		}
	}
	if k, err := balancer.ParseHashKey(v.hashKey); err != nil {
		bad("hash-key", v.hashKey, "%v", err)
	} else {
		s.Proxy.HashKey = k
	}
	if v.balanceFactor != 0 && !(v.balanceFactor >= 1 && v.balanceFactor <= 100) { // NaN too
		bad("hash-balance-factor", strconv.FormatFloat(v.balanceFactor, 'g', -1, 64), "want 0 (off) or 1 to 100, e.g. 1.25")
	}
	s.Proxy.BalanceFactor = v.balanceFactor
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			bad(name, d.String(), "want a positive duration such as 5s or 2m")
		}
	}
	positive("connect-timeout", v.connectTimeout)
	positive("idle-timeout", v.idleTimeout)
	s.Proxy.ConnectTimeout = v.connectTimeout
	s.Proxy.IdleTimeout = v.idleTimeout
	if v.connectRetries < 0 || v.connectRetries > 16 {
		bad("connect-retries", strconv.Itoa(v.connectRetries), "want 0 to 16")
	}
	s.Proxy.ConnectRetries = v.connectRetries
	if m, err := tcpproxy.ParseSpliceMode(v.splice); err != nil {
		bad("splice", v.splice, "%v", err)
	} else {
		s.Proxy.Splice = m
	}
	probs = append(probs, s.Health.Validate()...)
	if readBackends {
		// Read at start only: a reload does not apply health settings,
		// and a running check rereads rotated files itself.
		probs = append(probs, s.Health.CheckFiles()...)
	}
	if v.passiveFall < 0 || v.passiveFall > 1000 {
		bad("passive-fall", strconv.Itoa(v.passiveFall), "want 0 (off) to 1000")
	}
	return s, probs
}

func parseAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, fmt.Errorf("want ip:port or [ipv6]:port: %w", err)
	}
	if ap.Addr().Zone() != "" {
		return ap, errors.New("zoned IPv6 addresses are not supported")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// maxConnsCap bounds --max-conns: a connection holds two file descriptors
// and openFileLimit reports at most 1<<24, so no more could ever be open.
// It also keeps the file-descriptor sums of sizeFDs far from overflow.
const maxConnsCap = 1 << 23

// sizeFDs shares the open-file limit between UDP sessions (one socket
// each), connections (two sockets each) and splice pipes (two fds each): a
// connection count derived from the limit leaves a third of what sessions
// leave for pipes; the pipe pools get what connections leave. It returns a
// problem line, naming the flag that asks for too much, when the limit
// cannot hold the sessions and connections. On entry the workers, sessions
// and connections are within their bounds, so no sum here overflows.
func sizeFDs(cfg *Config, limit int) string {
	// The reserve, and per loop and service its listener, epoll and
	// eventfd with a spare; and the admin endpoint's.
	fixed := fdReserve + 4*cfg.Workers*max(1, len(cfg.Services))
	what := "listeners, loops"
	if cfg.AdminAddr.IsValid() {
		fixed += adminFDs
		what += ", the admin endpoint"
	}
	avail := limit - fixed - cfg.UDPMaxSessions
	// What one connection needs: two sockets, or with a derived
	// --max-conns a share of pipes too.
	oneConn := 2
	if cfg.MaxConns == 0 {
		oneConn = 3
	}
	switch {
	case cfg.UDPMaxSessions > 0 && avail < oneConn && limit-fixed-oneConn >= 1:
		return fmt.Sprintf("--udp-max-sessions %q: needs %d file descriptors (one per session, at least one per loop, %d for %s and a connection) but the open-file limit is %d; lower it to at most %d or raise the limit (e.g. LimitNOFILE=)",
			strconv.Itoa(cfg.UDPMaxSessions), cfg.UDPMaxSessions+fixed+oneConn, fixed+oneConn, what, limit, limit-fixed-oneConn)
	case cfg.MaxConns == 0:
		cfg.MaxConns = avail / 3
		if cfg.MaxConns < 1 {
			return fmt.Sprintf("the open-file limit %d is too low to proxy anything: %s and one connection need %d; raise it (e.g. LimitNOFILE=)", limit, what, fixed+oneConn)
		}
	case cfg.MaxConns > avail/2:
		var udp, most string
		if cfg.UDPMaxSessions > 0 {
			udp = fmt.Sprintf(", %d of them for --udp-max-sessions", cfg.UDPMaxSessions)
		}
		if avail/2 >= 1 {
			most = fmt.Sprintf(" to at most %d", avail/2)
		}
		return fmt.Sprintf("--max-conns %q: needs %d file descriptors (two per connection%s) but the open-file limit is %d; lower it%s or raise the limit (e.g. LimitNOFILE=)",
			strconv.Itoa(cfg.MaxConns), 2*cfg.MaxConns+fixed+cfg.UDPMaxSessions, udp, limit, most)
	}
	cfg.MaxPipes = (avail - 2*cfg.MaxConns) / 2 / cfg.Workers
	return ""
}

// openFileLimit returns the soft RLIMIT_NOFILE (the Go runtime raises it to
// the hard limit at start-up).
func openFileLimit() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<24 {
		return 1 << 20
	}
	return int(rl.Cur)
}

// byteSize is a pflag value for sizes in bytes with optional k/m/g suffixes
// (powers of 1024).
type byteSize int

func (b *byteSize) String() string {
	v := int(*b)
	switch {
	case v >= 1<<20 && v%(1<<20) == 0:
		return strconv.Itoa(v>>20) + "m"
	case v >= 1<<10 && v%(1<<10) == 0:
		return strconv.Itoa(v>>10) + "k"
	}
	return strconv.Itoa(v)
}

func (b *byteSize) Set(s string) error {
	mult := 1
	num := strings.ToLower(strings.TrimSpace(s))
	switch {
	case strings.HasSuffix(num, "k"):
		mult, num = 1<<10, num[:len(num)-1]
	case strings.HasSuffix(num, "m"):
		mult, num = 1<<20, num[:len(num)-1]
	case strings.HasSuffix(num, "g"):
		mult, num = 1<<30, num[:len(num)-1]
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n > (1<<31)/mult {
		return fmt.Errorf("want a size in bytes such as 65536, 256k or 1m")
	}
	*b = byteSize(n * mult)
	return nil
}

func (b *byteSize) Type() string { return "bytes" }

// MaxDuration bounds every duration flag. The loops add a timeout to a
// clock of nanoseconds since they started, which a larger value could
// overflow (int64 nanoseconds last 292 years); ten years is "never" for
// any deployment.
const MaxDuration = 10 * 365 * 24 * time.Hour

// durationValue is a pflag duration that refuses values above MaxDuration.
type durationValue time.Duration

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v > MaxDuration {
		return fmt.Errorf("%v is longer than the %v (ten years) sluice takes", v, MaxDuration)
	}
	*d = durationValue(v)
	return nil
}

func (d *durationValue) Type() string   { return "duration" }
func (d *durationValue) String() string { return time.Duration(*d).String() }

// durationVar defines a duration flag bounded by MaxDuration.
func durationVar(fs *pflag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var((*durationValue)(p), name, usage)
}
