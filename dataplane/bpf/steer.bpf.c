// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
// Egret's XDP steering program: hands Egret's traffic to the AF_XDP socket
// of the receiving queue and leaves everything else to the kernel.
//
// Ours: IPv4 from a bound pod or a fallback source CIDR that is not
// addressed to the node itself, IPv4 addressed to an egress address, IPv4
// to a bound pod or source CIDR (returning from an excluded destination),
// and UDP to a config's WireGuard tunnel. ARP, the node's own traffic and
// anything else pass. NAT traffic never bypasses translation: when the
// queue has no socket (the gateway is starting or stopping) it is dropped
// and counted, not passed untranslated.
//
// Gateway nodes forward (net.ipv4.ip_forward=1): what passes here and the
// kernel would route out of Egret's interfaces untranslated is dropped by
// the gateway's netfilter forward guard (gateway/forward_guard.rs), which,
// unlike this program, sees kube-proxy's DNAT first.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Keys are IPv4 addresses in network byte order.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, __u8);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} egress SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} local SEC(".maps");

// Fallback source CIDRs (a subnet routed here as a whole): longest match.
struct source_key {
	__u32 prefixlen;
	__u32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct source_key);
	__type(value, __u8);
} sources SEC(".maps");

static __always_inline int in_sources(__u32 addr)
{
	struct source_key k = { .prefixlen = 32, .addr = addr };
	return bpf_map_lookup_elem(&sources, &k) != 0;
}

// WireGuard tunnels (tunnelled inside): UDP to a config's tunnel address
// and port. Address and port in network byte order.
struct tunnel_key {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tunnel_key);
	__type(value, __u8);
} tunnels SEC(".maps");

// 0: redirected, 1: dropped for want of a socket, 2: passed to the kernel.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);
	if (v)
		*v += 1;
}

SEC("xdp")
int egret_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP)) {
		count(2);
		return XDP_PASS;
	}
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end) {
		count(2);
		return XDP_PASS;
	}
	__u32 src = ip->saddr, dst = ip->daddr;
	// Replies from excluded destinations come back to the pod's own
	// address: ours too (the NAT core forwards them or drops them). The
	// node's own addresses are never a pod's: a fallback source CIDR that
	// holds one (a node subnet) must not divert the node's own traffic,
	// from either direction.
	int to_node = bpf_map_lookup_elem(&local, &dst) != 0;
	int ours = bpf_map_lookup_elem(&egress, &dst) != 0 ||
		   ((bpf_map_lookup_elem(&pods, &src) != 0 || in_sources(src)) && !to_node) ||
		   ((bpf_map_lookup_elem(&pods, &dst) != 0 || in_sources(dst)) && !to_node &&
		    bpf_map_lookup_elem(&local, &src) == 0);
	if (!ours && ip->protocol == IPPROTO_UDP && ip->ihl == 5) {
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) <= end) {
			struct tunnel_key k = { .addr = dst, .port = udp->dest, .pad = 0 };
			ours = bpf_map_lookup_elem(&tunnels, &k) != 0;
		}
	}
	if (!ours) {
		count(2);
		return XDP_PASS;
	}
	__u32 q = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xsks, &q)) {
		count(1);
		return XDP_DROP;
	}
	count(0);
	return bpf_redirect_map(&xsks, q, XDP_DROP);
}

char _license[] SEC("license") = "Dual BSD/GPL";
