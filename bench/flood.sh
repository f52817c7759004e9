#!/usr/bin/env bash
# bench/flood.sh — the flood scenario of /work/shared/BENCHMARKING.md: a SYN
# flood from a denied range while an allowed client runs open-loop rr through
# sluice, in two network namespaces joined by a veth pair:
#
#   sl-fsrv-PID  fs-PID 198.18.0.1/24  <-- veth -->  fc-PID 198.18.0.2/24  sl-fcli-PID
#     sluice :7000 -> backends :7001 :7002            allowed client: sluice-bench rr
#     XDP firewall on fs-PID, --deny-cidr 198.18.0.128/25
#     admin :9000                                     SYN flood with sources cycled
#                                                     through 198.18.0.128/25
#
# Each round measures the allowed client without the flood and under a
# flood at each rate of FLOODS (the order reverses from round to round); one
# more round runs the same sluice without --xdp-iface, to show what the
# firewall prevents. Per phase:
# the SYNs the generator sent, XDP drops per second (deltas of
# sluice_firewall_packets_total{verdict="denied"}), the SYNs that reached the
# server's TCP stack, sluice's user and system CPU (fields 14 and 15 of
# /proc/PID/stat), the machine's CPU split, and the allowed client's
# latency from its JSON. bench/flood/report turns them into the "## flood"
# section of bench/FLOOD.md.
#
# Every address is inside 198.18.0.0/15 and lives in the namespaces created
# here; the flood's sources are spoofed from the denied /25 (never
# hping3 --rand-source). Every load run and every flood is bounded by its own
# duration or count and by timeout(1); namespaces and processes are removed
# on exit, on Ctrl-C and on failure. Needs root. Takes about 2 minutes with
# the defaults.
#
# Settings (environment):
#   ROUNDS=4 PHASE=5 WARMUP=1     rounds with the firewall; measured and warmup seconds per phase
#   NOFW_ROUNDS=1                 rounds without the firewall
#   RR_RATE=2000 RR_CONNS=50      the allowed client: open-loop requests/s over keep-alive connections
#   FLOOD_TOOL=synflood           synflood (bench/flood/synflood: cycles through the denied /25)
#                                 or hping3 (one source, 198.18.0.200, -a; apt-get install hping3)
#   FLOOD_TICK=100us              synflood's pacing interval: what is due is sent once per tick,
#                                 so each burst lasts rate × tick SYNs (the 1 ms of earlier runs
#                                 held a CPU for about 240 µs per burst at 100k/s, by
#                                 the generator's CPU share)
#   FLOODS="100000 0"             flood rates, SYNs/s, one phase each per round; 0 = as fast as
#                                 the generator goes (it then takes a core of its own)
#   QUIET_IDLE=60 QUIET_WAIT=5    before each phase, wait up to QUIET_WAIT s for a second with at
#                                 least QUIET_IDLE % of the machine idle (it is shared)
#   PIN=0                         PIN=1 keeps the attacker's CPU apart from the server's, as on two
#                                 machines: sluice, its backends, the allowed client and the server
#                                 veth end's receive processing (threaded NAPI, GRO on) on CPU 0,
#                                 the flood generator on CPU 1, and reports the receive CPU. On two
#                                 cores that leaves the whole server one core, and its tail
#                                 latency suffers from it (bench/FLOOD-pinned.md); PIN=0 lets the
#                                 scheduler place everything (the generator then competes with the
#                                 server, and veth drops what XDP rejects on the sender's CPU)
#   PERF=1                        sample sluice with perf (cpu-clock:u and :k every 250 µs of CPU) for an
#                                 exact user/system split; /proc/PID/stat splits by the 250 Hz tick
#   OUT_MD=bench/FLOOD.md
set -Eeuo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4}
PHASE=${PHASE:-5}
WARMUP=${WARMUP:-1}
NOFW_ROUNDS=${NOFW_ROUNDS:-1}
RR_RATE=${RR_RATE:-2000}
RR_CONNS=${RR_CONNS:-50}
FLOOD_TOOL=${FLOOD_TOOL:-synflood}
FLOODS=${FLOODS:-100000 0}
FLOOD_TICK=${FLOOD_TICK:-100us}
OUT_MD=${OUT_MD:-bench/FLOOD.md}
PERF=${PERF:-1}
PIN=${PIN:-0}
QUIET_IDLE=${QUIET_IDLE:-60}
QUIET_WAIT=${QUIET_WAIT:-5}

