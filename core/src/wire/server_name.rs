//! The name a client asks for in its first bytes: the TLS ClientHello's
//! `server_name` (RFC 6066 §3) and the HTTP/1.x request's `Host` (RFC 9112
//! §3.2). Both readers take a flow's bytes in order, in pieces of any size,
//! and hold only counters and the name itself (at most 255 bytes), never the
//! message: a ClientHello with a post-quantum key share spans segments.
//!
//! A reader answers at the end of what could change its answer: a
//! ClientHello at the end of its extensions (a second `server_name`
//! extension, or a second entry in it, is refused: servers differ on which
//! one counts, so the gateway must not pick one), an HTTP request at the
//! end of its header section (a second `Host` or an absolute-form target
//! naming another host would change it).

/// Longest DNS name (RFC 1035), and so longest name a reader keeps.
pub const MAX_NAME: usize = 253;
/// Bytes of a ClientHello read before its `server_name` is found: a whole
/// TLS record's worth (2^14) and its header; longer gets no verdict.
pub const MAX_HELLO_BYTES: u32 = (1 << 14) + 5;
/// Bytes of an HTTP request head read before its end: what common servers
/// accept (8 KiB); longer gets no verdict.
pub const MAX_HEAD_BYTES: u32 = 8 << 10;

/// Why a reader gives no name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoName {
    /// The bytes are not a TLS ClientHello (or not HTTP/1.x request), or
    /// are malformed or ambiguous.
    Malformed,
    /// A well-formed ClientHello without `server_name` (a request without
    /// `Host`).
    Missing,
    /// No answer within the byte bound.
    TooLong,
}

/// What a reader knows after a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// Needs more bytes.
    More,
    /// The name the client asks for: lower case, without a final dot.
    Name(&'a str),
    NoName(NoName),
}

/// A name being collected, lower-cased; only DNS name characters.
#[derive(Clone)]
struct NameBuf {
    bytes: [u8; MAX_NAME + 1],
    len: u16,
    bad: bool,
}

impl NameBuf {
    const EMPTY: NameBuf = NameBuf { bytes: [0; MAX_NAME + 1], len: 0, bad: false };

    fn push(&mut self, b: u8) {
        let ok = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        if !ok || usize::from(self.len) > MAX_NAME {
            self.bad = true;
            return;
        }
        self.bytes[usize::from(self.len)] = b.to_ascii_lowercase();
        self.len += 1;
    }

    /// The name without a final dot; `None` when empty, too long or not a
    /// DNS name.
    fn name(&self) -> Option<&str> {
        let mut b = &self.bytes[..usize::from(self.len)];
        if let [rest @ .., b'.'] = b {
            b = rest;
        }
        if self.bad || b.is_empty() || b.len() > MAX_NAME {
            return None;
        }
        std::str::from_utf8(b).ok()
    }
}

/// Where a ClientHello reader is: which field comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hello {
    Type,
    Length,
    /// Legacy version and random.
    Fixed,
    SessionIdLen,
    CipherSuitesLen,
    CompressionLen,
    ExtensionsLen,
    ExtensionType,
    ExtensionLen,
    /// Inside `server_name`: the list's length, then entries.
    NameListLen,
    NameType,
    NameLen,
    Name,
    /// Bytes to pass over, then `after`.
    Skip,
    Done,
}

/// Reads a TLS ClientHello's `server_name` from its TLS records, in order.
#[derive(Clone)]
pub struct ClientHelloReader {
    /// The record header being read, and the record body bytes left.
    record_header: [u8; 5],
    header_got: u8,
    record_left: u16,
    at: Hello,
    /// After `Skip`.
    after: Hello,
    /// Bytes of the current field still to read, and its value so far.
    want: u32,
    value: u32,
    /// Extension type just read.
    ext_type: u16,
    /// Bytes left in the handshake body, the extensions block, the
    /// `server_name` extension.
    hello_left: u32,
    exts_left: u32,
    sni_left: u32,
    fed: u32,
    name: NameBuf,
    /// The `server_name` extension was read: another one is refused.
    have_name: bool,
    answer: Option<NoName>,
}

