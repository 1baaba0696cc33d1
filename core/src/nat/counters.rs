//! Counters for everything the NAT core does, above all for every reason it
//! drops a packet. Plain integers: each worker owns its own engine, and the
//! exporter sums them.

crate::counters::reasons! {
    /// Why a packet was dropped. Each reason has its own counter.
    pub enum DropReason {
        /// Shorter than its headers say.
        Truncated = "truncated",
        /// Version, header length or total length that make no sense.
        Malformed = "malformed",
        /// IPv4 header checksum does not verify.
        BadIpChecksum = "bad_ip_checksum",
        /// Neither from a bound pod nor to an egress address: no spoofed source
        /// leaves through the gateway.
        UnboundSource = "unbound_source",
        /// Destination is multicast, broadcast, loopback, 0/8 or class E.
        MartianDestination = "martian_destination",
        /// Outside → inside without a live session (endpoint filtering).
        Unsolicited = "unsolicited",
        /// A protocol other than TCP, UDP and ICMP.
        UnsupportedProtocol = "unsupported_protocol",
        /// An ICMP type that is neither echo nor an error we translate.
        IcmpUnsupportedType = "icmp_unsupported_type",
        /// ICMP checksum does not verify (checked on ICMP errors, which we rewrite whole).
        IcmpBadChecksum = "icmp_bad_checksum",
        /// An ICMP error whose quoted packet matches no session.
        IcmpErrorNoSession = "icmp_error_no_session",
        /// An ICMP error that quotes another ICMP error (RFC 1812 4.3.2.7).
        IcmpErrorNested = "icmp_error_nested",
        /// An ICMP error whose quoted packet is too short to identify the flow.
        IcmpErrorTruncated = "icmp_error_truncated",
        /// TTL ran out here; answered with time exceeded (unless rate-limited).
        TtlExpired = "ttl_expired",
        /// A new TCP flow with an impossible flag combination (SYN+FIN, SYN+RST, none).
        TcpBadFlags = "tcp_bad_flags",
        /// The pod holds its whole port quota (RFC 6888 REQ-4).
        QuotaExceeded = "quota_exceeded",
        /// No free port on any address of the config's pool.
        PoolExhausted = "pool_exhausted",
        /// The session table is at capacity; live sessions are never evicted.
        SessionTableFull = "session_table_full",
        /// A first fragment too short to hold the transport header, or a TCP
        /// fragment at offset 8 that could rewrite the first one's flags (RFC 1858).
        FragmentTooShort = "fragment_too_short",
        /// Fragment table or hold buffers are full (for the internet: its half of
        /// the hold buffers, or one source its eighth of that).
        FragmentTableFull = "fragment_table_full",
        /// Fragments held for a datagram whose first fragment never came.
        FragmentTimeout = "fragment_timeout",
        /// A fragment larger than a hold buffer arrived out of order.
        FragmentTooLarge = "fragment_too_large",
        /// Not enough room in the buffer to write an ICMP reply.
        NoRoomForReply = "no_room_for_reply",
        /// A new flow the config's egress policy denies.
        PolicyDenied = "policy_denied",
        /// A new flow of a pod that Kubernetes NetworkPolicies select and none
        /// of them allows (counted per policy too).
        NetworkPolicyDenied = "network_policy_denied",
        /// The pod holds its whole session limit (RFC 6888 REQ-5): its flows,
        /// and outside peers on its endpoint-independent mappings.
        SessionLimit = "session_limit",
        /// Arrived on a side it cannot come from: a pod's source address on the
        /// outside, or traffic for egress addresses or from excluded hosts on
        /// the inside (two-armed mode only; one interface cannot tell).
        WrongInterface = "wrong_interface",
        /// Larger than the way out's MTU with DF set (answered with
        /// fragmentation needed), or an MTU too small to fragment for.
        PacketTooBig = "packet_too_big",
        /// A plain packet from a pod that reaches the gateway only through its
        /// WireGuard tunnel (a spoofed source, or the pod's tunnel bypassed).
        NotTunnelled = "not_tunnelled",
        /// A flow an FQDN rule allowed on a TLS port whose ClientHello named
        /// a server no rule allows it (reset both ways; per rule too).
        SniMismatch = "sni_mismatch",
        /// A flow allowed on condition on a TLS port whose first bytes were
        /// no ClientHello, or one without a server name (or with an
        /// ambiguous one).
        SniMissing = "sni_missing",
        /// A flow allowed on condition on a TLS port that showed no server
        /// name within the time (10 s) or byte bound.
        SniTimeout = "sni_timeout",
        /// A flow an FQDN rule allowed on an HTTP port whose request named a
        /// Host no rule allows it.
        HostMismatch = "host_mismatch",
        /// A flow allowed on condition on an HTTP port whose first bytes were
        /// no HTTP/1.x request, or one without Host (or naming two hosts).
        HostMissing = "host_missing",
        /// A flow allowed on condition on an HTTP port whose request head
        /// did not end within the time (10 s) or byte bound (8 KiB).
        HostTimeout = "host_timeout",
        /// UDP on a TLS port (QUIC) under a rule that reads names: refused so
        /// that the client falls back to TCP, where the name can be read.
        QuicRefused = "quic_refused",
        /// A segment before a flow's name verdict that is not the next in
        /// order: a gap (sent again by the pod), or old bytes that differ
        /// from those judged.
        NameCheckUnordered = "name_check_unordered",
        /// A new flow that needed its name read when this worker's flows
        /// awaiting a name (or the pod's share of them) were at the bound.
        NameChecksFull = "name_checks_full",
        /// A flow awaiting its name whose reader was lost (a restart
        /// restored the session): reset, since it cannot be judged.
        NameCheckLost = "name_check_lost",
    }
}

