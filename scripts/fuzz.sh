#!/usr/bin/env bash
# scripts/fuzz.sh PACKAGE... — run every fuzz target of the packages for
# FUZZTIME (default 10s). Targets are found by their test files'
# "func Fuzz", so a new one gets its run without a change here.
#
# Go 1.26's fuzzing coordinator can fail a target with a bare "context
# deadline exceeded" when -fuzztime runs out while a worker is in the middle
# of a call (go.dev/issue/75804, fixed in Go 1.27), most often on a loaded
# machine. No input is at fault then, and none is written to testdata/fuzz.
# Such a run is shown indented, so that its FAIL lines do not count as a
# failure in the CI summary, and run once more; a run that wrote a failing
# input, or failed in any other way, fails at once.
set -euo pipefail
FUZZTIME=${FUZZTIME:-10s}
GO=${GO:-go}

out=$(mktemp)
trap 'rm -f "$out"' EXIT

for pkg in $("$GO" list -f '{{.ImportPath}} {{.Dir}}' "$@" |
	while read -r p d; do grep -qs '^func Fuzz' "$d"/*_test.go && echo "$p"; done); do
	for f in $("$GO" test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
		for try in 1 2; do
			echo "fuzz $pkg $f ($FUZZTIME)"
			if "$GO" test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" "$pkg" >"$out" 2>&1; then
				cat "$out"
				break
			fi
			if ((try == 1)) && grep -q '^    context deadline exceeded$' "$out" &&
				! grep -q 'Failing input written' "$out" &&
				(($(grep -c -- '--- FAIL' "$out") == 1)); then
				sed 's/^/    | /' "$out"
				echo "fuzz: $f ended on the fuzzing coordinator's deadline race (go.dev/issue/75804), with no failing input; running it again"
				continue
			fi
			cat "$out"
			exit 1
		done
	done
done
