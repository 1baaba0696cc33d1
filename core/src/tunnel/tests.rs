//! The responder against boringtun's own initiator (a pod's side), bytes
//! only: handshake, data both ways, and every way a datagram is refused.

use super::*;
use etherparse::PacketBuilder;

const GW_KEY: [u8; 32] = [7; 32];
const POD_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const SERVER: [u8; 4] = [198, 19, 0, 100];
const FROM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 51820);

fn key(seed: u8) -> [u8; 32] {
    [seed; 32]
}

fn public(private: [u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(private)).as_bytes()
}

/// A pod's WireGuard (the initiator), configured as kube-egress-cni does:
/// the gateway's public key, no preshared key, no keepalive.
fn pod(seed: u8) -> Tunn {
    Tunn::new(StaticSecret::from(key(seed)), PublicKey::from(public(GW_KEY)), None, None, u32::from(seed), None)
}

fn gateway() -> Tunnel {
    Tunnel::new(
        GW_KEY,
        &[
            PeerConfig { public_key: public(key(1)), pod_ip: POD_A },
            PeerConfig { public_key: public(key(2)), pod_ip: POD_B },
        ],
    )
}

fn inner(src: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.octets(), SERVER, 64).udp(5000, 53).write(&mut v, payload).unwrap();
    v
}

