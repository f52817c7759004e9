package server

import (
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluice-lb/sluice/internal/testsrv"
)

// TestAccessLog: one line per closed connection with client, backend,
// bytes each way, duration and reason; none with a sample of 0.
func TestAccessLog(t *testing.T) {
	for _, sample := range []string{"1", "0"} {
		t.Run("sample="+sample, func(t *testing.T) {
			echo := testsrv.StartTB(t, testsrv.Echo, "tcp")
			cfg := parse(t, "--listen", "127.0.0.1:0", "--backend", echo.Addr().String(),
				"--access-log", "--access-log-sample", sample, "--health-interval", "1h")
			core, logs := observer.New(zapcore.InfoLevel)
			s := startCfg(t, cfg, zap.New(core))
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
