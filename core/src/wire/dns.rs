//! Just enough DNS (RFC 1035) to learn which IPv4 addresses a name resolved
//! to from a response passing through the gateway: the question name, CNAME
//! chains from it, and the A records at the end of them. Compression
//! pointers are followed with a hop limit; anything malformed yields nothing.

/// One learned address: the queried name resolved (possibly through CNAMEs)
/// to `addr`, valid for `ttl` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub addr: [u8; 4],
    pub ttl: u32,
}

const MAX_NAME: usize = 255;
const MAX_HOPS: usize = 16;
const MAX_CHAIN: usize = 8;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;

fn read16(m: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?]))
}

/// Reads a possibly compressed name at `at`; returns it lowercased and the
/// offset just past it in the message.
fn read_name(m: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    let mut hops = 0;
    loop {
        let len = *m.get(at)?;
        match len >> 6 {
            0 if len == 0 => {
                return Some((name, end.unwrap_or(at + 1)));
            }
            0 => {
                let label = m.get(at + 1..at + 1 + usize::from(len))?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &c in label {
                    if !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
                        return None;
                    }
                    name.push(c.to_ascii_lowercase() as char);
                }
                if name.len() > MAX_NAME {
                    return None;
                }
                at += 1 + usize::from(len);
            }
            3 => {
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                let ptr = usize::from(read16(m, at)? & 0x3fff);
                end.get_or_insert(at + 2);
                at = ptr;
            }
            _ => return None,
        }
    }
}

/// The A records a response gives for its question, following CNAMEs.
/// Returns nothing for queries, errors, truncated or malformed messages.
/// The DNS message a TCP segment's data holds when it holds exactly one,
/// length-prefixed (RFC 1035 4.2.2); `None` for a partial or several.
pub fn tcp_message(data: &[u8]) -> Option<&[u8]> {
    match data {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => Some(rest),
        _ => None,
    }
}

pub fn answers(m: &[u8]) -> Vec<Answer> {
    parse(m).unwrap_or_default()
}

fn parse(m: &[u8]) -> Option<Vec<Answer>> {
    let flags = read16(m, 2)?;
    let (qr, opcode, rcode) = (flags >> 15, (flags >> 11) & 0xf, flags & 0xf);
    if qr != 1 || opcode != 0 || rcode != 0 {
        return None;
    }
    let (qd, an) = (read16(m, 4)?, read16(m, 6)?);
    if qd != 1 {
        return None;
    }
    let (qname, mut at) = read_name(m, 12)?;
    at += 4; // QTYPE, QCLASS
    let mut records = Vec::new();
    for _ in 0..an {
        let (owner, next) = read_name(m, at)?;
        let (ty, class) = (read16(m, next)?, read16(m, next + 2)?);
        let ttl = u32::from_be_bytes(m.get(next + 4..next + 8)?.try_into().ok()?);
        let rdlen = usize::from(read16(m, next + 8)?);
        let rdata_at = next + 10;
        let rdata = m.get(rdata_at..rdata_at + rdlen)?;
        if class == CLASS_IN {
            match ty {
                TYPE_A if rdlen == 4 => records.push((owner, Ok([rdata[0], rdata[1], rdata[2], rdata[3]]), ttl)),
                TYPE_CNAME => records.push((owner, Err(read_name(m, rdata_at)?.0), ttl)),
                _ => {}
            }
        }
        at = rdata_at + rdlen;
    }
    // Names the question reaches through CNAMEs, with the smallest TTL on the way.
    let mut reach = vec![(qname.clone(), u32::MAX)];
    for _ in 0..MAX_CHAIN {
        let mut grew = false;
        for (owner, rec, ttl) in &records {
            if let Err(target) = rec {
                if let Some(&(_, t)) = reach.iter().find(|(n, _)| n == owner) {
                    if !reach.iter().any(|(n, _)| n == target) {
                        reach.push((target.clone(), t.min(*ttl)));
                        grew = true;
                    }
                }
            }
        }
        if !grew {
            break;
        }
    }
    Some(
        records
            .iter()
            .filter_map(|(owner, rec, ttl)| {
                let addr = *rec.as_ref().ok()?;
                let &(_, t) = reach.iter().find(|(n, _)| n == owner)?;
                Some(Answer { name: qname.clone(), addr, ttl: t.min(*ttl) })
            })
            .collect(),
    )
}

#[cfg(test)]
pub mod tests {
    use super::*;

    fn name(n: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for l in n.split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    }

    /// A response for `q` with the given (owner, type, rdata, ttl) records.
    pub fn response(q: &str, records: &[(&str, u16, Vec<u8>, u32)]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, records.len() as u8, 0, 0, 0, 0];
        m.extend(name(q));
        m.extend([0, 1, 0, 1]);
        for (owner, ty, rdata, ttl) in records {
            if *owner == q {
                m.extend([0xc0, 12]); // compressed: points at the question
            } else {
                m.extend(name(owner));
            }
            m.extend(ty.to_be_bytes());
            m.extend([0, 1]);
            m.extend(ttl.to_be_bytes());
            m.extend((rdata.len() as u16).to_be_bytes());
            m.extend(rdata);
        }
        m
    }

    #[test]
    fn a_records_of_the_question() {
        let m = response("API.example.com", &[("API.example.com", 1, vec![198, 19, 0, 10], 60)]);
        assert_eq!(answers(&m), vec![Answer { name: "api.example.com".into(), addr: [198, 19, 0, 10], ttl: 60 }]);
    }

    #[test]
    fn cname_chains_are_followed_with_the_smallest_ttl() {
        let m = response(
            "api.example.com",
            &[
                ("api.example.com", 5, name("edge.cdn.net"), 30),
                ("edge.cdn.net", 1, vec![198, 19, 0, 11], 300),
                ("unrelated.net", 1, vec![198, 19, 0, 12], 300),
            ],
        );
        assert_eq!(answers(&m), vec![Answer { name: "api.example.com".into(), addr: [198, 19, 0, 11], ttl: 30 }]);
    }

    #[test]
    fn queries_errors_and_garbage_yield_nothing() {
        let mut m = response("a.example.com", &[("a.example.com", 1, vec![1, 2, 3, 4], 60)]);
        m[2] = 0x01; // a query
        assert!(answers(&m).is_empty());
        let mut m = response("a.example.com", &[("a.example.com", 1, vec![1, 2, 3, 4], 60)]);
        m[3] = 0x83; // NXDOMAIN
        assert!(answers(&m).is_empty());
        let m = response("a.example.com", &[("a.example.com", 1, vec![1, 2, 3, 4], 60)]);
        assert!(answers(&m[..m.len() - 2]).is_empty());
        // A pointer loop.
        let mut l = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12];
        l.extend([0, 1, 0, 1]);
        assert!(answers(&l).is_empty());
        for n in 0..64 {
            let _ = answers(&vec![n as u8; n]);
        }
    }
}
