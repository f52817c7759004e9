package balancer

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestParseSpec(t *testing.T) {
	good := map[string]Spec{
		"127.0.0.1:80":             {Addr: netip.MustParseAddrPort("127.0.0.1:80"), Weight: 1},
		" 10.1.2.3:5432,weight=7 ": {Addr: netip.MustParseAddrPort("10.1.2.3:5432"), Weight: 7},
		"10.1.2.3:5432 weight=0":   {Addr: netip.MustParseAddrPort("10.1.2.3:5432"), Weight: 0},
		"[2001:db8::1]:443":        {Addr: netip.MustParseAddrPort("[2001:db8::1]:443"), Weight: 1},
		"[::ffff:10.0.0.1]:80":     {Addr: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 1},
	}
	for in, want := range good {
		got, err := ParseSpec(in)
		if err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "host:80", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:80,weight=-1",
		"127.0.0.1:80,weight=1001", "127.0.0.1:80,weight=x", "127.0.0.1:80,speed=3", "[fe80::1%eth0]:80"} {
		if _, err := ParseSpec(in); err == nil {
			t.Errorf("ParseSpec(%q) accepted", in)
		}
	}
}

func TestHashKey(t *testing.T) {
	ip := netip.MustParseAddr("198.18.0.7")
	mapped := netip.MustParseAddr("::ffff:198.18.0.7")
	if HashSrcIP.Hash(ip, 1) != HashSrcIP.Hash(ip, 2) {
		t.Error("src-ip hash depends on the port")
	}
	if HashSrcIPPort.Hash(ip, 1) == HashSrcIPPort.Hash(ip, 2) {
		t.Error("src-ip-port hash ignores the port")
	}
	if HashSrcIP.Hash(ip, 1) != HashSrcIP.Hash(mapped, 1) {
		t.Error("IPv4-mapped address hashes differently")
	}
	// Pinned values: a change reshuffles every deployment's clients.
	if got := HashSrcIP.Hash(ip, 0); got != 0xcecbee5e4e559d97 {
		t.Errorf("golden hash changed: %#x", got)
	}
}

func testService(t *testing.T, specs ...Spec) *Service {
	t.Helper()
	s, err := NewService(ServiceConfig{Name: "t", Loops: 2, PassiveFall: 2}, specs, Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func spec(a string, w int) Spec { return Spec{Addr: netip.MustParseAddrPort(a), Weight: w} }

func TestServiceMembershipKeepsState(t *testing.T) {
	s := testService(t, spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1))
	b1 := s.Pool().Load().Backends[0]
	b1.Active.Store(5)
	if err := s.SetDrained(b1.Addr, true); err != nil {
		t.Fatal(err)
	}
	// The file adds a third and repeats the first: state and counters stay.
	if err := s.SetSource(SourceFile, []Spec{spec("10.0.0.1:1", 1), spec("10.0.0.3:1", 1)}); err != nil {
		t.Fatal(err)
	}
	info := s.Info()
	if len(info) != 3 || info[0].State != StateDraining || info[0].ActiveConnections != 5 || len(info[0].Sources) != 2 {
		t.Fatalf("info %+v", info)
	}
	if n := len(s.Pool().Load().Backends); n != 2 {
		t.Fatalf("%d usable, want 2 (one drained)", n)
	}
	// Removing the static list leaves the file's members.
	s.SetSource(SourceStatic, nil)
	if got := fmt.Sprint(s.Members()); got != "[10.0.0.1:1 10.0.0.3:1]" {
		t.Fatalf("members %s", got)
	}
	if err := s.SetDrained(netip.MustParseAddrPort("10.9.9.9:1"), true); err == nil {
		t.Fatal("drained an unknown backend")
	}
}

func TestServiceHealthAndPassive(t *testing.T) {
	s := testService(t, spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1))
	a := netip.MustParseAddrPort("10.0.0.1:1")
	s.SetHealth(a, false, CheckResult{Error: "refused"})
	if snap := s.Pool().Load(); len(snap.Backends) != 1 || snap.Backends[0].Addr == a {
		t.Fatalf("down backend still in the table: %v", snap.Backends)
	}
	s.SetHealth(a, true, CheckResult{OK: true})
	if len(s.Pool().Load().Backends) != 2 {
		t.Fatal("up backend not back in the table")
	}
	// Passive: PassiveFall consecutive failures queue an ejection; a success
	// in between resets the streak.
	b := s.Pool().Load().Backends[0]
	s.ReportConnect(b, false)
	s.ReportConnect(b, true)
	s.ReportConnect(b, false)
	select {
	case <-s.eject:
		t.Fatal("ejected without consecutive failures")
	default:
	}
	s.ReportConnect(b, false)
	got := <-s.eject
	s.ejectBackend(got)
	if s.Info()[0].State != StateDown {
		t.Fatalf("state after ejection %v", s.Info()[0].State)
	}
}

