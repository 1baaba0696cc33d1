use super::*;

/// A reader's last word: the name, or why none (`None`: needs more).
type Answer = Result<String, Option<NoName>>;

/// ClientHellos as real clients sent them (testdata/SOURCES.md says which).
const CURL: &[u8] = include_bytes!("../testdata/curl-clienthello.bin");
const OPENSSL: &[u8] = include_bytes!("../testdata/openssl-3.0-clienthello.bin");
const PYTHON: &[u8] = include_bytes!("../testdata/python-ssl-clienthello.bin");
const PYTHON_NO_SNI: &[u8] = include_bytes!("../testdata/python-ssl-no-sni-clienthello.bin");
const CHROME_PQ: &[u8] = include_bytes!("../testdata/chrome-pq-clienthello.bin");
const FIREFOX_PQ: &[u8] = include_bytes!("../testdata/firefox-pq-clienthello.bin");
const CHROME: &[u8] = include_bytes!("../testdata/chrome-clienthello.bin");
const FIREFOX: &[u8] = include_bytes!("../testdata/firefox-clienthello.bin");

/// A reader's answer as an owned value; `None` while it needs more.
fn answer(p: Progress<'_>) -> Option<Answer> {
    match p {
        Progress::More => None,
        Progress::Name(n) => Some(Ok(n.to_string())),
        Progress::NoName(no) => Some(Err(Some(no))),
    }
}

/// What a ClientHello reader says after all of `pieces`, in order.
fn hello_in(pieces: &[&[u8]]) -> Answer {
    let mut r = ClientHelloReader::default();
    pieces.iter().find_map(|p| answer(r.feed(p))).unwrap_or(Err(None))
}

/// What an HTTP Host reader says after all of `pieces`, in order.
fn host_in(pieces: &[&[u8]]) -> Answer {
    let mut r = HttpHostReader::default();
    pieces.iter().find_map(|p| answer(r.feed(p))).unwrap_or(Err(None))
}

/// The same answer whole, split in two at every byte, and byte by byte.
fn same_at_every_split(bytes: &[u8], read: fn(&[&[u8]]) -> Answer) -> Answer {
    let whole = read(&[bytes]);
    for i in 0..=bytes.len() {
        assert_eq!(read(&[&bytes[..i], &bytes[i..]]), whole, "split at {i}");
    }
    let bytes_one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(read(&bytes_one_by_one), whole, "byte by byte");
    whole
}

#[test]
fn real_clients_hellos_give_their_server_name_however_they_are_split() {
    assert_eq!(same_at_every_split(CURL, hello_in), Ok("curl.example.com".into()));
    assert_eq!(same_at_every_split(OPENSSL, hello_in), Ok("openssl.example.com".into()));
    assert_eq!(same_at_every_split(PYTHON, hello_in), Ok("python.example.org".into()), "lower case, no final dot");
    assert_eq!(same_at_every_split(CHROME, hello_in), Ok("edgeapi.slack.com".into()));
    assert_eq!(same_at_every_split(FIREFOX, hello_in), Ok("people-pa.clients6.google.com".into()));
}

#[test]
fn browsers_post_quantum_hellos_longer_than_a_segment_give_their_name_at_every_split() {
    assert!(CHROME_PQ.len() > 1460 && FIREFOX_PQ.len() > 1460);
    assert_eq!(same_at_every_split(CHROME_PQ, hello_in), Ok("localhost".into()));
    assert_eq!(same_at_every_split(FIREFOX_PQ, hello_in), Ok("ja4db.com".into()));
}

/// Found by the `server_name` fuzz target: a hello whose last field runs
/// past the message that holds it, read whole, was answered "missing" (the
/// field's end decided the hello's end) and, split, "malformed".
const OVERRUN: &[u8] = include_bytes!("../testdata/hello-extension-past-its-block.bin");

#[test]
fn a_hello_whose_field_runs_past_its_message_is_malformed_however_it_is_split() {
    assert_eq!(same_at_every_split(OVERRUN, hello_in), Err(Some(NoName::Malformed)));
}

#[test]
fn a_hello_without_server_name_is_missing_one() {
    assert_eq!(same_at_every_split(PYTHON_NO_SNI, hello_in), Err(Some(NoName::Missing)));
}

