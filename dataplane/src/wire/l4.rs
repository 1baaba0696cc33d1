//! Transport-header fields the NAT reads and rewrites: TCP and UDP ports,
//! TCP flags, ICMP type/code/identifier, and each protocol's checksum.
//! Callers check `min_len` before using the accessors.

pub mod tcp {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
    pub const HEADER_LEN: usize = 20;

    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

pub mod udp {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const HEADER_LEN: usize = 8;
}

pub mod icmp {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const IDENT: usize = 4;
    pub const HEADER_LEN: usize = 8;

    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;

    /// Destination unreachable codes Egret sends.
    pub const CODE_FRAG_NEEDED: u8 = 4;
    pub const CODE_ADMIN_PROHIBITED: u8 = 13;

    /// Query messages carry an identifier that NAT translates like a port.
    #[inline]
    pub fn is_query(ty: u8) -> bool {
        matches!(ty, ECHO_REQUEST | ECHO_REPLY)
    }

    /// Error messages carry the offending packet's header (RFC 792).
    #[inline]
    pub fn is_error(ty: u8) -> bool {
        matches!(ty, DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM)
    }
}

/// Offset of the checksum field for a protocol, and the minimum header length.
#[inline]
pub fn checksum_offset(proto: u8) -> usize {
    match proto {
        super::ipv4::PROTO_TCP => tcp::CHECKSUM,
        super::ipv4::PROTO_UDP => udp::CHECKSUM,
        _ => icmp::CHECKSUM,
    }
}

#[inline]
pub fn min_len(proto: u8) -> usize {
    match proto {
        super::ipv4::PROTO_TCP => tcp::HEADER_LEN,
        super::ipv4::PROTO_UDP => udp::HEADER_LEN,
        _ => icmp::HEADER_LEN,
    }
}

#[inline]
pub fn read16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub fn write16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
