#!/usr/bin/env bash
# bench/run.sh — sluice side by side with HAProxy, nginx stream and a naive
# Go io.Copy proxy, as /work/shared/BENCHMARKING.md describes: every target
# is started once (the idle scenario restarts each target first, so that it
# measures a fresh process's memory), then each scenario runs against each
# target in turn, ROUNDS times, and bench/report turns the raw JSON into
# bench/RESULTS.md and bench/results.svg. See bench/README.md.
#
# All traffic goes to 127.0.0.0/8. Every load run is bounded by its own
# duration or request count and by timeout(1); every process started here is
# stopped on exit, on Ctrl-C and on failure.
#
# Settings (environment):
#   ROUNDS=3 DURATION=5 WARMUP=1          rounds; measured and warmup seconds per run
#   SCENARIOS="bulk bulk4 rr rr-open connect idle redis udp"   (also: pull)
#   TARGETS="direct sluice haproxy nginx iocopy"
#   IDLE_CONNS=6000 IDLE_HOLD=3           idle: connections held, seconds held
#   RR_CONNS=50 CONNECT_CONNS=8 UDP_CONNS=16 REDIS_CLIENTS=50
#   REDIS_REQUESTS=200000                 GETs per redis-benchmark run
#   RR_OPEN_RATE=                         open-loop rr rate (req/s); empty: 60% of
#                                         the lowest closed-loop rr rate of round 1
#   PORT_BASE=26100                       first of 50 loopback ports used
#   INSTALL_PEERS=1                       apt-get install missing peers when root
#   SMOKE=                                1 marks the results a smoke run (also
#                                         automatic for short settings)
#   RESULTS=bench/RESULTS.md SVG=bench/results.svg
set -Eeuo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-bulk bulk4 rr rr-open connect idle redis udp}
TARGETS=${TARGETS:-direct sluice haproxy nginx iocopy}
IDLE_CONNS=${IDLE_CONNS:-6000}
IDLE_HOLD=${IDLE_HOLD:-3}
RR_CONNS=${RR_CONNS:-50}
CONNECT_CONNS=${CONNECT_CONNS:-8}
UDP_CONNS=${UDP_CONNS:-16}
REDIS_CLIENTS=${REDIS_CLIENTS:-50}
REDIS_REQUESTS=${REDIS_REQUESTS:-200000}
RR_OPEN_RATE=${RR_OPEN_RATE:-}
RR_OPEN_FRACTION=0.6
PORT_BASE=${PORT_BASE:-26100}
INSTALL_PEERS=${INSTALL_PEERS:-1}
SMOKE=${SMOKE:-}
RESULTS=${RESULTS:-bench/RESULTS.md}
SVG=${SVG:-bench/results.svg}
SETTLE=${SETTLE:-0.5}          # pause between runs, seconds
BIN=${BIN:-bin}
SRC_CIDR=127.0.0.0/16          # client source addresses, so source hashing spreads

SLUICE=$BIN/sluice
BENCH=$BIN/sluice-bench

for n in ROUNDS DURATION WARMUP IDLE_CONNS IDLE_HOLD RR_CONNS CONNECT_CONNS UDP_CONNS REDIS_CLIENTS REDIS_REQUESTS PORT_BASE; do
	[[ ${!n} =~ ^[0-9]+$ ]] || { echo "bench: $n=${!n}: want a whole number" >&2; exit 2; }
done
(( ROUNDS >= 1 && DURATION >= 1 )) || { echo "bench: ROUNDS and DURATION must be at least 1" >&2; exit 2; }
for b in "$SLUICE" "$BENCH"; do
	[[ -x $b ]] || { echo "bench: $b not found; run 'make build' (or 'make bench')" >&2; exit 1; }
done

RUN_ID=$(date +%Y%m%d-%H%M%S)
OUT=bench/out/$RUN_ID
RAW=$OUT/raw
LOGS=$OUT/logs
CONF=$OUT/conf
mkdir -p "$RAW" "$LOGS" "$CONF" bench/out/bin
META=$OUT/meta.tsv
: >"$META"
# Build the report first: a run should not end in a compile error.
go build -o bench/out/bin/report ./bench/report || { echo "bench: go build ./bench/report failed" >&2; exit 1; }

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
meta() { local k=$1; shift; printf '%s\t%s\n' "$k" "$*" >>"$META"; }
note() { log "note: $*"; meta note "$*"; }

