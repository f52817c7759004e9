//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xdp_firewall: deny/allow lists and per-source rate limits for the
 * balancer's protected ports, loaded and fed by internal/firewall.
 *
 * Only packets to a protected (protocol, port) are policed; everything else
 * passes untouched, so SSH and the rest of the host are never at risk from
 * a rule. For a protected packet, in this order:
 *
 *   1. source in deny_v4/deny_v6                          -> drop, DENIED
 *   2. allow list active and source not in allow_v4/_v6   -> drop, NOT_ALLOWED
 *   3. rate limit on, packet starts something (TCP SYN
 *      without ACK, or any UDP datagram), and the source's
 *      bucket is empty                                     -> drop, RATE_LIMITED
 *   4. otherwise                                           -> pass, PASSED
 *
 * Deny wins over allow. The ports, the first 4 bytes of the TCP/UDP
 * header, decide whether a packet is policed; all that a protected packet
 * needs beyond them is its TCP flags. So:
 *
 *   - a TCP/UDP header cut short after its ports (an RFC 1858 tiny first
 *     fragment, a truncated packet) or a TCP data offset below 5 words:
 *     pass, UNPROTECTED, to an unprotected port; drop, MALFORMED, to a
 *     protected one, whose rules could not be applied. TCP options are
 *     not read: a first fragment that ends inside them is policed like
 *     any packet (and passes untouched to an unprotected port).
 *
 * Packets whose ports cannot be known are decided without them:
 *
 *   - truncated or inconsistent IP headers, a packet that ends before its
 *     ports, IPv6 header chains longer than MAX_IPV6_EXT_HDRS (8), IPv6 AH
 *     headers of a length that is not a multiple of 8 bytes, RFC 1858
 *     offset-8 TCP fragments: drop, MALFORMED. The kernel would discard
 *     most of these itself; the rest exist only to hide a header from a
 *     filter.
 *   - non-first IP fragments: pass, FRAGMENT. They cannot be matched to a
 *     port, and dropping them would break fragmented traffic to unprotected
 *     ports. Their first fragment carries the ports and is policed, and
 *     without it the kernel never reassembles the datagram; offsets below
 *     8 bytes cannot reach the ports, and Linux drops overlapping
 *     fragments.
 *   - frames that are not IPv4/IPv6 (or have more than two VLAN tags or a
 *     truncated Ethernet/VLAN header), and IP protocols other than TCP and
 *     UDP (ICMP included): pass, UNPROTECTED.
 *
 * The control plane changes rules at run time by map updates alone; the
 * program is never reloaded or detached for that.
 */

#include "parse.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Index into the verdicts map; the Go loader's counters mirror it. */
enum verdict {
	VERDICT_PASSED = 0,   /* protected, admitted by every rule */
	VERDICT_DENIED,       /* protected, source in a deny list */
	VERDICT_NOT_ALLOWED,  /* protected, allow list active, source not in it */
	VERDICT_RATE_LIMITED, /* protected, source's token bucket empty */
	VERDICT_MALFORMED,    /* dropped: headers unparsable (see above) */
	VERDICT_UNPROTECTED,  /* passed unpoliced: not to a protected port */
	VERDICT_FRAGMENT,     /* passed unpoliced: non-first IP fragment */
	VERDICT_MAX,
};

/* Bits of rule_config.flags. */
enum config_flag {
	/* allow_v4/allow_v6 are in force: sources not in them are dropped. */
	CONFIG_ALLOW_LIST = 1 << 0,
};

/*
 * The one entry of the config map. Userspace rewrites it whole; a
 * packet racing with the write may see a mix of old and new fields, which
 * decides at most that packet by a blend of the two configurations.
 */
struct rule_config {
	/*
	 * Nanoseconds per token: 1e9 / rate, rounded to nearest. 0 turns the
	 * rate limit off.
	 */
	__u64 rate_interval_ns;
	/*
	 * Burst tolerance in nanoseconds: burst * rate_interval_ns. A source
	 * may be at most this far ahead of its steady rate.
	 */
	__u64 rate_burst_ns;
	enum config_flag flags; /* bits, 4 bytes */
};

