//! TCP session state (RFC 7857 section 2, as VPP NAT44-ED tracks it): a
//! session is established once SYNs have been seen both ways, transitory
//! before that and after FINs both ways or an RST.

use super::session::state::*;
use crate::plan::Timeouts;
use crate::wire::tcp;

/// Folds one segment's flags into the state. `outbound` is inside → outside.
#[inline]
pub fn update(state: u8, flags: u8, outbound: bool) -> u8 {
    let mut s = state;
    if flags & tcp::RST != 0 {
        return s | RST;
    }
    if flags & tcp::SYN != 0 {
        if outbound && s & (FIN_OUT | FIN_IN | RST) != 0 {
            // A new connection reusing the tuple after the old one closed.
            return SYN_OUT;
        }
        s |= if outbound { SYN_OUT } else { SYN_IN };
    }
    // RFC 7857 2.2 (RFC 6146 3.5.2.2): an RST moves the session to the
    // transitory timer, but any later non-RST segment means the connection
    // lives on (the RST was out of window or spoofed): back to its state.
    s &= !RST;
    if flags & tcp::FIN != 0 {
        s |= if outbound { FIN_OUT } else { FIN_IN };
    }
    if s & (SYN_OUT | SYN_IN) == SYN_OUT | SYN_IN {
        s |= ESTABLISHED;
    } else if s & (SYN_OUT | SYN_IN) == 0 && !outbound && flags & tcp::ACK != 0 {
        // Picked up mid-stream (no SYN seen, e.g. after a restart without a
        // snapshot): traffic both ways makes it established.
        s |= ESTABLISHED;
    }
    s
}

/// The idle timeout for a TCP session in this state.
#[inline]
pub fn timeout(state: u8, t: &Timeouts) -> u32 {
    if state & RST != 0 || state & (FIN_OUT | FIN_IN) == FIN_OUT | FIN_IN {
        t.tcp_transitory
    } else if state & ESTABLISHED != 0 {
        t.tcp_established
    } else {
        t.tcp_transitory
    }
}

/// Flag combinations that may not open a session: SYN with FIN or RST, a
/// bare RST, and segments with none of SYN/ACK/FIN/RST.
#[inline]
pub fn may_open(flags: u8) -> bool {
    let f = flags & (tcp::SYN | tcp::ACK | tcp::FIN | tcp::RST);
    !(f == 0 || f & tcp::RST != 0 || (f & tcp::SYN != 0 && f & tcp::FIN != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    const SYN: u8 = tcp::SYN;
    const SA: u8 = tcp::SYN | tcp::ACK;
    const ACK: u8 = tcp::ACK;
    const FA: u8 = tcp::FIN | tcp::ACK;

    #[test]
    fn handshake_then_close() {
        let t = Timeouts::default();
        let mut s = update(0, SYN, true);
        assert_eq!(timeout(s, &t), 240);
        s = update(s, SA, false);
        s = update(s, ACK, true);
        assert_eq!(timeout(s, &t), 7440);
        s = update(s, FA, true);
        assert_eq!(timeout(s, &t), 7440, "half-closed stays established");
        s = update(s, FA, false);
        assert_eq!(timeout(s, &t), 240);
        // A new SYN on the closed tuple starts over.
        assert_eq!(update(s, SYN, true), SYN_OUT);
    }

    #[test]
    fn rst_is_transitory() {
        let t = Timeouts::default();
        let s = update(update(update(0, SYN, true), SA, false), tcp::RST, false);
        assert_eq!(timeout(s, &t), 240);
    }

    #[test]
    fn a_segment_after_an_rst_restores_the_established_timer() {
        let t = Timeouts::default();
        let est = update(update(update(0, SYN, true), SA, false), ACK, true);
        let reset = update(est, tcp::RST, false);
        assert_eq!(timeout(reset, &t), 240);
        assert_eq!(timeout(update(reset, ACK, true), &t), 7440, "inside ACK after a stray RST");
        assert_eq!(timeout(update(reset, ACK, false), &t), 7440, "outside ACK after a stray RST");
    }

    #[test]
    fn bad_flag_combinations_do_not_open() {
        assert!(may_open(SYN));
        assert!(may_open(ACK));
        assert!(!may_open(tcp::SYN | tcp::FIN));
        assert!(!may_open(tcp::SYN | tcp::RST));
        assert!(!may_open(tcp::RST));
        assert!(!may_open(0));
        assert!(!may_open(0x20)); // URG only
    }
}
