//! Next hops from the kernel: the routing table and the neighbour table of
//! the gateway's interfaces, re-read twice a second by a resolver thread and
//! published to the workers as one immutable table (the kernel keeps doing
//! ARP). A packet whose next hop has no neighbour entry yet is counted by the
//! worker, and the resolver makes the kernel resolve it (a datagram to the
//! discard port, which triggers ARP), so the next packet goes through.
//!
//! The tables are read with `ip -json` (iproute2 speaks netlink for us);
//! a native netlink reader can replace it behind the same `Table`.

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    ifindex: u32,
    dst: u32,
    len: u8,
    gateway: Option<u32>,
}

/// Routes (longest prefix first) and neighbours, as of one read.
#[derive(Debug, Default)]
pub struct Table {
    routes: Vec<Route>,
    neighbours: HashMap<(u32, u32), [u8; 6]>,
}

/// Why a next hop could not be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route out of this interface covers the destination.
    NoRoute,
    /// The next hop's MAC is not known yet; resolution was requested.
    NoNeighbour(u32),
}

impl Table {
    /// The MAC to send a packet for `dst` to, out of `ifindex`.
    #[inline]
    pub fn lookup(&self, ifindex: u32, dst: u32) -> Result<[u8; 6], Miss> {
        let r = self
            .routes
            .iter()
            .find(|r| {
                r.ifindex == ifindex
                    && (r.len == 0 || dst >> (32 - u32::from(r.len)) == r.dst >> (32 - u32::from(r.len)))
            })
            .ok_or(Miss::NoRoute)?;
        let hop = r.gateway.unwrap_or(dst);
        self.neighbours.get(&(ifindex, hop)).copied().ok_or(Miss::NoNeighbour(hop))
    }
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: Option<String>,
}

#[derive(Deserialize)]
struct IpNeigh {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

fn ifindex(dev: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex")).ok()?.trim().parse().ok()
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut it = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    Some(m)
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Vec<T> {
    let out = std::process::Command::new("ip").args(args).output();
    match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Reads the kernel's IPv4 routes and neighbours for `ifaces`.
pub fn read_table(ifaces: &[String]) -> Table {
    let mut t = Table::default();
    for r in ip_json::<IpRoute>(&["-json", "-4", "route", "show", "table", "main"]) {
        let Some(dev) = r.dev.filter(|d| ifaces.contains(d)) else { continue };
        let Some(ifindex) = ifindex(&dev) else { continue };
        let (dst, len) = if r.dst == "default" {
            (0, 0)
        } else {
            let (a, l) = r.dst.split_once('/').unwrap_or((&r.dst, "32"));
            let (Ok(a), Ok(l)) = (a.parse::<Ipv4Addr>(), l.parse::<u8>()) else { continue };
            (u32::from(a), l.min(32))
        };
        let gateway = r.gateway.and_then(|g| g.parse::<Ipv4Addr>().ok()).map(u32::from);
        t.routes.push(Route { ifindex, dst, len, gateway });
    }
    t.routes.sort_by_key(|r| std::cmp::Reverse(r.len));
    for n in ip_json::<IpNeigh>(&["-json", "-4", "neigh", "show"]) {
        if n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE") {
            continue;
        }
        let (Some(dev), Some(mac)) = (n.dev, n.lladdr.as_deref().and_then(parse_mac)) else { continue };
        let (Some(ifindex), Ok(ip)) = (ifindex(&dev), n.dst.parse::<Ipv4Addr>()) else { continue };
        t.neighbours.insert((ifindex, u32::from(ip)), mac);
    }
    t
}

/// The shared next-hop table and the queue of addresses to resolve.
pub struct NextHops {
    table: ArcSwap<Table>,
    resolve: ArrayQueue<(u32, u32)>,
}

impl NextHops {
    pub fn new(ifaces: &[String]) -> Arc<NextHops> {
        Arc::new(NextHops { table: ArcSwap::from_pointee(read_table(ifaces)), resolve: ArrayQueue::new(1024) })
    }

    /// The current table; workers load it once per batch.
    #[inline]
    pub fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    /// Asks the resolver to get `hop` resolved on `ifindex` (never blocks).
    #[inline]
    pub fn request(&self, ifindex: u32, hop: u32) {
        let _ = self.resolve.push((ifindex, hop));
    }

    /// The resolver loop: re-reads the tables every 500 ms, sooner when a
    /// resolution was requested, until `stop`.
    pub fn run_resolver(self: Arc<Self>, ifaces: Vec<String>, stop: Arc<AtomicBool>) {
        let names: HashMap<u32, String> = ifaces.iter().filter_map(|d| Some((ifindex(d)?, d.clone()))).collect();
        let mut last = Instant::now();
        let mut asked: HashMap<u32, Instant> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let mut poke = false;
            while let Some((ifx, hop)) = self.resolve.pop() {
                let now = Instant::now();
                if asked.get(&hop).is_some_and(|t| now.duration_since(*t) < Duration::from_millis(200)) {
                    continue;
                }
                asked.insert(hop, now);
                if let Some(dev) = names.get(&ifx) {
                    trigger_arp(dev, hop);
                    poke = true;
                }
            }
            if poke {
                std::thread::sleep(Duration::from_millis(20));
            }
            if poke || last.elapsed() >= Duration::from_millis(500) {
                let table = read_table(&ifaces);
                // Routers are next hops for nearly everything: resolve them
                // before the first packet needs them.
                for r in &table.routes {
                    let Some(gw) = r.gateway else { continue };
                    if table.neighbours.contains_key(&(r.ifindex, gw)) {
                        continue;
                    }
                    let now = Instant::now();
                    if asked.get(&gw).is_some_and(|t| now.duration_since(*t) < Duration::from_millis(200)) {
                        continue;
                    }
                    asked.insert(gw, now);
                    if let Some(dev) = names.get(&r.ifindex) {
                        trigger_arp(dev, gw);
                    }
                }
                self.table.store(Arc::new(table));
                last = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Makes the kernel resolve `hop` on `dev`: a datagram to its discard port,
/// sent from a socket bound to the device.
fn trigger_arp(dev: &str, hop: u32) {
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else { return };
    let name = std::ffi::CString::new(dev).unwrap_or_default();
    // SAFETY: setsockopt on our own socket with a valid C string.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr() as *const libc::c_void,
            name.as_bytes_with_nul().len() as libc::socklen_t,
        );
    }
    let _ = sock.send_to(b"", SocketAddrV4::new(Ipv4Addr::from(hop), 9));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_on_the_interface_then_its_neighbour() {
        let mut t = Table::default();
        let a = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        t.routes = vec![
            Route { ifindex: 2, dst: a("198.19.0.0"), len: 24, gateway: None },
            Route { ifindex: 2, dst: 0, len: 0, gateway: Some(a("198.19.0.254")) },
            Route { ifindex: 3, dst: a("198.18.0.0"), len: 16, gateway: None },
        ];
        t.neighbours.insert((2, a("198.19.0.254")), [1; 6]);
        t.neighbours.insert((3, a("198.18.0.2")), [2; 6]);
        assert_eq!(t.lookup(2, a("203.0.113.9")), Ok([1; 6]), "default route via the router");
        assert_eq!(t.lookup(2, a("198.19.0.7")), Err(Miss::NoNeighbour(a("198.19.0.7"))));
        assert_eq!(t.lookup(3, a("198.18.0.2")), Ok([2; 6]));
        assert_eq!(t.lookup(3, a("198.19.0.7")), Err(Miss::NoRoute));
    }
}
