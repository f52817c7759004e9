package firewall

// The BPF object is compiled from ../../bpf/firewall.c by bpf2go (a Go tool
// pinned in go.mod) with Debian's clang; the output is committed so that
// building and testing need no clang. -nostdinc keeps the compile to the
// headers under bpf/, so every machine produces the same object.
//go:generate go tool bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3 -nostdinc" -type verdict -type config_flag -type rule_config -type port_key -type lpm_v4_key -type lpm_v6_key -type rate_key -type rate_state firewall ../../bpf/firewall.c