impl Default for ClientHelloReader {
    fn default() -> Self {
        ClientHelloReader {
            record_header: [0; 5],
            header_got: 0,
            record_left: 0,
            at: Hello::Type,
            after: Hello::Done,
            want: 1,
            value: 0,
            ext_type: 0,
            hello_left: 0,
            exts_left: 0,
            sni_left: 0,
            fed: 0,
            name: NameBuf::EMPTY,
            have_name: false,
            answer: None,
        }
    }
}

/// The bytes a field of a ClientHello takes.
fn width(at: Hello) -> u32 {
    match at {
        Hello::Type | Hello::SessionIdLen | Hello::CompressionLen | Hello::NameType => 1,
        Hello::Length => 3,
        Hello::Fixed => 34,
        _ => 2,
    }
}

impl ClientHelloReader {
    /// Reads the next bytes of the flow.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Progress<'_> {
        while self.answer.is_none() && self.at != Hello::Done && !bytes.is_empty() {
            if self.fed >= MAX_HELLO_BYTES {
                self.answer = Some(NoName::TooLong);
                break;
            }
            if self.record_left == 0 {
                // A record header: handshake (22), TLS 1.0-1.3 framing, a
                // plaintext record's length (RFC 8446 §5.1).
                let b = bytes[0];
                bytes = &bytes[1..];
                self.fed += 1;
                self.record_header[usize::from(self.header_got)] = b;
                self.header_got += 1;
                let ok = match self.header_got {
                    1 => b == 22,
                    2 => b == 3,
                    3 => b <= 4,
                    4 => true,
                    _ => {
                        let len = u16::from_be_bytes([self.record_header[3], b]);
                        self.record_left = len;
                        self.header_got = 0;
                        (1..=1 << 14).contains(&len)
                    }
                };
                if !ok {
                    self.answer = Some(NoName::Malformed);
                }
                continue;
            }
            let n = bytes.len().min(usize::from(self.record_left));
            let (body, rest) = bytes.split_at(n);
            bytes = rest;
            self.record_left -= n as u16;
            self.fed += n as u32;
            self.read_handshake(body);
        }
        self.progress()
    }

    /// The `server_name` read so far, before the hello's end: what the
    /// rest of the hello can still do is refuse it, not change it.
    pub fn name_so_far(&self) -> Option<&str> {
        (self.have_name && self.answer.is_none()).then(|| self.name.name()).flatten()
    }

    fn progress(&self) -> Progress<'_> {
        match self.answer {
            Some(no) => Progress::NoName(no),
            None if self.at == Hello::Done => match self.name.name() {
                Some(n) => Progress::Name(n),
                None => Progress::NoName(NoName::Malformed),
            },
            None => Progress::More,
        }
    }

    /// Handshake-layer bytes (record headers removed).
    fn read_handshake(&mut self, mut b: &[u8]) {
        while !b.is_empty() && self.answer.is_none() && self.at != Hello::Done {
            match self.at {
                Hello::Skip | Hello::Name => {
                    let n = b.len().min(self.want as usize);
                    if self.at == Hello::Name {
                        b[..n].iter().for_each(|&c| self.name.push(c));
                    }
                    self.consume(n as u32);
                    b = &b[n..];
                    self.want -= n as u32;
                    // A field past its enclosing length is malformed, and
                    // that is the answer however the bytes were split: the
                    // field's end must not decide anything after it.
                    if self.want == 0 && self.answer.is_none() {
                        self.field_done();
                    }
                }
                _ => {
                    self.value = self.value << 8 | u32::from(b[0]);
                    b = &b[1..];
                    self.consume(1);
                    self.want -= 1;
                    if self.want == 0 && self.answer.is_none() {
                        self.field_done();
                    }
                }
            }
        }
    }

    /// Counts `n` bytes against the enclosing lengths; a field that runs
    /// past the message or block that holds it is malformed.
    fn consume(&mut self, n: u32) {
        if self.at == Hello::Type || self.at == Hello::Length {
            return;
        }
        let over = |left: &mut u32| match left.checked_sub(n) {
            Some(l) => {
                *left = l;
                false
            }
            None => true,
        };
        let mut bad = over(&mut self.hello_left);
        if self.in_extensions() {
            bad |= over(&mut self.exts_left);
        }
        if self.in_sni() {
            bad |= over(&mut self.sni_left);
        }
        if bad {
            self.answer = Some(NoName::Malformed);
        }
    }

    fn in_extensions(&self) -> bool {
        self.in_sni()
            || matches!(self.at, Hello::ExtensionType | Hello::ExtensionLen)
            || (self.at == Hello::Skip && self.after == Hello::ExtensionType)
    }

    fn in_sni(&self) -> bool {
        matches!(self.at, Hello::NameListLen | Hello::NameType | Hello::NameLen | Hello::Name)
            || (self.at == Hello::Skip && self.after == Hello::NameType)
    }

    fn next(&mut self, at: Hello) {
        self.at = at;
        self.want = width(at);
        self.value = 0;
    }

    fn skip(&mut self, n: u32, after: Hello) {
        if n == 0 {
            self.after_skip(after);
        } else {
            self.at = Hello::Skip;
            self.after = after;
            self.want = n;
        }
    }

    fn after_skip(&mut self, after: Hello) {
        match after {
            // No extensions at all (TLS 1.0 allows it): no server_name.
            Hello::ExtensionsLen if self.hello_left == 0 => self.answer = Some(NoName::Missing),
            // The end of the extensions: the name read, if any, holds.
            Hello::ExtensionType if self.exts_left == 0 && self.have_name => self.at = Hello::Done,
            Hello::ExtensionType if self.exts_left == 0 => self.answer = Some(NoName::Missing),
            Hello::NameType if self.sni_left == 0 => self.answer = Some(NoName::Missing),
            _ => self.next(after),
        }
    }

    fn field_done(&mut self) {
        let v = self.value;
        match self.at {
            Hello::Type if v != 1 => self.answer = Some(NoName::Malformed),
            Hello::Type => self.next(Hello::Length),
            // Version, random, three length-prefixed lists: 40 bytes at least.
            Hello::Length if v < 40 => self.answer = Some(NoName::Malformed),
            Hello::Length => {
                self.hello_left = v;
                self.next(Hello::Fixed);
            }
            Hello::Fixed => self.next(Hello::SessionIdLen),
            Hello::SessionIdLen if v > 32 => self.answer = Some(NoName::Malformed),
            Hello::SessionIdLen => self.skip(v, Hello::CipherSuitesLen),
            Hello::CipherSuitesLen => self.skip(v, Hello::CompressionLen),
            Hello::CompressionLen => self.skip(v, Hello::ExtensionsLen),
            Hello::ExtensionsLen => {
                if v != self.hello_left {
                    // The extensions block is the rest of the message.
                    self.answer = Some(NoName::Malformed);
                    return;
                }
                self.exts_left = v;
                self.after_skip(Hello::ExtensionType);
            }
            Hello::ExtensionType => {
                self.ext_type = v as u16;
                self.next(Hello::ExtensionLen);
            }
            // A second server_name extension: which one a server takes
            // differs (most refuse the hello, some take either).
            Hello::ExtensionLen if self.ext_type == 0 && self.have_name => self.answer = Some(NoName::Malformed),
            Hello::ExtensionLen if self.ext_type == 0 => {
                self.sni_left = v;
                self.next(Hello::NameListLen);
            }
            Hello::ExtensionLen => self.skip(v, Hello::ExtensionType),
            Hello::NameListLen if v != self.sni_left || v == 0 => self.answer = Some(NoName::Malformed),
            Hello::NameListLen => self.next(Hello::NameType),
            Hello::NameType => {
                self.ext_type = v as u16;
                self.next(Hello::NameLen);
            }
            // Only host_name (0) is defined, and servers (OpenSSL, Go,
            // rustls) take one entry, of that type: another type, or a
            // second entry, is refused rather than guessed at.
            Hello::NameLen if self.ext_type != 0 => self.answer = Some(NoName::Malformed),
            Hello::NameLen if v == 0 || v as usize > MAX_NAME + 1 => self.answer = Some(NoName::Malformed),
            Hello::NameLen => {
                self.at = Hello::Name;
                self.want = v;
            }
            Hello::Name if self.sni_left != 0 => self.answer = Some(NoName::Malformed),
            Hello::Name => {
                self.have_name = true;
                self.after_skip(Hello::ExtensionType);
            }
            Hello::Skip => self.after_skip(self.after),
            Hello::Done => {}
        }
    }
}

