// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
// The benchmark's XDP programs.
//
// gen: run by BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES).
// Frame n belongs to flow f (f = n mod flows when cycling, f = n when every
// frame is a new flow); f picks the source port (fastest), then the source
// address, then the destination port, each from a configured range. The
// program writes the whole header afresh from gen_tmpl (the kernel recycles
// the frame's page, and a kernel forwarding path rewrites it in place),
// computes the IPv4 (and TCP) checksums, and redirects the frame out of the
// generator's veth, into the gateway. UDP carries checksum 0 (none). With a
// rate set, a frame ahead of its time is dropped here instead of sent (and
// its flow is not used up): pacing that needs no timer, bursts of at most
// PACE_BURST frames.
//
// sink: attached to the far end of the gateway's outside link. It counts
// IPv4 frames by kind and source (translated into 198.19.0.0/16 or not),
// answers UDP to the echo port (swaps the ends and sends it back: a reflector for the
// latency probe) and TCP SYNs (SYN-ACK), counts the handshakes'
// final ACKs, optionally counts distinct translated 5-tuples, and drops the
// rest; ARP and non-IPv4 go to the kernel.
//
// pod_ack: attached to the generator's veth, it answers each SYN-ACK that
// comes back through the gateway with the handshake's ACK.
//
// replay: run by BPF_PROG_RUN in live-frames mode like gen, for the tunnel
// benchmark (egret-wgload data --xdp). Frame n is a copy of entry n of
// replay_frames, built ahead by user space (each a WireGuard data message
// with its own counter, already encrypted, or a plain frame): entry n is
// written over the frame and the frame redirected out of the configured
// veth. With cycle set the entries repeat (plain frames); without, the run
// stops at the last entry, since a WireGuard counter may be used once.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct gen_config {
	__u32 ifindex;
	__u32 proto; /* IPPROTO_UDP or IPPROTO_TCP (SYNs) */
	__u32 sport_base, sport_count;
	__u32 dport_base, dport_count;
	__u32 saddr_count;    /* source addresses from the template's up */
	__u32 dport_by_saddr; /* 1: the destination port follows the source address */
	__u64 flows;          /* 0: every frame a new flow; else cycle over this many */
	__u64 interval_ps;    /* pacing: picoseconds between frames; 0: as fast as possible */
	__u64 limit;          /* frames to send in all; 0: no limit */
};

/* Frames the pacer may send back to back after a stall (between two
 * BPF_PROG_RUN calls, or while a probe preempts the generator): later
 * frames wait for their time instead of catching up in a burst. */
#define PACE_BURST 64

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_cfg SEC(".maps");

#define HDR_LEN 54 /* Ethernet + IPv4 + TCP; a UDP frame's extra bytes are payload */

struct hdr {
	__u8 b[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hdr);
} gen_tmpl SEC(".maps");

struct gen_state {
	__u64 seq;      /* frames sent */
	__u64 start_ns; /* first frame */
	__u64 paced;    /* frames dropped by the pacer */
	__u64 next_ps;  /* when the pacer lets the next frame go, from start_ns */
	__u64 f;        /* the next frame's flow within the cycle */
	__u32 sp, sa, dq; /* its source port, source address, destination port indexes */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} gen_state SEC(".maps");

enum {
	C_UDP,              /* IPv4 UDP frames (not echo) */
	C_UDP_TRANSLATED,   /* of those, sources in 198.19.0.0/16 */
	C_UDP_UNTRANSLATED, /* sources in 198.18.0.0/16: a leak */
	C_SYN,              /* translated SYNs answered */
	C_ACK,              /* translated final ACKs: handshakes done */
	C_ECHO,             /* echo requests reflected */
	C_TCP_UNTRANSLATED,
	C_DISTINCT,         /* first frame of a translated 5-tuple */
	C_DISTINCT_FULL,    /* the distinct-flow map was full */
	C_POD_ACK,          /* pod_ack: ACKs sent */
	C_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

/* 0: echo port (0 = none), 1: count distinct flows (0/1), 2: answer
 * untranslated SYNs too (0/1: the TCP floor, which does not translate). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u32);
} sink_cfg SEC(".maps");

struct flow_key {
	__u32 saddr, daddr;
	__u16 sport, dport;
	__u32 proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 22); /* egret-loadgen sizes it at load */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, __u8);
} sink_seen SEC(".maps");

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline __u64 sum16(const void *p, int words)
{
	const __u16 *w = p;
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < words; i++)
		s += w[i];
	return s;
}

static __always_inline void ip_csum(struct iphdr *ip)
{
	ip->check = 0;
	ip->check = fold(sum16(ip, 10));
}

