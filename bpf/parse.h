/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Bounded packet parsing for XDP programs: Ethernet, up to two VLAN tags
 * (802.1Q and 802.1ad), IPv4 with options, IPv6 with up to
 * MAX_IPV6_EXT_HDRS extension headers, and the TCP or UDP header.
 *
 * Every read is preceded by a check against data_end, every loop has a
 * constant bound, and every header length comes from a field of at most
 * eight bits, so the verifier can prove each access; the worst-case offset
 * reached is well below 64 KiB.
 *
 * parse_packet sorts a frame into one of five classes (enum parse_result);
 * the policy for each class belongs to the program, not to this file.
 */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include "include/uapi.h"
#include "include/bpf_helpers.h"
#include "include/bpf_endian.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_ACK 0x10

/* IPv4 frag_off: more-fragments flag and offset in units of 8 bytes. */
#define IPV4_MF 0x2000
#define IPV4_OFFSET_MASK 0x1fff
/* IPv6 fragment header frag_off: offset in bytes (a multiple of 8). */
#define IPV6_OFFSET_MASK 0xfff8

/* Deeper VLAN stacks are not parsed: such frames pass as non-IP. */
#define MAX_VLAN_TAGS 2
/*
 * Longer IPv6 extension header chains are malformed to us: without a bound
 * an attacker could hide the TCP/UDP header from the program behind padding
 * headers that the kernel would happily walk.
 */
#define MAX_IPV6_EXT_HDRS 8

/* Room left in the IP payload when the length field says nothing (0). */
#define ROOM_UNKNOWN 0xffffffffU

