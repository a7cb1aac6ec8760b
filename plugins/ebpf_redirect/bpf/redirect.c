// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * zeropod tc redirector: one pair of clsact direct-action programs per pod network namespace,
 * attached to ingress and egress of `lo` and `eth0`.
 *
 * While an app is checkpointed, userspace puts `redirects[app port] = activator port`:
 *   - ingress rewrites the TCP destination port app -> activator for new connections (SYN) and
 *     records the connection in the LRU map `conns`, so that the connection stays on the
 *     activator until it closes, even after the redirect entry is deleted (the app restored);
 *   - egress rewrites the source port activator -> app using `reverse[activator port]`, so
 *     clients only ever see the app port.
 * Both rewrites fix the TCP checksum with bpf_l4_csum_replace. Ports are not part of the
 * pseudo-header, so BPF_F_PSEUDO_HDR must NOT be set; the helper then handles both
 * CHECKSUM_PARTIAL skbs (nothing to do) and full checksums. veth offloads hide a missing fix,
 * which is why the tests also run with `ethtool -K eth0 tx off`.
 *
 * Activity: `activity[app port] = bpf_ktime_get_ns()` (CLOCK_MONOTONIC, the clock of Python's
 * time.monotonic) on every packet to or from a port that userspace registered first (entries
 * are only ever updated with BPF_EXIST, so the map stays bounded by what userspace put there).
 * Packets whose peer is loopback (when settings[SETTING_FLAGS] has IGNORE_LOCALHOST) or in
 * `ignore_src` (node / kubelet probe addresses) do not count as activity.
 *
 * All ports in map keys and values are host byte order u16, so userspace needs no byte
 * swapping. Addresses are 16 bytes; IPv4 is stored v4-mapped (::ffff:a.b.c.d).
 *
 * Parser assumptions (documented limitations): a 14-byte Ethernet header (true for lo and
 * veth, not for L3 devices such as wireguard or ipip), IPv4 with any header length (non-first
 * fragments skipped), IPv6 with TCP as the first next header (no extension headers).
 *
 * Keep the map layout in sync with src/zeropod_ebpf_redirect/maps.py.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <stddef.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define IP_FRAG_OFFSET_MASK 0x1fff
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* settings array indexes */
#define SETTING_FLAGS 0
#define SETTING_NETNS_COOKIE 1 /* written by the loader: which netns these pins belong to */
#define SETTINGS_MAX 4
#define FLAG_IGNORE_LOCALHOST 1ULL

/* stats indexes (per-CPU counters, for debugging and tests) */
#define STAT_INGRESS_SEEN 0
#define STAT_INGRESS_REDIRECTED 1
#define STAT_EGRESS_SEEN 2
#define STAT_EGRESS_REWRITTEN 3
#define STATS_MAX 4

struct addr16 {
	__u32 w[4];
};

struct conn_key {
	struct addr16 client; /* client address, v4-mapped for IPv4 */
	__u16 client_port;
	__u16 app_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);   /* app port */
	__type(value, __u16); /* activator port */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} redirects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);   /* activator port */
	__type(value, __u16); /* app port */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} reverse SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u16);   /* app port, registered by userspace with value 0 */
	__type(value, __u64); /* bpf_ktime_get_ns() of the last packet */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} activity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096); /* preallocated per pod: keep it modest (~0.4 MB) */
	__type(key, struct conn_key);
	__type(value, __u16); /* activator port the connection started on */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256); /* IGNORE_CAPACITY in maps.py */
	__type(key, struct addr16); /* peer address whose traffic is not activity */
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ignore_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SETTINGS_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATS_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

struct pkt {
	struct addr16 saddr;
	struct addr16 daddr;
	__u32 l4_off;
	__u16 sport; /* host order */
	__u16 dport; /* host order */
	__u8 flags;  /* TCP flags byte */
};

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void v4_mapped(struct addr16 *a, __u32 addr_be)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = addr_be;
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 l4_off;
	__u8 tcp[14];

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u8 vihl;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return -1;
		vihl = *(__u8 *)&ip;
		if ((vihl >> 4) != 4 || (vihl & 0x0f) < 5)
			return -1;
		if (ip.protocol != IPPROTO_TCP)
			return -1;
		if (ip.frag_off & bpf_htons(IP_FRAG_OFFSET_MASK))
			return -1; /* non-first fragment: no TCP header here */
		l4_off = ETH_HLEN + (vihl & 0x0f) * 4;
		v4_mapped(&p->saddr, ip.saddr);
		v4_mapped(&p->daddr, ip.daddr);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return -1;
		if ((*(__u8 *)&ip6 >> 4) != 6)
			return -1;
		if (ip6.nexthdr != IPPROTO_TCP)
			return -1; /* extension headers are not followed */
		l4_off = ETH_HLEN + sizeof(struct ipv6hdr);
		__builtin_memcpy(&p->saddr, &ip6.saddr, sizeof(p->saddr));
		__builtin_memcpy(&p->daddr, &ip6.daddr, sizeof(p->daddr));
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, l4_off, tcp, sizeof(tcp)) < 0)
		return -1;
	p->sport = ((__u16)tcp[0] << 8) | tcp[1];
	p->dport = ((__u16)tcp[2] << 8) | tcp[3];
	p->flags = tcp[13];
	p->l4_off = l4_off;
	return 0;
}