/* TCP checksum of a 20-byte header without payload, in network order. */
static __always_inline void tcp_csum(struct iphdr *ip, struct tcphdr *tcp)
{
	tcp->check = 0;
	__u64 s = sum16(&ip->saddr, 4) + bpf_htons(IPPROTO_TCP) + bpf_htons(20);
	tcp->check = fold(s + sum16(tcp, 10));
}

SEC("xdp")
int gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + HDR_LEN > end)
		return XDP_ABORTED;
	__u32 k0 = 0;
	struct gen_config *c = bpf_map_lookup_elem(&gen_cfg, &k0);
	struct gen_state *st = bpf_map_lookup_elem(&gen_state, &k0);
	struct hdr *t = bpf_map_lookup_elem(&gen_tmpl, &k0);
	if (!c || !st || !t || c->sport_count == 0 || c->dport_count == 0 || c->saddr_count == 0)
		return XDP_ABORTED;
	__u64 n = st->seq;
	if (c->limit && n >= c->limit)
		return XDP_DROP;
	if (c->interval_ps) {
		__u64 now = bpf_ktime_get_ns();
		if (st->start_ns == 0)
			st->start_ns = now;
		__u64 t = (now - st->start_ns) * 1000;
		if (t < st->next_ps) {
			st->paced += 1;
			return XDP_DROP;
		}
		__u64 floor = c->interval_ps * PACE_BURST;
		__u64 from = t > floor && t - floor > st->next_ps ? t - floor : st->next_ps;
		st->next_ps = from + c->interval_ps;
	}
	st->seq = n + 1;
	/* Flow f = sp + sport_count * (sa + saddr_count * dq), kept as
	 * counters: no division per frame (the generator's core also runs the
	 * gateway's receive). */
	__u32 sp = st->sp, sa = st->sa;
	__u32 dp = c->dport_by_saddr ? sa % c->dport_count : st->dq;
	if (++st->sp == c->sport_count) {
		st->sp = 0;
		if (++st->sa == c->saddr_count) {
			st->sa = 0;
			if (++st->dq == c->dport_count)
				st->dq = 0;
		}
	}
	if (c->flows && ++st->f == c->flows) {
		st->f = 0;
		st->sp = st->sa = st->dq = 0;
	}

	__builtin_memcpy(data, t->b, HDR_LEN);
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	ip->saddr = bpf_htonl(bpf_ntohl(ip->saddr) + sa);
	ip_csum(ip);
	__u16 sport = bpf_htons((__u16)(c->sport_base + sp));
	__u16 dport = bpf_htons((__u16)(c->dport_base + dp));
	if (c->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip + 1);
		tcp->source = sport;
		tcp->dest = dport;
		tcp->seq = bpf_htonl((__u32)n * 2654435761u);
		tcp_csum(ip, tcp);
	} else {
		struct udphdr *udp = (void *)(ip + 1);
		udp->source = sport;
		udp->dest = dport;
	}
	return bpf_redirect(c->ifindex, 0);
}

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&sink_count, &i);
	if (v)
		*v += 1;
}

static __always_inline int translated(struct iphdr *ip)
{
	return (bpf_ntohl(ip->saddr) >> 16) == ((198 << 8) | 19);
}

/* Sends a turned-around frame back out of the interface it came in on.
 * Not XDP_TX: veth schedules the peer's NAPI after XDP_TX only when the
 * peer has an XDP program, and the kernel path's interfaces have GRO
 * instead; a redirect flushes to the peer either way. */
static __always_inline int send_back(struct xdp_md *ctx)
{
	return bpf_redirect(ctx->ingress_ifindex, 0);
}

/* Turns the frame around: Ethernet and IPv4 ends swapped, fresh TTL. */
static __always_inline void turn_around(struct ethhdr *eth, struct iphdr *ip)
{
	__u8 m[ETH_ALEN];
	__builtin_memcpy(m, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, m, ETH_ALEN);
	__u32 a = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = a;
	ip->ttl = 64;
	ip_csum(ip);
}