func TestPickBoundedCap(t *testing.T) {
	s := testService(t, spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1), spec("10.0.0.3:1", 2))
	snap := s.Pool().Load()
	var scratch []int
	var total int64
	const n = 400
	for i := 0; i < n; i++ {
		// One hot key for every connection.
		j := snap.PickBounded(12345, 1.25, total, &scratch)
		snap.Backends[j].Active.Add(1)
		total++
		for _, b := range snap.Backends {
			share := 1.25 * float64(total) * float64(b.Weight) / 4
			if float64(b.Active.Load()) > math.Ceil(share) {
				t.Fatalf("after %d connections %s holds %d > cap %v", total, b.Addr, b.Active.Load(), math.Ceil(share))
			}
		}
	}
	if snap.PickBounded(12345, 0, total, &scratch) != snap.Pick(12345) {
		t.Fatal("factor 0 is not plain Pick")
	}
}

// TestReweightSharesCounters: a weight change publishes a new Backend, but
// a connection opened before it and closed after it leaves the open count
// at zero, and the totals go on from where they were.
func TestReweightSharesCounters(t *testing.T) {
	s := testService(t, spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1))
	before := s.Pool().Load().Backends[0]
	before.Active.Add(1) // a connection opens
	before.Loops[0].Connections.Add(1)
	if err := s.SetSource(SourceStatic, []Spec{spec("10.0.0.1:1", 5), spec("10.0.0.2:1", 1)}); err != nil {
		t.Fatal(err)
	}
	after := s.Pool().Load().Backends[0]
	if after == before || after.Weight != 5 {
		t.Fatalf("weight change did not publish a new backend: %+v", after)
	}
	if after.Active.Load() != 1 {
		t.Fatalf("open count after the change %d, want 1", after.Active.Load())
	}
	before.Active.Add(-1) // the old connection closes on the old object
	if after.Active.Load() != 0 || s.Info()[0].ActiveConnections != 0 {
		t.Fatalf("open count %d after the only connection closed", after.Active.Load())
	}
	if after.Counts().Connections != 1 {
		t.Fatalf("connections total reset by the weight change: %d", after.Counts().Connections)
	}
}

// Concurrent SetSource calls (DNS discovery and a reload) reach the
// Members hook in order: the last list it sees is the membership. The
// first call's hook is held until the second call's hook has run or
// 200 ms have passed (the second call waiting its turn, as it must).
func TestMembersHookSeesTheLastList(t *testing.T) {
	var mu sync.Mutex
	var last []netip.AddrPort
	calls := 0
	entered, second := make(chan struct{}), make(chan struct{})
	hooks := Hooks{Members: func(a []netip.AddrPort, _ map[netip.AddrPort]bool) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		switch n {
		case 1:
			close(entered)
			select {
			case <-second:
			case <-time.After(200 * time.Millisecond):
			}
		case 2:
			close(second)
		}
		mu.Lock()
		last = a
		mu.Unlock()
	}}
	s, err := NewService(ServiceConfig{Name: "t", Loops: 1}, []Spec{spec("198.18.0.1:1", 1)}, hooks, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.SetSource(SourceFile, []Spec{spec("198.18.0.2:1", 1)}) }()
	<-entered
	if err := s.SetSource(SourceDNS, []Spec{spec("198.18.0.3:1", 1)}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(last), fmt.Sprint(s.Members()); got != want {
		t.Fatalf("the hook last saw %s, the members are %s", got, want)
	}
}

