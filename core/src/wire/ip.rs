//! What IPv4 headers name: the transport protocol, and which of a packet's
//! two endpoints a rewrite touches.

use std::fmt;

/// The transport protocols the NAT translates (IANA protocol numbers).
/// Sessions store the number; this is how code names and matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IpProtocol {
    Icmp = 1,
    Tcp = 6,
    Udp = 17,
}

impl IpProtocol {
    /// Every protocol, in the order counters and tables index them
    /// ([`IpProtocol::slot`]).
    pub const ALL: [IpProtocol; 3] = [IpProtocol::Tcp, IpProtocol::Udp, IpProtocol::Icmp];

    /// The protocol of an IPv4 `protocol` field, if the NAT handles it.
    #[inline(always)]
    pub const fn from_number(n: u8) -> Option<IpProtocol> {
        match n {
            1 => Some(IpProtocol::Icmp),
            6 => Some(IpProtocol::Tcp),
            17 => Some(IpProtocol::Udp),
            _ => None,
        }
    }

    #[inline(always)]
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// Index into per-protocol arrays: TCP 0, UDP 1, ICMP 2.
    #[inline(always)]
    pub const fn slot(self) -> usize {
        match self {
            IpProtocol::Tcp => 0,
            IpProtocol::Udp => 1,
            IpProtocol::Icmp => 2,
        }
    }

    /// The name logs, metrics labels and the CLI use.
    pub const fn name(self) -> &'static str {
        match self {
            IpProtocol::Tcp => "tcp",
            IpProtocol::Udp => "udp",
            IpProtocol::Icmp => "icmp",
        }
    }

    /// The name of a protocol number: the NAT's, or the number itself.
    pub fn name_of(n: u8) -> std::borrow::Cow<'static, str> {
        match IpProtocol::from_number(n) {
            Some(p) => p.name().into(),
            None => n.to_string().into(),
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for IpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IpProtocol::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| format!("'{s}' is not tcp, udp or icmp"))
    }
}

/// Which endpoint of a packet a rewrite touches: the source (address and
/// port) or the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Source,
    Destination,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_and_slots_agree() {
        for (i, p) in IpProtocol::ALL.into_iter().enumerate() {
            assert_eq!(IpProtocol::from_number(p.number()), Some(p));
            assert_eq!(p.slot(), i);
            assert_eq!(p.name().parse::<IpProtocol>(), Ok(p));
        }
        assert_eq!(IpProtocol::from_number(47), None);
        assert_eq!(IpProtocol::name_of(47), "47");
        assert_eq!(IpProtocol::name_of(6), "tcp");
    }
}