/// A ClientHello with these extensions (type, body), in one record.
fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext_bytes = Vec::new();
    for (t, body) in exts {
        ext_bytes.extend_from_slice(&t.to_be_bytes());
        ext_bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext_bytes.extend_from_slice(body);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(32);
    body.extend_from_slice(&[9; 32]); // session id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(ext_bytes.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext_bytes);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    records(&hs, 1 << 14)
}

/// Handshake bytes framed as TLS records of at most `max` bytes each.
fn records(hs: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in hs.chunks(max) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn sni(name: &str) -> (u16, Vec<u8>) {
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name.as_bytes());
    let mut body = (entry.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(&entry);
    (0, body)
}

#[test]
fn a_hello_split_over_several_records_gives_its_name() {
    let h = hello(&[(10, vec![0, 2, 0, 29]), sni("split.example")]);
    let hs = &h[5..];
    for max in [1, 7, 50, 100] {
        assert_eq!(hello_in(&[&records(hs, max)]), Ok("split.example".into()), "records of {max}");
    }
}

#[test]
fn a_name_behind_a_post_quantum_key_share_is_read_at_every_split() {
    // X25519MLKEM768's share is 1216 bytes: the name comes in a later
    // segment, as Chrome's randomised extension order often puts it.
    let mut share = vec![0, 0];
    share.extend_from_slice(&0x11ecu16.to_be_bytes());
    share.extend_from_slice(&1216u16.to_be_bytes());
    share.extend_from_slice(&[0x5a; 1216]);
    let len = (share.len() - 2) as u16;
    share[..2].copy_from_slice(&len.to_be_bytes());
    let h = hello(&[(51, share), (0xfe0d, vec![0; 200]), sni("after.key.share.example")]);
    assert!(h.len() > 1460, "longer than a segment");
    assert_eq!(same_at_every_split(&h, hello_in), Ok("after.key.share.example".into()));
}

#[test]
fn encrypted_client_hello_is_judged_by_its_outer_name() {
    // ECH (0xfe0d) hides the inner name; the outer one is the
    // client-facing server's, which a rule must itself allow.
    let h = hello(&[(0xfe0d, vec![0; 100]), sni("public.front.example")]);
    assert_eq!(hello_in(&[&h]), Ok("public.front.example".into()));
}

#[test]
fn what_is_not_a_client_hello_is_malformed() {
    assert_eq!(hello_in(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Err(Some(NoName::Malformed)));
    let mut server_hello = hello(&[sni("x.example")]);
    server_hello[5] = 2;
    assert_eq!(hello_in(&[&server_hello]), Err(Some(NoName::Malformed)));
    let mut alert = CURL.to_vec();
    alert[0] = 21;
    assert_eq!(hello_in(&[&alert]), Err(Some(NoName::Malformed)));
    // An extension that claims more than its block holds.
    let mut h = hello(&[sni("x.example")]);
    let at = h.len() - sni("x.example").1.len() - 2;
    h[at] = 0xff;
    assert_eq!(hello_in(&[&h]), Err(Some(NoName::Malformed)));
    // A name that is not a DNS name.
    assert_eq!(hello_in(&[&hello(&[sni("bad name.example")])]), Err(Some(NoName::Malformed)));
}

#[test]
fn a_hello_that_never_names_its_server_gets_no_verdict_past_the_bound() {
    // Records of padding-like extensions, one after another, without an
    // end: the reader answers at the bound, whatever comes next.
    let mut r = ClientHelloReader::default();
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    let ext_len = 60_000u32;
    body.extend_from_slice(&(ext_len as u16).to_be_bytes());
    body.extend_from_slice(&[0x00, 0x15]); // padding
    body.extend_from_slice(&((ext_len - 4) as u16).to_be_bytes());
    let mut hs = vec![1];
    hs.extend_from_slice(&((body.len() as u32 + ext_len - 4).to_be_bytes()[1..]));
    hs.extend_from_slice(&body);
    hs.resize(hs.len() + (ext_len - 4) as usize, 0);
    let bytes = records(&hs, 1 << 14);
    let mut answer = None;
    for chunk in bytes.chunks(1000) {
        if let Progress::NoName(no) = r.feed(chunk) {
            answer = Some(no);
            break;
        }
    }
    assert_eq!(answer, Some(NoName::TooLong));
}

#[test]
fn http_host_is_read_in_any_position_case_and_split() {
    let requests: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: good.example\r\nAccept: */*\r\n\r\n",
        b"GET /x?y HTTP/1.1\r\nUser-Agent: curl/8\r\nAccept: */*\r\nhOsT:   Good.Example:8080  \r\n\r\n",
        b"POST /upload HTTP/1.1\r\nContent-Length: 3\r\nHOST:good.example.\r\n\r\nabc",
        b"GET http://good.example/path HTTP/1.1\r\nHost: good.example\r\n\r\n",
    ];
    for r in requests {
        assert_eq!(same_at_every_split(r, host_in), Ok("good.example".into()), "{}", String::from_utf8_lossy(r));
    }
    assert_eq!(host_in(&[b"GET / HTTP/1.0\nHost: bare.example\n\n"]), Ok("bare.example".into()), "bare LF");
}

#[test]
fn http_requests_that_name_two_hosts_or_none_are_refused() {
    let cases: [(&[u8], NoName); 7] = [
        (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", NoName::Missing),
        (b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n", NoName::Malformed),
        (b"GET http://evil.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n", NoName::Malformed),
        (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: good.example\r\n\r\n", NoName::Malformed),
        (b"GET / HTTP/1.1\r\nHost: good.example\r\n evil.example\r\n\r\n", NoName::Malformed),
        (b"GET / HTTP/1.1\r\nHost : good.example\r\n\r\n", NoName::Malformed),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", NoName::Malformed),
    ];
    for (r, want) in cases {
        assert_eq!(host_in(&[r]), Err(Some(want)), "{}", String::from_utf8_lossy(r));
    }
}

#[test]
fn a_host_header_name_longer_than_host_is_another_header() {
    assert_eq!(
        host_in(&[b"GET / HTTP/1.1\r\nHosted: evil.example\r\nHost: good.example\r\n\r\n"]),
        Ok("good.example".into())
    );
}

#[test]
fn an_http_head_without_end_gets_no_verdict_past_the_bound() {
    let mut r = HttpHostReader::default();
    assert_eq!(r.feed(b"GET / HTTP/1.1\r\nHost: good.example\r\n"), Progress::More);
    let filler = [b'a'; 1000];
    let mut answer = Progress::More;
    for _ in 0..10 {
        answer = r.feed(&filler);
        if answer != Progress::More {
            break;
        }
    }
    assert_eq!(answer, Progress::NoName(NoName::TooLong));
}

/// A `server_name` extension body with these (type, name) entries.
fn sni_entries(entries: &[(u8, &str)]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (t, name) in entries {
        list.push(*t);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name.as_bytes());
    }
    let mut body = (list.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(&list);
    (0, body)
}

#[test]
fn a_second_server_name_extension_or_entry_is_refused_not_guessed_at() {
    // The gateway judged the first; a server (or an SNI router in front of
    // it) that takes the last, or skips unknown types, routes elsewhere.
    let two_extensions = hello(&[sni("good.example"), (10, vec![0, 2, 0, 29]), sni("evil.example")]);
    assert_eq!(same_at_every_split(&two_extensions, hello_in), Err(Some(NoName::Malformed)));
    let two_entries = hello(&[sni_entries(&[(0, "good.example"), (0, "evil.example")])]);
    assert_eq!(same_at_every_split(&two_entries, hello_in), Err(Some(NoName::Malformed)));
    let other_type_first = hello(&[sni_entries(&[(1, "evil.example"), (0, "good.example")])]);
    assert_eq!(hello_in(&[&other_type_first]), Err(Some(NoName::Malformed)));
    // One name, whatever follows it, holds.
    let one = hello(&[sni("good.example"), (10, vec![0, 2, 0, 29]), (0xfe0d, vec![0; 40])]);
    assert_eq!(same_at_every_split(&one, hello_in), Ok("good.example".into()));
}

#[test]
fn a_bare_cr_in_an_http_head_is_refused() {
    // Servers that end a line at a bare CR see `Host: evil.example` as a
    // header of its own (the first Host, for those that take the first).
    let cases: [&[u8]; 3] = [
        b"GET / HTTP/1.1\rHost: evil.example\r\nHost: good.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\rHost: evil.example\r\nHost: good.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: good.example\r\tX: evil.example\r\n\r\n",
    ];
    for r in cases {
        assert_eq!(host_in(&[r]), Err(Some(NoName::Malformed)), "{}", String::from_utf8_lossy(r));
    }
}