func TestWeightChangeIsLogged(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := NewService(ServiceConfig{Name: "t", Loops: 1}, []Spec{spec("198.18.0.1:1", 1)}, Hooks{}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetSource(SourceStatic, []Spec{spec("198.18.0.1:1", 3)}); err != nil {
		t.Fatal(err)
	}
	l := logs.FilterMessage("backend weight changed").All()
	if len(l) != 1 || l[0].ContextMap()["from"] != int64(1) || l[0].ContextMap()["to"] != int64(3) {
		t.Fatalf("log lines %v, want one weight change from 1 to 3", logs.All())
	}
}

// The admin API's JSON names are snake_case, with the unit in the name.
func TestCheckResultJSON(t *testing.T) {
	b, err := json.Marshal(CheckResult{Time: time.Unix(0, 0).UTC(), OK: false, Error: "refused", Duration: 1500 * time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"time":"1970-01-01T00:00:00Z","ok":false,"error":"refused","duration_ns":1500000}`; string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
}

// TestReturningBackendKeepsDrainAndHealth: a backend that leaves the
// service (DNS dropped it for a round, a reload) and returns comes back
// drained if it was drained, and down if its checks had it down, with the
// Members hook listing it down so that its checks start there. A down
// verdict is forgotten after healthMemory (the address is taken for a new
// instance); a drain is not, until the address is enabled.
func TestReturningBackendKeepsDrainAndHealth(t *testing.T) {
	type call struct {
		addrs []netip.AddrPort
		down  map[netip.AddrPort]bool
	}
	var calls []call
	hooks := Hooks{Members: func(a []netip.AddrPort, down map[netip.AddrPort]bool) { calls = append(calls, call{a, down}) }}
	s, err := NewService(ServiceConfig{Name: "t", Loops: 1}, []Spec{spec("10.0.0.9:1", 1)}, hooks, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Unix(1000, 0)
	s.now = func() time.Time { return clock }
	drained, down, ok := netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:1"), netip.MustParseAddrPort("10.0.0.3:1")
	all := []Spec{spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1), spec("10.0.0.3:1", 1)}
	states := func() string { return statesOf(s) }
	usable := func() string { return usableOf(s) }

	if err := s.SetSource(SourceDNS, all); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDrained(drained, true); err != nil {
		t.Fatal(err)
	}
	s.SetHealth(down, false, CheckResult{Error: "refused"})
	s.SetHealth(ok, false, CheckResult{Error: "refused"})
	s.SetHealth(ok, true, CheckResult{OK: true}) // down once, up again: nothing to remember

	// DNS drops all three for a round, then they return.
	if err := s.SetSource(SourceDNS, nil); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(30 * time.Second)
	if err := s.SetSource(SourceDNS, all); err != nil {
		t.Fatal(err)
	}
	if got, want := states(), "10.0.0.1:1=draining 10.0.0.2:1=down 10.0.0.3:1=up 10.0.0.9:1=up"; got != want {
		t.Fatalf("after returning: %s, want %s", got, want)
	}
	if got, want := usable(), "10.0.0.3:1 10.0.0.9:1"; got != want {
		t.Fatalf("usable after returning: %s, want %s", got, want)
	}
	last := calls[len(calls)-1]
	if len(last.addrs) != 4 || len(last.down) != 1 || !last.down[down] {
		t.Fatalf("Members hook got %v, down %v; want 4 members, %v down", last.addrs, last.down, down)
	}
	if lc := s.Info()[1].LastCheck; lc == nil || lc.Error != "refused" {
		t.Fatalf("returning down backend's last check %+v, want the one that took it down", lc)
	}

	// Gone for longer than healthMemory: the down verdict is forgotten,
	// the drain is not.
	if err := s.SetSource(SourceDNS, nil); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(healthMemory)
	if err := s.SetSource(SourceDNS, all); err != nil {
		t.Fatal(err)
	}
	if got, want := states(), "10.0.0.1:1=draining 10.0.0.2:1=up 10.0.0.3:1=up 10.0.0.9:1=up"; got != want {
		t.Fatalf("after returning late: %s, want %s", got, want)
	}

	// Enabling the address while it is away makes it return enabled; an
	// address never seen is still unknown.
	if err := s.SetSource(SourceDNS, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDrained(drained, false); err != nil {
		t.Fatalf("enable a departed drained backend: %v", err)
	}
	if err := s.SetDrained(netip.MustParseAddrPort("10.9.9.9:1"), false); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("enable an unknown backend: %v, want ErrUnknownBackend", err)
	}
	if err := s.SetSource(SourceDNS, all); err != nil {
		t.Fatal(err)
	}
	if got, want := states(), "10.0.0.1:1=up 10.0.0.2:1=up 10.0.0.3:1=up 10.0.0.9:1=up"; got != want {
		t.Fatalf("after enabling while away: %s, want %s", got, want)
	}
	if len(s.departed) != 0 {
		t.Fatalf("remembered %v with every backend back", s.departed)
	}
}

// statesOf lists s's members as address=state, sorted.
func statesOf(s *Service) string {
	var out []string
	for _, bi := range s.Info() {
		out = append(out, bi.Address+"="+string(bi.State))
	}
	return strings.Join(out, " ")
}

// usableOf lists the backends of s's snapshot.
func usableOf(s *Service) string {
	var out []string
	for _, b := range s.Pool().Load().Backends {
		out = append(out, b.Addr.String())
	}
	return strings.Join(out, " ")
}

// TestInheritedState: a service started from the states another one
// returned (an upgrade) starts its members drained and down as they were,
// before its first snapshot, with their last checks, and lists the down
// ones to the Members hook so their checks start down. States of backends
// it does not have are remembered as departures: a drain until enabled, a
// down verdict for healthMemory from when the backend left.
func TestInheritedState(t *testing.T) {
	ap := netip.MustParseAddrPort
	old, err := NewService(ServiceConfig{Name: "t", Loops: 1}, []Spec{
		spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1), spec("10.0.0.3:1", 1), spec("10.0.0.4:1", 1), spec("10.0.0.5:1", 1),
	}, Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	checked := time.Unix(1000, 0)
	if err := old.SetDrained(ap("10.0.0.1:1"), true); err != nil {
		t.Fatal(err)
	}
	old.SetHealth(ap("10.0.0.2:1"), false, CheckResult{Time: checked, Error: "refused"})
	old.SetHealth(ap("10.0.0.3:1"), true, CheckResult{Time: checked, OK: true})
	if err := old.SetDrained(ap("10.0.0.4:1"), true); err != nil {
		t.Fatal(err)
	}
	old.SetHealth(ap("10.0.0.5:1"), false, CheckResult{Time: checked, Error: "timeout"})
	// .4 (drained) and .5 (down) leave: the old service remembers them.
	if err := old.SetSource(SourceStatic, []Spec{spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1), spec("10.0.0.3:1", 1)}); err != nil {
		t.Fatal(err)
	}
	states := old.States()
	var got []string
	for _, st := range states {
		got = append(got, fmt.Sprintf("%s drained=%v down=%v left=%v", st.Addr, st.Drained, st.Down, !st.Left.IsZero()))
	}
	want := []string{
		"10.0.0.1:1 drained=true down=false left=false",
		"10.0.0.2:1 drained=false down=true left=false",
		"10.0.0.3:1 drained=false down=false left=false",
		"10.0.0.4:1 drained=true down=false left=true",
		"10.0.0.5:1 drained=false down=true left=true",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("States:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A down verdict remembered for longer than healthMemory is stale.
	states = append(states, BackendState{Addr: ap("10.0.0.6:1"), Down: true, Left: time.Now().Add(-healthMemory - time.Second)})

	// The successor has .1, .2, .3 and a new .7; .4, .5 and .6 come back
	// later (DNS, a reload).
	var down map[netip.AddrPort]bool
	hooks := Hooks{Members: func(_ []netip.AddrPort, d map[netip.AddrPort]bool) { down = d }}
	s, err := NewService(ServiceConfig{Name: "t", Loops: 1, Inherited: states}, []Spec{
		spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1), spec("10.0.0.3:1", 1), spec("10.0.0.7:1", 1),
	}, hooks, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := statesOf(s), "10.0.0.1:1=draining 10.0.0.2:1=down 10.0.0.3:1=up 10.0.0.7:1=up"; got != want {
		t.Fatalf("successor: %s, want %s", got, want)
	}
	if got, want := usableOf(s), "10.0.0.3:1 10.0.0.7:1"; got != want {
		t.Fatalf("successor's first snapshot: %s, want %s", got, want)
	}
	info := s.Info()
	if lc := info[1].LastCheck; lc == nil || lc.Error != "refused" || !lc.Time.Equal(checked) {
		t.Fatalf("down backend's last check %+v, want the inherited one", lc)
	}
	if lc := info[2].LastCheck; lc == nil || !lc.OK {
		t.Fatalf("up backend's last check %+v, want the inherited one", lc)
	}
	s.NotifyMembers()
	if len(down) != 1 || !down[ap("10.0.0.2:1")] {
		t.Fatalf("Members hook's down set %v, want 10.0.0.2:1", down)
	}
	if err := s.SetSource(SourceDNS, []Spec{spec("10.0.0.4:1", 1), spec("10.0.0.5:1", 1), spec("10.0.0.6:1", 1)}); err != nil {
		t.Fatal(err)
	}
	if got, want := statesOf(s), "10.0.0.1:1=draining 10.0.0.2:1=down 10.0.0.3:1=up 10.0.0.4:1=draining 10.0.0.5:1=down 10.0.0.6:1=up 10.0.0.7:1=up"; got != want {
		t.Fatalf("after the others return: %s, want %s", got, want)
	}
}

// TestDepartedDrainsAreBounded: a drain is remembered after its backend
// leaves for drainMemory, not for ever (a new instance at a recycled
// address starts up), and at most maxDeparted departures are remembered,
// the ones gone longest forgotten first; the successor of an upgrade is
// handed only what is still remembered.
func TestDepartedDrainsAreBounded(t *testing.T) {
	// A small table: the test publishes some 12,000 snapshots.
	s, err := NewService(ServiceConfig{Name: "t", Loops: 1, TableSize: 13}, []Spec{spec("10.0.0.9:1", 1)}, Hooks{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Unix(1000, 0)
	s.now = func() time.Time { return clock }
	pod := func(i int) Spec { return spec(fmt.Sprintf("10.1.%d.%d:1", i>>8, i&0xff), 1) }
	leaveDrained := func(i int) {
		t.Helper()
		if err := s.SetSource(SourceDNS, []Spec{pod(i)}); err != nil {
			t.Fatal(err)
		}
		if err := s.SetDrained(pod(i).Addr, true); err != nil {
			t.Fatal(err)
		}
		if err := s.SetSource(SourceDNS, nil); err != nil {
			t.Fatal(err)
		}
	}
	stateOf := func(i int) State {
		t.Helper()
		if err := s.SetSource(SourceDNS, []Spec{pod(i)}); err != nil {
			t.Fatal(err)
		}
		defer s.SetSource(SourceDNS, nil)
		for _, bi := range s.Info() {
			if bi.Address == pod(i).Addr.String() {
				return bi.State
			}
		}
		return ""
	}
	leaveDrained(0)
	clock = clock.Add(drainMemory - time.Minute)
	if got := stateOf(0); got != StateDraining {
		t.Fatalf("back after %v: %s, want draining", drainMemory-time.Minute, got)
	}
	leaveDrained(1)
	clock = clock.Add(drainMemory)
	if got := stateOf(1); got != StateUp {
		t.Fatalf("back after %v: %s, want up (a new instance)", drainMemory, got)
	}

	for i := range maxDeparted + 10 {
		leaveDrained(100 + i)
		clock = clock.Add(time.Second)
	}
	if n := len(s.States()) - 1; n != maxDeparted { // less the one member
		t.Fatalf("%d departures handed over, want %d", n, maxDeparted)
	}
	if got := stateOf(100); got != StateUp {
		t.Fatalf("the first of %d departures: %s, want forgotten (up)", maxDeparted+10, got)
	}
	if got := stateOf(100 + maxDeparted + 9); got != StateDraining {
		t.Fatalf("the last departure: %s, want draining", got)
	}
}

// TestAbsentListsRememberedDrains: Absent lists the addresses that left
// drained while their drain is remembered, not those remembered only as
// down; draining one again is no error, enabling one forgets its drain,
// and enabling one whose drain has run out is ErrUnknownBackend, as for an address never seen, so that
// what Absent lists and what enable accepts agree.
func TestAbsentListsRememberedDrains(t *testing.T) {
	s := testService(t, spec("10.0.0.9:1", 1))
	clock := time.Unix(1000, 0)
	s.now = func() time.Time { return clock }
	ap := netip.MustParseAddrPort
	if err := s.SetSource(SourceDNS, []Spec{spec("10.0.0.1:1", 1), spec("10.0.0.2:1", 1), spec("10.0.0.3:1", 1)}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.0.0.1:1", "10.0.0.3:1"} {
		if err := s.SetDrained(ap(a), true); err != nil {
			t.Fatal(err)
		}
	}
	s.SetHealth(ap("10.0.0.2:1"), false, CheckResult{Error: "refused"})
	if err := s.SetSource(SourceDNS, nil); err != nil {
		t.Fatal(err)
	}
	left := clock
	clock = clock.Add(time.Hour)
	want := []AbsentInfo{
		{Address: "10.0.0.1:1", State: StateDraining, Left: left, DrainUntil: left.Add(drainMemory)},
		{Address: "10.0.0.3:1", State: StateDraining, Left: left, DrainUntil: left.Add(drainMemory)},
	}
	if got := s.Absent(); !slices.Equal(got, want) {
		t.Fatalf("Absent = %+v, want %+v", got, want)
	}
	if got := statesOf(s); got != "10.0.0.9:1=up" {
		t.Fatalf("Info lists %s, want the member alone", got)
	}

	// Draining one again changes nothing and is no error, as for a
	// member; one remembered only as down is not drained.
	if err := s.SetDrained(ap("10.0.0.1:1"), true); err != nil {
		t.Fatalf("drain an absent drained backend: %v", err)
	}
	if err := s.SetDrained(ap("10.0.0.2:1"), true); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("drain an absent down backend: %v, want ErrUnknownBackend", err)
	}
	if err := s.SetDrained(ap("10.0.0.3:1"), false); err != nil {
		t.Fatalf("enable an absent drained backend: %v", err)
	}
	if got := s.Absent(); !slices.Equal(got, want[:1]) {
		t.Fatalf("Absent after enabling 10.0.0.3:1 = %+v, want %+v", got, want[:1])
	}
	clock = left.Add(drainMemory)
	if got := s.Absent(); len(got) != 0 {
		t.Fatalf("Absent after %v = %+v, want none", drainMemory, got)
	}
	if err := s.SetDrained(ap("10.0.0.1:1"), false); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("enable a drain that ran out: %v, want ErrUnknownBackend", err)
	}
}
