package server

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluice-lb/sluice/internal/config"
	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestAccessLog: one line per closed connection with client, backend,
// bytes each way, duration and reason; none with a sample of 0.
func TestAccessLog(t *testing.T) {
	for _, sample := range []string{"1", "0"} {
		t.Run("sample="+sample, func(t *testing.T) {
			echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
			cfg, err := config.Parse([]string{"--listen", "127.0.0.1:0", "--backend", echo.Addr().String(),
				"--access-log", "--access-log-sample", sample, "--health-interval", "1h"}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zapcore.InfoLevel)
			s, err := New(cfg, zap.New(core), Options{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			defer func() { cancel(); <-done }()
			<-s.Ready()
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("0123456789"))
			io.ReadFull(c, make([]byte, 10))
			c.(*net.TCPConn).CloseWrite()
			io.ReadAll(c)
			local := c.LocalAddr().String()
			c.Close()
			waitFor(t, "connection closed", func() bool { return s.Stats().Closed == 1 })
			lines := logs.FilterLoggerName("tcp.access").All()
			if sample == "0" {
				if len(lines) != 0 {
					t.Fatalf("%d access lines with sample 0", len(lines))
				}
				return
			}
			if len(lines) != 1 {
				t.Fatalf("%d access lines, want 1", len(lines))
			}
			f := lines[0].ContextMap()
			if f["client"] != local || f["backend"] != echo.Addr().String() || f["bytes_up"] != uint64(10) ||
				f["bytes_down"] != uint64(10) || f["reason"] != "closed" || f["duration"] == nil {
				t.Fatalf("access line %v", f)
			}
		})
	}
}
