//! Next hops from the kernel: the routing table and the neighbour table of
//! the gateway's interfaces, kept by a resolver thread and published to the workers as one immutable table (the kernel keeps doing
//! ARP). A packet whose next hop has no neighbour entry yet is counted by the
//! worker, and the resolver makes the kernel resolve it (a datagram to the
//! discard port, which triggers ARP), so the next packet goes through.
//!
//! The tables come from route netlink (`netlink.rs`): dumped at start and
//! again whenever the kernel announces a route or neighbour change, so a
//! moved route or a new neighbour reaches the workers within milliseconds
//! rather than at the next poll.

use super::netlink::{Changes, Dump, Tables};
use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use netlink_packet_route::AddressFamily;
use std::collections::{HashMap, HashSet};
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
    /// Looked up for every packet sent: hashbrown's hasher, not SipHash.
    neighbours: hashbrown::HashMap<(u32, u32), [u8; 6]>,
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

fn ifindex(dev: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex")).ok()?.trim().parse().ok()
}

/// `RT_TABLE_MAIN`: the table `ip route` shows by default.
const MAIN_TABLE: u32 = 254;

impl Table {
    /// The next hops of a dump: unicast routes of the main table out of
    /// `ifaces` (by index), longest prefix first, and their resolved
    /// neighbours (not failed, not still resolving).
    pub fn from_dump(dump: &Dump, ifaces: &HashSet<u32>) -> Table {
        let mut t = Table::default();
        for r in &dump.routes {
            if r.header.address_family != AddressFamily::Inet || r.header.kind != RouteType::Unicast {
                continue;
            }
            let mut table = u32::from(r.header.table);
            let (mut dst, mut oif, mut gateway) = (0, None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = u32::from(*d),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(u32::from(*g)),
                    _ => {}
                }
            }
            let Some(ifindex) = oif.filter(|i| ifaces.contains(i)) else { continue };
            if table != MAIN_TABLE {
                continue;
            }
            let len = r.header.destination_prefix_length.min(32);
            t.routes.push(Route { ifindex, dst, len, gateway });
        }
        t.routes.sort_by_key(|r| std::cmp::Reverse(r.len));
        for n in &dump.neighbours {
            let usable = !matches!(
                n.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::Noarp | NeighbourState::None
            );
            if !usable || !ifaces.contains(&n.header.ifindex) {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(u32::from(*d)),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                t.neighbours.insert((n.header.ifindex, ip), mac);
            }
        }
        t
    }
}

/// Reads the kernel's IPv4 routes and neighbours for `ifaces` (an empty
/// table if netlink fails: every packet then counts as a miss).
fn read_table(tables: &mut Option<Tables>, ifaces: &[String]) -> Table {
    let indexes: HashSet<u32> = ifaces.iter().filter_map(|d| ifindex(d)).collect();
    if tables.is_none() {
        *tables = Tables::open().map_err(|e| tracing::warn!(error = %e, "route netlink socket")).ok();
    }
    let Some(t) = tables.as_mut() else { return Table::default() };
    match t.dump() {
        Ok(d) => Table::from_dump(&d, &indexes),
        Err(e) => {
            tracing::warn!(error = %e, "route netlink dump");
            *tables = None;
            Table::default()
        }
    }
}

/// The shared next-hop table and the queue of addresses to resolve.
pub struct NextHops {
    table: ArcSwap<Table>,
    resolve: ArrayQueue<(u32, u32)>,
}

impl NextHops {
    pub fn new(ifaces: &[String]) -> Arc<NextHops> {
        Arc::new(NextHops {
            table: ArcSwap::from_pointee(read_table(&mut None, ifaces)),
            resolve: ArrayQueue::new(1024),
        })
    }

