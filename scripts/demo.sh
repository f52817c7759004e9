#!/usr/bin/env bash
# demo.sh — the README's first command (`make demo`, which builds first).
#
# Starts three sluice-bench echo backends and bin/sluice in front of them on
# loopback, runs a short request/response load and a short bulk stream
# through sluice, prints the results and how the connections spread over the
# backends (from sluice's admin endpoint), then stops everything. All traffic
# stays on 127.0.0.0/8; every process started here is stopped on exit, on
# Ctrl-C and on failure.
#
# Environment: BIN (default bin), DEMO_SECONDS (default 3, per load run).
set -Eeuo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
SECS=${DEMO_SECONDS:-3}
SLUICE=$BIN/sluice
BENCH=$BIN/sluice-bench
for b in "$SLUICE" "$BENCH"; do
	[[ -x $b ]] || { echo "demo: $b not found; run 'make build' (or 'make demo')" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-demo.XXXXXX")
pids=()      # processes started here, stopped by cleanup
cleanup() {
	local rc=$?
	set +e # stop everything whatever fails here
	trap - EXIT INT TERM HUP
	local p
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		# Bounded wait: sluice drains for at most a few seconds here.
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [[ -t 1 ]]; then
	say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
	say() { printf '\n== %s\n' "$*"; }
fi

# in_use PORT: something accepts TCP connections on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_get PORT PATH: body of a GET on the admin endpoint (no curl needed).
http_get() {
	local out
	out=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
		cat <&3' _ "$1" "$2") || return 1
	[[ $out == "HTTP/1."?" 200"* ]] || return 1
	printf '%s\n' "${out#*$'\r\n\r\n'}"
}

# 1. Backends: three echo servers on free ports (port 0: the kernel picks).
say "starting three echo backends"
"$BENCH" serve --echo 127.0.0.1:0 --echo 127.0.0.1:0 --echo 127.0.0.1:0 \
	--ready-file "$tmp/ready" >"$tmp/serve.log" 2>&1 &
pids+=($!)
serve_pid=$!
for _ in $(seq 100); do
	[[ -s $tmp/ready ]] && break
	kill -0 "$serve_pid" 2>/dev/null || { cat "$tmp/serve.log" >&2; echo "demo: backends failed to start" >&2; exit 1; }
	sleep 0.1
done
[[ -s $tmp/ready ]] || { echo "demo: backends not ready after 10 s" >&2; exit 1; }
mapfile -t backends < <(awk '$1 == "echo" { print $3 }' "$tmp/ready")
printf '  echo backend %s\n' "${backends[@]}"

# 2. sluice: pick a listening port and an admin port that are free; if the
# port is taken between the check and the bind, sluice exits and we retry.
say "starting sluice"
bargs=()
for b in "${backends[@]}"; do bargs+=(--backend "$b"); done
sluice_pid=
for try in 1 2 3 4 5; do
	port=$(( 20000 + (RANDOM % 9000) ))
	admin=$(( port + 1 ))
	in_use "$port" || in_use "$admin" && continue
	"$SLUICE" --listen "127.0.0.1:$port" "${bargs[@]}" --admin-addr "127.0.0.1:$admin" \
		--hash-key src-ip >"$tmp/sluice.log" 2>&1 &
	sluice_pid=$!
	pids+=("$sluice_pid")
	ready=
	for _ in $(seq 100); do
		kill -0 "$sluice_pid" 2>/dev/null || break
		if [[ $(http_get "$admin" /readyz 2>/dev/null) == ready* ]] && in_use "$port"; then
			ready=1
			break
		fi
		sleep 0.1
	done
	[[ -n $ready ]] && break
	echo "  sluice did not come up on 127.0.0.1:$port (try $try):" >&2
	tail -n 3 "$tmp/sluice.log" >&2
	kill -TERM "$sluice_pid" 2>/dev/null || true
	sluice_pid=
done
[[ -n $sluice_pid ]] || { echo "demo: sluice failed to start" >&2; exit 1; }
echo "  sluice pid $sluice_pid listening on 127.0.0.1:$port, admin on 127.0.0.1:$admin"

# 3. Load through sluice. --source-cidr gives each client connection its own
# loopback source address, so the source-IP hash spreads them.
say "rr: 50 keep-alive clients, 64-byte request/response, ${SECS} s"
timeout --foreground -k 5 $(( SECS + 30 )) "$BENCH" rr --target "127.0.0.1:$port" --conns 50 \
	--duration "${SECS}s" --source-cidr 127.0.0.0/16 --proxy-pid "$sluice_pid"

say "stream: 1 connection, bulk both ways through an echo, ${SECS} s"
timeout --foreground -k 5 $(( SECS + 30 )) "$BENCH" stream --target "127.0.0.1:$port" --conns 1 \
	--direction both --duration "${SECS}s" --proxy-pid "$sluice_pid"

# 4. How the connections spread, from sluice's own counters (they count
# client connections only; the backends' own counts would include sluice's
# health checks).
say "connections per backend (sluice admin /backends)"
json=$(http_get "$admin" /backends) || { echo "demo: GET /backends failed" >&2; exit 1; }
grep -oE '"address": *"[^"]*"|"connections_total": *[0-9]+' <<<"$json" | tr -d ' ' |
	awk -F'[:"]+' '
		/address/ { addr = $3 ":" $4 }
		/connections_total/ { n[addr] = $3; order[++k] = addr; total += $3 }
		END {
			printf "  %-22s %11s %7s\n", "backend", "connections", "share"
			for (i = 1; i <= k; i++) {
				a = order[i]; pct = total ? 100 * n[a] / total : 0
				bar = ""; for (j = 0; j < pct / 2; j++) bar = bar "#"
				printf "  %-22s %11d %6.1f%%  %s\n", a, n[a], pct, bar
			}
			printf "  %-22s %11d\n", "total", total
		}'
echo "  (50 rr clients from 50 source addresses, 1 stream, 1 readiness probe)"

say "stopping sluice and the backends"
cleanup
