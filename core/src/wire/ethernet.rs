//! A view of an Ethernet II header, which the worker strips and rebuilds
//! around the NAT core.

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
}

pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;

pub type MacAddr = [u8; 6];

/// The ethertype of a frame, if it is long enough to have one.
#[inline]
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    EthernetFrame::new_checked(frame).ok().map(|f| f.ethertype())
}

/// Whether a frame says it holds an IPv4 packet carrying TCP: all the RX
/// latency bound asks of the frames at the head of a standing queue
/// (nothing is checked: frames that lie only raise their ring's wait).
#[inline]
pub fn carries_tcp(frame: &[u8]) -> bool {
    ethertype(frame) == Some(ETHERTYPE_IPV4)
        && frame.get(HEADER_LEN..).and_then(super::ipv4::protocol) == Some(super::ipv4::PROTO_TCP)
}

#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer of at least [`HEADER_LEN`] bytes.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, super::Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(super::Error::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    /// Wraps a buffer known to hold a header: a whole UMEM frame, or one
    /// the caller sized. Accessors panic on a shorter one.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    #[inline]
    pub fn dst(&self) -> MacAddr {
        self.buffer.as_ref()[field::DST].try_into().expect("6 bytes")
    }
    #[inline]
    pub fn src(&self) -> MacAddr {
        self.buffer.as_ref()[field::SRC].try_into().expect("6 bytes")
    }
    #[inline]
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::ETHERTYPE.start], b[field::ETHERTYPE.start + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Addresses the frame from `src` to `dst` as IPv4.
    #[inline]
    pub fn emit(&mut self, dst: MacAddr, src: MacAddr) {
        let b = self.buffer.as_mut();
        b[field::DST].copy_from_slice(&dst);
        b[field::SRC].copy_from_slice(&src);
        b[field::ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    }

    /// Readdresses an IPv4 frame to its next hop (the ethertype stays).
    #[inline]
    pub fn readdress(&mut self, dst: MacAddr, src: MacAddr) {
        let b = self.buffer.as_mut();
        b[field::DST].copy_from_slice(&dst);
        b[field::SRC].copy_from_slice(&src);
    }

    /// Marks the frame IPv4 (addresses left for the sending worker).
    #[inline]
    pub fn set_ipv4(&mut self) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    }

    /// Turns the frame back to its sender: the old source becomes the
    /// destination, `own` the source.
    #[inline]
    pub fn reply_from(&mut self, own: MacAddr) {
        let b = self.buffer.as_mut();
        b.copy_within(field::SRC, field::DST.start);
        b[field::SRC].copy_from_slice(&own);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_goes_back_to_the_sender_from_us() {
        let mut b = [0u8; 20];
        let mut f = EthernetFrame::new_checked(&mut b[..]).unwrap();
        f.emit([1; 6], [2; 6]);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        f.reply_from([3; 6]);
        assert_eq!((f.dst(), f.src()), ([2; 6], [3; 6]));
        assert!(EthernetFrame::new_checked(&b[..13]).is_err());
        assert_eq!(ethertype(&b), Some(ETHERTYPE_IPV4));
    }

    #[test]
    fn a_frame_carries_tcp_when_its_ipv4_protocol_says_so() {
        let mut f = [0u8; 64];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[HEADER_LEN] = 0x45;
        f[HEADER_LEN + 9] = 6;
        assert!(carries_tcp(&f));
        f[HEADER_LEN + 9] = 17;
        assert!(!carries_tcp(&f), "UDP");
        f[HEADER_LEN + 9] = 6;
        f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert!(!carries_tcp(&f), "not IPv4");
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        assert!(!carries_tcp(&f[..HEADER_LEN + 9]), "too short to say");
    }
}
