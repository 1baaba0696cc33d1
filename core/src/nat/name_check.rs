//! The server name check: a TCP flow that an FQDN rule allows on a TLS or
//! HTTP port passes its handshake, then its first bytes decide. Each data
//! segment from the pod is read (in order) before it is forwarded, until
//! the TLS ClientHello's `server_name` or the HTTP request's `Host` is
//! known; then the policy is evaluated again with that name
//! ([`CompiledPolicy::evaluate_named`]). A refused flow is reset both ways:
//! the segment in hand becomes the reset to the server, and a reset goes to
//! the pod (through the engine's released queue).
//!
//! What the gateway judged must be what the server reads: data is read
//! only from the place the server's SYN-ACK confirmed, and after an
//! allowed verdict the check holds until the server acknowledges the
//! judged bytes (a judged segment the server dropped, for its TTL, its
//! checksum or a bogus acknowledgment, may only be sent again as it was).
//! A new connection on the tuple is judged again.
//!
//! Only sessions flagged `NAME_CHECK` come here (one branch on the flags
//! the in2out path reads anyway); their state is bounded per worker, and
//! per pod a share of it, like every shared table.

use super::frag::{ReleaseTo, Released};
use super::policy::WireName;
use super::rewrite::write_bare_tcp;
use super::{ipv4, session, state, CompiledPlan, DropReason, HashMap, NatEngine, Session, Side, Time, Verdict};
use crate::wire::ipv4::Header;
use crate::wire::server_name::{ClientHelloReader, HttpHostReader, NoName, Progress, MAX_NAME};
use crate::wire::tcp::{self as tcpw, TcpPacket, TcpRepr};

/// Flows awaiting their name on one worker, and the shares one pod and
/// one config (a tenant: all its pods together) may hold.
pub const NAME_CHECKS_MAX: usize = 16_384;
pub const NAME_CHECKS_POD_SHARE_DIVISOR: usize = 16;
pub const NAME_CHECKS_CONFIG_SHARE_DIVISOR: usize = 4;
/// Longest a flow may take from its first packet to its verdict.
pub const NAME_VERDICT_MS: u64 = 10_000;
/// Segments already forwarded whose retransmission passes unchanged.
const FORWARDED_KEPT: usize = 4;

/// Why a flow that needed a name was refused (counted per rule too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameRefusal {
    SniMismatch,
    SniMissing,
    SniTimeout,
    HostMismatch,
    HostMissing,
    HostTimeout,
    QuicRefused,
}

impl NameRefusal {
    pub const ALL: [NameRefusal; 7] = [
        NameRefusal::SniMismatch,
        NameRefusal::SniMissing,
        NameRefusal::SniTimeout,
        NameRefusal::HostMismatch,
        NameRefusal::HostMissing,
        NameRefusal::HostTimeout,
        NameRefusal::QuicRefused,
    ];

    pub fn as_str(self) -> &'static str {
        self.drop_reason().name()
    }

    pub fn drop_reason(self) -> DropReason {
        match self {
            NameRefusal::SniMismatch => DropReason::SniMismatch,
            NameRefusal::SniMissing => DropReason::SniMissing,
            NameRefusal::SniTimeout => DropReason::SniTimeout,
            NameRefusal::HostMismatch => DropReason::HostMismatch,
            NameRefusal::HostMissing => DropReason::HostMissing,
            NameRefusal::HostTimeout => DropReason::HostTimeout,
            NameRefusal::QuicRefused => DropReason::QuicRefused,
        }
    }

    fn of(kind: WireName, no: Option<NoName>) -> NameRefusal {
        match (kind, no) {
            (WireName::Quic, _) => NameRefusal::QuicRefused,
            (WireName::Tls, None) => NameRefusal::SniMismatch,
            (WireName::Tls, Some(NoName::TooLong)) => NameRefusal::SniTimeout,
            (WireName::Tls, Some(_)) => NameRefusal::SniMissing,
            (WireName::Http, None) => NameRefusal::HostMismatch,
            (WireName::Http, Some(NoName::TooLong)) => NameRefusal::HostTimeout,
            (WireName::Http, Some(_)) => NameRefusal::HostMissing,
        }
    }
}

