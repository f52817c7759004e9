# Shared by bench/run.sh and bench/flood.sh (sourced, not run): stopping the
# processes a benchmark script started, and only those. Callers keep the
# pids they started in the array pids.

# ours PID: PID is alive and a child of this shell.
ours() {
	[[ -r /proc/$1/stat ]] && awk -v me=$$ '{ sub(/.*\) /, ""); exit !($2 == me) }' "/proc/$1/stat" 2>/dev/null
}

# stop PID...: SIGTERM to the processes and their descendants (nginx
# workers must not outlive a killed master), SIGKILL after 10 s, and forget
# them. Only pids that are still this shell's children count: a recorded pid
# that died may have been reused by someone else's process.
stop() {
	local all=() p q keep=()
	for p; do ours "$p" && all+=($(descendants "$p")); done
	if ((${#all[@]})); then
		kill -TERM "${all[@]}" 2>/dev/null || true
		for _ in $(seq 100); do
			local alive=0
			for q in "${all[@]}"; do kill -0 "$q" 2>/dev/null && alive=1; done
			((alive)) || break
			sleep 0.1
		done
		kill -KILL "${all[@]}" 2>/dev/null || true
	fi
	for p; do wait "$p" 2>/dev/null || true; done
	for q in "${pids[@]}"; do [[ " $* " == *" $q "* ]] || keep+=("$q"); done
	pids=("${keep[@]}")
}

# descendants PID: PID and every live process below it.
descendants() {
	cat /proc/[0-9]*/stat 2>/dev/null | awk -v root="$1" '
		{ pid = $1; sub(/.*\) /, ""); parent[pid] = $2 }
		END {
			if (!(root in parent)) exit
			out[root] = 1; n = 1
			while (n) { n = 0; for (p in parent) if (!(p in out) && (parent[p] in out)) { out[p] = 1; n = 1 } }
			for (p in out) print p
		}'
}
