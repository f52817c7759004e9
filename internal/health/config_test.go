package health

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigValid(t *testing.T) {
	if probs := DefaultConfig().Validate(); len(probs) != 0 {
		t.Fatalf("DefaultConfig().Validate() = %q", probs)
	}
	for _, k := range Kinds {
		c := DefaultConfig()
		c.Kind = k
		c.Send, c.Expect = `PING\r\n`, "PONG"
		if probs := c.Validate(); len(probs) != 0 {
			t.Errorf("kind %s: Validate() = %q", k, probs)
		}
	}
}

// TestConfigValidate breaks one field at a time: each gives exactly one
// problem, and it names the flag.
func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(c *Config)
		flag   string // the problem must contain it
		value  string // and, when set, the bad value
	}{
		{"unknown kind", func(c *Config) { c.Kind = "http" }, "--health-check", `"http"`},
		{"empty kind", func(c *Config) { c.Kind = "" }, "--health-check", `""`},
		{"kind in capitals", func(c *Config) { c.Kind = "TCP" }, "--health-check", `"TCP"`},
		{"zero interval", func(c *Config) { c.Interval = 0 }, "--health-interval", `"0s"`},
		{"negative interval", func(c *Config) { c.Interval = -time.Second }, "--health-interval", `"-1s"`},
		{"zero timeout", func(c *Config) { c.Timeout = 0 }, "--health-timeout", `"0s"`},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Millisecond }, "--health-timeout", `"-1ms"`},
		{"interval below the floor", func(c *Config) { c.Interval = time.Nanosecond }, "--health-interval", `"1ns"`},
		{"timeout below the floor", func(c *Config) { c.Timeout = time.Microsecond }, "--health-timeout", `"1µs"`},
		{"timeout above the ceiling", func(c *Config) { c.Timeout = MaxTimeout + time.Second }, "--health-timeout", `"10m1s"`},
		{"timeout of an hour", func(c *Config) { c.Timeout = time.Hour }, "--health-timeout", "want 1ms to 10m0s"},
		{"TLS with postgres", func(c *Config) { c.Kind, c.TLS = "postgres", true }, "--health-tls", "with --health-check postgres"},
		{"TLS with mysql", func(c *Config) { c.Kind, c.TLS = "mysql", true }, "--health-tls", "with --health-check mysql"},
		{"TLS on UDP", func(c *Config) { c.Kind, c.Expect, c.Network, c.TLS = "send-expect", "x", "udp", true }, "--health-tls", "with --proto udp"},
		{"TLS with none", func(c *Config) { c.Kind, c.TLS = "none", true }, "--health-tls", "with --health-check none"},
		{"CA without TLS", func(c *Config) { c.TLSCA = "ca.pem" }, "--health-tls-ca", `"ca.pem": has no effect without --health-tls`},
		{"server name without TLS", func(c *Config) { c.TLSServerName = "db" }, "--health-tls-server-name", "without --health-tls"},
		{"cert without key", func(c *Config) { c.TLS, c.TLSCert = true, "c.pem" }, "--health-tls-cert", "needs --health-tls-key"},
		{"key without cert", func(c *Config) { c.TLS, c.TLSKey = true, "k.pem" }, "--health-tls-key", "needs --health-tls-cert"},
		{"server name with a space", func(c *Config) { c.TLS, c.TLSServerName = true, "db .test" }, "--health-tls-server-name", `"db .test"`},
		{"zero rise", func(c *Config) { c.Rise = 0 }, "--health-rise", `"0"`},
		{"negative rise", func(c *Config) { c.Rise = -1 }, "--health-rise", `"-1"`},
		{"rise 101", func(c *Config) { c.Rise = 101 }, "--health-rise", `"101"`},
		{"zero fall", func(c *Config) { c.Fall = 0 }, "--health-fall", `"0"`},
		{"fall 101", func(c *Config) { c.Fall = 101 }, "--health-fall", `"101"`},
		{"send-expect without expect", func(c *Config) { c.Kind, c.Send = "send-expect", "PING" }, "--health-expect", ""},
		{"NUL in postgres user", func(c *Config) { c.PostgresUser = "a\x00b" }, "--health-postgres-user", `"a\x00b"`},
		{"postgres database over 63 bytes", func(c *Config) { c.PostgresDatabase = strings.Repeat("d", 64) }, "--health-postgres-database", "at most 63 bytes"},
		{"NUL in mysql user", func(c *Config) { c.MySQLUser = "a\x00b" }, "--health-mysql-user", `"a\x00b"`},
		{"mysql user over 80 characters", func(c *Config) { c.MySQLUser = strings.Repeat("ü", 81) }, "--health-mysql-user", "at most 80 characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			probs := c.Validate()
			if len(probs) != 1 {
				t.Fatalf("Validate() = %q, want one problem naming %s", probs, tc.flag)
			}
			if !strings.HasPrefix(probs[0], tc.flag+" ") || !strings.Contains(probs[0], tc.value) {
				t.Fatalf("problem %q does not start with %s and show %s", probs[0], tc.flag, tc.value)
			}
		})
	}
}

