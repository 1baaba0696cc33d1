// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
// The benchmark's two XDP programs.
//
// gen: run by BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES),
// it stamps the next UDP source port of N flows into a template frame and
// redirects it out of the generator's veth, into the gateway. The kernel
// recycles the frame's page, and a kernel forwarding path rewrites that page
// in place (TTL, addresses, MACs), so every run writes the whole header
// afresh from gen_tmpl. UDP checksum is 0 (none): ports need no fix-up.
//
// sink: attached to the far end of the gateway's outside link, it counts
// IPv4 UDP frames (all, and those whose source was translated into
// 198.19.0.0/16) and drops them; ARP and the rest go to the kernel.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// 0: flows, 1: first source port, 2: ifindex to send out of.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u32);
} gen_cfg SEC(".maps");

#define HDR_LEN 42 /* Ethernet + IPv4 + UDP */

struct hdr {
	__u8 b[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hdr);
} gen_tmpl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_seq SEC(".maps");

// 0: IPv4 UDP frames seen, 1: of those, sources in 198.19.0.0/16
// (translated), 2: sources in 198.18.0.0/16 (untranslated: a leak).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_ABORTED;
	__u32 k0 = 0, k1 = 1, k2 = 2;
	__u32 *flows = bpf_map_lookup_elem(&gen_cfg, &k0);
	__u32 *base = bpf_map_lookup_elem(&gen_cfg, &k1);
	__u32 *ifindex = bpf_map_lookup_elem(&gen_cfg, &k2);
	__u64 *seq = bpf_map_lookup_elem(&gen_seq, &k0);
	struct hdr *t = bpf_map_lookup_elem(&gen_tmpl, &k0);
	if (!flows || !base || !ifindex || !seq || !t || *flows == 0)
		return XDP_ABORTED;
	__builtin_memcpy(data, t->b, HDR_LEN);
	__u32 n = (__u32)*seq;
	*seq += 1;
	udp->source = bpf_htons((__u16)(*base + n % *flows));
	return bpf_redirect(*ifindex, 0);
}

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&sink_count, &i);
	if (v)
		*v += 1;
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	count(0);
	__u32 src = bpf_ntohl(ip->saddr);
	if ((src >> 16) == ((198 << 8) | 19))
		count(1);
	else if ((src >> 16) == ((198 << 8) | 18))
		count(2);
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