# ---------------------------------------------------------------- processes

pids=()   # every long-running process started here
CUR=      # the load run in progress, if any
cleanup() {
	local rc=$?
	set +e # stop everything whatever fails here
	trap - EXIT INT TERM HUP
	[[ -n $CUR ]] && kill -TERM "$CUR" 2>/dev/null
	((${#pids[@]})) && stop "${pids[@]}"
	wait 2>/dev/null || true
	((rc == 0)) || log "bench: stopped (status $rc); raw output kept in $OUT"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

. bench/procs.sh # ours, stop, descendants

# cpu_ticks PID...: utime+stime in clock ticks (1/100 s), summed.
cpu_ticks() {
	local p
	for p; do cat "/proc/$p/stat"; done 2>/dev/null |
		awk '{ sub(/.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}

# start NAME CMD...: run CMD in the background, logging to logs/NAME.log;
# sets LAST to its pid.
start() {
	local name=$1; shift
	"$@" >"$LOGS/$name.log" 2>&1 &
	LAST=$!
	pids+=("$LAST")
}

# in_use PORT: something accepts TCP connections on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PID PORT: wait (up to 10 s) until PORT accepts while PID lives.
wait_port() {
	local i
	for i in $(seq 100); do
		kill -0 "$1" 2>/dev/null || return 1
		in_use "$2" && return 0
		sleep 0.1
	done
	return 1
}

# redis_ping PORT: a PING answered with +PONG.
redis_ping() {
	timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		printf "PING\r\n" >&3; IFS= read -r -t 2 line <&3; [[ $line == "+PONG"* ]]' _ "$1" 2>/dev/null
}

# jnum KEY FILE: the last number after "KEY": in a one-line JSON file.
jnum() { sed -n "s/.*\"$1\":\\([-0-9.eE+]*\\).*/\\1/p" "$2" | head -n1; }
# jproxy KEY FILE: a number of the result's "proxy" object (the machine's
# object has keys of the same names, and jnum takes the last on the line).
jproxy() { sed -n "s/.*\"proxy\":{[^}]*\"$1\":\\([-0-9.eE+]*\\).*/\\1/p" "$2" | head -n1; }

# ---------------------------------------------------------------- ports

# Per-target layout from PORT_BASE (B):
#   backends  B+1,B+2 echo (TCP and UDP)  B+3,B+4 sink  B+5,B+6 source  B+7 redis
#   sluice B+10..  haproxy B+20..  nginx B+30..  iocopy B+40..:
#     +0 echo (and UDP echo)  +1 sink  +2 source  +3 redis
for try in $(seq 20); do
	busy=
	for p in $(seq "$PORT_BASE" $((PORT_BASE + 49))); do
		if in_use "$p"; then busy=$p; break; fi
	done
	[[ -z $busy ]] && break
	log "port $busy is in use; moving PORT_BASE from $PORT_BASE to $((PORT_BASE + 100))"
	PORT_BASE=$((PORT_BASE + 100))
done
[[ -z $busy ]] || { echo "bench: no free block of 50 ports found" >&2; exit 1; }
B=$PORT_BASE
declare -A OFF=([sluice]=10 [haproxy]=20 [nginx]=30 [iocopy]=40)
declare -A SVC=([echo]=0 [sink]=1 [source]=2 [redis]=3 [udp]=0)
declare -A DIRECT=([echo]=$((B + 1)) [sink]=$((B + 3)) [source]=$((B + 5)) [redis]=$((B + 7)) [udp]=$((B + 1)))
# port TARGET SERVICE
port() {
	if [[ $1 == direct ]]; then echo "${DIRECT[$2]}"; else echo $((B + ${OFF[$1]} + ${SVC[$2]})); fi
}

# ---------------------------------------------------------------- peers

APT_UPDATED=
# ensure CMD PACKAGE...: CMD is installed, or installed now from Debian.
ensure() {
	local cmd=$1; shift
	if [[ $cmd == /* ]]; then [[ -e $cmd ]] && return 0; else command -v "$cmd" >/dev/null && return 0; fi
	if [[ $INSTALL_PEERS == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		log "installing $* from Debian"
		if [[ -z $APT_UPDATED ]]; then
			timeout 600 apt-get update -qq >"$LOGS/apt.log" 2>&1 || true
			APT_UPDATED=1
		fi
		DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >>"$LOGS/apt.log" 2>&1 || true
		# Debian's packages start their system services; ours are separate.
		if [[ $cmd == /* ]]; then [[ -e $cmd ]] && return 0; else command -v "$cmd" >/dev/null && return 0; fi
	fi
	return 1
}

declare -A STATUS   # target -> ok | skipped: why | failed: why
declare -A PIDS     # target -> main pid of its process (group)
skip() { STATUS[$1]="$2"; note "$1: $2"; }

has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
has_scen() { [[ " $SCENARIOS " == *" $1 "* ]]; }

for t in $TARGETS; do
	case $t in
	direct | sluice | iocopy) ;;
	haproxy) ensure haproxy haproxy || skip haproxy "skipped: haproxy is not installed (apt-get install haproxy)" ;;
	nginx) { ensure nginx nginx-light && ensure /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream; } ||
		skip nginx "skipped: nginx or its stream module is not installed (apt-get install nginx-light libnginx-mod-stream)" ;;
	*) echo "bench: unknown target $t (want direct sluice haproxy nginx iocopy)" >&2; exit 2 ;;
	esac
done
REDIS=1
if has_scen redis; then
	if ! { ensure redis-server redis-server && ensure redis-benchmark redis-tools; }; then
		note "redis: skipped, redis-server or redis-benchmark is not installed (apt-get install redis-server)"
		REDIS=
	fi
else
	REDIS=
fi

# ---------------------------------------------------------------- backends

log "run $RUN_ID: ports $B-$((B + 49)), output in $OUT"
start backends "$BENCH" serve \
	--echo 127.0.0.1:$((B + 1)) --echo 127.0.0.1:$((B + 2)) \
	--udp-echo 127.0.0.1:$((B + 1)) --udp-echo 127.0.0.1:$((B + 2)) \
	--sink 127.0.0.1:$((B + 3)) --sink 127.0.0.1:$((B + 4)) \
	--source 127.0.0.1:$((B + 5)) --source 127.0.0.1:$((B + 6)) \
	--ready-file "$OUT/backends.ready"
BACKENDS_PID=$LAST
for _ in $(seq 100); do
	[[ -s $OUT/backends.ready ]] && break
	kill -0 "$BACKENDS_PID" 2>/dev/null || break
	sleep 0.1
done
[[ -s $OUT/backends.ready ]] || { cat "$LOGS/backends.log" >&2; echo "bench: backends failed to start" >&2; exit 1; }

if [[ -n $REDIS ]]; then
	start redis redis-server --port $((B + 7)) --bind 127.0.0.1 --save '' --appendonly no \
		--daemonize no --protected-mode yes --maxclients 10000 --logfile ''
	REDIS_PID=$LAST
	ok=
	for _ in $(seq 100); do
		redis_ping $((B + 7)) && { ok=1; break; }
		kill -0 "$REDIS_PID" 2>/dev/null || break
		sleep 0.1
	done
	[[ -n $ok ]] || { note "redis: skipped, redis-server did not start (see logs/redis.log)"; REDIS=; }
fi

# ---------------------------------------------------------------- targets

SLUICE_UDP_PID=
start_sluice() {
	local f=$CONF/sluice.conf s
	{
		echo "# sluice: default flags, --workers 2 on the command line"
		for s in echo sink source redis; do
			echo "[service $s]"
			echo "listen 127.0.0.1:$(port sluice "$s")"
			case $s in
			echo) echo "backend 127.0.0.1:$((B + 1))"; echo "backend 127.0.0.1:$((B + 2))" ;;
			sink) echo "backend 127.0.0.1:$((B + 3))"; echo "backend 127.0.0.1:$((B + 4))" ;;
			source) echo "backend 127.0.0.1:$((B + 5))"; echo "backend 127.0.0.1:$((B + 6))" ;;
			redis) echo "backend 127.0.0.1:$((B + 7))" ;;
			esac
		done
	} >"$f"
	start sluice "$SLUICE" --config "$f" --workers 2
	PIDS[sluice]=$LAST
}

# UDP is a separate sluice process so that a build without UDP support
# still runs the TCP scenarios.
start_sluice_udp() {
	if has_scen udp; then
		if "$SLUICE" --help 2>&1 | grep -q -- '--proto'; then
			start sluice-udp "$SLUICE" --proto udp --listen "127.0.0.1:$(port sluice udp)" \
				--backend 127.0.0.1:$((B + 1)) --backend 127.0.0.1:$((B + 2)) --workers 2
			SLUICE_UDP_PID=$LAST
		else
			note "sluice udp: skipped, this build's --help lists no --proto"
		fi
	fi
}

start_haproxy() {
	local f=$CONF/haproxy.cfg s
	{
		cat <<-EOF
		global
		  nbthread 2
		  maxconn 7000
		  tune.pipesize 524288
		defaults
		  mode tcp
		  timeout connect 5s
		  timeout client 1h
		  timeout server 1h
		  option splice-request
		  option splice-response
		EOF
		for s in echo sink source redis; do
			printf 'frontend f_%s\n  bind 127.0.0.1:%s\n  default_backend b_%s\n' "$s" "$(port haproxy "$s")" "$s"
			printf 'backend b_%s\n  balance source\n  hash-type consistent\n' "$s"
			case $s in
			echo) printf '  server s1 127.0.0.1:%s\n  server s2 127.0.0.1:%s\n' $((B + 1)) $((B + 2)) ;;
			sink) printf '  server s1 127.0.0.1:%s\n  server s2 127.0.0.1:%s\n' $((B + 3)) $((B + 4)) ;;
			source) printf '  server s1 127.0.0.1:%s\n  server s2 127.0.0.1:%s\n' $((B + 5)) $((B + 6)) ;;
			redis) printf '  server s1 127.0.0.1:%s\n' $((B + 7)) ;;
			esac
		done
	} >"$f"
	start haproxy haproxy -f "$f" -db
	PIDS[haproxy]=$LAST
}

start_nginx() {
	local d=$CONF/nginx
	mkdir -p "$d"
	cat >"$d/nginx.conf" <<-EOF
	load_module /usr/lib/nginx/modules/ngx_stream_module.so;
	worker_processes 2;
	worker_rlimit_nofile 19000;
	daemon off;
	pid $PWD/$d/nginx.pid;
	error_log stderr warn;
	events { worker_connections 9000; }
	stream {
	  upstream u { hash \$remote_addr consistent; server 127.0.0.1:$((B + 1)); server 127.0.0.1:$((B + 2)); }
	  upstream k { hash \$remote_addr consistent; server 127.0.0.1:$((B + 3)); server 127.0.0.1:$((B + 4)); }
	  upstream o { hash \$remote_addr consistent; server 127.0.0.1:$((B + 5)); server 127.0.0.1:$((B + 6)); }
	  upstream r { server 127.0.0.1:$((B + 7)); }
	  server { listen 127.0.0.1:$(port nginx echo); proxy_pass u; proxy_timeout 1h; }
	  server { listen 127.0.0.1:$(port nginx sink); proxy_pass k; proxy_timeout 1h; }
	  server { listen 127.0.0.1:$(port nginx source); proxy_pass o; proxy_timeout 1h; }
	  server { listen 127.0.0.1:$(port nginx redis); proxy_pass r; proxy_timeout 1h; }
	  server { listen 127.0.0.1:$(port nginx udp) udp; proxy_pass u; proxy_timeout 30s; }
	}
	EOF
	start nginx nginx -p "$PWD/$d" -c "$PWD/$d/nginx.conf" -e stderr
	PIDS[nginx]=$LAST
}

build_iocopy() {
	go build -o bench/out/bin/iocopy ./bench/iocopy >"$LOGS/iocopy-build.log" 2>&1 ||
		skip iocopy "failed: go build ./bench/iocopy (see $LOGS/iocopy-build.log)"
}

start_iocopy() {
	start iocopy bench/out/bin/iocopy \
		--route "127.0.0.1:$(port iocopy echo)=127.0.0.1:$((B + 1)),127.0.0.1:$((B + 2))" \
		--route "127.0.0.1:$(port iocopy sink)=127.0.0.1:$((B + 3)),127.0.0.1:$((B + 4))" \
		--route "127.0.0.1:$(port iocopy source)=127.0.0.1:$((B + 5)),127.0.0.1:$((B + 6))" \
		--route "127.0.0.1:$(port iocopy redis)=127.0.0.1:$((B + 7))"
	PIDS[iocopy]=$LAST
}

# verify TARGET: its ports accept, an echo round trip and a redis PING go
# through it. Prints the reason on failure.
verify() {
	local t=$1 pid=${PIDS[$1]:-} s out
	if [[ $t != direct ]]; then
		for s in echo sink source; do
			if ! wait_port "$pid" "$(port "$t" "$s")"; then
				if kill -0 "$pid" 2>/dev/null; then
					echo "port $(port "$t" "$s") ($s) not accepting after 10 s"
				else
					echo "it exited at startup: $(grep -v '^[[:space:]]*$' "$LOGS/$t.log" | tail -n1)"
				fi
				return 1
			fi
		done
		if [[ $t == nginx ]]; then # the master starts its 2 workers
			for _ in $(seq 50); do (($(descendants "$pid" | wc -l) >= 3)) && break; sleep 0.1; done
		fi
	fi
	out=$(timeout 20 "$BENCH" connect --target "127.0.0.1:$(port "$t" echo)" --conns 1 --requests 3 --duration 10s --json 2>&1) ||
		{ echo "echo round trip failed: $out"; return 1; }
	[[ $(jnum errors /dev/stdin <<<"$out") == 0 && $(jnum ops /dev/stdin <<<"$out") =~ ^[1-9] ]] ||
		{ echo "echo round trip failed: $(sed -n 's/.*"first_error":"\([^"]*\)".*/\1/p' <<<"$out")"; return 1; }
	if [[ -n $REDIS ]] && ! redis_ping "$(port "$t" redis)"; then
		echo "redis PING through $t failed"
		return 1
	fi
}

has_target iocopy && [[ -z ${STATUS[iocopy]:-} ]] && build_iocopy
for t in $TARGETS; do
	[[ -n ${STATUS[$t]:-} ]] && continue
	case $t in
	direct) ;;
	sluice) start_sluice; start_sluice_udp ;;
	haproxy) start_haproxy ;;
	nginx) start_nginx ;;
	iocopy) start_iocopy ;;
	esac
done
for t in $TARGETS; do
	[[ -n ${STATUS[$t]:-} ]] && continue
	if why=$(verify "$t"); then
		STATUS[$t]=ok
		log "target $t ready${PIDS[$t]:+ (pids $(descendants "${PIDS[$t]}" | sort -n | tr '\n' ' '))}"
	else
		skip "$t" "failed to start: $why (see $LOGS/$t.log)"
		if [[ -n ${PIDS[$t]:-} ]]; then stop "${PIDS[$t]}"; fi
		if [[ $t == sluice && -n $SLUICE_UDP_PID ]]; then stop "$SLUICE_UDP_PID"; SLUICE_UDP_PID=; fi
	fi
done
SLUICE_UDP=
if [[ -n $SLUICE_UDP_PID && ${STATUS[sluice]:-} == ok ]]; then
	out=$(timeout 20 "$BENCH" udp --target "127.0.0.1:$(port sluice udp)" --conns 1 --requests 3 --duration 5s --json 2>&1) || true
	if kill -0 "$SLUICE_UDP_PID" 2>/dev/null && [[ $(jnum ops /dev/stdin <<<"$out") =~ ^[1-9] ]]; then
		SLUICE_UDP=1
		log "target sluice udp ready (pid $SLUICE_UDP_PID)"
	else
		note "sluice udp: skipped, it did not start or answer: $(grep -v '^[[:space:]]*$' "$LOGS/sluice-udp.log" | tail -n1)"
		stop "$SLUICE_UDP_PID"
	fi
fi

# ---------------------------------------------------------------- metadata

first() { "$@" 2>&1 | head -n1 || true; }
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta run_id "$RUN_ID"
meta kernel "$(uname -r)"
meta go "$(go version 2>/dev/null | awk '{print $3}')"
meta cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) × $(nproc)"
meta sluice "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- 2>/dev/null || echo ' + uncommitted changes')"
has_target haproxy && meta haproxy "$(first haproxy -v)"
has_target nginx && meta nginx "$(first nginx -v)"
[[ -n $REDIS ]] && meta redis "$(first redis-server --version)"
for n in ROUNDS DURATION WARMUP IDLE_CONNS IDLE_HOLD RR_CONNS CONNECT_CONNS UDP_CONNS REDIS_CLIENTS REDIS_REQUESTS; do
	meta "${n,,}" "${!n}"
done
meta nofile "$(ulimit -n)"
meta scenarios "$SCENARIOS"
meta targets "$TARGETS"
if [[ -z $SMOKE ]] && (( ROUNDS < 3 || DURATION < 5 || IDLE_CONNS < 6000 )); then SMOKE=1; fi
meta smoke "${SMOKE:-0}"
for t in $TARGETS; do meta status "$t	${STATUS[$t]}"; done

# ---------------------------------------------------------------- runs

# bounded FILE LIMIT CMD...: run CMD with stdout to FILE, stderr to FILE.err,
# killed after LIMIT seconds; interruptible by our traps.
bounded() {
	local file=$1 limit=$2; shift 2
	timeout -k 5 "$limit" "$@" >"$file" 2>"$file.err" &
	CUR=$!
	local rc=0
	wait "$CUR" || rc=$?
	CUR=
	[[ -s $file.err ]] || rm -f "$file.err"
	return "$rc"
}

# proxy_args TARGET: --proxy-pid for every process of the target.
proxy_args() {
	local p
	for p in $(target_pids "$1"); do printf -- '--proxy-pid\n%s\n' "$p"; done
}
target_pids() {
	case $1 in
	direct) ;;
	sluice-udp) echo "$SLUICE_UDP_PID" ;;
	*) descendants "${PIDS[$1]}" | sort -n ;;
	esac
}
alive() {
	local p
	[[ $1 == direct ]] && return 0
	for p in ${PIDS[$1]:-} ${2:-}; do kill -0 "$p" 2>/dev/null || return 1; done
}

