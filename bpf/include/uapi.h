/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The few Linux UAPI definitions the sluice BPF programs need, copied from
 * <linux/types.h> and <linux/bpf.h> of Debian's linux-libc-dev 6.1.192-2 so
 * that compiling needs no kernel headers and gives the same object on every
 * machine (see README.md). Values are ABI: they never change.
 */
#ifndef SLUICE_UAPI_H
#define SLUICE_UAPI_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;

typedef __u16 __le16;
typedef __u16 __be16;
typedef __u32 __le32;
typedef __u32 __be32;
typedef __u64 __le64;
typedef __u64 __be64;
typedef __u16 __sum16;
typedef __u32 __wsum;

typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_UNSPEC = 0,
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_LPM_TRIE = 11,
};

/* Flags for BPF_MAP_UPDATE_ELEM. */
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

/* Flags for BPF_MAP_CREATE. */
enum {
	BPF_F_NO_PREALLOC = (1U << 0),
};

enum xdp_action {
	XDP_ABORTED = 0,
	XDP_DROP,
	XDP_PASS,
	XDP_TX,
	XDP_REDIRECT,
};

/* User accessible metadata for XDP packet hook. */
struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

#endif /* SLUICE_UAPI_H */