func TestConfigValidateEdges(t *testing.T) {
	c := DefaultConfig()
	c.Rise, c.Fall = 1, 100
	c.Interval, c.Timeout = MinInterval, MinTimeout
	if probs := c.Validate(); len(probs) != 0 {
		t.Fatalf("limits accepted: Validate() = %q", probs)
	}
	c.Rise, c.Fall = 100, 1
	if probs := c.Validate(); len(probs) != 0 {
		t.Fatalf("limits accepted: Validate() = %q", probs)
	}
	c.MySQLUser = strings.Repeat("ü", 80) // 160 bytes
	if probs := c.Validate(); len(probs) != 0 {
		t.Fatalf("mysql user of 80 characters: Validate() = %q", probs)
	}
	// A timeout above the interval: the checks run back to back.
	c.Interval, c.Timeout = time.Second, MaxTimeout
	if probs := c.Validate(); len(probs) != 0 {
		t.Fatalf("timeout %v above the interval: Validate() = %q", c.Timeout, probs)
	}
	for _, k := range []string{"tcp", "send-expect", "redis", "grpc"} {
		c := DefaultConfig()
		c.Kind, c.Expect, c.TLS = k, "x", true
		c.TLSCA, c.TLSServerName, c.TLSCert, c.TLSKey = "ca.pem", "db.test", "c.pem", "k.pem"
		if probs := c.Validate(); len(probs) != 0 {
			t.Fatalf("%s over TLS: Validate() = %q", k, probs)
		}
	}
	// Send-expect with an expectation but nothing to send is a banner
	// check, and valid.
	c = DefaultConfig()
	c.Kind, c.Expect = "send-expect", "220 "
	if probs := c.Validate(); len(probs) != 0 {
		t.Fatalf("banner check: Validate() = %q", probs)
	}
}

// TestConfigValidateAll breaks every field at once: every problem is
// reported, each flag once.
func TestConfigValidateAll(t *testing.T) {
	probs := Config{Kind: "nope"}.Validate()
	flags := []string{"--health-check", "--health-interval", "--health-timeout", "--health-rise", "--health-fall"}
	if len(probs) != len(flags) {
		t.Fatalf("Validate() = %q, want %d problems", probs, len(flags))
	}
	for i, f := range flags {
		if !strings.HasPrefix(probs[i], f+" ") {
			t.Errorf("problem %d %q does not name %s", i, probs[i], f)
		}
	}
	probs = Config{Kind: "send-expect"}.Validate()
	if len(probs) != 5 || !strings.HasPrefix(probs[4], "--health-expect ") {
		t.Fatalf("send-expect with nothing set: Validate() = %q", probs)
	}
}
