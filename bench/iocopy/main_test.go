package main

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// echoBackend serves a TCP echo that shuts down its write side after the
// client's EOF, like sluice-bench's echo.
func echoBackend(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestProxyEchoAndHalfClose(t *testing.T) {
	backend := echoBackend(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{conns: map[net.Conn]struct{}{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.acceptLoop(ln, []string{backend})
	}()
	defer func() {
		ln.Close()
		<-done
		p.closeAll()
	}()

	for _, size := range []int{1, 64, 1 << 20} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		want := bytes.Repeat([]byte("sluice"), size/6+1)[:size]
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(want)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			werr <- err
		}()
		got, err := io.ReadAll(c) // ends only when the FIN came back through
		if err != nil {
			t.Fatalf("size %d: read: %v", size, err)
		}
		if err := <-werr; err != nil {
			t.Fatalf("size %d: write: %v", size, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("size %d: got %d bytes back, not the %d sent", size, len(got), len(want))
		}
		c.Close()
	}
}

func TestCloseAllEndsOpenConnections(t *testing.T) {
	backend := echoBackend(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{conns: map[net.Conn]struct{}{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.acceptLoop(ln, []string{backend})
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	<-done
	p.closeAll() // must not hang on the open pair
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("client connection still open after closeAll")
	}
}

func TestRouteFlag(t *testing.T) {
	var rl routeList
	if err := rl.Set("127.0.0.1:1=127.0.0.1:2,127.0.0.1:3"); err != nil {
		t.Fatal(err)
	}
	if len(rl) != 1 || rl[0].listen != "127.0.0.1:1" || len(rl[0].backends) != 2 {
		t.Fatalf("parsed %+v", rl)
	}
	for _, bad := range []string{"", "127.0.0.1:1", "=127.0.0.1:2", "127.0.0.1:1="} {
		if err := rl.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}

func TestPickIsStablePerIP(t *testing.T) {
	bs := []string{"a", "b", "c"}
	seen := map[string]bool{}
	for i := 1; i < 64; i++ {
		ip := net.IPv4(127, 0, 0, byte(i))
		got := pick(&net.TCPAddr{IP: ip, Port: 1000}, bs)
		if again := pick(&net.TCPAddr{IP: ip, Port: 2000}, bs); again != got {
			t.Fatalf("%v: port changed the backend: %s then %s", ip, got, again)
		}
		seen[got] = true
	}
	if len(seen) != len(bs) {
		t.Fatalf("63 addresses reached only %d of %d backends", len(seen), len(bs))
	}
}