/// Runs the handshake and returns the pod's first data datagram (carrying
/// `first`), which the gateway has not seen yet.
fn connect(gw: &mut Tunnel, pod: &mut Tunn, from: SocketAddrV4, first: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let init = match pod.encapsulate(first, &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let mut out = vec![0u8; 2048];
    let Received::Reply { len } = gw.receive(from, &init, &mut out) else { panic!("no response") };
    let response = out[..len].to_vec();
    // The pod takes the response, confirms the session with a keepalive
    // (consumed by the gateway), then sends what it queued.
    let keepalive = match pod.decapsulate(None, &response, &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no keepalive: {other:?}"),
    };
    assert_eq!(gw.receive(from, &keepalive, &mut out), Received::Consumed);
    match pod.decapsulate(None, &[], &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no queued packet: {other:?}"),
    }
}

#[test]
fn a_pod_handshakes_and_its_packets_arrive_decrypted_from_its_address() {
    let mut gw = gateway();
    let mut a = pod(1);
    let first = inner(POD_A, b"hello");
    let data = connect(&mut gw, &mut a, FROM, &first);
    let mut out = vec![0u8; 2048];
    assert_eq!(gw.receive(FROM, &data, &mut out), Received::Inner { len: first.len(), pod: POD_A });
    assert_eq!(&out[..first.len()], &first[..]);
    assert_eq!(gw.counters().handshakes_completed, 1);
    assert_eq!(gw.live_peers(), 1);
}

#[test]
fn replies_are_encrypted_to_the_pods_last_endpoint() {
    let mut gw = gateway();
    let mut a = pod(1);
    let data = connect(&mut gw, &mut a, FROM, &inner(POD_A, b"q"));
    let mut out = vec![0u8; 2048];
    gw.receive(FROM, &data, &mut out);
    let reply = inner(Ipv4Addr::from(SERVER), b"answer");
    let (len, to) = gw.send(POD_A, &reply, &mut out).expect("a session and an endpoint");
    assert_eq!(to, FROM);
    let mut buf = vec![0u8; 2048];
    match a.decapsulate(None, &out[..len], &mut buf) {
        TunnResult::WriteToTunnelV4(p, src) => {
            assert_eq!(p, &reply[..]);
            assert_eq!(src, Ipv4Addr::from(SERVER));
        }
        other => panic!("{other:?}"),
    }
    assert!(gw.send(POD_B, &reply, &mut out).is_none(), "pod-b has no session yet");
}

#[test]
fn a_key_that_is_no_peer_gets_nothing() {
    let mut gw = gateway();
    let mut stranger = pod(9);
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = stranger.encapsulate(&inner(POD_A, b"x"), &mut buf) else { panic!() };
    let init = init.to_vec();
    let mut out = vec![0u8; 2048];
    assert_eq!(gw.receive(FROM, &init, &mut out), Received::Drop(TunnelDrop::UnknownPeer));
    assert_eq!(gw.counters().handshakes_completed, 0);
}

#[test]
fn a_peer_sending_another_pods_source_is_dropped() {
    let mut gw = gateway();
    let mut a = pod(1);
    let spoof = inner(POD_B, b"not mine");
    let data = connect(&mut gw, &mut a, FROM, &spoof);
    let mut out = vec![0u8; 2048];
    assert_eq!(gw.receive(FROM, &data, &mut out), Received::Drop(TunnelDrop::InnerSourceViolation));
    assert_eq!(gw.counters().dropped(TunnelDrop::InnerSourceViolation), 1);
}

#[test]
fn a_replayed_data_packet_is_dropped() {
    let mut gw = gateway();
    let mut a = pod(1);
    let data = connect(&mut gw, &mut a, FROM, &inner(POD_A, b"once"));
    let mut out = vec![0u8; 2048];
    assert!(matches!(gw.receive(FROM, &data, &mut out), Received::Inner { .. }));
    assert_eq!(gw.receive(FROM, &data, &mut out), Received::Drop(TunnelDrop::Replay));
}

#[test]
fn garbage_and_truncated_datagrams_are_dropped_by_reason() {
    let mut gw = gateway();
    let mut a = pod(1);
    let data = connect(&mut gw, &mut a, FROM, &inner(POD_A, b"x"));
    let mut out = vec![0u8; 2048];
    assert_eq!(gw.receive(FROM, b"GET / HTTP/1.1\r\n", &mut out), Received::Drop(TunnelDrop::Malformed));
    assert_eq!(gw.receive(FROM, &[], &mut out), Received::Drop(TunnelDrop::Malformed));
    assert!(matches!(gw.receive(FROM, &data[..data.len() - 1], &mut out), Received::Drop(_)));
    let mut flipped = data.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(gw.receive(FROM, &flipped, &mut out), Received::Drop(TunnelDrop::DecryptFailed));
    // The real one still goes through.
    assert!(matches!(gw.receive(FROM, &data, &mut out), Received::Inner { .. }));
}

#[test]
fn a_pod_that_changes_its_source_port_keeps_working_and_replies_follow_it() {
    let mut gw = gateway();
    let mut a = pod(1);
    let data = connect(&mut gw, &mut a, FROM, &inner(POD_A, b"1"));
    let mut out = vec![0u8; 2048];
    gw.receive(FROM, &data, &mut out);
    let moved = SocketAddrV4::new(*FROM.ip(), 40000);
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(d) = a.encapsulate(&inner(POD_A, b"2"), &mut buf) else { panic!() };
    let d = d.to_vec();
    assert!(matches!(gw.receive(moved, &d, &mut out), Received::Inner { .. }));
    assert_eq!(gw.counters().roams, 1);
    let (_, to) = gw.send(POD_A, &inner(Ipv4Addr::from(SERVER), b"r"), &mut out).unwrap();
    assert_eq!(to, moved);
    // An unauthenticated datagram from elsewhere moves nothing.
    let elsewhere = SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, 9), 1);
    gw.receive(elsewhere, &d, &mut out); // a replay: dropped
    assert_eq!(gw.send(POD_A, &inner(Ipv4Addr::from(SERVER), b"r"), &mut out).unwrap().1, moved);
}

#[test]
fn a_peer_set_change_leaves_the_other_peers_sessions_alone() {
    let mut gw = gateway();
    let (mut a, mut b) = (pod(1), pod(2));
    let da = connect(&mut gw, &mut a, FROM, &inner(POD_A, b"a"));
    let from_b = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 3), 51820);
    let db = connect(&mut gw, &mut b, from_b, &inner(POD_B, b"b"));
    let mut out = vec![0u8; 2048];
    gw.receive(FROM, &da, &mut out);
    gw.receive(from_b, &db, &mut out);
    // Pod-b's PodEndpoint is deleted.
    gw.set_peers(&[PeerConfig { public_key: public(key(1)), pod_ip: POD_A }]);
    assert_eq!(gw.peer_count(), 1);
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(d) = b.encapsulate(&inner(POD_B, b"b2"), &mut buf) else { panic!() };
    let d = d.to_vec();
    assert_eq!(gw.receive(from_b, &d, &mut out), Received::Drop(TunnelDrop::UnknownPeer));
    // Pod-a's session was not touched: no new handshake needed.
    let TunnResult::WriteToNetwork(d) = a.encapsulate(&inner(POD_A, b"a2"), &mut buf) else { panic!() };
    let d = d.to_vec();
    assert!(matches!(gw.receive(FROM, &d, &mut out), Received::Inner { pod: POD_A, .. }));
    assert_eq!(gw.counters().handshakes_completed, 2);
}