# redis_run TARGET FILE: redis-benchmark GETs, written as JSON in
# sluice-bench's field names, with the proxy CPU from /proc/PID/stat.
redis_run() {
	local t=$1 file=$2 pids c0 c1 csv
	pids=$(target_pids "$t")
	c0=$(cpu_ticks $pids)
	if ! bounded "$file.csv" $((REDIS_REQUESTS / 2000 + 120)) \
		redis-benchmark -h 127.0.0.1 -p "$(port "$t" redis)" -t get -c "$REDIS_CLIENTS" -n "$REDIS_REQUESTS" --csv; then
		{ cat "$file.csv.err" 2>/dev/null; echo "redis-benchmark failed or timed out"; } >"$file.err"
		rm -f "$file.csv" "$file.csv.err"
		return 1
	fi
	rm -f "$file.csv.err"
	c1=$(cpu_ticks $pids)
	awk -F'","|"' -v n="$REDIS_REQUESTS" -v c="$REDIS_CLIENTS" -v ticks=$((c1 - c0)) \
		-v target="127.0.0.1:$(port "$t" redis)" -v pids="$(echo $pids | tr ' ' ',')" '
		$2 == "GET" {
			rps = $3; ok = rps > 0
			printf "{\"mode\":\"redis\",\"target\":\"%s\",\"conns\":%d,\"ops\":%d,\"ops_per_s\":%s,\"elapsed_s\":%.6f,\"errors\":0,", target, c, n, rps, ok ? n / rps : 0
			printf "\"latency_us\":{\"count\":%d,\"mean\":%.1f,\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f}", n, $4 * 1000, $6 * 1000, $8 * 1000, $9 * 1000
			if (pids != "") printf ",\"proxy\":{\"pids\":[%s],\"cpu_s\":%.2f,\"cpu_us_per_op\":%.3f}", pids, ticks / 100, ticks / 100 / n * 1e6
			print "}"
			found = 1
		}
		END { exit !found }' "$file.csv" >"$file" || { echo "no GET line in redis-benchmark output" >"$file.err"; rm -f "$file"; return 1; }
	rm -f "$file.csv"
}

