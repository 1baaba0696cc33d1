//! One packet's way through a worker, read top to bottom. The stages, in
//! order, each entered at most once:
//!
//! 1. **check**: the IPv4 header is checked and read once ([`Header`](crate::wire::ipv4::Header));
//!    every later stage gets the view, never the bytes to parse again;
//! 2. **open** (the tunnel stage): a WireGuard datagram to a config's
//!    tunnel is decrypted in its frame, and its inner packet, a packet of
//!    its own, is checked as in 1;
//! 3. **translate** (the NAT core);
//! 4. **seal** (the tunnel stage): what leaves toward a tunnelled pod is
//!    encrypted to its peer, as the translate verdict says.
//!
//! What comes after (the next hop, the transmit ring, the handoff ring to
//! another worker) is I/O and the worker's: the [`Exit`] says which. A
//! packet handed to another worker enters again at the stage it left
//! ([`Entry`]), so no stage runs twice for one packet.

use crate::nat::{NatEngine, Side, Time, Verdict};
use crate::tunnel::{Inbound, Outbound, TunnelStage};
use crate::wire::ipv4;

/// Where a packet enters the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// As it arrived, nothing done to it yet.
    Arrived,
    /// A tunnel datagram handed on unopened to its peer's worker (an
    /// initiation has passed the rate limiter; nothing else is proven).
    Datagram,
    /// The decrypted inner packet of a tunnelled pod, for its flow's owner.
    Tunnelled,
    /// A translated packet for a tunnelled pod, for its peer's owner to seal.
    Seal,
}

/// What the worker does with the packet the stages leave in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Send the `len`-byte IPv4 packet out of `side`, routed toward `dst`.
    Forward { side: Side, len: usize, dst: u32 },
    /// Send the `len`-byte packet back to where it came from (an ICMP error,
    /// a handshake response).
    Reply { len: usize },
    /// Hand the first `len` bytes to `worker`'s ring, to enter there at
    /// `entry` as arriving from `from`.
    HandOff { worker: u16, entry: Entry, from: Side, len: usize },
    /// Nothing to send: consumed, held, or dropped and counted by the stage
    /// that dropped it.
    Done,
}

/// Runs the stages over the IPv4 packet `buf[..len]` (`buf` runs to the end
/// of the frame's room: replies and sealed datagrams grow). `from`: the side
/// it arrived on, where the port tells.
#[inline(always)]
pub fn run(
    tunnels: &mut TunnelStage,
    engine: &mut NatEngine,
    buf: &mut [u8],
    len: usize,
    entry: Entry,
    from: Option<Side>,
    now: Time,
) -> Exit {
    if entry == Entry::Seal {
        return seal(tunnels, buf, len);
    }
    let Ok(mut ip) = engine.check_header(buf, len) else { return Exit::Done };
    let mut tunnelled = entry == Entry::Tunnelled;
    if !tunnelled && tunnels.active() {
        match tunnels.receive(buf, &ip, entry == Entry::Datagram) {
            Inbound::NotTunnel => {}
            Inbound::Inner { len } => {
                let Ok(inner) = engine.check_header(buf, len) else { return Exit::Done };
                (ip, tunnelled) = (inner, true);
            }
            Inbound::Reply { len } => return Exit::Reply { len },
            Inbound::Consumed | Inbound::Drop(_) => return Exit::Done,
            // Taken on the other worker as arriving where it arrived here.
            Inbound::Elsewhere { worker } => {
                return Exit::HandOff { worker, entry: Entry::Datagram, from: from.unwrap_or(Side::Inside), len }
            }
        }
    }
    let from = if tunnelled { Some(Side::Inside) } else { from };
    match engine.translate(buf, &ip, from, tunnelled, now) {
        Verdict::Forward { side, len } => Exit::Forward { side, len, dst: ipv4::destination(&buf[..len]) },
        Verdict::Seal { len } => seal(tunnels, buf, len),
        Verdict::Reply { len } => Exit::Reply { len },
        // A tunnelled pod's inner packet stays one (its new worker must not
        // take it for a plain packet from a tunnelled pod). Its hairpin's
        // return leg, translated already, arrives as from the outside.
        Verdict::Handoff { worker, from: Side::Inside } if tunnelled => {
            Exit::HandOff { worker, entry: Entry::Tunnelled, from: Side::Inside, len: ip.total }
        }
        Verdict::Handoff { worker, from } if tunnelled => {
            Exit::HandOff { worker, entry: Entry::Arrived, from, len: ip.total }
        }
        Verdict::Handoff { worker, from } => Exit::HandOff { worker, entry: Entry::Arrived, from, len },
        Verdict::Held | Verdict::Drop(_) => Exit::Done,
    }
}