#[test]
fn a_flood_of_initiations_is_answered_with_cookies() {
    let mut gw = Tunnel::with_handshake_limit(GW_KEY, &[PeerConfig { public_key: public(key(1)), pod_ip: POD_A }], 5);
    let mut a = pod(1);
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let mut replies = 0;
    for _ in 0..20 {
        let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut buf, true) else { panic!() };
        let init = init.to_vec();
        if let Received::Reply { .. } = gw.receive(FROM, &init, &mut out) {
            replies += 1;
        }
    }
    assert_eq!(replies, 20, "every initiation is answered, by a response or a cookie");
    assert!(gw.counters().cookie_replies > 0, "under load: cookies ({:?})", gw.counters());
    assert!(gw.counters().handshakes_completed <= 6);
}

mod workers {
    //! Peers spread over workers: each datagram ends up where its peer is.
    use super::*;

    fn pods_owned_by(worker: u16, workers: u16) -> Ipv4Addr {
        (2..=250u8).map(|i| Ipv4Addr::new(198, 18, 0, i)).find(|p| owner_of(u32::from(*p), workers) == worker).unwrap()
    }

    /// Worker 0 and worker `owner` of `workers`, sharing one peer that
    /// `owner` holds, and that peer's pod address.
    fn two_workers(owner: u16, workers: u16) -> (Tunnel, Tunnel, Ipv4Addr) {
        let pod_ip = pods_owned_by(owner, workers);
        let peers = [PeerConfig { public_key: public(key(1)), pod_ip }];
        let limiter = Tunnel::limiter(GW_KEY, HANDSHAKES_PER_SEC);
        let w0 = Tunnel::for_worker(GW_KEY, &peers, Arc::clone(&limiter), 0, workers);
        (w0, Tunnel::for_worker(GW_KEY, &peers, limiter, owner, workers), pod_ip)
    }

    #[test]
    fn an_initiation_for_another_workers_peer_is_sent_there_and_answered_there() {
        let (mut w0, mut w3, pod_ip) = two_workers(3, 4);
        let mut a = pod(1);
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = a.encapsulate(&inner(pod_ip, b"x"), &mut buf) else { panic!() };
        let init = init.to_vec();
        let mut out = vec![0u8; 2048];
        assert_eq!(w0.receive(FROM, &init, &mut out), Received::Elsewhere { worker: 3 });
        assert!(matches!(w3.receive_handed(FROM, &init, &mut out), Received::Reply { len: 92 }));
        assert_eq!(w3.counters().handshakes_completed, 1);
        assert_eq!(w0.counters().handshakes_completed, 0);
    }

    #[test]
    fn data_for_another_workers_session_is_sent_to_that_worker() {
        let (mut w0, mut w1, pod_ip) = two_workers(1, 2);
        let mut a = pod(1);
        let first = inner(pod_ip, b"hello");
        let data = connect(&mut w1, &mut a, FROM, &first);
        let mut out = vec![0u8; 2048];
        assert_eq!(w0.receive(FROM, &data, &mut out), Received::Elsewhere { worker: 1 });
        assert_eq!(w1.receive(FROM, &data, &mut out), Received::Inner { len: first.len(), pod: pod_ip });
    }
}

mod stage {
    //! The stage around the tunnels: whole IPv4/UDP datagrams in and out,
    //! from a plan with a tunnelled config.
    use super::*;
    use crate::plan::{Binding, GatewayConfig, Plan, TunnelConfig, WgKey, WgSecret};
    use crate::tunnel::stage::SharedLimiters;
    use crate::tunnel::{Inbound, Outbound, TunnelStage};
    use crate::wire::ipv4::Header;
    use crate::wire::udp;