/// Where an HTTP request head reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Method,
    /// The request target's first byte decides its form.
    TargetStart,
    /// `http://` or `https://` of an absolute-form target, matched so far.
    Scheme,
    Authority,
    /// The rest of the request line (or of a header line not read).
    RestOfLine,
    LineStart,
    /// A CR that must end the header section.
    EndCr,
    HeaderName,
    HostValue,
    Done,
}

/// Reads an HTTP/1.x request's `Host` (and an absolute-form or CONNECT
/// target's authority, which a server uses instead: RFC 9112 §3.2.2).
#[derive(Clone)]
pub struct HttpHostReader {
    at: Head,
    method: [u8; 8],
    method_len: u8,
    /// An absolute-form target's scheme is `https`.
    https: bool,
    /// Bytes of the current token (method, scheme, header name) so far.
    token: u16,
    /// Whether the current header name is still `host` so far.
    is_host: bool,
    /// Hosts seen; more than one is ambiguous.
    hosts: u8,
    host: NameBuf,
    /// In a `Host` value or authority: past its `:port`, past its end.
    in_port: bool,
    value_ended: bool,
    authority: Option<NameBuf>,
    /// The last byte was a CR: only an LF may follow.
    cr: bool,
    fed: u32,
    answer: Option<NoName>,
}