crate::counters::counter_set! {
    /// What one worker's NAT core did.
    pub struct Counters {
        in2out_packets,
        in2out_bytes,
        out2in_packets,
        out2in_bytes,
        /// Pod → egress address of this gateway → pod (RFC 4787 REQ-9).
        hairpin_packets,
        /// To excluded destinations, forwarded untranslated.
        bypass_packets,
        handoffs,
        sessions_created,
        /// Flows whose name on the wire (TLS SNI, HTTP Host) a rule allowed.
        names_allowed,
        /// Resets sent to pods whose flow a name check refused.
        name_resets_to_pods,
        sessions_closed,
        mappings_created,
        icmp_errors_sent,
        icmp_rate_limited,
        fragments_translated,
        fragments_held,
        /// First fragments whose datagram could not be noted (the fragment
        /// table full, or for the internet its half or one source its eighth
        /// of that): forwarded, but their later fragments are dropped.
        fragment_notes_refused,
        /// Policy deny events not kept for logging because the queue was full.
        deny_events_lost,
        /// NAT log records dropped because the logger fell behind.
        nat_events_lost,
        /// DNS answers to pods with FQDN rules from hosts not in the policy's
        /// `dnsResolvers`: forwarded, but not learned from.
        dns_untrusted,
        /// Port reuse: exhaustive scans of a pool for a free tuple (each after
        /// 16 random probes per address missed); a rising rate means the pool
        /// is nearly full toward some destination.
        pool_scans,
        /// Pieces sent of packets the gateway fragmented for a smaller MTU.
        fragments_made,
        /// Server segments of TCP flows a rejecting policy cut, sent on to
        /// the pod as resets (each also counted as `policy_denied`).
        cut_flow_resets,
        /// TCP flows a rejecting policy cut that the cut-flow table (65,536
        /// per worker) had no room for: left to their applications' timeouts.
        cut_flows_untracked,
        /// Port reuse: scans and refusals toward destinations not followed
        /// as busy because the table (256 per worker) or the config's
        /// quarter of it was full.
        busy_destinations_unfollowed,
    }
    drops: DropReason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let mut names = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert!(names.insert(r.name()));
        }
    }
}