struct eth_hdr {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct ipv4_hdr {
	__u8 ver_ihl; /* version in the high nibble, header length in words */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6_hdr {
	__u8 ver_tc; /* version in the high nibble */
	__u8 tc_flow[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* Hop-by-hop, routing, destination options and AH start like this. */
struct ipv6_opt_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

struct tcp_hdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res; /* data offset in words in the high nibble */
	__u8 flags;    /* CWR ECE URG ACK PSH RST SYN FIN */
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

struct udp_hdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__sum16 check;
};

enum parse_result {
	/* TCP or UDP header found: every field of struct packet is set. */
	PARSE_L4,
	/*
	 * The TCP or UDP header's ports are there (its first 4 bytes), the
	 * rest of the header is not: a first fragment that ends inside it
	 * (RFC 1858 tiny fragment) or a truncated packet; or a TCP data offset
	 * below 5 words. family, saddr, l4proto and dport are set, tcp_flags
	 * is 0. The ports alone decide whether the packet is policed at all.
	 */
	PARSE_L4_PORTS,
	/*
	 * Not IPv4 or IPv6 (ARP, LLDP, more than two VLAN tags, a frame too
	 * short for its Ethernet or VLAN header), or an IP packet of another
	 * protocol (ICMP, ICMPv6, ESP, ...). family is set if it is IP.
	 */
	PARSE_OTHER,
	/* A non-first IP fragment: family and saddr are set, ports unknown. */
	PARSE_FRAGMENT,
	/*
	 * An IP packet whose IP or extension headers are truncated or
	 * inconsistent, or that ends before the ports of its TCP/UDP header;
	 * an IPv6 chain longer than MAX_IPV6_EXT_HDRS, an IPv6 AH header
	 * whose length is not a multiple of 8 bytes, or an RFC 1858
	 * overlapping TCP fragment (offset 8): a packet whose ports we cannot
	 * know or trust, and which the kernel would mostly discard itself.
	 */
	PARSE_MALFORMED,
};

struct packet {
	__u8 family;    /* 4 or 6 for IP packets, else 0 */
	__u8 l4proto;   /* IPPROTO_TCP or IPPROTO_UDP (PARSE_L4 only) */
	__u8 tcp_flags; /* TCP flags byte, 0 for UDP */
	__u16 dport;    /* destination port, host byte order */
	union {
		__be32 v4;
		__u8 v6[16];
	} saddr;        /* source address, network byte order */
};

struct cursor {
	void *pos;
	void *end;
};

/* The first 4 bytes of a TCP or UDP header. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

/*
 * parse_l4 reads the TCP or UDP header at c->pos. room is what the IP
 * length fields leave for it and its payload, or ROOM_UNKNOWN: bytes past
 * room are padding, or belong to the next fragment, even where the frame
 * has bytes.
 *
 * Only the ports must be there to say whether the packet is policed; the
 * rest of the header counts only for a protected port (PARSE_L4_PORTS).
 * TCP options are not read, so a header whose options run past room (into
 * the next fragment: Linux reassembles such fragments, and RFC 8200 asks
 * an IPv6 first fragment only for the fixed 20 bytes) is PARSE_L4.
 */
static __always_inline int parse_l4(struct cursor *c, __u8 proto, __u32 room,
				    struct packet *pkt)
{
	struct l4_ports *lp = c->pos;
	struct tcp_hdr *th = c->pos;
	struct udp_hdr *uh = c->pos;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return PARSE_OTHER;
	if ((void *)(lp + 1) > c->end || room < sizeof(*lp))
		return PARSE_MALFORMED;
	pkt->l4proto = proto;
	pkt->dport = bpf_ntohs(lp->dest);
	pkt->tcp_flags = 0;
	if (proto == IPPROTO_UDP) {
		if ((void *)(uh + 1) > c->end || room < sizeof(*uh))
			return PARSE_L4_PORTS;
		return PARSE_L4;
	}
	if ((void *)(th + 1) > c->end || room < sizeof(*th))
		return PARSE_L4_PORTS;
	if ((th->doff_res >> 4) * 4 < sizeof(*th))
		return PARSE_L4_PORTS;
	pkt->tcp_flags = th->flags;
	return PARSE_L4;
}

static __always_inline int parse_ipv4(struct cursor *c, struct packet *pkt)
{
	struct ipv4_hdr *iph = c->pos;
	__u32 hlen, tot, room = ROOM_UNKNOWN;
	__u16 frag;

	if ((void *)(iph + 1) > c->end)
		return PARSE_MALFORMED;
	if ((iph->ver_ihl >> 4) != 4)
		return PARSE_MALFORMED;
	hlen = (iph->ver_ihl & 0x0f) * 4;
	if (hlen < sizeof(*iph))
		return PARSE_MALFORMED;
	/* A total length of 0 is what GRO leaves on BIG TCP super-packets. */
	tot = bpf_ntohs(iph->tot_len);
	if (tot != 0) {
		if (tot < hlen)
			return PARSE_MALFORMED;
		room = tot - hlen;
	}
	if (c->pos + hlen > c->end)
		return PARSE_MALFORMED;

	pkt->family = 4;
	pkt->saddr.v4 = iph->saddr;

	frag = bpf_ntohs(iph->frag_off) & IPV4_OFFSET_MASK;
	if (frag != 0) {
		/*
		 * RFC 1858: a TCP fragment at offset 8 can only be there to
		 * overwrite the flags of the first fragment's header.
		 */
		if (frag == 1 && iph->protocol == IPPROTO_TCP)
			return PARSE_MALFORMED;
		return PARSE_FRAGMENT;
	}
	/*
	 * A first fragment (MF set, offset 0) is parsed like a whole packet:
	 * room, from tot_len, stops where the fragment stops.
	 */
	c->pos += hlen;
	return parse_l4(c, iph->protocol, room, pkt);
}

static __always_inline bool ipv6_is_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_DSTOPTS ||
	       nexthdr == IPPROTO_AH;
}

static __always_inline int parse_ipv6(struct cursor *c, struct packet *pkt)
{
	struct ipv6_hdr *ip6h = c->pos;
	__u32 room = ROOM_UNKNOWN;
	__u8 next;
	int i;

	if ((void *)(ip6h + 1) > c->end)
		return PARSE_MALFORMED;
	if ((ip6h->ver_tc >> 4) != 6)
		return PARSE_MALFORMED;

	pkt->family = 6;
	__builtin_memcpy(pkt->saddr.v6, ip6h->saddr, sizeof(pkt->saddr.v6));
	next = ip6h->nexthdr;
	c->pos = ip6h + 1;

	/*
	 * The loop carries nothing but c->pos and next from one header to the
	 * following: every other value would make the verifier walk each mix
	 * of header types separately. As it is, the verifier walks 61k
	 * instructions for the whole program (Linux 6.18, 2026-11-22), twice
	 * that with eight header types mixed freely.
	 */
#pragma unroll
	for (i = 0; i < MAX_IPV6_EXT_HDRS; i++) {
		struct ipv6_opt_hdr *oh = c->pos;
		__u32 units, len;

		if (!ipv6_is_ext(next))
			break;
		/* The fragment header starts like the others, too. */
		if ((void *)(oh + 1) > c->end)
			return PARSE_MALFORMED;
		/*
		 * Every length is computed as 8-byte units the same way, so
		 * that the verifier finds the paths through different header
		 * types alike and prunes them instead of walking each mix.
		 */
		units = oh->hdrlen;
		if (next == IPPROTO_FRAGMENT) {
			struct ipv6_frag_hdr *fh = c->pos;

			if ((void *)(fh + 1) > c->end)
				return PARSE_MALFORMED;
			if (bpf_ntohs(fh->frag_off) & IPV6_OFFSET_MASK)
				return PARSE_FRAGMENT;
			/*
			 * First fragment: RFC 7112 makes it carry the whole
			 * header chain, so go on parsing; room, from
			 * payload_len, stops where the fragment stops.
			 */
			units = 0;
		} else if (next == IPPROTO_AH) {
			/*
			 * AH counts 4-byte units less 2, and RFC 4302 makes
			 * it a multiple of 8 bytes under IPv6.
			 */
			if (units & 1)
				return PARSE_MALFORMED;
			units >>= 1;
		}
		len = (units + 1) * 8;
		next = oh->nexthdr;
		if (c->pos + len > c->end)
			return PARSE_MALFORMED;
		c->pos += len;
	}
	if (ipv6_is_ext(next))
		return PARSE_MALFORMED;

	if (ip6h->payload_len != 0) {
		__u32 payload = bpf_ntohs(ip6h->payload_len);
		__u32 ext = c->pos - (void *)(ip6h + 1);

		if (ext > payload)
			return PARSE_MALFORMED;
		room = payload - ext;
	}
	return parse_l4(c, next, room, pkt);
}

/*
 * parse_packet fills pkt as far as the frame allows; see parse_result.
 * It is a function of its own, not inlined, so that the verifier's states
 * converge at its return instead of carrying every parse path through the
 * caller.
 */
static __attribute__((noinline)) int parse_packet(struct xdp_md *ctx,
						  struct packet *pkt)
{
	struct cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct eth_hdr *eth = c.pos;
	__be16 proto;
	int i;

	if ((void *)(eth + 1) > c.end)
		return PARSE_OTHER;
	proto = eth->proto;
	c.pos = eth + 1;

#pragma unroll
	for (i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlan_hdr *vh = c.pos;

		if (proto != bpf_htons(ETH_P_8021Q) &&
		    proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > c.end)
			return PARSE_OTHER;
		proto = vh->proto;
		c.pos = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(&c, pkt);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(&c, pkt);
	return PARSE_OTHER;
}

#endif /* SLUICE_PARSE_H */