RR_RATE=$RR_OPEN_RATE
# open_rate: the rr-open rate, from round 1's closed-loop rr unless given.
open_rate() {
	[[ -n $RR_RATE ]] && return
	local f v min=
	for f in "$RAW"/r1_rr_*.json; do
		[[ -e $f && $f != *_direct.json ]] || continue
		v=$(jnum ops_per_s "$f")
		[[ -n $v ]] && awk -v v="$v" 'BEGIN { exit !(v > 0) }' || continue
		if [[ -z $min ]] || awk -v a="$v" -v b="$min" 'BEGIN { exit !(a < b) }'; then min=$v; fi
	done
	[[ -z $min && -e $RAW/r1_rr_direct.json ]] && min=$(jnum ops_per_s "$RAW/r1_rr_direct.json")
	RR_RATE=$(awk -v m="${min:-0}" -v f=$RR_OPEN_FRACTION 'BEGIN { r = int(m * f / 100) * 100; print (r >= 100 ? r : 1000) }')
	meta rr_open_rate "$RR_RATE"
	log "rr-open rate: $RR_RATE req/s (${RR_OPEN_FRACTION} × the lowest proxy closed-loop rate of round 1)"
}
[[ -n $RR_RATE ]] && meta rr_open_rate "$RR_RATE"

