//! IPv4 prefixes as plans write them (`198.19.100.0/28`).

use crate::PlanError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix such as `198.19.100.0/28`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Cidr {
    /// A prefix; host bits must be zero.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PlanError> {
        if len > 32 {
            return Err(PlanError::BadCidr(format!("{addr}/{len}"), "prefix length over 32"));
        }
        let c = Ipv4Cidr { addr, len };
        if u32::from(addr) & !c.mask() != 0 {
            return Err(PlanError::BadCidr(format!("{addr}/{len}"), "host bits set"));
        }
        Ok(c)
    }
    #[inline]
    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    #[inline]
    pub fn contains(&self, ip: u32) -> bool {
        ip & self.mask() == u32::from(self.addr)
    }
    /// The prefix of length `len` (at most 32) that holds `ip`.
    #[inline]
    pub fn covering(ip: u32, len: u8) -> Ipv4Cidr {
        let c = Ipv4Cidr { addr: Ipv4Addr::UNSPECIFIED, len: len.min(32) };
        Ipv4Cidr { addr: Ipv4Addr::from(ip & c.mask()), len: c.len }
    }
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }
    /// Every address of the prefix (a public IP prefix has no network or
    /// broadcast address to skip: each one maps to a usable public IP).
    pub fn addrs(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u64::from(u32::from(self.addr));
        (base..base + self.size()).map(|a| Ipv4Addr::from(a as u32))
    }
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let len = self.len.min(other.len);
        let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
}

impl FromStr for Ipv4Cidr {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let bad = |why| PlanError::BadCidr(s.to_string(), why);
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad("prefix length is not a number"))?),
            None => (s, 32),
        };
        let addr = Ipv4Addr::from_str(a.trim()).map_err(|_| bad("not an IPv4 address"))?;
        Ipv4Cidr::new(addr, l)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
