#!/bin/sh
# Regenerates the XDP firewall's bpf2go output (internal/firewall/*_bpfel.*)
# from bpf/ and fails if it differs from what is committed.
# Needs Debian bookworm's clang and llvm (for llvm-strip): other clang
# versions produce different, equally valid, objects.
set -eu
cd "$(dirname "$0")/.."
for tool in clang llvm-strip; do
	command -v "$tool" >/dev/null || {
		echo "$0: $tool not found: apt-get install clang llvm" >&2
		exit 2
	}
done
go generate ./internal/firewall/
if ! git diff --exit-code --stat -- internal/firewall ||
	[ -n "$(git status --porcelain --untracked-files=all -- internal/firewall)" ]; then
	echo "$0: generated BPF files are stale: run 'go generate ./internal/firewall/' and commit ($(clang --version | head -n1))" >&2
	exit 1
fi
