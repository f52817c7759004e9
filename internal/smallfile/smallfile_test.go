package smallfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRead: a regular file up to the limit is read whole; a larger one, a
// folder and a FIFO are refused, the FIFO at once rather than after a
// writer comes.
func TestRead(t *testing.T) {
	dir := t.TempDir()
	at := filepath.Join(dir, "at-limit")
	if err := os.WriteFile(at, bytes.Repeat([]byte("x"), 16), 0o600); err != nil {
		t.Fatal(err)
	}
	over := filepath.Join(dir, "over")
	if err := os.WriteFile(over, bytes.Repeat([]byte("x"), 17), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if data, err := Read(at, 16); err != nil || len(data) != 16 {
		t.Errorf("Read(16 bytes, limit 16) = %d bytes, %v; want 16, nil", len(data), err)
	}
	for _, c := range []struct{ path, want string }{
		{over, "larger than 16 bytes"},
		{dir, "not a regular file"},
		{fifo, "not a regular file"},
		{filepath.Join(dir, "missing"), "no such file"},
	} {
		got := make(chan error, 1)
		go func() {
			_, err := Read(c.path, 16)
			got <- err
		}()
		select {
		case err := <-got:
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Read(%s) = %v; want an error with %q", filepath.Base(c.path), err, c.want)
			}
		case <-time.After(5 * time.Second):
			// Open a writer so that the blocked open returns and the
			// goroutine ends with the test.
			if w, err := os.OpenFile(c.path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				w.Close()
			}
			t.Fatalf("Read(%s) still blocked after 5 s", filepath.Base(c.path))
		}
	}
}
