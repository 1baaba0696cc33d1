//! The engine's entry points: which packet goes which way. A packet from
//! the inside is a pod's (bound, tunnelled or in a fallback source CIDR)
//! or an excluded host's return traffic; from the outside, a reply to an
//! egress address. Everything else is dropped and counted.

use super::*;

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
        self.process_arrival(buf, len, from, false, now)
    }

    /// As [`NatEngine::process_from`] for a packet the tunnel stage
    /// decrypted: it comes from the inside, from its peer's pod.
    pub fn process_tunnelled(&mut self, buf: &mut [u8], len: usize, now: Time) -> Verdict {
        self.process_arrival(buf, len, Some(Side::Inside), true, now)
    }

    /// Whether packets for `pod` go through a tunnel (the worker encrypts
    /// what the engine forwards to it).
    #[inline]
    pub fn is_tunnelled(&self, pod: u32) -> bool {
        self.any_tunnelled && self.pod(pod).is_some_and(|p| p.tunnelled)
    }

    /// Where a packet goes next is the verdict's to say, sealing included:
    /// what leaves toward a tunnelled pod goes through its tunnel.
    #[inline(always)]
    pub(super) fn process_arrival(
        &mut self,
        buf: &mut [u8],
        len: usize,
        from: Option<Side>,
        tunnelled: bool,
        now: Time,
    ) -> Verdict {
        let v = self.translate(buf, len, from, tunnelled, now);
        if !self.any_tunnelled {
            return v;
        }
        match v {
            Verdict::Forward { side: Side::Inside, len } | Verdict::Reply { len }
                if self.is_tunnelled(Self::dst_of(buf)) =>
            {
                Verdict::Seal { len }
            }
            v => v,
        }
    }

    fn translate(&mut self, buf: &mut [u8], len: usize, from: Option<Side>, tunnelled: bool, now: Time) -> Verdict {
        self.draws.settle();
        let len = len.min(buf.len());
        let (src, dst, total) = match Ipv4Packet::new_checked(&buf[..len]) {
            Ok(ip) if ip.verify_checksum() => {
                (u32::from_be_bytes(ip.src()), u32::from_be_bytes(ip.dst()), ip.total_len())
            }
            Ok(_) => return self.drop(DropReason::BadIpChecksum),
            Err(WireError::Truncated) => return self.drop(DropReason::Truncated),
            Err(WireError::Malformed) => return self.drop(DropReason::Malformed),
        };
        if let Some(pod) = self.pod(src) {
            if from == Some(Side::Outside) {
                return self.drop(DropReason::WrongInterface);
            }
            if pod.tunnelled != tunnelled {
                return self.drop(DropReason::NotTunnelled);
            }
            return self.in2out(buf, total, pod.config, now);
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
            return self.in2out_fallback(buf, total, src, ci, now);
        }
        if self.plan.egress.contains_key(&dst) {
            if from == Some(Side::Inside) {
                return self.drop(DropReason::WrongInterface);
            }
            return self.out2in(buf, total, now);
        }
        if let Some(ci) = self.pod(dst).map(|p| p.config).or_else(|| self.plan.source_config(dst)) {
            if from == Some(Side::Inside) {
                return self.drop(DropReason::WrongInterface);
            }
            return self.excluded_return(buf, total, ci, src, now);
        }
        self.drop(DropReason::UnboundSource)
    }

    /// A source bound only by a fallback CIDR: adopted as a pod of its
    /// config for this packet, kept while it holds a session or a port.
    pub(super) fn in2out_fallback(&mut self, buf: &mut [u8], len: usize, src: u32, ci: u16, now: Time) -> Verdict {
        let pod = PodInfo::fallback(src, ci, &self.plan);
        self.fallbacks.insert(src, pod);
        let v = self.in2out(buf, len, ci, now);
        self.forget_if_idle(src);
        self.forget_idle();
        v
    }

    /// To a pod's own address: only replies from its config's excluded
    /// destinations (which it reached untranslated) come back this way.
    pub(super) fn excluded_return(&mut self, buf: &mut [u8], len: usize, ci: u16, src: u32, now: Time) -> Verdict {
        if !self.config(ci).excludes(src) {
            return self.drop(DropReason::Unsolicited);
        }
        let ip = Ipv4Packet::new_unchecked(&buf[..len]);
        if ip.ttl() <= 1 {
            return self.drop(DropReason::TtlExpired);
        }
        let (router, dst) = (u32::from(self.settings.router_ip), u32::from_be_bytes(ip.dst()));
        if let Some(v) = self.refuse_too_big(buf, len, Side::Inside, dst, router, now) {
            return v;
        }
        Ipv4Packet::new_unchecked(&mut buf[..len]).decrement_ttl();
        self.counters.bypass_packets += 1;
        self.forward_fitted(buf, len, Side::Inside)
    }
}
