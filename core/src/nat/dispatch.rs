//! The engine's entry points: which packet goes which way. A packet from
//! the inside is a pod's (bound, tunnelled or in a fallback source CIDR)
//! or an excluded host's return traffic; from the outside, a reply to an
//! egress address. Everything else is dropped and counted.

use super::{ipv4, DropReason, Ipv4Packet, NatEngine, PodInfo, Side, Time, Verdict};
use crate::wire::ipv4::{Header, HeaderError};

impl NatEngine {
    /// Translates one IPv4 packet in place, not knowing which side it came
    /// from (one-armed: pods and the internet share the interface).
    pub fn process(&mut self, buf: &mut [u8], len: usize, now: Time) -> Verdict {
        self.process_from(buf, len, None, now)
    }

    /// Translates one IPv4 packet in place. `buf` starts at the IP header and
    /// runs to the end of the frame's room (replies may need up to 64 bytes
    /// more than `len`); `len` is the bytes received; `from`, where known,
    /// the side it arrived on: a pod's source is believed only from the
    /// inside, and the outside's traffic (to egress addresses, or from
    /// excluded hosts to pods) only from the outside.
    pub fn process_from(&mut self, buf: &mut [u8], len: usize, from: Option<Side>, now: Time) -> Verdict {
        match self.check_header(buf, len) {
            Ok(ip) => self.translate(buf, &ip, from, false, now),
            Err(v) => v,
        }
    }

    /// As [`NatEngine::process_from`] for a packet the tunnel stage
    /// decrypted: it comes from the inside, from its peer's pod.
    pub fn process_tunnelled(&mut self, buf: &mut [u8], len: usize, now: Time) -> Verdict {
        match self.check_header(buf, len) {
            Ok(ip) => self.translate(buf, &ip, Some(Side::Inside), true, now),
            Err(v) => v,
        }
    }

    /// Checks a received packet's IPv4 header, once for every stage after
    /// it; a header refused is dropped and counted here.
    #[inline(always)]
    pub fn check_header(&mut self, buf: &[u8], len: usize) -> Result<Header, Verdict> {
        Header::check(buf, len).map_err(|e| {
            self.drop(match e {
                HeaderError::BadChecksum => DropReason::BadIpChecksum,
                HeaderError::Truncated => DropReason::Truncated,
                HeaderError::Malformed => DropReason::Malformed,
            })
        })
    }

    /// Whether packets for `pod` go through a tunnel (the worker encrypts
    /// what the engine forwards to it).
    #[inline]
    pub fn is_tunnelled(&self, pod: u32) -> bool {
        self.any_tunnelled && self.pod(pod).is_some_and(|p| p.tunnelled)
    }

    /// Translates one packet whose header [`NatEngine::check_header`]
    /// checked; `tunnelled`: the tunnel stage decrypted it. Where it goes
    /// next is the verdict's to say, sealing included: what leaves toward a
    /// tunnelled pod goes through its tunnel.
    #[inline(always)]
    pub fn translate(
        &mut self,
        buf: &mut [u8],
        ip: &Header,
        from: Option<Side>,
        tunnelled: bool,
        now: Time,
    ) -> Verdict {
        let v = self.steer(buf, ip, from, tunnelled, now);
        if !self.any_tunnelled {
            return v;
        }
        match v {
            Verdict::Forward { side: Side::Inside, len } | Verdict::Reply { len }
                if self.is_tunnelled(ipv4::destination(buf)) =>
            {
                Verdict::Seal { len }
            }
            v => v,
        }
    }

    /// Which way a packet goes, by its addresses and the side it came from.
    #[inline(always)]
    fn steer(&mut self, buf: &mut [u8], ip: &Header, from: Option<Side>, tunnelled: bool, now: Time) -> Verdict {
        self.ports.draws.settle();
        let (src, dst) = (ip.src, ip.dst);
        if let Some(pod) = self.pod(src) {
            if from == Some(Side::Outside) {
                return self.drop(DropReason::WrongInterface);
            }
            if pod.tunnelled != tunnelled {
                return self.drop(DropReason::NotTunnelled);
            }
            return self.in2out(buf, ip, pod.config, now);
        }
        if tunnelled {
            // The tunnel checked the source is its peer's pod; a pod no
            // longer bound (a plan between) is no pod at all.
            return self.drop(DropReason::UnboundSource);
        }
        if let Some(ci) = self.plan.source_config(src) {
            if from == Some(Side::Outside) {
                return self.drop(DropReason::WrongInterface);
            }
            return self.in2out_fallback(buf, ip, ci, now);
        }
        if self.plan.egress.contains_key(&dst) {
            if from == Some(Side::Inside) {
                return self.drop(DropReason::WrongInterface);
            }
            return self.out2in(buf, ip, now);
        }
        if let Some(ci) = self.pod(dst).map(|p| p.config).or_else(|| self.plan.source_config(dst)) {
            if from == Some(Side::Inside) {
                return self.drop(DropReason::WrongInterface);
            }
            return self.excluded_return(buf, ip, ci, now);
        }
        self.drop(DropReason::UnboundSource)
    }

    /// A source bound only by a fallback CIDR: adopted as a pod of its
    /// config for this packet, kept while it holds a session or a port.
    pub(super) fn in2out_fallback(&mut self, buf: &mut [u8], ip: &Header, ci: u16, now: Time) -> Verdict {
        let src = ip.src;
        let pod = PodInfo::fallback(src, ci, &self.plan);
        self.holdings.fallbacks.insert(src, pod);
        let v = self.in2out(buf, ip, ci, now);
        self.holdings.note_if_idle(src);
        self.holdings.forget_idle();
        v
    }

    /// To a pod's own address: only replies from its config's excluded
    /// destinations (which it reached untranslated) come back this way.
    pub(super) fn excluded_return(&mut self, buf: &mut [u8], ip: &Header, ci: u16, now: Time) -> Verdict {
        if !self.config(ci).excludes(ip.src) {
            return self.drop(DropReason::Unsolicited);
        }
        if ip.ttl <= 1 {
            return self.drop(DropReason::TtlExpired);
        }
        let (router, dst, len) = (u32::from(self.settings.router_ip), ip.dst, ip.total);
        if let Some(v) = self.refuse_too_big(buf, len, Side::Inside, dst, router, now) {
            return v;
        }
        Ipv4Packet::new_unchecked(&mut buf[..len]).decrement_ttl();
        self.counters.bypass_packets += 1;
        self.forward_fitted(buf, len, Side::Inside)
    }
}