for n in ROUNDS PHASE WARMUP NOFW_ROUNDS RR_RATE RR_CONNS QUIET_IDLE QUIET_WAIT PERF PIN; do
	[[ ${!n} =~ ^[0-9]+$ ]] || { echo "flood: $n=${!n}: want a whole number" >&2; exit 2; }
done
for f in $FLOODS; do
	[[ $f =~ ^[0-9]+$ ]] && ((f <= 10000000)) || { echo "flood: FLOODS=$FLOODS: want rates of 0 to 10000000 SYNs/s" >&2; exit 2; }
done
[[ -n ${FLOODS// /} ]] || { echo "flood: FLOODS is empty" >&2; exit 2; }
((ROUNDS >= 1 && PHASE >= 1 && PHASE <= 120 && RR_RATE >= 1)) || { echo "flood: want ROUNDS >= 1, 1 <= PHASE <= 120, RR_RATE >= 1" >&2; exit 2; }
[[ $FLOOD_TOOL == synflood || $FLOOD_TOOL == hping3 ]] || { echo "flood: FLOOD_TOOL=$FLOOD_TOOL: want synflood or hping3" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "flood: needs root (network namespaces, XDP, raw sockets)" >&2; exit 1; }
command -v ip >/dev/null || { echo "flood: needs iproute2's ip" >&2; exit 1; }
command -v curl >/dev/null || { echo "flood: needs curl (admin metrics)" >&2; exit 1; }
if [[ $PERF == 1 ]] && ! perf record -q -e cpu-clock:u -c 250000 -o /dev/null -- true >/dev/null 2>&1; then
	echo "flood: perf cannot sample cpu-clock here; using /proc/PID/stat only" >&2
	PERF=0
fi
SRV_CPU=()   # prefix of the server side's commands (and the allowed client's)
FLOOD_CPU=() # prefix of the flood generator
if ((PIN)); then
	(($(nproc) >= 2)) || { echo "flood: PIN=1 needs at least 2 CPUs (set PIN=0)" >&2; exit 2; }
	for c in taskset ethtool pgrep; do
		command -v $c >/dev/null || { echo "flood: PIN=1 needs $c (util-linux, ethtool, procps), or set PIN=0" >&2; exit 1; }
	done
	SRV_CPU=(taskset -c 0)
	FLOOD_CPU=(taskset -c 1)
fi
if [[ $FLOOD_TOOL == hping3 ]] && ! command -v hping3 >/dev/null; then
	echo "flood: FLOOD_TOOL=hping3 needs hping3 (apt-get install -y hping3)" >&2; exit 1
fi

RUN_ID=flood-$(date +%Y%m%d-%H%M%S)
OUT=bench/out/$RUN_ID
RAW=$OUT/raw
LOGS=$OUT/logs
BIN=$OUT/bin # private binaries: bin/ belongs to whoever ran make build last
mkdir -p "$RAW" "$LOGS" "$BIN"
META=$OUT/meta.tsv
PHASES=$OUT/phases.tsv
: >"$META"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
meta() { local k=$1; shift; printf '%s\t%s\n' "$k" "$*" >>"$META"; }

log "building into $BIN"
go build -o "$BIN/" ./cmd/sluice ./cmd/sluice-bench ./bench/flood/synflood ./bench/flood/report ||
	{ echo "flood: go build failed" >&2; exit 1; }

# ---------------------------------------------------------------- topology and processes

SRV=sl-fsrv-$$
CLI=sl-fcli-$$
SDEV=fs-$$
CDEV=fc-$$
SRV_IP=198.18.0.1
CLI_IP=198.18.0.2
DENY=198.18.0.128/25
LISTEN=$SRV_IP:7000
ADMIN=$SRV_IP:9000

pids=()  # long-running processes started here
FLOOD=   # the flood in progress, if any
PERFREC= # the perf record in progress, if any
NS_MADE=()
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM HUP
	[[ -n $FLOOD ]] && kill -TERM "$FLOOD" 2>/dev/null
	[[ -n $PERFREC ]] && kill -INT "$PERFREC" 2>/dev/null
	((${#pids[@]})) && stop "${pids[@]}"
	wait 2>/dev/null
	# Deleting a namespace destroys the veth end in it, and the pair.
	for ns in "${NS_MADE[@]}"; do ip netns delete "$ns" 2>/dev/null; done
	((rc == 0)) || log "flood: stopped (status $rc); raw output kept in $OUT"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

. bench/procs.sh # ours, stop, descendants

# start NAME NS CMD...: run CMD in namespace NS in the background, logging
# to logs/NAME.log; sets LAST to its pid, which is CMD's own (ip netns exec
# execs it in place).
start() {
	local name=$1 ns=$2; shift 2
	ip netns exec "$ns" "$@" >"$LOGS/$name.log" 2>&1 &
	LAST=$!
	pids+=("$LAST")
}

log "topology: $SRV ($SRV_IP) <-> $CLI ($CLI_IP), flood from $DENY"
for ns in "$SRV" "$CLI"; do ip netns add "$ns"; NS_MADE+=("$ns"); done
ip link add "$SDEV" netns "$SRV" type veth peer name "$CDEV" netns "$CLI"
ip -n "$SRV" addr add $SRV_IP/24 dev "$SDEV"
ip -n "$CLI" addr add $CLI_IP/24 dev "$CDEV"
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$SRV" link set "$SDEV" up
ip -n "$CLI" link set "$CDEV" up
if ((PIN)); then
	# veth processes what it receives in the sender's softirq, on the
	# sender's CPU, unless the receiving end has NAPI (GRO or XDP on) and,
	# without XDP, the sending end has no TSO. Threaded NAPI then moves
	# that work into a kernel thread that can be pinned to the server's
	# CPU, as a NIC's receive queue is served by the receiving machine:
	# with or without the firewall, the server's CPU pays for what arrives.
	ip netns exec "$SRV" ethtool -K "$SDEV" gro on >/dev/null
	ip netns exec "$CLI" ethtool -K "$CDEV" tso off >/dev/null
	ip netns exec "$SRV" sh -c "echo 1 > /sys/class/net/$SDEV/threaded"
fi

# pin_napi: put the server veth end's NAPI threads on CPU 0 (PIN=1); they
# can be made anew when XDP is attached or detached.
pin_napi() {
	((PIN)) || return 0
	local t n=0
	for t in $(pgrep "^napi/${SDEV:0:10}"); do
		taskset -p -c 0 "$t" >/dev/null && n=$((n + 1))
	done
	((n > 0)) || { echo "flood: no NAPI thread for $SDEV to pin" >&2; exit 1; }
}
pin_napi

start backends "$SRV" "${SRV_CPU[@]}" "$BIN/sluice-bench" serve --echo $SRV_IP:7001 --echo $SRV_IP:7002 --ready-file "$OUT/backends.ready"
BACKENDS=$LAST
for _ in $(seq 100); do
	[[ -s $OUT/backends.ready ]] && break
	kill -0 "$BACKENDS" 2>/dev/null || break
	sleep 0.1
done
[[ -s $OUT/backends.ready ]] || { echo "flood: backends did not start; see $LOGS/backends.log" >&2; exit 1; }

metrics() { ip netns exec "$SRV" curl -sf --max-time 2 "http://$ADMIN/metrics"; }

SLUICE=
# start_sluice on|off: sluice with or without the firewall; waits until
# ready (admin /readyz) and an echo goes through it.
start_sluice() {
	local fw=() name=sluice-nofw
	if [[ $1 == on ]]; then
		fw=(--xdp-iface "$SDEV" --deny-cidr $DENY)
		name=sluice-fw
	fi
	start "$name" "$SRV" "${SRV_CPU[@]}" "$BIN/sluice" --listen $LISTEN --backend $SRV_IP:7001 --backend $SRV_IP:7002 \
		--admin-addr $ADMIN --health-interval 500ms --drain-timeout 2s "${fw[@]}"
	SLUICE=$LAST
	local ok=
	for _ in $(seq 100); do
		kill -0 "$SLUICE" 2>/dev/null || break
		if ip netns exec "$SRV" curl -sf --max-time 1 -o /dev/null "http://$ADMIN/readyz"; then ok=1; break; fi
		sleep 0.1
	done
	[[ -n $ok ]] || { echo "flood: sluice did not become ready; see $LOGS/$name.log" >&2; exit 1; }
	pin_napi
	timeout 10 ip netns exec "$CLI" "$BIN/sluice-bench" connect --target $LISTEN --requests 3 --duration 5s >/dev/null ||
		{ echo "flood: no echo through sluice" >&2; exit 1; }
	if [[ $1 == on ]]; then
		metrics | grep -q 'sluice_firewall_packets_total{verdict="denied"}' ||
			{ echo "flood: no firewall metrics" >&2; exit 1; }
		meta xdp "$(sed -n 's/.*xdp firewall attached.*"mode": "\([a-z]*\)".*/\1/p' "$LOGS/$name.log" | head -n1)"
	fi
}

# ---------------------------------------------------------------- measurements

# verdict NAME: a firewall verdict's count now (0 without the firewall).
verdict() {
	metrics 2>/dev/null | awk -v v="$1" -F'[{}" ]+' '$1 == "sluice_firewall_packets_total" && $3 == v { printf "%.0f\n", $4; f = 1 } END { if (!f) print 0 }'
}

# procstat PID: utime and stime in clock ticks.
procstat() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }

# tcpstats: the server namespace's TCP InSegs, SyncookiesSent, ListenDrops.
tcpstats() {
	ip netns exec "$SRV" awk '
		$1 == "Tcp:" && !hs { for (i = 2; i <= NF; i++) h[i] = $i; hs = 1; next }
		$1 == "Tcp:" { for (i = 2; i <= NF; i++) if (h[i] == "InSegs") ins = $i }
		$1 == "TcpExt:" && !he { for (i = 2; i <= NF; i++) e[i] = $i; he = 1; next }
		$1 == "TcpExt:" { for (i = 2; i <= NF; i++) { if (e[i] == "SyncookiesSent") sc = $i; if (e[i] == "ListenDrops") ld = $i } }
		END { print ins + 0, sc + 0, ld + 0 }' /proc/net/snmp /proc/net/netstat
}

# vethdrops: packets the client's veth end dropped on transmit (the
# peer's ring full: with XDP on veth, the flood and the allowed client share
# the server end's receive ring).
vethdrops() { ip -n "$CLI" -s link show dev "$CDEV" | awk '/TX:/ { getline; print $4 + 0; exit }'; }

# cpustat: the machine's user, system, softirq, idle and total ticks.
cpustat() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $2 + $3, $4, $8, $5 + $6, t; exit }' /proc/stat; }

now() { date +%s.%N; }

# napiticks: CPU ticks of the server veth end's NAPI threads, where, with
# PIN=1, everything the server receives is processed (XDP drops included);
# -1 without PIN.
napiticks() {
	((PIN)) || { echo -1; return; }
	local t n=0
	for t in $(pgrep "^napi/${SDEV:0:10}"); do
		n=$((n + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$t/stat" 2>/dev/null || echo 0)))
	done
	echo "$n"
}

# perf_start FILE: sample sluice's threads in user and in kernel mode, one
# sample per 250 µs of CPU time; bounded by timeout. Sets PERFREC.
perf_start() {
	PERFREC=
	((PERF)) || return 0
	timeout -s INT $((WARMUP + PHASE + 40)) perf record -q -e cpu-clock:u -e cpu-clock:k -c 250000 \
		-p "$SLUICE" -o "$1" >/dev/null 2>>"$LOGS/perf.log" &
	PERFREC=$!
	sleep 0.2 # perf attaches
}

# perf_stop FILE: stop the sampling; prints sluice's user and kernel CPU
# in ms (-1 -1 without perf).
perf_stop() {
	if [[ -z $PERFREC ]]; then echo -1 -1; return; fi
	local g
	g=$(cat "/proc/$PERFREC/task/$PERFREC/children" 2>/dev/null | awk '{ print $1 }')
	[[ -n $g ]] && kill -INT "$g" 2>/dev/null
	wait "$PERFREC" 2>/dev/null || true
	PERFREC=
	perf script -i "$1" -F event 2>>"$LOGS/perf.log" |
		awk '/cpu-clock:u/ { u++ } /cpu-clock:k/ { k++ } END { printf "%.2f %.2f\n", u * 0.25, k * 0.25 }'
	rm -f "$1"
}

# quiet: wait (up to QUIET_WAIT s) until the machine's idle share over one
# second is at least QUIET_IDLE %: other people's builds on this shared
# machine starve the load generator, which shows as send lag. Prints the
# last idle share.
quiet() {
	local a b idle=0 i
	for i in $(seq "$QUIET_WAIT"); do
		a=$(cpustat); sleep 1; b=$(cpustat)
		idle=$(awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); printf "%.0f", 100 * (y[4] - x[4]) / (y[5] - x[5]) }')
		((idle >= QUIET_IDLE)) && break
	done
	echo "$idle"
}

FLOOD_SECS=$((WARMUP + PHASE + 6)) # the rr run (connect, warmup, measured time, drain) fits inside
# start_flood PPS OUTFILE: the flood in the client namespace, in the
# background; sets FLOOD.
start_flood() {
	local pps=$1 out=$2
	if [[ $FLOOD_TOOL == synflood ]]; then
		local count=()
		((pps > 0)) && count=(--count $((pps * FLOOD_SECS)))
		timeout $((FLOOD_SECS + 5)) ip netns exec "$CLI" "${FLOOD_CPU[@]}" "$BIN/synflood" --src $DENY --dst $LISTEN \
			--duration "${FLOOD_SECS}s" --pps "$pps" --tick "$FLOOD_TICK" "${count[@]}" --json >"$out" 2>>"$LOGS/flood.log" &
	else
		# One source from the denied range; -c bounds the count, timeout the time.
		local rate=(--flood)
		((pps > 0)) && rate=(-i "u$((1000000 / pps))")
		timeout -s INT $((FLOOD_SECS)) ip netns exec "$CLI" "${FLOOD_CPU[@]}" hping3 -q -S -p 7000 -a 198.18.0.200 \
			-c 100000000 "${rate[@]}" $SRV_IP >"$out" 2>&1 &
	fi
	FLOOD=$!
	FLOOD_T0=$(now)
}

# flood_pid: the generator process under timeout and ip netns exec.
flood_pid() { cat "/proc/$FLOOD/task/$FLOOD/children" 2>/dev/null | awk '{ print $1 }'; }

# stop_flood: SIGTERM (SIGINT for hping3, which then prints its count) and wait.
stop_flood() {
	local g
	g=$(flood_pid)
	if [[ -n $g ]]; then
		if [[ $FLOOD_TOOL == hping3 ]]; then kill -INT "$g" 2>/dev/null; else kill -TERM "$g" 2>/dev/null; fi
	fi
	wait "$FLOOD" 2>/dev/null || true
	FLOOD=
}

printf 'round\tfw\tflood\twall_s\tsl_utime\tsl_stime\tdenied\tdenied_s\tpassed\ttcp_insegs\tsyncookies\tlisten_drops\tcpu_user\tcpu_sys\tcpu_softirq\tcpu_idle\tcpu_total\tveth_drops\tidle_before\tperf_user_ms\tperf_sys_ms\tflood_sent\tflood_s\tflood_cpu\tnapi_cpu\trr\n' >"$PHASES"

# phase ROUND on|off none|PPS: one measurement of the allowed client,
# without a flood or under one at PPS SYNs/s (0: flat out).
phase() {
	local r=$1 fw=$2 fl=$3 tag="r$1_fw-$2_flood-$3"
	local rr=$RAW/$tag.rr.json fo=$RAW/$tag.flood.out
	local flood_sent=0 flood_s=0 flood_cpu=0 g idle
	idle=$(quiet)
	if [[ $fl != none ]]; then
		start_flood "$fl" "$fo"
		sleep 0.5 # the flood reaches its rate
		kill -0 "$FLOOD" 2>/dev/null || { echo "flood: the flood generator died; see $fo and $LOGS/flood.log" >&2; exit 1; }
	fi
	local t0 u0 s0 d0 e0 p0 i0 c0 l0 cu0 cs0 cq0 ci0 ct0 v0 n0 pu ps
	perf_start "$RAW/$tag.perf.data"
	# Both snapshots take the same steps in the same order.
	t0=$(now); read -r u0 s0 < <(procstat "$SLUICE"); v0=$(vethdrops); n0=$(napiticks)
	d0=$(verdict denied); e0=$(now); p0=$(verdict passed)
	read -r i0 c0 l0 < <(tcpstats); read -r cu0 cs0 cq0 ci0 ct0 < <(cpustat)
	timeout $((WARMUP + PHASE + 30)) ip netns exec "$CLI" "${SRV_CPU[@]}" "$BIN/sluice-bench" rr --target $LISTEN \
		--rate "$RR_RATE" --conns "$RR_CONNS" --warmup "${WARMUP}s" --duration "${PHASE}s" --timeout 5s \
		--proxy-pid "$SLUICE" --json >"$rr" 2>>"$LOGS/rr.log" || log "rr $tag failed (status $?)"
	local t1 u1 s1 d1 e1 p1 i1 c1 l1 cu1 cs1 cq1 ci1 ct1 v1 n1
	t1=$(now); read -r u1 s1 < <(procstat "$SLUICE"); v1=$(vethdrops); n1=$(napiticks)
	d1=$(verdict denied); e1=$(now); p1=$(verdict passed)
	read -r i1 c1 l1 < <(tcpstats); read -r cu1 cs1 cq1 ci1 ct1 < <(cpustat)
	perf_stop "$RAW/$tag.perf.data" >"$RAW/$tag.perf.txt" # not in a subshell: it waits for perf
	read -r pu ps <"$RAW/$tag.perf.txt"
	if [[ $fl != none ]]; then
		g=$(flood_pid)
		[[ -n $g ]] && flood_cpu=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$g/stat" 2>/dev/null || echo 0)
		stop_flood
		if [[ $FLOOD_TOOL == synflood ]]; then
			flood_sent=$(sed -n 's/.*"sent":\([0-9]*\).*/\1/p' "$fo")
			flood_s=$(sed -n 's/.*"elapsed_s":\([0-9.eE+-]*\).*/\1/p' "$fo")
		else
			flood_sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$fo")
			flood_s=$(awk -v a="$FLOOD_T0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
		fi
		flood_sent=${flood_sent:-0} flood_s=${flood_s:-0}
	fi
	local wall denied_s
	wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
	denied_s=$(awk -v a="$e0" -v b="$e1" 'BEGIN { printf "%.3f", b - a }')
	local napi=-1
	((n0 >= 0)) && napi=$((n1 - n0))
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$r" "$fw" "$fl" "$wall" $((u1 - u0)) $((s1 - s0)) $((d1 - d0)) "$denied_s" $((p1 - p0)) \
		$((i1 - i0)) $((c1 - c0)) $((l1 - l0)) $((cu1 - cu0)) $((cs1 - cs0)) $((cq1 - cq0)) $((ci1 - ci0)) $((ct1 - ct0)) $((v1 - v0)) "$idle" "$pu" "$ps" \
		"$flood_sent" "$flood_s" "$flood_cpu" "$napi" "raw/$tag.rr.json" >>"$PHASES"
	log "$(printf '%-22s idle before %3s%%  p99 %8s us  send lag p99 %8s us  sluice user %7s ms (%3s ticks)  XDP drops %8s  SYNs sent %8s' "$tag" "$idle" \
		"$(sed -n 's/.*"latency_us":{[^}]*"p99":\([0-9.]*\).*/\1/p' "$rr")" \
		"$(sed -n 's/.*"send_lag_us":{[^}]*"p99":\([0-9.]*\).*/\1/p' "$rr")" "$pu" $((u1 - u0)) $((d1 - d0)) "$flood_sent")"
}

meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta kernel "$(uname -r)"
meta go "$(go version | awk '{ print $3 }')"
meta cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) ($(nproc) CPUs)"
meta clk_tck "$(getconf CLK_TCK)"
meta settings "ROUNDS=$ROUNDS NOFW_ROUNDS=$NOFW_ROUNDS PHASE=${PHASE}s WARMUP=${WARMUP}s RR_RATE=$RR_RATE RR_CONNS=$RR_CONNS FLOOD_TOOL=$FLOOD_TOOL FLOOD_TICK=$FLOOD_TICK FLOODS=\"$FLOODS\" PIN=$PIN"
if ((PIN)); then meta pin "server side on CPU 0, flood on CPU 1"; else meta pin none; fi
meta loadavg "$(cut -d' ' -f1-3 /proc/loadavg)"

log "sluice with the XDP firewall on $SDEV"
start_sluice on
for r in $(seq "$ROUNDS"); do
	order="none $FLOODS"
	((r % 2)) || order=$(echo $order | tr ' ' '\n' | tac | tr '\n' ' ')
	for fl in $order; do phase "$r" on "$fl"; done
done
stop "$SLUICE"

if ((NOFW_ROUNDS > 0)); then
	log "the same sluice without the firewall"
	start_sluice off
	for r in $(seq "$NOFW_ROUNDS"); do
		for fl in none $FLOODS; do phase "$r" off "$fl"; done
	done
	stop "$SLUICE"
fi
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"

"$BIN/report" --dir "$OUT" --out "$OUT_MD"
log "wrote $OUT_MD (raw data in $OUT)"