    /// The current table, for a worker to keep for a turn.
    #[inline]
    pub fn current(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Asks the resolver to get `hop` resolved on `ifindex` (never blocks).
    #[inline]
    pub fn request(&self, ifindex: u32, hop: u32) {
        let _ = self.resolve.push((ifindex, hop));
    }

    /// The resolver loop, until `stop`: asks the kernel to resolve the
    /// next hops workers missed, and publishes a fresh table whenever the
    /// kernel announces a route or neighbour change (a resolution it was
    /// asked for arrives as one). Without a subscription (netlink refused
    /// it) it falls back to re-reading twice a second.
    pub fn run_resolver(self: Arc<Self>, ifaces: Vec<String>, stop: Arc<AtomicBool>) {
        let names: HashMap<u32, String> = ifaces.iter().filter_map(|d| Some((ifindex(d)?, d.clone()))).collect();
        let changes = Changes::subscribe().map_err(|e| tracing::warn!(error = %e, "route netlink subscription")).ok();
        let mut tables = None;
        let mut asked: HashMap<u32, Instant> = HashMap::new();
        let mut ask = |hop: u32, ifx: u32| {
            let now = Instant::now();
            if asked.get(&hop).is_some_and(|t| now.duration_since(*t) < Duration::from_millis(200)) {
                return;
            }
            asked.insert(hop, now);
            if let Some(dev) = names.get(&ifx) {
                trigger_arp(dev, hop);
            }
        };
        // The first pass re-reads: changes between `new` and the subscription.
        let (mut stale, mut last) = (true, Instant::now());
        while !stop.load(Ordering::Relaxed) {
            while let Some((ifx, hop)) = self.resolve.pop() {
                ask(hop, ifx);
            }
            match &changes {
                Some(c) => stale |= c.wait(Duration::from_millis(10)),
                None => {
                    std::thread::sleep(Duration::from_millis(10));
                    stale |= last.elapsed() >= Duration::from_millis(500);
                }
            }
            if !stale {
                continue;
            }
            let table = read_table(&mut tables, &ifaces);
            // Routers are next hops for nearly everything: resolve them
            // before the first packet needs them.
            for r in &table.routes {
                if let Some(gw) = r.gateway.filter(|gw| !table.neighbours.contains_key(&(r.ifindex, *gw))) {
                    ask(gw, r.ifindex);
                }
            }
            self.table.store(Arc::new(table));
            (stale, last) = (false, Instant::now());
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

    #[test]
    fn a_dump_gives_main_table_routes_out_of_our_interfaces_and_resolved_neighbours() {
        use netlink_packet_route::neighbour::NeighbourMessage;
        use netlink_packet_route::route::RouteMessage;
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let route = |dst: Option<&str>, len: u8, oif: u32, gw: Option<&str>, table: u8| {
            let mut r = RouteMessage::default();
            r.header.address_family = AddressFamily::Inet;
            r.header.kind = RouteType::Unicast;
            r.header.table = table;
            r.header.destination_prefix_length = len;
            r.attributes.push(RouteAttribute::Oif(oif));
            r.attributes.extend(dst.map(|d| RouteAttribute::Destination(RouteAddress::Inet(a(d)))));
            r.attributes.extend(gw.map(|g| RouteAttribute::Gateway(RouteAddress::Inet(a(g)))));
            r
        };
        let neigh = |ip: &str, ifindex: u32, state: NeighbourState| {
            let mut n = NeighbourMessage::default();
            n.header.family = AddressFamily::Inet;
            n.header.ifindex = ifindex;
            n.header.state = state;
            n.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(a(ip))));
            n.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, ifindex as u8]));
            n
        };
        let dump = Dump {
            routes: vec![
                route(None, 0, 2, Some("198.19.0.254"), 254),
                route(Some("198.19.0.0"), 24, 2, None, 254),
                route(Some("198.20.0.0"), 16, 2, None, 100), // another table
                route(Some("198.18.0.0"), 16, 9, None, 254), // not our interface
            ],
            neighbours: vec![
                neigh("198.19.0.254", 2, NeighbourState::Stale),
                neigh("198.19.0.7", 2, NeighbourState::Incomplete),
                neigh("198.19.0.8", 9, NeighbourState::Reachable),
            ],
        };
        let t = Table::from_dump(&dump, &HashSet::from([2]));
        assert_eq!(t.lookup(2, u32::from(a("203.0.113.9"))), Ok([2, 0, 0, 0, 0, 2]), "default route via the router");
        assert_eq!(t.lookup(2, u32::from(a("198.19.0.7"))), Err(Miss::NoNeighbour(u32::from(a("198.19.0.7")))));
        assert_eq!(t.lookup(2, u32::from(a("198.20.0.1"))), Ok([2, 0, 0, 0, 0, 2]), "other tables are not ours");
        assert_eq!(t.routes.len(), 2);
        assert_eq!(t.neighbours.len(), 1);
    }

    #[test]
    fn the_kernel_dump_holds_the_routes_iproute2_shows() {
        let all: HashSet<u32> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .filter_map(|e| ifindex(e.ok()?.file_name().to_str()?))
            .collect();
        let t = Table::from_dump(&Tables::open().expect("route netlink").dump().expect("dump"), &all);
        let out = std::process::Command::new("ip").args(["-json", "-4", "route", "show", "table", "main"]).output();
        let shown: Vec<serde_json::Value> = serde_json::from_slice(&out.expect("ip").stdout).unwrap();
        let unicast_with_dev =
            shown.iter().filter(|r| r.get("dev").is_some() && r.get("type").is_none_or(|t| t == "unicast")).count();
        assert_eq!(t.routes.len(), unicast_with_dev, "{shown:?}");
    }
}
