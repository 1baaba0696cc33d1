//! A view of an ICMP header: type, code, the echo identifier the NAT
//! translates like a port, and the checksum; plus the message types Egret
//! reads and sends.

use super::checksum;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const IDENT: Field = 4..6;
    /// The header's last four bytes (identifier and sequence for echo, the
    /// next-hop MTU for fragmentation needed, unused for most errors).
    pub const REST: Field = 4..8;
}

pub const HEADER_LEN: usize = 8;

pub const ECHO_REPLY: u8 = 0;
pub const DEST_UNREACHABLE: u8 = 3;
pub const ECHO_REQUEST: u8 = 8;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROBLEM: u8 = 12;

/// Destination unreachable codes Egret sends.
pub const CODE_FRAG_NEEDED: u8 = 4;
pub const CODE_ADMIN_PROHIBITED: u8 = 13;

/// Query messages carry an identifier that NAT translates like a port.
#[inline]
pub fn is_query(ty: u8) -> bool {
    matches!(ty, ECHO_REQUEST | ECHO_REPLY)
}

/// Every ICMP error message type (RFC 792: destination unreachable,
/// source quench, redirect, time exceeded, parameter problem). None is
/// ever answered with an ICMP error (RFC 1812 §4.3.2.7, RFC 1122
/// §3.2.2), whether or not the NAT translates it.
#[inline]
pub fn is_error_message(ty: u8) -> bool {
    matches!(ty, DEST_UNREACHABLE | 4 | 5 | TIME_EXCEEDED | PARAMETER_PROBLEM)
}

/// Error messages the NAT translates: they carry the offending packet's
/// header (RFC 792) and reach pods or the internet. Source quench is
/// deprecated (RFC 6633) and a redirect names a link's router: both stop
/// at the gateway.
#[inline]
pub fn is_error(ty: u8) -> bool {
    matches!(ty, DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM)
}

#[derive(Debug)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps without checks; the caller saw at least [`HEADER_LEN`] bytes.
    #[inline(always)]
    pub fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    /// Wraps a message of at least [`HEADER_LEN`] bytes.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, super::Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(super::Error::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }

    #[inline(always)]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    /// The echo identifier (meaningful for queries only).
    #[inline(always)]
    pub fn ident(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::IDENT.start], b[field::IDENT.start + 1]])
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::CHECKSUM.start], b[field::CHECKSUM.start + 1]])
    }
    /// What follows the header: an error's quoted packet, an echo's data.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
    /// Whether the checksum over the whole message verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    #[inline]
    fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
    /// Rewrites the echo identifier, updating the checksum (the ICMP
    /// checksum covers no pseudo-header, so addresses do not enter it).
    #[inline(always)]
    pub fn set_ident(&mut self, new: u16) {
        let c = checksum::update16(self.checksum(), self.ident(), new);
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&new.to_be_bytes());
        self.set_checksum(c);
    }
    /// Writes a fresh header; the checksum is left for [`Self::fill_checksum`]
    /// once the payload is in place.
    #[inline]
    pub fn emit_header(&mut self, ty: u8, code: u8, rest: [u8; 4]) {
        let b = self.buffer.as_mut();
        b[field::TYPE] = ty;
        b[field::CODE] = code;
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        b[field::REST].copy_from_slice(&rest);
    }
    /// Computes the checksum over the whole message from scratch (errors
    /// are rare and short; a quoted packet may have changed in several places).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_identifier_keeps_the_checksum_valid() {
        let mut b = [0u8; 16];
        let mut m = IcmpPacket::new_checked(&mut b[..]).unwrap();
        m.emit_header(ECHO_REQUEST, 0, [0x12, 0x34, 0, 1]);
        m.fill_checksum();
        assert!(m.verify_checksum());
        m.set_ident(0xbeef);
        assert_eq!(m.ident(), 0xbeef);
        assert!(m.verify_checksum());
        assert!(IcmpPacket::new_checked(&b[..7]).is_err());
    }
}
