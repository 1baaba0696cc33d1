//! Counters for everything the NAT core does, above all for every reason it
//! drops a packet. Plain integers: each worker owns its own engine, and the
//! exporter sums them.

/// Why a packet was dropped. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than its headers say.
    Truncated,
    /// Version, header length or total length that make no sense.
    Malformed,
    /// IPv4 header checksum does not verify.
    BadIpChecksum,
    /// Neither from a bound pod nor to an egress address: no spoofed source
    /// leaves through the gateway.
    UnboundSource,
    /// Destination is multicast, broadcast, loopback, 0/8 or class E.
    MartianDestination,
    /// Outside → inside without a live session (endpoint filtering).
    Unsolicited,
    /// A protocol other than TCP, UDP and ICMP.
    UnsupportedProtocol,
    /// An ICMP type that is neither echo nor an error we translate.
    IcmpUnsupportedType,
    /// ICMP checksum does not verify (checked on ICMP errors, which we rewrite whole).
    IcmpBadChecksum,
    /// An ICMP error whose quoted packet matches no session.
    IcmpErrorNoSession,
    /// An ICMP error that quotes another ICMP error (RFC 1812 4.3.2.7).
    IcmpErrorNested,
    /// An ICMP error whose quoted packet is too short to identify the flow.
    IcmpErrorTruncated,
    /// TTL ran out here; answered with time exceeded (unless rate-limited).
    TtlExpired,
    /// A new TCP flow with an impossible flag combination (SYN+FIN, SYN+RST, none).
    TcpBadFlags,
    /// The pod holds its whole port quota (RFC 6888 REQ-4).
    QuotaExceeded,
    /// No free port on any address of the config's pool.
    PoolExhausted,
    /// The session table is at capacity; live sessions are never evicted.
    SessionTableFull,
    /// A first fragment too short to hold the transport header, or a TCP
    /// fragment at offset 8 that could rewrite the first one's flags (RFC 1858).
    FragmentTooShort,
    /// Fragment table or hold buffers are full (for the internet: its half of
    /// the hold buffers, or one source its eighth of that).
    FragmentTableFull,
    /// Fragments held for a datagram whose first fragment never came.
    FragmentTimeout,
    /// A fragment larger than a hold buffer arrived out of order.
    FragmentTooLarge,
    /// Not enough room in the buffer to write an ICMP reply.
    NoRoomForReply,
    /// A new flow the config's egress policy denies.
    PolicyDenied,
    /// The pod holds its whole session limit (RFC 6888 REQ-5): its flows,
    /// and outside peers on its endpoint-independent mappings.
    SessionLimit,
    /// Arrived on a side it cannot come from: a pod's source address on the
    /// outside, or traffic for egress addresses or from excluded hosts on
    /// the inside (two-armed mode only; one interface cannot tell).
    WrongInterface,
    /// Larger than the way out's MTU with DF set (answered with
    /// fragmentation needed), or an MTU too small to fragment for.
    PacketTooBig,
    /// A plain packet from a pod that reaches the gateway only through its
    /// WireGuard tunnel (a spoofed source, or the pod's tunnel bypassed).
    NotTunnelled,
}