    const ILB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 50, 100), 6000);

    fn plan() -> Arc<crate::nat::CompiledPlan> {
        let mut c = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
        c.tunnel = Some(TunnelConfig { address: *ILB.ip(), port: ILB.port(), private_key: WgSecret(GW_KEY) });
        let bindings = vec![Binding { pod_ip: POD_A, config: "a".into(), public_key: Some(WgKey(public(key(1)))) }];
        Arc::new(
            crate::nat::CompiledPlan::new(&Plan {
                network_policies: Vec::new(),
                version: 1,
                configs: vec![c],
                bindings: bindings.into(),
            })
            .unwrap(),
        )
    }

    fn datagram(payload: &[u8], from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        v[udp::HEADERS..udp::HEADERS + payload.len()].copy_from_slice(payload);
        let n = udp::emit(&mut v, from, to, payload.len());
        v.truncate(n);
        v
    }

    /// Feeds a datagram from the pod to the stage; the buffer as it left.
    fn feed(st: &mut TunnelStage, payload: &[u8]) -> (Inbound, Vec<u8>) {
        let d = datagram(payload, FROM, ILB);
        let mut buf = vec![0u8; 4096];
        buf[..d.len()].copy_from_slice(&d);
        let ip = Header::check(&buf, d.len()).unwrap();
        (st.receive(&mut buf, &ip, false), buf)
    }

    #[test]
    fn a_packet_to_seal_shorter_than_an_ipv4_header_is_dropped_not_read_past() {
        let mut st = TunnelStage::new(0, 1, SharedLimiters::default());
        st.apply_plan(&plan());
        let mut buf = vec![0x45u8; 2048];
        assert_eq!(st.seal(&mut buf, 12), Outbound::Drop(crate::tunnel::TunnelDrop::Malformed));
    }

    #[test]
    fn a_pods_tunnel_through_the_stage_both_ways_from_the_tunnel_endpoint() {
        let mut st = TunnelStage::new(0, 1, SharedLimiters::default());
        st.apply_plan(&plan());
        let mut a = pod(1);
        let mut b = vec![0u8; 2048];
        let first = inner(POD_A, b"hello");
        let TunnResult::WriteToNetwork(init) = a.encapsulate(&first, &mut b) else { panic!() };
        let init = init.to_vec();
        let (Inbound::Reply { len }, out) = feed(&mut st, &init) else { panic!("no handshake response") };
        let reply = udp::parse(&out[..len]).unwrap();
        assert_eq!((reply.src, reply.dst), (ILB, FROM), "replies leave from the tunnel endpoint");
        let TunnResult::WriteToNetwork(ka) = a.decapsulate(None, &out[reply.payload], &mut b) else { panic!() };
        let ka = ka.to_vec();
        assert_eq!(feed(&mut st, &ka).0, Inbound::Consumed);
        let TunnResult::WriteToNetwork(data) = a.decapsulate(None, &[], &mut b) else { panic!() };
        let data = data.to_vec();
        let (Inbound::Inner { len }, out) = feed(&mut st, &data) else { panic!("no inner packet") };
        assert_eq!(&out[..len], &first[..]);

        // The way back: an IPv4 packet to the pod, sealed in place.
        let mut back = vec![0u8; 4096];
        let mut v = Vec::new();
        PacketBuilder::ipv4(SERVER, POD_A.octets(), 60).udp(53, 5000).write(&mut v, b"answer").unwrap();
        back[..v.len()].copy_from_slice(&v);
        let Outbound::Sealed { len, to } = st.seal(&mut back, v.len()) else { panic!("not sealed") };
        assert_eq!(to, FROM);
        let d = udp::parse(&back[..len]).unwrap();
        assert_eq!((d.src, d.dst), (ILB, FROM));
        let TunnResult::WriteToTunnelV4(got, _) = a.decapsulate(None, &back[d.payload], &mut b) else { panic!() };
        assert_eq!(got, &v[..]);
    }

    #[test]
    fn traffic_that_is_not_for_a_tunnel_is_left_to_the_nat_core() {
        let mut st = TunnelStage::new(0, 1, SharedLimiters::default());
        st.apply_plan(&plan());
        let other = SocketAddrV4::new(*ILB.ip(), 6001);
        let d = datagram(b"hello", FROM, other);
        let mut buf = d.clone();
        let ip = Header::check(&buf, d.len()).unwrap();
        assert_eq!(st.receive(&mut buf, &ip, false), Inbound::NotTunnel);
        assert_eq!(buf, d, "untouched");
    }

    #[test]
    fn a_packet_for_a_pod_without_a_session_is_dropped_and_counted() {
        let mut st = TunnelStage::new(0, 1, SharedLimiters::default());
        st.apply_plan(&plan());
        let mut v = Vec::new();
        PacketBuilder::ipv4(SERVER, POD_A.octets(), 60).udp(53, 5000).write(&mut v, b"answer").unwrap();
        let mut buf = vec![0u8; 4096];
        buf[..v.len()].copy_from_slice(&v);
        assert_eq!(st.seal(&mut buf, v.len()), Outbound::Drop(TunnelDrop::NoSession));
        assert_eq!(st.reports()[0].counters.dropped(TunnelDrop::NoSession), 1);
    }

    #[test]
    fn a_packet_for_another_workers_pod_is_sealed_there() {
        let other = (0..2u16).find(|w| *w != owner_of(u32::from(POD_A), 2)).unwrap();
        let mut st = TunnelStage::new(other, 2, SharedLimiters::default());
        st.apply_plan(&plan());
        let mut v = Vec::new();
        PacketBuilder::ipv4(SERVER, POD_A.octets(), 60).udp(53, 5000).write(&mut v, b"x").unwrap();
        let mut buf = vec![0u8; 4096];
        buf[..v.len()].copy_from_slice(&v);
        assert_eq!(st.seal(&mut buf, v.len()), Outbound::Elsewhere { worker: owner_of(u32::from(POD_A), 2) });
    }

    #[test]
    fn reports_name_the_public_key_never_the_private_one() {
        let mut st = TunnelStage::new(0, 1, SharedLimiters::default());
        st.apply_plan(&plan());
        let j = serde_json::to_string(&st.reports()[0]).unwrap();
        assert!(j.contains(&WgKey(public(GW_KEY)).to_string()));
        assert!(!j.contains(&WgKey(GW_KEY).to_string()));
    }
}

