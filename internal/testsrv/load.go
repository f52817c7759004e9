package testsrv

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ConnectLoad is a test load of short connections: each client, in a loop,
// connects to a target, writes a message, reads as many bytes back (an
// echo), and closes, until Stop. Each client makes at most a bounded
// number of round trips. A failed round trip is counted with its start
// time.
type ConnectLoad struct {
	OK, Failed atomic.Int64

	firstErr atomic.Value
	mu       sync.Mutex  // guards failedAt
	failedAt []time.Time // start times of the failed round trips
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// LoadConfig is what StartConnectLoad runs.
type LoadConfig struct {
	Target  string // address to connect to
	Clients int
	// Source, when set, gives client i its local address (for example its
	// own 127.0.0.x, so that source-address hashing spreads the clients).
	Source func(i int) *net.TCPAddr
	Msg    []byte // written on each connection and read back
	Rounds int    // most round trips per client; 0 means 100,000
}

// StartConnectLoad starts the clients of cfg; stop them with Stop.
func StartConnectLoad(cfg LoadConfig) *ConnectLoad {
	l := &ConnectLoad{stop: make(chan struct{})}
	rounds := cfg.Rounds
	if rounds == 0 {
		rounds = 100000
	}
	for i := 0; i < cfg.Clients; i++ {
		d := net.Dialer{Timeout: 5 * time.Second}
		if cfg.Source != nil {
			d.LocalAddr = cfg.Source(i)
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			buf := make([]byte, len(cfg.Msg))
			for n := 0; n < rounds; n++ { // bounded; Stop ends it far sooner
				select {
				case <-l.stop:
					return
				default:
				}
				begin := time.Now()
				if err := l.roundTrip(&d, cfg.Target, cfg.Msg, buf); err != nil {
					l.Failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err)
					l.mu.Lock()
					l.failedAt = append(l.failedAt, begin)
					l.mu.Unlock()
				} else {
					l.OK.Add(1)
				}
			}
		}()
	}
	return l
}

func (l *ConnectLoad) roundTrip(d *net.Dialer, target string, msg, buf []byte) error {
	c, err := d.Dial("tcp", target)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err = io.ReadFull(c, buf)
	return err
}

// Stop stops the clients and waits for them; it may be called again.
func (l *ConnectLoad) Stop() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// Wait waits for the clients to finish their rounds (or to be stopped).
func (l *ConnectLoad) Wait() { l.wg.Wait() }

// FirstErr returns the first failure's error, or nil.
func (l *ConnectLoad) FirstErr() error {
	err, _ := l.firstErr.Load().(error)
	return err
}

// FailedAt returns the start times of the failed round trips.
func (l *ConnectLoad) FailedAt() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.failedAt...)
}
