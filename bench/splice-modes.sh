#!/usr/bin/env bash
# Measures sluice's own CPU per request for --splice auto, always and never
# at several message sizes, side by side in one run (modes alternate within
# each round), and writes bench/SPLICE.md. This is the measurement behind
# the choice of read/write for small messages and splice(2) for bulk.
#   ROUNDS=3 DURATION=3 bench/splice-modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
BIN=bin
OUT=${OUT:-bench/SPLICE.md}
[[ -x $BIN/sluice && -x $BIN/sluice-bench ]] || make -s build
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
E1=$(port); E2=$(port)
READY=$(mktemp); rm -f "$READY"
$BIN/sluice-bench serve --echo 127.0.0.1:$E1 --echo 127.0.0.1:$E2 --ready-file "$READY" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $READY ]] && break; sleep 0.1; done
declare -A PORT SP
for mode in auto always never; do
	PORT[$mode]=$(port)
	$BIN/sluice --listen 127.0.0.1:${PORT[$mode]} --backend 127.0.0.1:$E1 --backend 127.0.0.1:$E2 \
		--splice $mode --workers 2 --log-level warn --health-interval 1h &
	SP[$mode]=$!
	PIDS+=($!)
done
for mode in auto always never; do
	for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/${PORT[$mode]}) 2>/dev/null && break; sleep 0.1; done
done
RAW=$(mktemp)
for round in $(seq "$ROUNDS"); do
	for size in 64 4096 65536; do
		for mode in auto always never; do
			timeout $((DURATION + 30)) $BIN/sluice-bench rr --target 127.0.0.1:${PORT[$mode]} --conns 50 \
				--req-size $size --resp-size $size --duration ${DURATION}s --source-cidr 127.0.0.0/16 \
				--proxy-pid ${SP[$mode]} --json |
				python3 -c "import json,sys; d=json.load(sys.stdin); print('$size $mode', d['ops_per_s'], d['proxy'].get('cpu_us_per_op',0), d['latency_us']['p99'])" >>"$RAW"
		done
	done
done
python3 - "$RAW" "$ROUNDS" "$DURATION" >"$OUT" <<'PY'
import sys, statistics, subprocess, datetime
raw, rounds, dur = sys.argv[1], sys.argv[2], sys.argv[3]
rows = {}
for line in open(raw):
    size, mode, rate, cpu, p99 = line.split()
    rows.setdefault((int(size), mode), []).append((float(rate), float(cpu), float(p99)))
kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("# --splice modes: sluice's CPU per request by message size\n")
print(f"Measured {datetime.date.today()} by `bench/splice-modes.sh`: rr with 50 keep-alive connections through one sluice per mode "
      f"(2 workers), modes alternating within each of {rounds} rounds of {dur} s; median (min–max). Kernel {kernel}, {cpu}, 2 vCPUs shared with the load generator and the echo backends.\n")
print("| size | mode | req/s | proxy CPU µs/req | p99 µs |")
print("|---|---|---|---|---|")
for (size, mode) in sorted(rows):
    v = rows[(size, mode)]
    def f(i, fmt):
        xs = [x[i] for x in v]
        return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"
    print(f"| {size} B | {mode} | {f(0,'{:.0f}')} | {f(1,'{:.2f}')} | {f(2,'{:.0f}')} |")
PY
echo "wrote $OUT"
