//! The way out's MTU (RFC 1812 4.2.2.7 / 5.2.6, RFC 4787 REQ-13): a packet
//! too big for the interface it leaves by is never silently lost. With DF
//! set, its sender gets fragmentation needed carrying the MTU (PMTU
//! discovery, RFC 1191); without, the gateway fragments it after
//! translation, the first piece in the frame and the rest released.

use super::frag::Released;
use super::{ipv4, DropReason, Ipv4Packet, NatEngine, ReleaseTo, Side, Time, Verdict};
use crate::wire::icmp;

impl NatEngine {
    /// The MTU of the way out toward `side` for a packet to `to`: the
    /// interface's, or for a tunnelled pod its tunnel's (what the pod's
    /// `wg0` takes, kube-egress-cni leaves it at the WireGuard default).
    #[inline(always)]
    pub(super) fn mtu(&self, side: Side, to: u32) -> usize {
        let mtu = self.settings.mtu[side as usize];
        if side == Side::Inside && self.is_tunnelled(to) {
            return mtu.min(crate::compiled::TUNNEL_MTU);
        }
        mtu
    }

    /// Before translation: a DF packet larger than the way out's MTU is
    /// answered with fragmentation needed, from `from` (the gateway's
    /// inside address toward pods, the egress address toward the internet),
    /// quoting the packet as its sender sent it. `None`: it may go on.
    #[inline(always)]
    pub(super) fn refuse_too_big(
        &mut self,
        buf: &mut [u8],
        len: usize,
        side: Side,
        to: u32,
        from: u32,
        now: Time,
    ) -> Option<Verdict> {
        let mtu = self.mtu(side, to);
        if len <= mtu || !Ipv4Packet::new_unchecked(&buf[..len]).dont_frag() {
            return None;
        }
        let mtu = mtu.min(usize::from(u16::MAX)) as u16;
        Some(self.send_error_with(
            buf,
            len,
            (icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED),
            [0, 0, (mtu >> 8) as u8, mtu as u8],
            from,
            DropReason::PacketTooBig,
            now,
        ))
    }

    /// After translation: a (DF=0) packet larger than the way out's MTU
    /// leaves in fragments.
    #[inline(always)]
    pub(super) fn forward_fitted(&mut self, buf: &mut [u8], len: usize, side: Side) -> Verdict {
        if len <= self.mtu(side, ipv4::destination(buf)) {
            return Verdict::Forward { side, len };
        }
        self.fragment_out(buf, len, side)
    }

    /// A held fragment released toward a side whose MTU it exceeds: sent
    /// in pieces like any other (the rest queued behind it).
    #[cold]
    pub(super) fn fit_released(&mut self, mut r: Released, side: Side) -> Option<Released> {
        let len = r.bytes.len();
        match self.split(&mut r.bytes, len, side) {
            Some(first) => {
                r.bytes.truncate(first);
                Some(r)
            }
            None => {
                self.counters.drop(DropReason::PacketTooBig);
                self.take_released()
            }
        }
    }

    #[cold]
    fn fragment_out(&mut self, buf: &mut [u8], len: usize, side: Side) -> Verdict {
        match self.split(buf, len, side) {
            Some(first) => Verdict::Forward { side, len: first },
            None => self.drop(DropReason::PacketTooBig),
        }
    }

    /// Fragments `buf[..len]` for `side`'s MTU: the first piece stays in
    /// `buf` (its length returned), the others are queued for release.
    fn split(&mut self, buf: &mut [u8], len: usize, side: Side) -> Option<usize> {
        let mut rest = Vec::new();
        let mtu = self.mtu(side, ipv4::destination(buf));
        let first = crate::wire::ipv4::fragment(buf, len, mtu, &mut rest)?;
        self.counters.fragments_made += 1 + rest.len() as u64;
        for bytes in rest {
            self.frags.release(Released { bytes, to: ReleaseTo::Side(side) });
        }
        Some(first)
    }
}