static __always_inline int is_loopback(const struct addr16 *a)
{
	if (a->w[0] | a->w[1])
		return 0;
	if (a->w[2] == bpf_htonl(0x0000ffff)) /* ::ffff:127.0.0.0/8 */
		return (bpf_ntohl(a->w[3]) >> 24) == 127;
	return a->w[2] == 0 && a->w[3] == bpf_htonl(1); /* ::1 */
}

static __always_inline int ignored_peer(const struct addr16 *peer)
{
	__u32 idx = SETTING_FLAGS;
	__u64 *flags = bpf_map_lookup_elem(&settings, &idx);

	if (flags && (*flags & FLAG_IGNORE_LOCALHOST) && is_loopback(peer))
		return 1;
	return bpf_map_lookup_elem(&ignore_src, peer) != NULL;
}

/* Record activity on `port` if userspace registered it and the peer is not ignored. */
static __always_inline void touch(__u16 port, const struct addr16 *peer)
{
	__u64 now;

	if (!bpf_map_lookup_elem(&activity, &port))
		return; /* not registered: skip the ignore checks and the bucket lock */
	if (ignored_peer(peer))
		return;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&activity, &port, &now, BPF_EXIST);
}

static __always_inline int set_port(struct __sk_buff *skb, __u32 l4_off, __u32 field,
				    __u16 old_h, __u16 new_h)
{
	__be16 old_n = bpf_htons(old_h);
	__be16 new_n = bpf_htons(new_h);

	if (bpf_l4_csum_replace(skb, l4_off + offsetof(struct tcphdr, check), old_n, new_n,
				sizeof(new_n)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, l4_off + field, &new_n, sizeof(new_n), 0);
}

SEC("tc")
int zeropod_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct conn_key key = {};
	__u16 target = 0;
	__u16 *hit;

	if (parse(skb, &p) < 0)
		return TC_ACT_UNSPEC;
	count(STAT_INGRESS_SEEN);
	touch(p.dport, &p.saddr);

	key.client = p.saddr;
	key.client_port = p.sport;
	key.app_port = p.dport;
	if ((p.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
		/* A new connection goes where the redirect says now, and stays there. */
		hit = bpf_map_lookup_elem(&redirects, &p.dport);
		if (hit) {
			target = *hit;
			bpf_map_update_elem(&conns, &key, &target, BPF_ANY);
		} else if (bpf_map_lookup_elem(&conns, &key)) {
			bpf_map_delete_elem(&conns, &key); /* stale entry of a reused 4-tuple */
		}
	} else {
		/* Later packets follow their connection, whatever the redirect says now. */
		hit = bpf_map_lookup_elem(&conns, &key);
		if (hit) {
			target = *hit;
			if (p.flags & TCP_FLAG_RST)
				bpf_map_delete_elem(&conns, &key);
		}
	}
	if (!target)
		return TC_ACT_UNSPEC;
	if (set_port(skb, p.l4_off, offsetof(struct tcphdr, dest), p.dport, target) < 0)
		return TC_ACT_SHOT;
	count(STAT_INGRESS_REDIRECTED);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int zeropod_egress(struct __sk_buff *skb)
{
	struct pkt p = {};
	__u16 *app;
	__u16 app_port;

	if (parse(skb, &p) < 0)
		return TC_ACT_UNSPEC;
	count(STAT_EGRESS_SEEN);
	app = bpf_map_lookup_elem(&reverse, &p.sport);
	if (!app) {
		touch(p.sport, &p.daddr);
		return TC_ACT_UNSPEC;
	}
	app_port = *app;
	touch(app_port, &p.daddr);
	if (set_port(skb, p.l4_off, offsetof(struct tcphdr, source), p.sport, app_port) < 0)
		return TC_ACT_SHOT;
	count(STAT_EGRESS_REWRITTEN);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
