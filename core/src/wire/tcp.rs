//! A view of a TCP header: the ports and flags the NAT reads and rewrites,
//! and [`TcpRepr`] for the one segment the gateway writes itself (a reset).

use super::checksum;
use super::ip::IpProtocol;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ: Field = 4..8;
    pub const ACK: Field = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: Field = 16..18;
}

pub const HEADER_LEN: usize = 20;
/// Where the checksum sits (the NAT updates it in place).
pub const CHECKSUM_AT: usize = field::CHECKSUM.start;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

#[derive(Debug)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline(always)]
fn be16(b: &[u8], f: field::Field) -> u16 {
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

#[inline(always)]
fn be32(b: &[u8], f: field::Field) -> u32 {
    u32::from_be_bytes([b[f.start], b[f.start + 1], b[f.start + 2], b[f.start + 3]])
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps without checks; the caller saw at least [`HEADER_LEN`] bytes.
    #[inline(always)]
    pub fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps a segment of at least [`HEADER_LEN`] bytes.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, super::Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(super::Error::Truncated);
        }
        Ok(TcpPacket { buffer })
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }
    #[inline]
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }
    #[inline]
    pub fn ack(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// Header length from the data offset (options included).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }
    /// Bytes after the header (0 if the offset points past the end).
    #[inline]
    pub fn payload_len(&self) -> usize {
        self.buffer.as_ref().len().saturating_sub(self.header_len())
    }
}

impl<'a> TcpPacket<&'a [u8]> {
    /// The data after the header (empty if the offset points past the end).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.buffer.get(self.header_len()..).unwrap_or(&[])
    }
}

/// A TCP segment without options or data, as the gateway writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

impl TcpRepr {
    /// The reset a segment's destination would send in answer to it (RFC
    /// 793, "reset generation"): ports swapped, no data.
    pub fn reset_for<T: AsRef<[u8]>>(seg: &TcpPacket<T>) -> TcpRepr {
        let flags = seg.flags();
        let (seq, ack, flags) = if flags & ACK != 0 {
            (seg.ack(), 0, RST)
        } else {
            let data = seg.payload_len() as u32;
            let ctl = u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
            (0, seg.seq().wrapping_add(data + ctl), RST | ACK)
        };
        TcpRepr { src_port: seg.dst_port(), dst_port: seg.src_port(), seq, ack, flags }
    }

    /// Writes the header into `buf[..HEADER_LEN]`, with the checksum over
    /// the pseudo-header of `src` → `dst`.
    pub fn emit(&self, buf: &mut [u8], src: [u8; 4], dst: [u8; 4]) {
        let t = &mut buf[..HEADER_LEN];
        t.fill(0);
        t[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        t[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        t[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        t[field::ACK].copy_from_slice(&self.ack.to_be_bytes());
        t[field::DATA_OFF] = ((HEADER_LEN / 4) as u8) << 4;
        t[field::FLAGS] = self.flags;
        let acc = checksum::pseudo_header(src, dst, IpProtocol::Tcp.number(), HEADER_LEN as u16);
        let c = checksum::finish(checksum::sum(acc, t));
        t[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_answers_a_syn_with_its_sequence_plus_one() {
        let syn = TcpRepr { src_port: 40000, dst_port: 443, seq: 1000, ack: 0, flags: SYN };
        let mut b = [0u8; HEADER_LEN];
        syn.emit(&mut b, [198, 18, 0, 2], [198, 19, 0, 1]);
        let rst = TcpRepr::reset_for(&TcpPacket::new_checked(&b[..]).unwrap());
        assert_eq!(rst, TcpRepr { src_port: 443, dst_port: 40000, seq: 0, ack: 1001, flags: RST | ACK });
    }

    #[test]
    fn an_emitted_header_verifies() {
        let r = TcpRepr { src_port: 1, dst_port: 2, seq: 3, ack: 4, flags: ACK };
        let mut b = [0u8; HEADER_LEN];
        let (s, d) = ([198, 18, 0, 2], [198, 19, 0, 1]);
        r.emit(&mut b, s, d);
        let acc = checksum::pseudo_header(s, d, 6, HEADER_LEN as u16);
        assert_eq!(checksum::finish(checksum::sum(acc, &b)), 0);
        assert_eq!(TcpPacket::new_checked(&b[..]).unwrap().header_len(), HEADER_LEN);
    }
}