/* Key of protected_ports. */
struct port_key {
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;   /* zero */
	__u16 port; /* host byte order */
};

/* Keys of the LPM tries: prefix length in bits, then the address. */
struct lpm_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Key of rate_buckets: an IPv4 address or the /64 of an IPv6 address. */
struct rate_key {
	__u32 family; /* 4 or 6 */
	__u8 addr[8]; /* IPv4: the 4 address bytes, then zeros; IPv6: /64 */
};

/*
 * Value of rate_buckets: the token bucket as GCRA state. tat_ns is the
 * "theoretical arrival time": the bucket is full when tat_ns <= now, and
 * each admitted packet moves it rate_interval_ns forward. A packet is
 * admitted when the new tat_ns stays within rate_burst_ns of now, so a
 * source gets burst packets at once and then one per interval, with no
 * division and no second field to keep consistent.
 */
struct rate_state {
	__u64 tat_ns; /* bpf_ktime_get_ns() clock */
};

/*
 * The rule maps hold twice the loader's limits (MaxPorts, MaxPrefixes):
 * an update adds the new entries before it removes the old ones, so that
 * no packet meets neither rule set, and meanwhile a map holds both.
 */

/* (protocol, port) -> 1 for every policed port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct port_key);
	__type(value, __u8);
	__uint(max_entries, 2 * 1024);
} protected_ports SEC(".maps");

/* IPv4 source prefix -> 1: drop (deny list). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v4_key);
	__type(value, __u8);
	__uint(max_entries, 2 * 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} deny_v4 SEC(".maps");

/* IPv6 source prefix -> 1: drop (deny list). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v6_key);
	__type(value, __u8);
	__uint(max_entries, 2 * 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} deny_v6 SEC(".maps");

/* IPv4 source prefix -> 1: admit, when CONFIG_ALLOW_LIST is set. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v4_key);
	__type(value, __u8);
	__uint(max_entries, 2 * 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} allow_v4 SEC(".maps");

/* IPv6 source prefix -> 1: admit, when CONFIG_ALLOW_LIST is set. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v6_key);
	__type(value, __u8);
	__uint(max_entries, 2 * 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} allow_v6 SEC(".maps");

/* 0 -> the rule configuration. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct rule_config);
	__uint(max_entries, 1);
} config SEC(".maps");

/*
 * Source (IPv4 address or IPv6 /64) -> token bucket state. LRU, so a flood
 * from spoofed sources evicts the least recently seen buckets instead of
 * filling the table; an evicted source starts again with a full bucket.
 * The loader sizes it at load time.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct rate_key);
	__type(value, struct rate_state);
	__uint(max_entries, 65536);
} rate_buckets SEC(".maps");

/* enum verdict -> packets, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, VERDICT_MAX);
} verdicts SEC(".maps");

/* Attempts at the compare-and-swap before a contended packet is dropped. */
#define RATE_CAS_TRIES 4

/*
 * Not inlined, so that enum verdict reaches BTF and bpf2go mirrors it in Go;
 * the call costs a few instructions per packet.
 */
static __attribute__((noinline)) int count(enum verdict v, int action)
{
	__u32 key = v;
	__u64 *n = bpf_map_lookup_elem(&verdicts, &key);

	/* Per-CPU slot and XDP runs with migration disabled: no atomics. */
	if (n)
		*n += 1;
	return action;
}

/*
 * rate_admit takes a token from the source's bucket. All CPUs share the
 * bucket; the update is a compare-and-swap on tat_ns, so concurrent packets
 * of one source are counted exactly, not overshot. A packet that loses the
 * race RATE_CAS_TRIES times is dropped: losing means other CPUs are
 * admitting packets of the same source at that very moment.
 */
