package loop

// Timer is a one-shot timer owned by a loop. The zero value is an unscheduled
// timer; set F before scheduling it. A Timer must not be copied once
// scheduled. Loop goroutine only.
//
// Timers live in a binary min-heap keyed by deadline: Schedule and Cancel are
// O(log n), and a loop with no due timer does no timer work per event. Users
// with deadlines that move on every event (idle timeouts) should keep their
// own "last activity" time and re-arm lazily when the timer fires, rather
// than reschedule on every event.
type Timer struct {
	// F is called on the loop goroutine when the timer fires.
	F    func()
	when int64
	idx  int // index in the heap plus one; 0 when not scheduled
}

// Scheduled reports whether t is waiting to fire.
func (t *Timer) Scheduled() bool { return t.idx != 0 }

// When returns t's deadline on the loop clock (see Loop.Now).
func (t *Timer) When() int64 { return t.when }

// Schedule arms t to fire at the loop-clock time at (nanoseconds, see Now),
// replacing any earlier schedule.
func (l *Loop) Schedule(t *Timer, at int64) {
	if t.idx != 0 {
		t.when = at
		l.timers.fix(t.idx - 1)
		return
	}
	t.when = at
	l.timers.push(t)
}

// Cancel disarms t; cancelling an unscheduled timer does nothing.
func (l *Loop) Cancel(t *Timer) {
	if t.idx != 0 {
		l.timers.remove(t.idx - 1)
	}
}

// Timers returns the number of scheduled timers.
func (l *Loop) Timers() int { return len(l.timers) }

// runTimers fires every timer whose deadline has passed on the cached clock.
func (l *Loop) runTimers() {
	for len(l.timers) > 0 && l.timers[0].when <= l.now {
		t := l.timers[0]
		l.timers.remove(0)
		t.F()
	}
}

type timerHeap []*Timer

func (h *timerHeap) push(t *Timer) {
	*h = append(*h, t)
	i := len(*h) - 1
	t.idx = i + 1
	h.up(i)
}

func (h *timerHeap) remove(i int) {
	s := *h
	last := len(s) - 1
	t := s[i]
	if i != last {
		s[i] = s[last]
		s[i].idx = i + 1
	}
	s[last] = nil
	*h = s[:last]
	t.idx = 0
	if i != last {
		h.fix(i)
	}
}

func (h timerHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h timerHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].when <= h[i].when {
			return
		}
		h.swap(i, p)
		i = p
	}
}

// down moves element i towards the leaves and reports whether it moved.
func (h timerHeap) down(i int) bool {
	start := i
	n := len(h)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && h[r].when < h[c].when {
			c = r
		}
		if h[i].when <= h[c].when {
			break
		}
		h.swap(i, c)
		i = c
	}
	return i > start
}

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i + 1
	h[j].idx = j + 1
}