#[derive(Clone)]
enum Reader {
    Tls(Box<ClientHelloReader>),
    Http(Box<HttpHostReader>),
}

/// One flow awaiting its name.
struct Pending {
    /// The flow (to tell a reused session slot from it).
    pod: u32,
    pod_port: u16,
    remote: u32,
    remote_port: u16,
    config: u16,
    /// The rule that allowed the flow on condition; refusals count there.
    rule: u32,
    kind: WireName,
    reader: Reader,
    /// Sequence number of the next stream byte the reader wants.
    next_seq: u32,
    /// Whether `next_seq` is known (a SYN seen), and where the stream
    /// starts (the SYN's sequence number + 1).
    anchored: bool,
    start: u32,
    /// The server answered that SYN (a SYN-ACK acknowledging `start`): the
    /// bytes the reader reads from `start` are the ones the server's
    /// connection reads. Before, data is not read (a SYN to a connection
    /// the server already holds is answered by a bare ACK, and bytes at a
    /// sequence number the pod chose would land anywhere in that stream).
    confirmed: bool,
    /// After an allowed verdict: the end of the judged bytes. The check
    /// holds until the server acknowledges them: until then a judged byte
    /// may have never reached it (a segment sent with a TTL that expires
    /// past the gateway, a bad checksum or an acknowledgment the server
    /// drops), and only the very segments judged may be sent again.
    judged_end: Option<u32>,
    /// The end of the bytes forwarded so far (`judged_end` and beyond).
    sent_end: u32,
    /// The ClientHello's `server_name` was read, and allowed, before the
    /// hello's end.
    name_seen: bool,
    /// The pod's last acknowledgment: the server's next sequence number,
    /// which a reset to the pod must carry.
    pod_ack: Option<u32>,
    deadline_ms: u64,
    /// (seq, length, hash) of the last segments judged and forwarded, and
    /// how many there were.
    forwarded: [(u32, u32, u64); FORWARDED_KEPT],
    forwarded_n: usize,
}

impl Pending {
    /// Whether this check is `s`'s (a session slot may have been reused).
    fn is_of(&self, s: &Session) -> bool {
        self.pod == s.pod && self.pod_port == s.pod_port && self.remote == s.remote && self.remote_port == s.remote_port
    }

    fn remember(&mut self, seq: u32, len: u32, hash: u64) {
        self.forwarded[self.forwarded_n % FORWARDED_KEPT] = (seq, len, hash);
        self.forwarded_n += 1;
    }
}

/// Flows awaiting their name, by session index.
#[derive(Default)]
pub(super) struct NameChecks {
    pending: HashMap<u32, Pending>,
    per_pod: HashMap<u32, u32>,
    per_config: HashMap<u16, u32>,
    /// Keys of the digest of forwarded segments (random per engine: a pod
    /// must not be able to craft two payloads with one digest).
    digest_keys: std::collections::hash_map::RandomState,
    /// When the next sweep for flows past their time is due (engine ms).
    next_sweep_ms: u64,
}

/// A name refusal counted against its rule: (config, rule, reason).
pub(super) type RefusalKey = (u16, u32, NameRefusal);

impl NameChecks {
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Room for one more flow of `pod` in `config`: the table's bound, the
    /// pod's share and its config's.
    fn has_room(&self, pod: u32, config: u16) -> bool {
        let by_pod = self.per_pod.get(&pod).copied().unwrap_or(0) as usize;
        let by_config = self.per_config.get(&config).copied().unwrap_or(0) as usize;
        self.pending.len() < NAME_CHECKS_MAX
            && by_pod < NAME_CHECKS_MAX / NAME_CHECKS_POD_SHARE_DIVISOR
            && by_config < NAME_CHECKS_MAX / NAME_CHECKS_CONFIG_SHARE_DIVISOR
    }