# restart TARGET: stop the target's processes, start them again and check
# them as at the start. The idle scenario runs on a fresh process: allocators
# keep the memory of earlier connections, so a second idle run in the same
# process would measure a growth of about zero.
restart() {
	local t=$1 why
	stop "${PIDS[$t]}"
	case $t in
	sluice) start_sluice ;;
	haproxy) start_haproxy ;;
	nginx) start_nginx ;;
	iocopy) start_iocopy ;;
	esac
	if ! why=$(verify "$t"); then
		STATUS[$t]="failed on restart: $why"
		note "$t: failed to restart for the idle scenario: $why; it is left out from here on"
		stop "${PIDS[$t]}"
		return 1
	fi
}

# run_one ROUND SCENARIO TARGET
run_one() {
	local r=$1 s=$2 t=$3 file=$RAW/r$1_$2_$3.json args=() what limit=$((DURATION + WARMUP + 60))
	local timing=(--duration "${DURATION}s" --warmup "${WARMUP}s")
	case $s in
	udp)
		case $t in
		direct | nginx) ;;
		sluice) [[ -n $SLUICE_UDP ]] || return 0 ;;
		*) return 0 ;; # HAProxy 2.6 and io.Copy proxy no UDP
		esac ;;
	idle) [[ $t == direct ]] && return 0 ;; # nothing to measure without a proxy
	redis) [[ -n $REDIS ]] || return 0 ;;
	esac
	kill -0 "$BACKENDS_PID" 2>/dev/null || { echo "bench: the backends (sluice-bench serve) exited; see $LOGS/backends.log" >&2; exit 1; }
	if [[ $s == redis ]] && ! kill -0 "$REDIS_PID" 2>/dev/null; then
		note "redis: redis-server exited during the run; the redis scenario stopped there"
		REDIS=
		return 0
	fi
	local pidt=$t
	[[ $s == udp && $t == sluice ]] && pidt=sluice-udp
	if ! alive "$t" $([[ $pidt == sluice-udp ]] && echo "$SLUICE_UDP_PID"); then
		echo "$t is not running any more" >"$file.err"
		log "r$r $s $t: skipped, $t is not running any more"
		return 0
	fi
	if [[ $s == idle ]]; then
		restart "$t" || return 0
	fi
	mapfile -t args < <(proxy_args "$pidt")
	case $s in
	bulk) what=(stream --conns 1 --direction push --target "127.0.0.1:$(port "$t" sink)" "${timing[@]}") ;;
	bulk4) what=(stream --conns 4 --direction push --target "127.0.0.1:$(port "$t" sink)" "${timing[@]}") ;;
	pull) what=(stream --conns 1 --direction pull --target "127.0.0.1:$(port "$t" source)" "${timing[@]}") ;;
	rr) what=(rr --conns "$RR_CONNS" --source-cidr $SRC_CIDR --target "127.0.0.1:$(port "$t" echo)" "${timing[@]}") ;;
	rr-open)
		open_rate
		what=(rr --conns "$RR_CONNS" --rate "$RR_RATE" --source-cidr $SRC_CIDR --target "127.0.0.1:$(port "$t" echo)" "${timing[@]}") ;;
	connect) what=(connect --conns "$CONNECT_CONNS" --source-cidr $SRC_CIDR --target "127.0.0.1:$(port "$t" echo)" "${timing[@]}") ;;
	idle)
		what=(idle --conns "$IDLE_CONNS" --duration "${IDLE_HOLD}s" --source-cidr $SRC_CIDR --target "127.0.0.1:$(port "$t" echo)")
		limit=$((IDLE_HOLD + IDLE_CONNS / 100 + 90)) ;;
	udp) what=(udp --conns "$UDP_CONNS" --source-cidr $SRC_CIDR --target "127.0.0.1:$(port "$t" udp)" "${timing[@]}") ;;
	redis)
		if redis_run "$t" "$file"; then
			log "$(printf 'r%-2s %-8s %-8s %10.0f /s  p99 %7.0f µs  cpu %s µs/op' "$r" "$s" "$t" \
				"$(jnum ops_per_s "$file")" "$(jnum p99 "$file")" "$(fmt3 "$(jnum cpu_us_per_op "$file")")")" || true
		else
			log "r$r $s $t: FAILED: $(tail -n1 "$file.err" 2>/dev/null)"
		fi
		return 0 ;;
	*) echo "bench: unknown scenario $s" >&2; exit 2 ;;
	esac
	if bounded "$file" "$limit" "$BENCH" "${what[@]}" "${args[@]}" --json; then
		summary "$r" "$s" "$t" "$file" || true
	else
		log "r$r $s $t: FAILED (status $?): $(tail -n1 "$file.err" 2>/dev/null)"
		[[ -s $file ]] || rm -f "$file"
	fi
}

