// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
// Egret's XDP steering program: hands Egret's traffic to the AF_XDP socket
// of the receiving queue and leaves everything else to the kernel.
//
// Ours: IPv4 from a bound pod that is not addressed to the node itself,
// IPv4 addressed to an egress address, and IPv4 to a bound pod (returning
// from an excluded destination). ARP, the node's own traffic and
// anything else pass. NAT traffic never bypasses translation: when the
// queue has no socket (the gateway is starting or stopping) it is dropped
// and counted, not passed untranslated.
//
// Gateway nodes forward (net.ipv4.ip_forward=1, as Kubernetes nodes do), so
// "pass" must not mean "the kernel routes it out untranslated": IPv4 that
// is not ours and that the kernel would forward out of one of Egret's own
// interfaces (an unbound pod's SYN, say) is dropped and counted. What the
// kernel would deliver locally or forward elsewhere (to the node's own pods'
// veths) still passes.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
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

// Egret's interfaces (ifindex): nothing it refuses may leave by them.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} guarded SEC(".maps");

// 0: redirected, 1: dropped for want of a socket, 2: passed to the kernel,
// 3: dropped because the kernel would forward it out of a guarded interface.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);
	if (v)
		*v += 1;
}

// Whether the kernel would route this packet out of one of Egret's own
// interfaces (it asks the same FIB the forwarding path uses).
static __always_inline int forwarded_out_guarded(struct xdp_md *ctx, struct iphdr *ip)
{
	// Multicast is never unicast-forwarded; the node's own protocols
	// (IGMP, VRRP, routing daemons) may want it.
	if ((bpf_ntohl(ip->daddr) >> 28) == 0xe)
		return 0;
	struct bpf_fib_lookup fib = {};
	fib.family = 2; // AF_INET
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return 0; // local, forwarding off, unreachable: the kernel won't forward it
	__u32 out = fib.ifindex;
	return bpf_map_lookup_elem(&guarded, &out) != 0;
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
	// address: ours too (the NAT core forwards them or drops them).
	int ours = bpf_map_lookup_elem(&egress, &dst) != 0 ||
		   (bpf_map_lookup_elem(&pods, &src) != 0 && bpf_map_lookup_elem(&local, &dst) == 0) ||
		   (bpf_map_lookup_elem(&pods, &dst) != 0 && bpf_map_lookup_elem(&local, &src) == 0);
	if (!ours) {
		if (!bpf_map_lookup_elem(&local, &dst) && forwarded_out_guarded(ctx, ip)) {
			count(3);
			return XDP_DROP;
		}
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