impl DropReason {
    pub const ALL: [DropReason; 27] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::BadIpChecksum,
        DropReason::UnboundSource,
        DropReason::MartianDestination,
        DropReason::Unsolicited,
        DropReason::UnsupportedProtocol,
        DropReason::IcmpUnsupportedType,
        DropReason::IcmpBadChecksum,
        DropReason::IcmpErrorNoSession,
        DropReason::IcmpErrorNested,
        DropReason::IcmpErrorTruncated,
        DropReason::TtlExpired,
        DropReason::TcpBadFlags,
        DropReason::QuotaExceeded,
        DropReason::PoolExhausted,
        DropReason::SessionTableFull,
        DropReason::FragmentTooShort,
        DropReason::FragmentTableFull,
        DropReason::FragmentTimeout,
        DropReason::FragmentTooLarge,
        DropReason::NoRoomForReply,
        DropReason::PolicyDenied,
        DropReason::SessionLimit,
        DropReason::WrongInterface,
        DropReason::PacketTooBig,
        DropReason::NotTunnelled,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::UnboundSource => "unbound_source",
            DropReason::MartianDestination => "martian_destination",
            DropReason::Unsolicited => "unsolicited",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::IcmpUnsupportedType => "icmp_unsupported_type",
            DropReason::IcmpBadChecksum => "icmp_bad_checksum",
            DropReason::IcmpErrorNoSession => "icmp_error_no_session",
            DropReason::IcmpErrorNested => "icmp_error_nested",
            DropReason::IcmpErrorTruncated => "icmp_error_truncated",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::TcpBadFlags => "tcp_bad_flags",
            DropReason::QuotaExceeded => "quota_exceeded",
            DropReason::PoolExhausted => "pool_exhausted",
            DropReason::SessionTableFull => "session_table_full",
            DropReason::FragmentTooShort => "fragment_too_short",
            DropReason::FragmentTableFull => "fragment_table_full",
            DropReason::FragmentTimeout => "fragment_timeout",
            DropReason::FragmentTooLarge => "fragment_too_large",
            DropReason::NoRoomForReply => "no_room_for_reply",
            DropReason::PolicyDenied => "policy_denied",
            DropReason::SessionLimit => "session_limit",
            DropReason::WrongInterface => "wrong_interface",
            DropReason::PacketTooBig => "packet_too_big",
            DropReason::NotTunnelled => "not_tunnelled",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub in2out_packets: u64,
    pub in2out_bytes: u64,
    pub out2in_packets: u64,
    pub out2in_bytes: u64,
    /// Pod → egress address of this gateway → pod (RFC 4787 REQ-9).
    pub hairpin_packets: u64,
    /// To excluded destinations, forwarded untranslated.
    pub bypass_packets: u64,
    pub handoffs: u64,
    pub sessions_created: u64,
    pub sessions_closed: u64,
    pub mappings_created: u64,
    pub icmp_errors_sent: u64,
    pub icmp_rate_limited: u64,
    pub fragments_translated: u64,
    pub fragments_held: u64,
    /// Policy deny events not kept for logging because the queue was full.
    pub deny_events_lost: u64,
    /// NAT log records dropped because the logger fell behind.
    pub nat_events_lost: u64,
    /// DNS answers to pods with FQDN rules from hosts not in the policy's
    /// `dnsResolvers`: forwarded, but not learned from.
    pub dns_untrusted: u64,
    /// Port reuse: exhaustive scans of a pool for a free tuple (each after
    /// 16 random probes per address missed); a rising rate means the pool
    /// is nearly full toward some destination.
    pub pool_scans: u64,
    /// Pieces sent of packets the gateway fragmented for a smaller MTU.
    pub fragments_made: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// Adds another worker's counters into these.
    pub fn add(&mut self, o: &Counters) {
        self.in2out_packets += o.in2out_packets;
        self.in2out_bytes += o.in2out_bytes;
        self.out2in_packets += o.out2in_packets;
        self.out2in_bytes += o.out2in_bytes;
        self.hairpin_packets += o.hairpin_packets;
        self.bypass_packets += o.bypass_packets;
        self.handoffs += o.handoffs;
        self.sessions_created += o.sessions_created;
        self.sessions_closed += o.sessions_closed;
        self.mappings_created += o.mappings_created;
        self.icmp_errors_sent += o.icmp_errors_sent;
        self.icmp_rate_limited += o.icmp_rate_limited;
        self.fragments_translated += o.fragments_translated;
        self.fragments_held += o.fragments_held;
        self.deny_events_lost += o.deny_events_lost;
        self.nat_events_lost += o.nat_events_lost;
        self.dns_untrusted += o.dns_untrusted;
        self.pool_scans += o.pool_scans;
        self.fragments_made += o.fragments_made;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }
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