/// Where the pod's datagrams come from on a VNet: its own address.
const POD_A_SOCK: SocketAddrV4 = SocketAddrV4::new(POD_A, 51820);

/// Pod A with its tunnel up through a first gateway, its next data
/// datagram (which that gateway never sees: it failed over), and a buffer.
fn after_failover() -> (Tunn, Vec<u8>, Vec<u8>) {
    let mut a = pod(1);
    let mut gw1 = gateway();
    let data = connect(&mut gw1, &mut a, POD_A_SOCK, &inner(POD_A, b"one"));
    let mut out = vec![0u8; 2048];
    assert!(matches!(gw1.receive(POD_A_SOCK, &data, &mut out), Received::Inner { .. }));
    let data = sealed(&mut a, &inner(POD_A, b"two"));
    (a, data, out)
}

/// What the pod's WireGuard sends for `inner`.
fn sealed(pod: &mut Tunn, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(d) = pod.encapsulate(inner, &mut buf) else { panic!("nothing to send") };
    d.to_vec()
}

#[test]
fn data_for_a_session_held_elsewhere_from_a_pods_address_resumes_its_tunnel_in_one_round_trip() {
    let (mut a, data, mut out) = after_failover();
    // Failover: the other node (same config key, same peers) gets it.
    let mut gw2 = gateway();
    let Received::Reply { len } = gw2.receive(POD_A_SOCK, &data, &mut out) else { panic!("no initiation") };
    assert_eq!(len, 148, "a handshake initiation");
    assert_eq!((gw2.counters().resumes, gw2.counters().dropped(TunnelDrop::UnknownPeer)), (1, 1));
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(response) = a.decapsulate(None, &out[..len], &mut buf) else {
        panic!("the pod did not answer")
    };
    let response = response.to_vec();
    let Received::Reply { len } = gw2.receive(POD_A_SOCK, &response, &mut out) else { panic!("no keepalive") };
    assert_eq!(gw2.counters().handshakes_completed, 1);
    assert!(matches!(a.decapsulate(None, &out[..len], &mut buf), TunnResult::Done));
    let next = inner(POD_A, b"three");
    let d = sealed(&mut a, &next);
    assert_eq!(gw2.receive(POD_A_SOCK, &d, &mut out), Received::Inner { len: next.len(), pod: POD_A });
}

#[test]
fn a_resume_in_progress_is_not_started_again() {
    let (_a, data, mut out) = after_failover();
    let mut gw2 = gateway();
    assert!(matches!(gw2.receive(POD_A_SOCK, &data, &mut out), Received::Reply { .. }));
    for _ in 0..10 {
        assert_eq!(gw2.receive(POD_A_SOCK, &data, &mut out), Received::Drop(TunnelDrop::UnknownPeer));
    }
    assert_eq!(gw2.counters().resumes, 1);
}