    fn insert(&mut self, i: u32, p: Pending) {
        let (pod, config) = (p.pod, p.config);
        if let Some(old) = self.pending.insert(i, p) {
            self.release(old.pod, old.config);
        }
        *self.per_pod.entry(pod).or_default() += 1;
        *self.per_config.entry(config).or_default() += 1;
    }

    pub(super) fn forget(&mut self, i: u32) {
        if let Some(p) = self.pending.remove(&i) {
            self.release(p.pod, p.config);
        }
    }

    fn release(&mut self, pod: u32, config: u16) {
        fn down<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K) {
            if let Some(n) = m.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&k);
                }
            }
        }
        down(&mut self.per_pod, pod);
        down(&mut self.per_config, config);
    }
}

/// A digest of a segment's payload, to tell a retransmission that changes
/// bytes from one that does not: keyed (SipHash with the engine's random
/// keys), as the pod chooses both payloads and the first may never have
/// reached the server.
fn digest(keys: &std::collections::hash_map::RandomState, bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    keys.hash_one(bytes)
}

/// `a` is at or after `b` in sequence space.
fn seq_ge(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

/// What the name check says of a segment.
pub(super) enum NameStep {
    /// Forward it as any segment of the session.
    Pass,
    /// The check answered instead (a drop or a reset).
    Answer(Verdict),
}

impl NatEngine {
    /// Flows on this worker awaiting their name on the wire.
    pub fn name_checks_pending(&self) -> usize {
        self.name_checks.len()
    }

    /// Notes that session `i` (just created) must show a name of the kind
    /// `needs` before its data passes. `false` when there is no room: the
    /// flow is refused rather than let through unread.
    pub(super) fn expect_name(
        &mut self,
        i: u32,
        needs: WireName,
        rule: u32,
        tcp_seq: Option<(u8, u32)>,
        now: Time,
    ) -> bool {
        let s = *self.sessions.get(i);
        if !self.name_checks.has_room(s.pod, s.config) {
            return false;
        }
        let reader = match needs {
            WireName::Http => Reader::Http(Box::default()),
            _ => Reader::Tls(Box::default()),
        };
        // A SYN fixes where the stream starts (and the server's SYN-ACK
        // confirms it); a flow picked up mid-stream cannot be judged: its
        // first data is refused.
        let (anchored, next_seq) = match tcp_seq {
            Some((f, seq)) if f & tcpw::SYN != 0 => (true, seq.wrapping_add(1)),
            _ => (false, 0),
        };
        let p = Pending {
            pod: s.pod,
            pod_port: s.pod_port,
            remote: s.remote,
            remote_port: s.remote_port,
            config: s.config,
            rule,
            kind: needs,
            reader,
            next_seq,
            anchored,
            start: next_seq,
            confirmed: false,
            judged_end: None,
            sent_end: next_seq,
            name_seen: false,
            pod_ack: None,
            deadline_ms: now.millis() + NAME_VERDICT_MS,
            forwarded: [(0, 0, 0); FORWARDED_KEPT],
            forwarded_n: 0,
        };
        self.name_checks.insert(i, p);
        self.sessions.get_mut(i).flags |= session::flags::NAME_CHECK;
        true
    }

    /// A segment from the pod on a session awaiting its name.
    pub(super) fn check_name(&mut self, buf: &mut [u8], len: usize, p: &Header, i: u32, now: Time) -> NameStep {
        let s = *self.sessions.get(i);
        let seg = TcpPacket::new_unchecked(&buf[p.hl..len]);
        let (flags, seq, ack) = (seg.flags(), seg.seq(), seg.ack());
        let payload = seg.payload();
        let Some(q) = self.name_checks.pending.get_mut(&i).filter(|q| q.is_of(&s)) else {
            // Flagged without its reader (restored from a snapshot, say):
            // it cannot be judged, so it does not pass.
            self.sessions.get_mut(i).flags &= !session::flags::NAME_CHECK;
            self.counters.drop(DropReason::NameCheckLost);
            return NameStep::Answer(self.reset_both_ways(buf, i, seq, (flags & tcpw::ACK != 0).then_some(ack), now));
        };
        if flags & tcpw::ACK != 0 {
            q.pod_ack = Some(ack);
        }
        if flags & tcpw::RST != 0 {
            // The pod gives up: its reset goes on and the session ends with
            // it. A reset the server ignores (out of its window) must not
            // leave the session open with nothing left to read its data.
            self.name_checks.forget(i);
            self.sessions.get_mut(i).flags &= !session::flags::NAME_CHECK;
            let rst = TcpRepr {
                src_port: s.egress_port,
                dst_port: s.remote_port,
                seq,
                ack: if flags & tcpw::ACK != 0 { ack } else { 0 },
                flags: flags & (tcpw::RST | tcpw::ACK),
            };
            let len = write_bare_tcp(buf, &rst, s.egress, s.remote);
            self.end_session(i, now);
            return NameStep::Answer(Verdict::Forward { side: Side::Outside, len });
        }
        let data_seq = seq.wrapping_add(u32::from(flags & tcpw::SYN != 0));
        if flags & tcpw::SYN != 0 {
            if !q.anchored {
                q.anchored = true;
                (q.next_seq, q.start, q.sent_end) = (data_seq, data_seq, data_seq);
            } else if data_seq != q.start {
                // Another SYN on the tuple: the server may answer either;
                // the stream judged is the first one's.
                return NameStep::Answer(self.drop(DropReason::NameCheckUnordered));
            }
        }
        if payload.is_empty() {
            return NameStep::Pass;
        }
        let (kind, rule) = (q.kind, q.rule);
        if now.millis() >= q.deadline_ms {
            return NameStep::Answer(self.refuse_name(
                buf,
                p,
                i,
                rule,
                NameRefusal::of(kind, Some(NoName::TooLong)),
                now,
            ));
        }
        if !q.anchored {
            // Picked up mid-stream (no SYN seen): where the server's stream
            // stands is unknown, so no bytes here can be judged as its start.
            return NameStep::Answer(self.refuse_name(
                buf,
                p,
                i,
                rule,
                NameRefusal::of(kind, Some(NoName::Malformed)),
                now,
            ));
        }
        let plen = payload.len() as u32;
        // Urgent data (the byte the urgent pointer marks leaves the stream
        // the server's application reads, unless SO_OOBINLINE) is not read;
        // nor is data before the server's SYN-ACK, but for the SYN's own
        // (TCP Fast Open) and the judged bytes again: data to a connection
        // the server never answered would land anywhere in the stream it
        // holds.
        let judged_again = q.judged_end.is_some_and(|end| !seq_ge(data_seq, end));
        if flags & tcpw::URG != 0 || (!q.confirmed && flags & tcpw::SYN == 0 && !judged_again) {
            return NameStep::Answer(self.drop(DropReason::NameCheckUnordered));
        }
        let h = digest(&self.name_checks.digest_keys, payload);
        let resent = |q: &Pending| {
            q.forwarded[..q.forwarded_n.min(FORWARDED_KEPT)]
                .iter()
                .any(|&(s0, l0, h0)| s0 == data_seq && l0 == plen && h0 == h)
        };
        if let Some(end) = q.judged_end {
            // Allowed, but not yet acknowledged by the server: data past
            // the judged bytes passes, a judged byte only as the very
            // segment that carried it.
            if seq_ge(data_seq, end) {
                let e = data_seq.wrapping_add(plen);
                if seq_ge(e, q.sent_end) {
                    q.sent_end = e;
                }
                return NameStep::Pass;
            }
            if resent(q) {
                return NameStep::Pass;
            }
            return NameStep::Answer(self.drop(DropReason::NameCheckUnordered));
        }
        let off = data_seq.wrapping_sub(q.next_seq) as i32;
        if off != 0 {
            // Before the verdict only the next bytes in order are read: a
            // gap is dropped (the pod sends it again), old bytes pass only
            // as the very segment already read (a retransmission), never as
            // bytes that would change what was judged.
            if off < 0 && resent(q) {
                return NameStep::Pass;
            }
            return NameStep::Answer(self.drop(DropReason::NameCheckUnordered));
        }
        let progress = match &mut q.reader {
            Reader::Tls(r) => r.feed(payload),
            Reader::Http(r) => r.feed(payload),
        };
        let mut copy = [0u8; MAX_NAME];
        let (name_len, hello_done) = match progress {
            Progress::More => {
                // A ClientHello's name is judged as soon as it is read, not
                // at the hello's end: the segment that carries a name no
                // rule allows never passes (an SNI router may act on it
                // before the hello ends).
                let early = match &q.reader {
                    Reader::Tls(r) if !q.name_seen => r.name_so_far().map(|n| {
                        copy[..n.len()].copy_from_slice(n.as_bytes());
                        n.len()
                    }),
                    _ => None,
                };
                let Some(n) = early else {
                    q.next_seq = q.next_seq.wrapping_add(plen);
                    q.sent_end = q.next_seq;
                    q.remember(data_seq, plen, h);
                    return NameStep::Pass;
                };
                q.name_seen = true;
                (n, false)
            }
            Progress::NoName(no) => {
                return NameStep::Answer(self.refuse_name(buf, p, i, rule, NameRefusal::of(kind, Some(no)), now));
            }
            Progress::Name(n) => {
                copy[..n.len()].copy_from_slice(n.as_bytes());
                (n.len(), true)
            }
        };
        let name = std::str::from_utf8(&copy[..name_len]).unwrap_or_default();
        // The policy again, with the name: the plan may have changed since
        // the flow opened, and the name must be one the allowing rule lists.
        let cfg = self.plan.configs[usize::from(s.config)].policy.clone();
        let decided = cfg.as_ref().map(|pol| {
            let names = self.learned_names(pol, s.pod, s.remote, now);
            pol.evaluate_named(s.pod, s.remote, s.proto, s.remote_port, &names, name)
        });
        if decided.is_some_and(|d| d.action == crate::plan::PolicyAction::Deny) {
            return NameStep::Answer(self.refuse_name(buf, p, i, rule, NameRefusal::of(kind, None), now));
        }
        if !hello_done {
            // Allowed so far: the rest of the hello is read, in order.
            if let Some(q) = self.name_checks.pending.get_mut(&i) {
                q.next_seq = q.next_seq.wrapping_add(plen);
                q.sent_end = q.next_seq;
                q.remember(data_seq, plen, h);
            }
            return NameStep::Pass;
        }
        // The check holds until the server acknowledges the judged bytes.
        if let Some(q) = self.name_checks.pending.get_mut(&i) {
            let end = data_seq.wrapping_add(plen);
            q.remember(data_seq, plen, h);
            (q.next_seq, q.sent_end, q.judged_end) = (end, end, Some(end));
            q.deadline_ms = now.millis() + NAME_VERDICT_MS;
        }
        self.counters.names_allowed += 1;
        let cfg = &self.plan.configs[usize::from(s.config)];
        if !self.events.name(cfg, &s, decided.and_then(|d| d.rule), name, now) {
            self.counters.nat_events_lost += 1;
        }
        NameStep::Pass
    }

    /// A segment from the server on a session under the name check: its
    /// SYN-ACK confirms where the stream starts; its acknowledgment of the
    /// judged bytes (and of no more than was sent) ends the check.
    pub(super) fn name_check_from_server(&mut self, buf: &[u8], len: usize, hl: usize, i: u32) {
        let s = *self.sessions.get(i);
        let seg = TcpPacket::new_unchecked(&buf[hl..len]);
        let (flags, ack) = (seg.flags(), seg.ack());
        if flags & tcpw::ACK == 0 || flags & tcpw::RST != 0 {
            return;
        }
        let Some(q) = self.name_checks.pending.get_mut(&i).filter(|q| q.is_of(&s)) else { return };
        if flags & tcpw::SYN != 0 {
            // Acknowledging the SYN, or the SYN and its data (TCP Fast Open).
            if q.anchored && (ack == q.start || ack == q.next_seq) {
                q.confirmed = true;
            }
            return;
        }
        if let Some(end) = q.judged_end {
            if q.confirmed && seq_ge(ack, end) && seq_ge(q.sent_end, ack) {
                self.name_checks.forget(i);
                self.sessions.get_mut(i).flags &= !session::flags::NAME_CHECK;
            }
        }
    }

    /// Whether a pod's segment with `flags` opens a new connection on
    /// session `i`, whose name check (if any) is over: a SYN after the
    /// server answered, or after a FIN or a reset (a SYN retransmission is
    /// not one).
    #[inline]
    pub(super) fn reopens_judged_connection(&self, i: u32, flags: u8) -> bool {
        use session::state::*;
        let s = self.sessions.get(i);
        flags & (tcpw::SYN | tcpw::ACK) == tcpw::SYN
            && s.flags & session::flags::NAME_CHECK == 0
            && s.state & (SYN_IN | FIN_OUT | FIN_IN | RST | ESTABLISHED) != 0
    }

    /// A SYN from the pod on a session not under the name check: a new
    /// connection on the same tuple (after a FIN or a reset, or beside one
    /// the server still holds) is judged again, as its rule says. `false`
    /// when there is no room to judge it.
    pub(super) fn name_check_new_connection(&mut self, i: u32, seq: u32, now: Time) -> bool {
        let s = *self.sessions.get(i);
        let Some(pol) = self.plan.configs[usize::from(s.config)].policy.clone() else { return true };
        let names = self.learned_names(&pol, s.pod, s.remote, now);
        let d = pol.evaluate(s.pod, s.remote, s.proto, s.remote_port, &names);
        match (d.action, d.needs, d.rule) {
            (crate::plan::PolicyAction::Allow, Some(needs @ (WireName::Tls | WireName::Http)), Some(rule)) => {
                self.expect_name(i, needs, rule, Some((tcpw::SYN, seq)), now)
            }
            _ => true,
        }
    }

    /// Refuses a flow for its name: counted per rule and reason, reset both ways.
    fn refuse_name(&mut self, buf: &mut [u8], p: &Header, i: u32, rule: u32, why: NameRefusal, now: Time) -> Verdict {
        let s = *self.sessions.get(i);
        self.count_refusal(s.config, rule, why);
        self.counters.drop(why.drop_reason());
        let (seq, ack) = {
            let seg = TcpPacket::new_unchecked(&buf[p.hl..]);
            (seg.seq().wrapping_add(u32::from(seg.flags() & tcpw::SYN != 0)), seg.ack())
        };
        let pod_ack = self.name_checks.pending.get(&i).and_then(|q| q.pod_ack).or(Some(ack));
        self.reset_both_ways(buf, i, seq, pod_ack, now)
    }

    pub(super) fn count_refusal(&mut self, config: u16, rule: u32, why: NameRefusal) {
        *self.policy.name_refusals.entry((config, rule, why)).or_default() += 1;
    }

    /// Turns the pod's segment in `buf` into a reset to the server (at the
    /// segment's own sequence number, which the server expects) and queues
    /// a reset to the pod (at its last acknowledgment); ends the session.
    fn reset_both_ways(&mut self, buf: &mut [u8], i: u32, seq: u32, pod_ack: Option<u32>, now: Time) -> Verdict {
        let s = *self.sessions.get(i);
        if let Some(ack) = pod_ack {
            self.queue_reset_to_pod(&s, ack);
        }
        let rst = TcpRepr { src_port: s.egress_port, dst_port: s.remote_port, seq, ack: 0, flags: tcpw::RST };
        let len = write_bare_tcp(buf, &rst, s.egress, s.remote);
        self.name_checks.forget(i);
        self.end_session(i, now);
        Verdict::Forward { side: Side::Outside, len }
    }

    fn queue_reset_to_pod(&mut self, s: &Session, seq: u32) {
        let mut bytes = vec![0u8; ipv4::HEADER_LEN + tcpw::HEADER_LEN];
        let rst = TcpRepr { src_port: s.remote_port, dst_port: s.pod_port, seq, ack: 0, flags: tcpw::RST };
        write_bare_tcp(&mut bytes, &rst, s.remote, s.pod);
        self.counters.name_resets_to_pods += 1;
        self.frags.release(Released { bytes, to: ReleaseTo::Side(Side::Inside) });
    }

    /// Moves name refusal counts and the rules of flows awaiting their name
    /// to the new plan's positions (a rule is known by config and rule
    /// name; counts of rules that are gone are dropped).
    pub(super) fn carry_name_refusals(&mut self, old: &CompiledPlan, new: &CompiledPlan) {
        let position = |config: u16, rule: u32| -> Option<(u16, u32)> {
            let c = old.configs.get(usize::from(config))?;
            let name = c.policy.as_ref().filter(|p| (rule as usize) < p.rule_count())?.rule_name(rule);
            let (ci, nc) = new.configs.iter().enumerate().find(|(_, n)| n.name == c.name)?;
            let p = nc.policy.as_ref()?;
            let ri = (0..p.rule_count() as u32).find(|&r| p.rule_name(r) == name)?;
            Some((ci as u16, ri))
        };
        let old_counts = std::mem::take(&mut self.policy.name_refusals);
        for ((config, rule, why), n) in old_counts {
            if let Some((c, r)) = position(config, rule) {
                *self.policy.name_refusals.entry((c, r, why)).or_default() += n;
            }
        }
        for q in self.name_checks.pending.values_mut() {
            // A flow whose rule is gone is judged by the new plan at its
            // verdict; its refusal then counts under the default.
            let (c, r) = position(q.config, q.rule).unwrap_or((q.config, u32::MAX));
            q.config = c;
            q.rule = r;
        }
        // Config shares are counted by the new plan's positions.
        let checks = &mut self.name_checks;
        checks.per_config.clear();
        for q in checks.pending.values() {
            *checks.per_config.entry(q.config).or_default() += 1;
        }
    }

    /// Resets both ways the flows whose verdict is overdue (their pods went
    /// quiet mid-ClientHello), once a second at most.
    pub(super) fn expire_name_checks(&mut self, now: Time) {
        if self.name_checks.pending.is_empty() || now.millis() < self.name_checks.next_sweep_ms {
            return;
        }
        self.name_checks.next_sweep_ms = now.millis() + 1000;
        let overdue: Vec<u32> =
            self.name_checks.pending.iter().filter(|(_, q)| now.millis() >= q.deadline_ms).map(|(&i, _)| i).collect();
        for i in overdue {
            let Some(q) = self.name_checks.pending.remove(&i) else { continue };
            self.name_checks.release(q.pod, q.config);
            self.freshen_session(i);
            let s = *self.sessions.get(i);
            if s.flags & session::flags::NAME_CHECK == 0 || s.state & state::FREE != 0 || s.pod != q.pod {
                continue;
            }
            self.count_refusal(q.config, q.rule, NameRefusal::of(q.kind, Some(NoName::TooLong)));
            self.counters.drop(NameRefusal::of(q.kind, Some(NoName::TooLong)).drop_reason());
            if let Some(ack) = q.pod_ack {
                self.queue_reset_to_pod(&s, ack);
            }
            if q.anchored {
                let mut bytes = vec![0u8; ipv4::HEADER_LEN + tcpw::HEADER_LEN];
                let rst = TcpRepr {
                    src_port: s.egress_port,
                    dst_port: s.remote_port,
                    seq: q.next_seq,
                    ack: 0,
                    flags: tcpw::RST,
                };
                write_bare_tcp(&mut bytes, &rst, s.egress, s.remote);
                self.frags.release(Released { bytes, to: ReleaseTo::Side(Side::Outside) });
            }
            self.end_session(i, now);
        }
    }
}
