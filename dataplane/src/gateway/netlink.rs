//! The kernel's IPv4 routes and neighbours over route netlink (the field's
//! `netlink-packet-route` types): a dump of each table, and a subscription
//! to their changes, so next hops follow the kernel's events.

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::{RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Multicast groups of IPv4 route and neighbour changes (`RTMGRP_*` of
/// `linux/rtnetlink.h`).
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

/// What one dump of the kernel's tables holds.
#[derive(Debug, Default)]
pub struct Dump {
    pub routes: Vec<RouteMessage>,
    pub neighbours: Vec<NeighbourMessage>,
}

/// A route netlink socket for dumps.
pub struct Tables {
    sock: Socket,
    seq: u32,
}

impl Tables {
    pub fn open() -> io::Result<Tables> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Tables { sock, seq: 0 })
    }

    /// The IPv4 routes and neighbours, as of now.
    pub fn dump(&mut self) -> io::Result<Dump> {
        let mut route = RouteMessage::default();
        route.header = RouteHeader { address_family: AddressFamily::Inet, ..Default::default() };
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet;
        let mut out = Dump::default();
        for msg in self.request(RouteNetlinkMessage::GetRoute(route))? {
            if let RouteNetlinkMessage::NewRoute(r) = msg {
                out.routes.push(r);
            }
        }
        for msg in self.request(RouteNetlinkMessage::GetNeighbour(neigh))? {
            if let RouteNetlinkMessage::NewNeighbour(n) = msg {
                out.neighbours.push(n);
            }
        }
        Ok(out)
    }

    fn request(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut got = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut at = 0;
            while at < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(got),
                        NetlinkPayload::Error(e) => return Err(e.to_io()),
                        NetlinkPayload::InnerMessage(inner) => got.push(inner),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }
}

/// A socket subscribed to IPv4 route and neighbour changes.
pub struct Changes {
    sock: Socket,
}

impl Changes {
    pub fn subscribe() -> io::Result<Changes> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))?;
        sock.set_non_blocking(true)?;
        Ok(Changes { sock })
    }

    /// Waits up to `timeout` for changes and drains them: whether any
    /// arrived (or some were lost, which calls for a fresh dump all the same).
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return false;
        }
        let mut changed = false;
        loop {
            match self.sock.recv_from_full() {
                Ok((data, _)) => changed |= !data.is_empty(),
                // ENOBUFS: the kernel dropped events; the next dump has them.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
                Err(_) => return changed,
            }
        }
    }
}
