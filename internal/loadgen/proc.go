package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procCPU returns utime+stime of pid in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time of pid %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces
	// or parentheses; the fields after the last ')' start at field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := bytes.Fields(b[i+1:])
	// utime and stime are fields 14 and 15, so 11 and 12 after field 3.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	st, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return float64(ut+st) / clockTicks, nil
}

// cpuTicks is a reading of the aggregate "cpu" line of /proc/stat, in
// USER_HZ ticks since boot, summed over the machine's CPUs.
type cpuTicks struct {
	// busy is user, nice, system, irq and softirq time (guest time is
	// part of user). Idle, iowait and steal are not work done here.
	busy uint64
	// steal is time the hypervisor gave to other guests while this one
	// had work to run.
	steal uint64
	// all is busy plus idle, iowait and steal: all the time of the CPUs.
	all uint64
}

// busySeconds returns t's busy time in seconds.
func (t cpuTicks) busySeconds() float64 { return float64(t.busy) / clockTicks }

// stealPct returns the share of the CPUs' time from t0 to t1 that was
// stolen, in percent. ok is false when no tick passed between the two or a
// counter went backwards (iowait can, on some kernels).
func stealPct(t0, t1 cpuTicks) (pct float64, ok bool) {
	if t1.all <= t0.all || t1.steal < t0.steal || t1.steal-t0.steal > t1.all-t0.all {
		return 0, false
	}
	return 100 * float64(t1.steal-t0.steal) / float64(t1.all-t0.all), true
}

// machineCPU returns the whole machine's CPU time since boot.
func machineCPU() (cpuTicks, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTicks{}, fmt.Errorf("read machine cpu time: %w", err)
	}
	return parseMachineCPU(b)
}

// parseMachineCPU reads the aggregate "cpu" line of a /proc/stat.
func parseMachineCPU(b []byte) (cpuTicks, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	// cpu user nice system idle iowait irq softirq steal [guest guest_nice]:
	// steal is there since Linux 2.6.11, and Go needs 3.2.
	if len(f) < 9 || string(f[0]) != "cpu" {
		return cpuTicks{}, fmt.Errorf("parse /proc/stat: first line %q is not the cpu total", line)
	}
	var t cpuTicks
	for i := 1; i <= 8; i++ {
		v, err := strconv.ParseUint(string(f[i]), 10, 64)
		if err != nil {
			return cpuTicks{}, fmt.Errorf("parse /proc/stat: field %d %q", i, f[i])
		}
		switch i {
		case 4, 5: // idle, iowait
		case 8:
			t.steal = v
		default:
			t.busy += v
		}
		t.all += v
	}
	return t, nil
}

// procRSS returns VmRSS of pid in KiB.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss of pid %d: %w", pid, err)
	}
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			break
		}
		return strconv.ParseInt(string(f[0]), 10, 64)
	}
	return 0, fmt.Errorf("parse /proc/%d/status: no VmRSS in kB", pid)
}

// sumCPU returns the CPU seconds of all pids.
func sumCPU(pids []int) (float64, error) {
	var total float64
	for _, pid := range pids {
		v, err := procCPU(pid)
		if err != nil {
			return 0, err
		}
		total += v
	}
	return total, nil
}

// sumRSS returns the resident KiB of all pids.
func sumRSS(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		v, err := procRSS(pid)
		if err != nil {
			return 0, err
		}
		total += v
	}
	return total, nil
}