/// The seal stage: `buf[..len]`, a packet for a tunnelled pod, becomes the
/// datagram to its peer's endpoint.
#[inline]
pub fn seal(tunnels: &mut TunnelStage, buf: &mut [u8], len: usize) -> Exit {
    match tunnels.seal(buf, len) {
        Outbound::Sealed { len, to } => Exit::Forward { side: Side::Inside, len, dst: u32::from(*to.ip()) },
        Outbound::Elsewhere { worker } => Exit::HandOff { worker, entry: Entry::Seal, from: Side::Inside, len },
        Outbound::Drop(_) => Exit::Done,
    }
}

#[cfg(test)]
mod tests {
    //! The stages together, as a worker runs them: a pod's WireGuard
    //! (boringtun's initiator), the tunnel stage and the NAT core.
    use super::*;
    use crate::compiled::CompiledPlan;
    use crate::nat::{DropReason, EngineSettings};
    use crate::plan::{Binding, GatewayConfig, Plan, TunnelConfig, WgKey, WgSecret};
    use crate::tunnel::stage::SharedLimiters;
    use crate::wire::udp;
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    use etherparse::PacketBuilder;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::Arc;

    const GW_KEY: [u8; 32] = [7; 32];
    const POD_KEY: [u8; 32] = [1; 32];
    const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const ENDPOINT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 51820);
    const ILB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 50, 100), 6000);
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 100);
    const T0: Time = Time::from_secs(1);

    fn public(private: [u8; 32]) -> [u8; 32] {
        *PublicKey::from(&StaticSecret::from(private)).as_bytes()
    }

    struct Gateway {
        tunnels: TunnelStage,
        engine: NatEngine,
    }

    impl Gateway {
        fn new() -> Gateway {
            Gateway::on_worker(0, 1)
        }

        /// Worker `worker` of `workers`.
        fn on_worker(worker: u16, workers: u16) -> Gateway {
            let mut c = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
            c.tunnel = Some(TunnelConfig { address: *ILB.ip(), port: ILB.port(), private_key: WgSecret(GW_KEY) });
            let bindings = vec![Binding { pod_ip: POD, config: "a".into(), public_key: Some(WgKey(public(POD_KEY))) }];
            let plan = Plan { network_policies: Vec::new(), version: 1, configs: vec![c], bindings: bindings.into() };
            let plan = Arc::new(CompiledPlan::new(&plan).unwrap());
            let mut tunnels = TunnelStage::new(worker, workers, SharedLimiters::default());
            tunnels.apply_plan(&plan);
            let settings = EngineSettings { worker, workers, ..EngineSettings::default() };
            Gateway { tunnels, engine: NatEngine::new(settings, plan) }
        }

        /// Runs `packet` through the stages from `entry`; the exit and the
        /// buffer as the stages left it.
        fn run(&mut self, packet: &[u8], entry: Entry) -> (Exit, Vec<u8>) {
            let mut buf = vec![0u8; 2048];
            buf[..packet.len()].copy_from_slice(packet);
            let exit = run(&mut self.tunnels, &mut self.engine, &mut buf, packet.len(), entry, None, T0);
            (exit, buf)
        }

        /// The pod's datagram (a WireGuard message) as it reaches the gateway.
        fn datagram_from_pod(&mut self, message: &[u8]) -> (Exit, Vec<u8>) {
            let mut d = vec![0u8; udp::HEADERS + message.len()];
            d[udp::HEADERS..].copy_from_slice(message);
            let n = udp::emit(&mut d, ENDPOINT, ILB, message.len());
            self.run(&d[..n], Entry::Arrived)
        }
    }

    fn udp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(sport, dport).write(&mut v, payload).unwrap();
        v
    }

    /// A pod with a live tunnel to the gateway (the handshake run through
    /// the stages), and the pod's first data message, not yet sent.
    fn connected(gw: &mut Gateway, first: &[u8]) -> (Tunn, Vec<u8>) {
        let mut pod = Tunn::new(StaticSecret::from(POD_KEY), PublicKey::from(public(GW_KEY)), None, None, 1, None);
        let mut out = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = pod.encapsulate(first, &mut out) else { panic!("no initiation") };
        let init = init.to_vec();
        let (Exit::Reply { len }, buf) = gw.datagram_from_pod(&init) else { panic!("no handshake response") };
        let response = udp::parse(&buf[..len]).unwrap();
        let TunnResult::WriteToNetwork(ka) = pod.decapsulate(None, &buf[response.payload], &mut out) else {
            panic!("no keepalive")
        };
        let ka = ka.to_vec();
        assert_eq!(gw.datagram_from_pod(&ka).0, Exit::Done, "a keepalive is consumed");
        let TunnResult::WriteToNetwork(data) = pod.decapsulate(None, &[], &mut out) else { panic!("no data") };
        (pod, data.to_vec())
    }

    #[test]
    fn a_tunnelled_pods_packet_leaves_translated_and_the_reply_returns_sealed_to_its_endpoint() {
        let mut gw = Gateway::new();
        let first = udp_packet(POD, 5000, SERVER, 53, b"query");
        let (mut pod, data) = connected(&mut gw, &first);

        let (exit, out) = gw.datagram_from_pod(&data);
        let Exit::Forward { side: Side::Outside, len, dst } = exit else { panic!("not forwarded: {exit:?}") };
        assert_eq!(dst, u32::from(SERVER));
        let sent = udp::parse(&out[..len]).unwrap();
        assert_eq!(sent.dst, SocketAddrV4::new(SERVER, 53));
        assert_eq!(&out[sent.payload], b"query");
        let egress = sent.src;
        assert_ne!(*egress.ip(), POD, "the source is translated to the egress pool");

        let reply = udp_packet(SERVER, 53, *egress.ip(), egress.port(), b"answer");
        let (exit, back) = gw.run(&reply, Entry::Arrived);
        let Exit::Forward { side: Side::Inside, len, dst } = exit else { panic!("not sealed: {exit:?}") };
        assert_eq!(dst, u32::from(*ENDPOINT.ip()), "to the pod's endpoint");
        let d = udp::parse(&back[..len]).unwrap();
        assert_eq!((d.src, d.dst), (ILB, ENDPOINT), "from the tunnel's address");
        let mut out = vec![0u8; 2048];
        let TunnResult::WriteToTunnelV4(inner, _) = pod.decapsulate(None, &back[d.payload], &mut out) else {
            panic!("the pod cannot open it")
        };
        let inner = udp::parse(inner).unwrap();
        assert_eq!((inner.src, inner.dst), (SocketAddrV4::new(SERVER, 53), SocketAddrV4::new(POD, 5000)));
    }

    #[test]
    fn a_datagram_with_a_bad_ip_checksum_is_dropped_once_at_the_header_check() {
        let mut gw = Gateway::new();
        let (_pod, data) = connected(&mut gw, &udp_packet(POD, 5000, SERVER, 53, b"query"));
        let mut d = vec![0u8; udp::HEADERS + data.len()];
        d[udp::HEADERS..].copy_from_slice(&data);
        let n = udp::emit(&mut d, ENDPOINT, ILB, data.len());
        d[10] ^= 0xff; // the IPv4 header checksum
        assert_eq!(gw.run(&d[..n], Entry::Arrived).0, Exit::Done);
        assert_eq!(gw.engine.counters().dropped(DropReason::BadIpChecksum), 1);
        let tunnel = &gw.tunnels.reports()[0].counters;
        assert_eq!((tunnel.total_drops(), tunnel.rx_packets), (0, 0), "the tunnel never saw it");
    }

    #[test]
    fn a_packet_handed_over_as_tunnelled_is_translated_without_being_opened_again() {
        let mut gw = Gateway::new();
        let inner = udp_packet(POD, 5000, SERVER, 53, b"query");
        let (exit, _) = gw.run(&inner, Entry::Tunnelled);
        assert!(matches!(exit, Exit::Forward { side: Side::Outside, .. }), "{exit:?}");
        // The same bytes as they arrived: a plain packet from a tunnelled
        // pod's address, which only its tunnel may send.
        assert_eq!(gw.run(&inner, Entry::Arrived).0, Exit::Done);
        assert_eq!(gw.engine.counters().dropped(DropReason::NotTunnelled), 1);
    }

    #[test]
    fn a_tunnelled_pods_hairpin_leaves_for_the_ports_worker_translated_as_from_the_outside() {
        let here = crate::compiled::owner_of(u32::from(POD), 2);
        let mut gw = Gateway::on_worker(here, 2);
        // An egress address of the pod's own config, on a port of the
        // other worker's slice: the return leg is that worker's.
        let port = if gw.engine.port_slice().lo == 1024 { 65535 } else { 1024 };
        let hairpin = udp_packet(POD, 5000, Ipv4Addr::new(198, 19, 100, 1), port, b"x");
        let (exit, out) = gw.run(&hairpin, Entry::Tunnelled);
        let expected =
            Exit::HandOff { worker: 1 - here, entry: Entry::Arrived, from: Side::Outside, len: hairpin.len() };
        assert_eq!(exit, expected, "not to be opened or taken for a pod's packet there");
        assert_ne!(udp::parse(&out[..hairpin.len()]).unwrap().src.ip(), &POD, "translated already");
    }
}
