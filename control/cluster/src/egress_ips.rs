//! A config's egress addresses as kube-egress-gateway writes them in
//! `status.egressIpPrefix`: one CIDR (its public IP prefix), or, in private
//! IP mode (`spec.provisionPublicIps: false`), the pool nodes' secondary
//! IPs joined with commas (`"10.0.1.8,10.0.1.9"`, its
//! GatewayVMConfiguration controller's `strings.Join(privateIPs, ",")`).

use egret_plan::Ipv4Cidr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// One prefix, or a list of single addresses (as /32s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressIps(Vec<Ipv4Cidr>);

impl EgressIps {
    /// The CIDRs, as a plan's pool takes them.
    pub fn cidrs(&self) -> &[Ipv4Cidr] {
        &self.0
    }

    pub fn contains(&self, ip: u32) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn overlaps(&self, other: &EgressIps) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    pub fn overlaps_cidr(&self, c: &Ipv4Cidr) -> bool {
        self.0.iter().any(|a| a.overlaps(c))
    }

    pub fn size(&self) -> u64 {
        self.0.iter().map(Ipv4Cidr::size).sum()
    }

    pub fn addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.0.iter().flat_map(|c| c.addrs())
    }
}

impl FromStr for EgressIps {
    type Err = String;
    fn from_str(s: &str) -> Result<EgressIps, String> {
        let s = s.trim();
        if !s.contains(',') {
            return s.parse::<Ipv4Cidr>().map(|c| EgressIps(vec![c])).map_err(|e| e.to_string());
        }
        let mut out: Vec<Ipv4Cidr> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ip: Ipv4Addr =
                part.parse().map_err(|_| format!("'{part}' in a list of private IPs is not an IPv4 address"))?;
            let c = Ipv4Cidr::new(ip, 32).map_err(|e| e.to_string())?;
            if out.contains(&c) {
                return Err(format!("{ip} is listed twice"));
            }
            out.push(c);
        }
        if out.is_empty() {
            return Err("an empty list of private IPs".into());
        }
        Ok(EgressIps(out))
    }
}

impl fmt::Display for EgressIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                let ips: Vec<String> = many.iter().map(|c| c.addr().to_string()).collect();
                f.write_str(&ips.join(","))
            }
        }
    }
}

impl Serialize for EgressIps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EgressIps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_or_a_list_of_private_ips_reads_and_prints_as_written() {
        let p: EgressIps = "198.19.100.0/28".parse().unwrap();
        assert_eq!((p.size(), p.to_string()), (16, "198.19.100.0/28".to_string()));
        let l: EgressIps = "10.0.1.8, 10.0.1.9".parse().unwrap();
        assert_eq!((l.size(), l.to_string()), (2, "10.0.1.8,10.0.1.9".to_string()));
        assert!(
            l.contains(u32::from(Ipv4Addr::new(10, 0, 1, 9))) && !l.contains(u32::from(Ipv4Addr::new(10, 0, 1, 10)))
        );
        assert!(l.overlaps(&"10.0.1.8/30".parse().unwrap()));
        assert!(!l.overlaps(&"10.0.1.10,10.0.1.11".parse().unwrap()));
    }

    #[test]
    fn a_bad_list_is_refused_with_the_entry_named() {
        assert_eq!(
            "10.0.1.8,oops".parse::<EgressIps>().unwrap_err(),
            "'oops' in a list of private IPs is not an IPv4 address"
        );
        assert_eq!("10.0.1.8,10.0.1.8".parse::<EgressIps>().unwrap_err(), "10.0.1.8 is listed twice");
        assert!("198.19.100.1/28".parse::<EgressIps>().unwrap_err().contains("host bits"));
    }
}
