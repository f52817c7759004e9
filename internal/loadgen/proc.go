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

// machineCPU returns the whole machine's busy CPU seconds since boot, summed
// over its CPUs: user, nice, system, irq and softirq time from /proc/stat
// (guest time is part of user). Idle, iowait and steal are not work done here.
func machineCPU() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read machine cpu time: %w", err)
	}
	return parseMachineCPU(b)
}

// parseMachineCPU reads the aggregate "cpu" line of a /proc/stat.
func parseMachineCPU(b []byte) (float64, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	// cpu user nice system idle iowait irq softirq ...
	if len(f) < 8 || string(f[0]) != "cpu" {
		return 0, fmt.Errorf("parse /proc/stat: first line %q is not the cpu total", line)
	}
	var total uint64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, err := strconv.ParseUint(string(f[i]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat: field %d %q", i, f[i])
		}
		total += v
	}
	return float64(total) / clockTicks, nil
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