static __always_inline bool rate_admit(const struct rate_key *key,
				       const struct rule_config *cfg)
{
	__u64 interval = cfg->rate_interval_ns;
	__u64 tol = cfg->rate_burst_ns;
	__u64 now = bpf_ktime_get_ns();
	struct rate_state *st;
	int i;

	if (interval > tol)
		return false; /* burst below one packet: nothing gets through */

	st = bpf_map_lookup_elem(&rate_buckets, key);
	if (!st) {
		struct rate_state fresh = { .tat_ns = now + interval };

		if (bpf_map_update_elem(&rate_buckets, key, &fresh,
					BPF_NOEXIST) == 0)
			return true;
		/* Another CPU created it first; use theirs. */
		st = bpf_map_lookup_elem(&rate_buckets, key);
		if (!st)
			return true; /* table unusable: fail open */
	}

	for (i = 0; i < RATE_CAS_TRIES; i++) {
		__u64 tat = *(volatile __u64 *)&st->tat_ns;
		__u64 next = tat > now ? tat : now;

		if (next > now + tol) {
			/*
			 * Further ahead than the burst allows: only after a
			 * change to a faster rate. Empty the bucket under the
			 * new rules instead of making the source wait out the
			 * old ones.
			 */
			__sync_val_compare_and_swap(&st->tat_ns, tat, now + tol);
			return false;
		}
		next += interval;
		if (next > now + tol)
			return false;
		if (__sync_val_compare_and_swap(&st->tat_ns, tat, next) == tat)
			return true;
	}
	return false;
}

/* Does this packet open something: a TCP SYN (not SYN-ACK) or a datagram? */
static __always_inline bool starts_flow(const struct packet *pkt)
{
	if (pkt->l4proto == IPPROTO_UDP)
		return true;
	return (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

SEC("xdp")
int xdp_firewall(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct port_key pk = {};
	struct rate_key rk = {};
	struct rule_config *cfg;
	__u32 zero = 0;

	int parsed = parse_packet(ctx, &pkt);

	switch (parsed) {
	case PARSE_L4:
	case PARSE_L4_PORTS:
		break;
	case PARSE_FRAGMENT:
		return count(VERDICT_FRAGMENT, XDP_PASS);
	case PARSE_MALFORMED:
		return count(VERDICT_MALFORMED, XDP_DROP);
	default:
		return count(VERDICT_UNPROTECTED, XDP_PASS);
	}

	pk.proto = pkt.l4proto;
	pk.port = pkt.dport;
	if (!bpf_map_lookup_elem(&protected_ports, &pk))
		return count(VERDICT_UNPROTECTED, XDP_PASS);
	if (parsed == PARSE_L4_PORTS)
		return count(VERDICT_MALFORMED, XDP_DROP);

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg) /* cannot happen: array maps have every index */
		return count(VERDICT_PASSED, XDP_PASS);

	if (pkt.family == 4) {
		struct lpm_v4_key k = { .prefixlen = 32 };

		__builtin_memcpy(k.addr, &pkt.saddr.v4, sizeof(k.addr));
		if (bpf_map_lookup_elem(&deny_v4, &k))
			return count(VERDICT_DENIED, XDP_DROP);
		if ((cfg->flags & CONFIG_ALLOW_LIST) &&
		    !bpf_map_lookup_elem(&allow_v4, &k))
			return count(VERDICT_NOT_ALLOWED, XDP_DROP);
		rk.family = 4;
		__builtin_memcpy(rk.addr, &pkt.saddr.v4, 4);
	} else {
		struct lpm_v6_key k = { .prefixlen = 128 };

		__builtin_memcpy(k.addr, pkt.saddr.v6, sizeof(k.addr));
		if (bpf_map_lookup_elem(&deny_v6, &k))
			return count(VERDICT_DENIED, XDP_DROP);
		if ((cfg->flags & CONFIG_ALLOW_LIST) &&
		    !bpf_map_lookup_elem(&allow_v6, &k))
			return count(VERDICT_NOT_ALLOWED, XDP_DROP);
		rk.family = 6;
		__builtin_memcpy(rk.addr, pkt.saddr.v6, 8);
	}

	if (cfg->rate_interval_ns != 0 && starts_flow(&pkt) &&
	    !rate_admit(&rk, cfg))
		return count(VERDICT_RATE_LIMITED, XDP_DROP);

	return count(VERDICT_PASSED, XDP_PASS);
}