impl Default for HttpHostReader {
    fn default() -> Self {
        HttpHostReader {
            at: Head::Method,
            method: [0; 8],
            method_len: 0,
            https: false,
            token: 0,
            is_host: true,
            hosts: 0,
            host: NameBuf::EMPTY,
            in_port: false,
            value_ended: false,
            authority: None,
            cr: false,
            fed: 0,
            answer: None,
        }
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl HttpHostReader {
    /// Reads the next bytes of the flow.
    pub fn feed(&mut self, bytes: &[u8]) -> Progress<'_> {
        for &b in bytes {
            if self.answer.is_some() || self.at == Head::Done {
                break;
            }
            if self.fed >= MAX_HEAD_BYTES {
                self.answer = Some(NoName::TooLong);
                break;
            }
            self.fed += 1;
            // A bare CR ends a line for some servers and not for others
            // (RFC 9112 §2.2): a line the gateway reads as one could be
            // two there, the second a Host. Refused.
            if self.cr && b != b'\n' {
                self.fail();
                break;
            }
            self.cr = b == b'\r';
            self.step(b);
        }
        match self.answer {
            Some(no) => Progress::NoName(no),
            None if self.at == Head::Done => self.verdict(),
            None => Progress::More,
        }
    }

    fn verdict(&self) -> Progress<'_> {
        if self.hosts == 0 {
            return Progress::NoName(NoName::Missing);
        }
        let Some(host) = self.host.name() else { return Progress::NoName(NoName::Malformed) };
        // A target's authority overrides Host at the server: both must name
        // the same host, or which one counts depends on the server.
        if let Some(a) = &self.authority {
            if a.name() != Some(host) {
                return Progress::NoName(NoName::Malformed);
            }
        }
        Progress::Name(host)
    }

    fn fail(&mut self) {
        self.answer = Some(NoName::Malformed);
    }