# fmt3 NUMBER: three significant digits, "-" when empty.
fmt3() { if [[ -n $1 ]]; then printf '%.3g' "$1"; else printf -- -; fi; }

# summary: one progress line per run.
summary() {
	local r=$1 s=$2 t=$3 f=$4 line
	case $s in
	bulk | bulk4 | pull) line=$(printf '%7.2f Gbit/s  cpu %s s/GiB' "$(jnum gbit_per_s "$f")" "$(fmt3 "$(jproxy cpu_s_per_gib "$f")")") ;;
	idle) line=$(printf '%s opened, %s failed  rss %s KiB/conn' "$(jnum opened "$f")" "$(jnum failed "$f")" "$(fmt3 "$(jnum rss_per_conn_kib "$f")")") ;;
	*) line=$(printf '%10.0f /s  p99 %7.0f µs  cpu %s µs/op' "$(jnum ops_per_s "$f")" \
		"$(sed -n 's/.*"latency_us":{[^}]*"p99":\([0-9.]*\).*/\1/p' "$f")" "$(fmt3 "$(jproxy cpu_us_per_op "$f")")") ;;
	esac
	local e; e=$(jnum errors "$f")
	[[ ${e:-0} == 0 ]] || line+="  ($e errors)"
	log "$(printf 'r%-2s %-8s %-8s %s' "$r" "$s" "$t" "$line")"
}

ok_targets=()
for t in $TARGETS; do [[ ${STATUS[$t]} == ok ]] && ok_targets+=("$t"); done
((${#ok_targets[@]})) || { echo "bench: no target started" >&2; exit 1; }
n=${#ok_targets[@]}
for r in $(seq "$ROUNDS"); do
	log "round $r of $ROUNDS"
	for s in $SCENARIOS; do
		# Rotate the target order each round so no target always runs first.
		for i in $(seq 0 $((n - 1))); do
			run_one "$r" "$s" "${ok_targets[$(( (i + r - 1) % n ))]}"
			sleep "$SETTLE"
		done
	done
done

# ---------------------------------------------------------------- report

log "writing $RESULTS and $SVG"
bench/out/bin/report --dir "$OUT" --md "$RESULTS" --svg "$SVG"
log "done: $RESULTS (raw JSON in $RAW)"