#[test]
fn data_for_no_session_from_an_address_that_is_no_pods_starts_nothing() {
    let (_a, data, mut out) = after_failover();
    let mut gw2 = gateway();
    assert_eq!(gw2.receive(FROM, &data, &mut out), Received::Drop(TunnelDrop::UnknownPeer));
    assert_eq!(gw2.counters().resumes, 0);
}

#[test]
fn with_several_workers_the_resume_happens_where_the_pods_peer_lives() {
    let (_a, data, mut out) = after_failover();
    let peers = [PeerConfig { public_key: public(key(1)), pod_ip: POD_A }];
    let limiter = Tunnel::limiter(GW_KEY, 1000);
    let fresh =
        || -> Vec<Tunnel> { (0..4).map(|w| Tunnel::for_worker(GW_KEY, &peers, limiter.clone(), w, 4)).collect() };
    let owner = usize::from(owner_of(u32::from(POD_A), 4));
    for first in 0..4 {
        // A fresh set each time, so each arrival worker is tried.
        let mut workers = fresh();
        let (mut at, mut handed) = (first, false);
        let mut hops = 0;
        let r = loop {
            let r = if handed {
                workers[at].receive_handed(POD_A_SOCK, &data, &mut out)
            } else {
                workers[at].receive(POD_A_SOCK, &data, &mut out)
            };
            match r {
                Received::Elsewhere { worker } if hops < 3 => {
                    (at, handed, hops) = (usize::from(worker), true, hops + 1)
                }
                r => break r,
            }
        };
        assert!(matches!(r, Received::Reply { len: 148 }), "arriving at worker {first}: {r:?}");
        assert_eq!(at, owner, "arriving at worker {first}");
    }
}

mod hostile {
    //! What a VNet host that knows the config's and a pod's public keys
    //! (both published) can do to that pod's tunnel: nothing.
    use super::*;

