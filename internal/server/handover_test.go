package server

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
)

// TestSuccessorDoesNotUpgradeBeforeTakingOver: an upgrade's successor that
// has not taken over yet (it waits for its DNS discovery's first answer,
// which the test holds) and is told to upgrade (a `pkill -USR2 sluice`
// meant for its predecessor) starts no new release: it would hand over
// backend states it does not own yet, and the end of that upgrade would
// lift its refusal of drains, which are lost if its own take-over then
// fails. The drain stays refused until it reports ready.
func TestSuccessorDoesNotUpgradeBeforeTakingOver(t *testing.T) {
	cfg, backend, _, answer := heldDNSConfig(t)
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	exe := filepath.Join(dir, "sluice")
	writeFile(t, exe, "#!/bin/sh", "echo up > "+started)
	if err := os.Chmod(exe, 0o755); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	s := startOpts(t, cfg, zap.NewNop(), Options{Executable: exe, OnReady: func() { close(ready) }})

	if err := s.Upgrade(); err == nil {
		t.Fatal("a successor that had not taken over upgraded")
	}
	if _, err := os.Stat(started); err == nil {
		t.Error("a successor that had not taken over started a new release")
	}
	drain := "/backends/" + backend.Addr().String() + "/drain"
	if code, retry := adminPost(t, s.Server, drain); code != http.StatusServiceUnavailable || retry == "" {
		t.Errorf("drain before the successor took over, after an upgrade it refused: %d, Retry-After %q; want 503", code, retry)
	}

	answer()
	<-ready
	if code, _ := adminPost(t, s.Server, drain); code != http.StatusOK {
		t.Fatalf("drain after the successor took over: %d, want 200", code)
	}
}