    fn step(&mut self, b: u8) {
        match self.at {
            Head::Method if b == b' ' && self.token > 0 => {
                self.at = Head::TargetStart;
                self.token = 0;
            }
            Head::Method if is_tchar(b) && self.token < 16 => {
                if usize::from(self.method_len) < self.method.len() {
                    self.method[usize::from(self.method_len)] = b;
                    self.method_len += 1;
                }
                self.token += 1;
            }
            Head::Method => self.fail(),
            Head::TargetStart => match b {
                b'/' | b'*' => self.at = Head::RestOfLine,
                _ if &self.method[..usize::from(self.method_len)] == b"CONNECT" => {
                    self.authority = Some(NameBuf::EMPTY);
                    self.in_port = false;
                    self.at = Head::Authority;
                    self.authority_byte(b);
                }
                b'h' | b'H' => {
                    self.at = Head::Scheme;
                    self.token = 1;
                }
                _ => self.fail(),
            },
            Head::Scheme => {
                // "http://" or "https://", case-insensitively.
                let i = usize::from(self.token);
                let c = b.to_ascii_lowercase();
                self.token += 1;
                if i == 4 {
                    self.https = c == b's';
                }
                let scheme: &[u8] = if self.https { b"https://" } else { b"http://" };
                if scheme.get(i) != Some(&c) {
                    return self.fail();
                }
                if i + 1 == scheme.len() {
                    self.authority = Some(NameBuf::EMPTY);
                    self.in_port = false;
                    self.at = Head::Authority;
                }
            }
            Head::Authority => self.authority_byte(b),
            Head::RestOfLine => {
                if b == b'\n' {
                    self.at = Head::LineStart;
                }
            }
            Head::LineStart => match b {
                b'\r' => self.at = Head::EndCr,
                b'\n' => self.at = Head::Done,
                // obs-fold (RFC 9112 §5.2): a continued line is refused, as
                // servers must do or fold it into the previous value.
                b' ' | b'\t' => self.fail(),
                _ if is_tchar(b) => {
                    self.at = Head::HeaderName;
                    self.token = 1;
                    self.is_host = b.eq_ignore_ascii_case(&b'h');
                }
                _ => self.fail(),
            },
            Head::EndCr if b == b'\n' => self.at = Head::Done,
            Head::EndCr => self.fail(),
            Head::HeaderName => {
                if b == b':' {
                    if self.is_host && self.token == 4 {
                        self.hosts += 1;
                        if self.hosts > 1 {
                            return self.fail();
                        }
                        self.in_port = false;
                        self.value_ended = false;
                        self.at = Head::HostValue;
                    } else {
                        self.at = Head::RestOfLine;
                    }
                } else if is_tchar(b) {
                    let i = usize::from(self.token);
                    self.is_host &= i < 4 && b.eq_ignore_ascii_case(&b"host"[i]);
                    self.token = self.token.saturating_add(1);
                } else {
                    self.fail();
                }
            }
            Head::HostValue => match b {
                b'\n' => self.at = Head::LineStart,
                b'\r' => self.value_ended = true,
                b' ' | b'\t' if self.host.len == 0 && !self.in_port => {}
                b' ' | b'\t' => self.value_ended = true,
                _ if self.value_ended => self.fail(),
                b':' => self.in_port = true,
                _ if self.in_port => {
                    if !b.is_ascii_digit() {
                        self.fail();
                    }
                }
                _ => self.host.push(b),
            },
            Head::Done => {}
        }
    }

    /// A byte of a target's authority: `host[:port]`, ended by a path,
    /// query or the space before the version. Userinfo is refused.
    fn authority_byte(&mut self, b: u8) {
        let Some(a) = self.authority.as_mut() else { return self.fail() };
        match b {
            b'/' | b'?' | b' ' => self.at = Head::RestOfLine,
            b':' => self.in_port = true,
            b'@' => self.fail(),
            _ if self.in_port => {
                if !b.is_ascii_digit() {
                    self.fail();
                }
            }
            _ => a.push(b),
        }
    }
}

#[cfg(test)]
mod tests;