    const FORGER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 66, 6), 51820);

    /// Pod A's tunnel up from `FROM`, and the initiation it opened it with.
    fn live_pod(gw: &mut Tunnel) -> (Tunn, Vec<u8>) {
        let mut a = pod(1);
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = a.encapsulate(&inner(POD_A, b"q"), &mut buf) else { panic!() };
        let init = init.to_vec();
        let mut out = vec![0u8; 2048];
        let Received::Reply { len } = gw.receive(FROM, &init, &mut out) else { panic!("no response") };
        let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, &out[..len], &mut buf) else { panic!() };
        let keepalive = keepalive.to_vec();
        assert_eq!(gw.receive(FROM, &keepalive, &mut out), Received::Consumed);
        (a, init)
    }

    #[test]
    fn replayed_initiations_from_another_address_never_move_the_pods_endpoint() {
        let mut gw = gateway();
        let (mut a, init) = live_pod(&mut gw);
        let mut out = vec![0u8; 2048];
        // Dozens a second: past any per-peer budget, so cookies come back.
        for _ in 0..50 {
            let r = gw.receive(FORGER, &init, &mut out);
            assert!(!matches!(r, Received::Inner { .. } | Received::Consumed), "{r:?}");
        }
        let reply = inner(Ipv4Addr::from(SERVER), b"for pod-a only");
        let (len, to) = gw.send(POD_A, &reply, &mut out).expect("pod-a's session");
        assert_eq!(to, FROM, "the pod's packets still go to the pod");
        assert_eq!(gw.counters().roams, 0);
        let mut buf = vec![0u8; 2048];
        assert!(matches!(a.decapsulate(None, &out[..len], &mut buf), TunnResult::WriteToTunnelV4(..)));
    }

    #[test]
    fn a_cookie_reply_under_the_configs_load_moves_no_endpoint() {
        let mut gw =
            Tunnel::with_handshake_limit(GW_KEY, &[PeerConfig { public_key: public(key(1)), pod_ip: POD_A }], 2);
        let (_a, init) = live_pod(&mut gw);
        let mut out = vec![0u8; 2048];
        let mut cookies = 0;
        for _ in 0..10 {
            if gw.receive(FORGER, &init, &mut out) == (Received::Reply { len: 64 }) {
                cookies += 1;
            }
        }
        assert!(cookies > 0, "the config's budget answered with cookies");
        let (_, to) = gw.send(POD_A, &inner(Ipv4Addr::from(SERVER), b"r"), &mut out).expect("session");
        assert_eq!(to, FROM);
    }

    #[test]
    fn peers_that_trade_pod_addresses_both_keep_their_replies() {
        const FROM_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 3), 51820);
        let mut gw = gateway();
        let (mut a, mut b) = (pod(1), pod(2));
        let da = connect(&mut gw, &mut a, FROM, &inner(POD_A, b"a"));
        let db = connect(&mut gw, &mut b, FROM_B, &inner(POD_B, b"b"));
        let mut out = vec![0u8; 2048];
        gw.receive(FROM, &da, &mut out);
        gw.receive(FROM_B, &db, &mut out);
        // The pods' IPs are reused the other way round (each keeps its key).
        gw.set_peers(&[
            PeerConfig { public_key: public(key(1)), pod_ip: POD_B },
            PeerConfig { public_key: public(key(2)), pod_ip: POD_A },
        ]);
        let r = inner(Ipv4Addr::from(SERVER), b"r");
        assert_eq!(gw.send(POD_B, &r, &mut out).map(|s| s.1), Some(FROM), "POD_B is key 1's now");
        assert_eq!(gw.send(POD_A, &r, &mut out).map(|s| s.1), Some(FROM_B), "POD_A is key 2's now");
    }

    /// `n` peers (keys 1..=n) on pods 198.18.2.1.., one worker.
    fn many_peers(n: u8) -> Tunnel {
        let peers: Vec<PeerConfig> =
            (1..=n).map(|i| PeerConfig { public_key: public(key(i)), pod_ip: Ipv4Addr::new(198, 18, 2, i) }).collect();
        Tunnel::new(GW_KEY, &peers)
    }

    #[test]
    fn spoofed_data_from_every_pods_address_starts_a_bounded_number_of_resumes() {
        let (_a, data, mut out) = after_failover();
        let mut gw = many_peers(RESUMES_PER_TICK as u8 + 36);
        let spoof = |i: u8| SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, i), 51820);
        for i in 1..=RESUMES_PER_TICK as u8 + 36 {
            gw.receive(spoof(i), &data, &mut out);
        }
        assert_eq!(gw.counters().resumes, u64::from(RESUMES_PER_TICK));
        assert_eq!(gw.counters().dropped(TunnelDrop::ResumeLimited), 36);
        // The next tick renews the budget.
        gw.tick(&mut out.clone(), |_, _| {});
        gw.receive(spoof(RESUMES_PER_TICK as u8 + 36), &data, &mut out);
        assert_eq!(gw.counters().resumes, u64::from(RESUMES_PER_TICK) + 1);
    }

    #[test]
    fn a_packet_for_a_pod_whose_session_is_being_renewed_is_sent_once_it_is() {
        // The gateway resumes pod A's tunnel (it knows its endpoint, has no
        // session): a reply from the server comes meanwhile.
        let (mut a, data, mut out) = after_failover();
        let mut gw = gateway();
        let Received::Reply { len } = gw.receive(POD_A_SOCK, &data, &mut out) else { panic!("no initiation") };
        let init = out[..len].to_vec();
        let reply = inner(Ipv4Addr::from(SERVER), b"while renewing");
        assert!(gw.send(POD_A, &reply, &mut out).is_none(), "held, an initiation being under way");
        assert_eq!((gw.counters().held_for_handshake, gw.counters().tx_packets), (1, 0));
        assert_eq!(gw.counters().total_drops(), 1, "only the datagram that asked for the resume");
        // The handshake completes.
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(response) = a.decapsulate(None, &init, &mut buf) else { panic!() };
        let response = response.to_vec();
        assert!(matches!(gw.receive(POD_A_SOCK, &response, &mut out), Received::Reply { .. }));
        let mut sent = Vec::new();
        gw.tick(&mut out, |d, to| sent.push((d.to_vec(), to)));
        let delivered: Vec<Vec<u8>> = sent
            .iter()
            .filter(|(_, to)| *to == POD_A_SOCK)
            .filter_map(|(d, _)| match a.decapsulate(None, d, &mut buf) {
                TunnResult::WriteToTunnelV4(p, _) => Some(p.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(delivered, vec![reply], "the held packet reached the pod");
        assert_eq!(gw.counters().tx_packets, 1);
    }
}