static __always_inline void distinct(struct iphdr *ip, __u16 sport, __u16 dport)
{
	__u32 k1 = 1;
	__u32 *on = bpf_map_lookup_elem(&sink_cfg, &k1);
	if (!on || !*on)
		return;
	struct flow_key k = { ip->saddr, ip->daddr, sport, dport, ip->protocol };
	__u8 one = 1;
	long rc = bpf_map_update_elem(&sink_seen, &k, &one, BPF_NOEXIST);
	if (rc == 0)
		count(C_DISTINCT);
	else if (rc != -17 /* EEXIST */)
		count(C_DISTINCT_FULL);
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return XDP_PASS;
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return XDP_PASS;
		__u32 k0 = 0;
		__u32 *echo = bpf_map_lookup_elem(&sink_cfg, &k0);
		if (echo && *echo && udp->dest == bpf_htons((__u16)*echo)) {
			count(C_ECHO);
			turn_around(eth, ip);
			__u16 p = udp->source;
			udp->source = udp->dest;
			udp->dest = p;
			/* The UDP checksum covers both ends symmetrically: unchanged. */
			return send_back(ctx);
		}
		count(C_UDP);
		if (translated(ip)) {
			count(C_UDP_TRANSLATED);
			distinct(ip, udp->source, udp->dest);
		} else if ((bpf_ntohl(ip->saddr) >> 16) == ((198 << 8) | 18)) {
			count(C_UDP_UNTRANSLATED);
		}
		return XDP_DROP;
	}
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip + 1);
		if ((void *)(tcp + 1) > end)
			return XDP_PASS;
		if (!translated(ip)) {
			count(C_TCP_UNTRANSLATED);
			__u32 k2 = 2;
			__u32 *floor = bpf_map_lookup_elem(&sink_cfg, &k2);
			if (!floor || !*floor)
				return XDP_DROP;
		}
		if (tcp->syn && !tcp->ack) {
			count(C_SYN);
			distinct(ip, tcp->source, tcp->dest);
			turn_around(eth, ip);
			__u16 p = tcp->source;
			tcp->source = tcp->dest;
			tcp->dest = p;
			__u32 seq = bpf_ntohl(tcp->seq);
			tcp->ack_seq = bpf_htonl(seq + 1);
			tcp->seq = bpf_htonl(seq ^ 0x5a5a5a5a);
			tcp->ack = 1;
			tcp->doff = 5;
			tcp_csum(ip, tcp);
			return send_back(ctx);
		}
		if (tcp->ack && !tcp->syn && !tcp->rst && !tcp->fin)
			count(C_ACK);
		return XDP_DROP;
	}
	return XDP_PASS;
}

SEC("xdp")
int pod_ack(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	struct tcphdr *tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > end || !(tcp->syn && tcp->ack))
		return XDP_PASS;
	turn_around(eth, ip);
	__u16 p = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = p;
	__u32 seq = bpf_ntohl(tcp->seq), ack = bpf_ntohl(tcp->ack_seq);
	tcp->seq = bpf_htonl(ack);
	tcp->ack_seq = bpf_htonl(seq + 1);
	tcp->syn = 0;
	tcp->doff = 5;
	tcp_csum(ip, tcp);
	count(C_POD_ACK);
	return send_back(ctx);
}

/* replay: frames built ahead, copied out one per run (see the top). */
#define REPLAY_FRAME 128
#ifndef BPF_F_MMAPABLE
#define BPF_F_MMAPABLE (1U << 10)
#endif

struct replay_config {
	__u32 ifindex;
	__u32 len;    /* every frame's length, at most REPLAY_FRAME */
	__u64 frames; /* entries filled in replay_frames */
	__u64 limit;  /* frames to send in all (cycle) or frames (no cycle) */
	__u32 cycle;  /* 1: entries repeat; 0: stop after the last */
	__u32 _pad;
};

struct replay_state {
	__u64 seq;  /* frames sent */
	__u64 idx;  /* next entry */
	__u64 done; /* runs after the last frame (dropped) */
	__u64 first_ns, last_ns; /* when the first and the latest frame went */
};

struct replay_frame {
	__u8 b[REPLAY_FRAME];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct replay_config);
} replay_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct replay_state);
} replay_state SEC(".maps");

/* Sized at load (egret-wgload), filled through mmap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct replay_frame);
} replay_frames SEC(".maps");

SEC("xdp")
int replay(struct xdp_md *ctx)
{
	__u32 k0 = 0;
	struct replay_config *c = bpf_map_lookup_elem(&replay_cfg, &k0);
	struct replay_state *st = bpf_map_lookup_elem(&replay_state, &k0);
	if (!c || !st)
		return XDP_ABORTED;
	if (st->seq >= c->limit || (!c->cycle && st->idx >= c->frames)) {
		st->done += 1;
		return XDP_DROP;
	}
	__u32 k = (__u32)st->idx;
	struct replay_frame *f = bpf_map_lookup_elem(&replay_frames, &k);
	if (!f)
		return XDP_ABORTED;
	__u32 len = c->len;
	if (len < 14 || len > REPLAY_FRAME)
		return XDP_ABORTED;
	if (bpf_xdp_store_bytes(ctx, 0, f->b, len))
		return XDP_ABORTED;
	__u64 now = bpf_ktime_get_ns();
	if (st->seq == 0)
		st->first_ns = now;
	st->last_ns = now;
	st->seq += 1;
	if (++st->idx == c->frames && c->cycle)
		st->idx = 0;
	return bpf_redirect(c->ifindex, 0);
}

char _license[] SEC("license") = "Dual BSD/GPL";
