//! The NAT log over IPFIX (RFC 7011) with the NAT information elements of
//! RFC 8158: every session opened and closed, as natEvent (NAT44 session
//! create/delete), the inside source address and port, the post-NAT source
//! address and port, the protocol, optionally the destination, and the
//! observation time in milliseconds, sent over UDP to one collector.
//!
//! Workers only hand the engine's events to a bounded queue between
//! batches (what does not fit is counted, never waited for); a thread of
//! its own packs them into messages. Over UDP a collector that restarts
//! knows no template, so the template goes out first and again on a
//! schedule (RFC 7011 section 8.4). `MessageWriter` is the pure part: events
//! in, message bytes out; the tests decode what it writes.

use super::pod_share::{OfPod, PodShareQueue};
use crate::nat::NatEvent;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// IANA IPFIX information elements (RFC 7012's registry; the NAT ones are
/// RFC 8158's).
pub mod ie {
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const POST_NAT_SOURCE_IPV4_ADDRESS: u16 = 225;
    pub const POST_NAPT_SOURCE_TRANSPORT_PORT: u16 = 227;
    pub const NAT_EVENT: u16 = 230;
    pub const OBSERVATION_TIME_MILLISECONDS: u16 = 323;
}

/// natEvent values (RFC 8158 section 2.1, IANA "NAT Event Type").
pub const NAT44_SESSION_CREATE: u8 = 4;
pub const NAT44_SESSION_DELETE: u8 = 5;

const VERSION: u16 = 10;
const TEMPLATE_SET_ID: u16 = 2;
/// The one template: data sets carry it as their set ID.
pub const TEMPLATE_ID: u16 = 256;
const MESSAGE_HEADER: usize = 16;
const SET_HEADER: usize = 4;
/// Messages stay within one unfragmented datagram on a 1500-byte path
/// (RFC 7011 section 10.3.3).
pub const MAX_MESSAGE: usize = 1400;

/// Records the queue holds before workers count them dropped.
pub const QUEUE_RECORDS: usize = 1 << 16;

pub type IpfixQueue = Arc<PodShareQueue<NatEvent>>;

impl OfPod for NatEvent {
    fn pod(&self) -> Ipv4Addr {
        self.pod
    }
}

/// The template's fields, (element, length), in record order.
fn template_fields(destinations: bool) -> Vec<(u16, u16)> {
    let mut f = vec![
        (ie::OBSERVATION_TIME_MILLISECONDS, 8),
        (ie::NAT_EVENT, 1),
        (ie::PROTOCOL_IDENTIFIER, 1),
        (ie::SOURCE_IPV4_ADDRESS, 4),
        (ie::SOURCE_TRANSPORT_PORT, 2),
        (ie::POST_NAT_SOURCE_IPV4_ADDRESS, 4),
        (ie::POST_NAPT_SOURCE_TRANSPORT_PORT, 2),
    ];
    if destinations {
        f.extend([(ie::DESTINATION_IPV4_ADDRESS, 4), (ie::DESTINATION_TRANSPORT_PORT, 2)]);
    }
    f
}

/// Writes IPFIX messages of NAT events; keeps the sequence number (data
/// records sent before each message, RFC 7011 section 3.1).
#[derive(Debug)]
pub struct MessageWriter {
    domain: u32,
    destinations: bool,
    /// Wall-clock milliseconds at engine time 0.
    epoch_ms: u64,
    sequence: u32,
}

impl MessageWriter {
    pub fn new(domain: u32, destinations: bool, epoch_ms: u64) -> MessageWriter {
        MessageWriter { domain, destinations, epoch_ms, sequence: 0 }
    }

    pub fn record_len(&self) -> usize {
        template_fields(self.destinations).iter().map(|&(_, l)| usize::from(l)).sum()
    }

    /// Records that fit in one message next to the template.
    pub fn records_per_message(&self) -> usize {
        let template = SET_HEADER + 4 + 4 * template_fields(self.destinations).len();
        (MAX_MESSAGE - MESSAGE_HEADER - template - SET_HEADER) / self.record_len()
    }

    /// One message into `out`: the template set when `with_template`, then
    /// a data set of `events` (at most `records_per_message`).
    pub fn write(&mut self, export_secs: u32, with_template: bool, events: &[NatEvent], out: &mut Vec<u8>) {
        assert!(events.len() <= self.records_per_message(), "more records than a message holds");
        out.clear();
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // length, filled last
        out.extend_from_slice(&export_secs.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.domain.to_be_bytes());
        if with_template {
            let fields = template_fields(self.destinations);
            out.extend_from_slice(&TEMPLATE_SET_ID.to_be_bytes());
            out.extend_from_slice(&((SET_HEADER + 4 + 4 * fields.len()) as u16).to_be_bytes());
            out.extend_from_slice(&TEMPLATE_ID.to_be_bytes());
            out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (id, len) in fields {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if !events.is_empty() {
            out.extend_from_slice(&TEMPLATE_ID.to_be_bytes());
            out.extend_from_slice(&((SET_HEADER + events.len() * self.record_len()) as u16).to_be_bytes());
            for e in events {
                self.write_record(e, out);
            }
        }
        let len = out.len() as u16;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        self.sequence = self.sequence.wrapping_add(events.len() as u32);
    }

    fn write_record(&self, e: &NatEvent, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.epoch_ms + e.at_ms).to_be_bytes());
        out.push(if e.open { NAT44_SESSION_CREATE } else { NAT44_SESSION_DELETE });
        out.push(e.proto);
        out.extend_from_slice(&e.pod.octets());
        out.extend_from_slice(&e.pod_port.to_be_bytes());
        out.extend_from_slice(&e.egress.octets());
        out.extend_from_slice(&e.egress_port.to_be_bytes());
        if self.destinations {
            let (a, p) = e.remote.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
}

/// What the exporter did; workers count their queue drops in their own
/// `IoCounters::ipfix_records_lost`.
#[derive(Debug, Default)]
pub struct IpfixCounters {
    pub records_exported: AtomicU64,
    pub messages_sent: AtomicU64,
    pub templates_sent: AtomicU64,
    /// Sends the socket refused (no route, the collector's port closed).
    pub send_errors: AtomicU64,
    /// Records in messages whose send failed.
    pub records_send_failed: AtomicU64,
}

/// Where and how the exporter sends (`[ipfix]` in gateway.toml).
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub collector: SocketAddr,
    pub template_refresh: Duration,
    pub observation_domain: u32,
    pub destinations: bool,
}

pub struct IpfixExporter {
    pub queue: IpfixQueue,
    pub counters: Arc<IpfixCounters>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl IpfixExporter {
    /// Opens the socket and starts the exporting thread; `epoch` is the
    /// workers' engine time 0.
    pub fn spawn(settings: ExportSettings, epoch: Instant) -> std::io::Result<IpfixExporter> {
        let bind: SocketAddr = if settings.collector.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("addr");
        let socket = UdpSocket::bind(bind)?;
        socket.connect(settings.collector)?;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let epoch_ms = now_ms.saturating_sub(epoch.elapsed().as_millis() as u64);
        let queue: IpfixQueue = Arc::new(PodShareQueue::new(QUEUE_RECORDS));
        let counters = Arc::new(IpfixCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = MessageWriter::new(settings.observation_domain, settings.destinations, epoch_ms);
        let (q, c, st) = (Arc::clone(&queue), Arc::clone(&counters), Arc::clone(&stop));
        let refresh = settings.template_refresh;
        let thread = std::thread::Builder::new()
            .name("egret-ipfix".into())
            .spawn(move || export_loop(socket, writer, refresh, &q, &c, &st))?;
        Ok(IpfixExporter { queue, counters, stop, thread })
    }

    /// Sends what is queued, then ends the thread (after the workers stop).
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn export_loop(
    socket: UdpSocket,
    mut writer: MessageWriter,
    refresh: Duration,
    queue: &PodShareQueue<NatEvent>,
    counters: &IpfixCounters,
    stop: &AtomicBool,
) {
    let per_message = writer.records_per_message();
    let mut batch: Vec<NatEvent> = Vec::with_capacity(per_message);
    let mut msg = Vec::with_capacity(MAX_MESSAGE);
    let mut template_due = true;
    let mut last_template = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if last_template.elapsed() >= refresh {
            template_due = true;
        }
        batch.clear();
        while batch.len() < per_message {
            match queue.pop() {
                Some(e) => batch.push(e),
                None => break,
            }
        }
        if batch.is_empty() && !template_due {
            if stopping {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let export_secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as u32;
        writer.write(export_secs, template_due, &batch, &mut msg);
        match send(&socket, &msg, counters) {
            Ok(_) => {
                counters.messages_sent.fetch_add(1, Ordering::Relaxed);
                counters.records_exported.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if template_due {
                    counters.templates_sent.fetch_add(1, Ordering::Relaxed);
                    template_due = false;
                    last_template = Instant::now();
                }
            }
            Err(_) => {
                // The records are lost (UDP has no retransmission); the
                // template goes out again with the next message.
                counters.records_send_failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if batch.is_empty() {
                    // Only a template: try again after a pause, not in a spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Sends one message; every error is counted. The socket is connected, so
/// a collector whose port is closed shows as ECONNREFUSED, reported on the
/// send after the datagram the ICMP answered: that message itself was not
/// refused, so it is sent once more.
fn send(socket: &UdpSocket, msg: &[u8], counters: &IpfixCounters) -> std::io::Result<usize> {
    let mut result = socket.send(msg);
    for retry in [true, false] {
        let Err(e) = &result else { break };
        if counters.send_errors.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(error = %e, "IPFIX: sending to the collector failed (counted from now on)");
        }
        if !(retry && e.kind() == std::io::ErrorKind::ConnectionRefused) {
            break;
        }
        result = socket.send(msg);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(open: bool, at_ms: u64, pod_port: u16) -> NatEvent {
        NatEvent {
            open,
            at: (at_ms / 1000) as u32,
            at_ms,
            proto: 17,
            pod: Ipv4Addr::new(198, 18, 0, 2),
            pod_port,
            egress: Ipv4Addr::new(198, 19, 100, 3),
            egress_port: 40000 + pod_port,
            remote: Some((Ipv4Addr::new(198, 19, 0, 254), 7007)),
        }
    }

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_be_bytes([b[i], b[i + 1]])
    }
    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_be_bytes(b[i..i + 4].try_into().unwrap())
    }

    #[test]
    fn a_message_with_the_template_then_records_decodes_field_by_field() {
        let mut w = MessageWriter::new(7, false, 1_700_000_000_000);
        let mut m = Vec::new();
        w.write(1_700_000_123, true, &[event(true, 1_500, 5000), event(false, 2_000, 5001)], &mut m);
        assert_eq!((u16_at(&m, 0), usize::from(u16_at(&m, 2))), (10, m.len()));
        assert_eq!((u32_at(&m, 4), u32_at(&m, 8), u32_at(&m, 12)), (1_700_000_123, 0, 7));
        // Template set: ID 2, template 256 with 7 fields.
        assert_eq!((u16_at(&m, 16), u16_at(&m, 18), u16_at(&m, 20), u16_at(&m, 22)), (2, 4 + 4 + 28, 256, 7));
        let fields: Vec<(u16, u16)> = (0..7).map(|i| (u16_at(&m, 24 + 4 * i), u16_at(&m, 26 + 4 * i))).collect();
        assert_eq!(fields, vec![(323, 8), (230, 1), (4, 1), (8, 4), (7, 2), (225, 4), (227, 2)]);
        let data = 16 + 36;
        assert_eq!((u16_at(&m, data), u16_at(&m, data + 2)), (256, 4 + 2 * 22));
        let r = &m[data + 4..data + 4 + 22];
        assert_eq!(u64::from_be_bytes(r[0..8].try_into().unwrap()), 1_700_000_001_500);
        assert_eq!((r[8], r[9]), (NAT44_SESSION_CREATE, 17));
        assert_eq!((&r[10..14], u16_at(r, 14)), (&[198, 18, 0, 2][..], 5000));
        assert_eq!((&r[16..20], u16_at(r, 20)), (&[198, 19, 100, 3][..], 45000));
        assert_eq!(m[data + 4 + 22 + 8], NAT44_SESSION_DELETE);
    }

    #[test]
    fn the_sequence_number_counts_the_data_records_sent_before() {
        let mut w = MessageWriter::new(1, false, 0);
        let mut m = Vec::new();
        w.write(0, true, &[event(true, 0, 1), event(true, 0, 2), event(true, 0, 3)], &mut m);
        w.write(0, false, &[event(false, 0, 1)], &mut m);
        assert_eq!(u32_at(&m, 8), 3);
        assert_eq!(u16_at(&m, 16), TEMPLATE_ID, "no template set in this one");
        w.write(0, true, &[], &mut m);
        assert_eq!((u32_at(&m, 8), m.len()), (4, 16 + 4 + 4 + 28), "a template alone");
    }

    #[test]
    fn destinations_add_two_fields_and_a_full_message_fits_one_datagram() {
        let mut w = MessageWriter::new(1, true, 0);
        assert_eq!(w.record_len(), 28);
        let full: Vec<NatEvent> = (0..w.records_per_message() as u16).map(|i| event(true, 0, i)).collect();
        let mut m = Vec::new();
        w.write(0, true, &full, &mut m);
        assert!(m.len() <= MAX_MESSAGE && m.len() + 28 > MAX_MESSAGE - 4, "{} bytes", m.len());
        let last = &m[m.len() - 6..];
        assert_eq!((&last[..4], u16_at(last, 4)), (&[198, 19, 0, 254][..], 7007));
    }

    #[test]
    fn every_queued_event_reaches_the_collector_with_a_template_first() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let settings = ExportSettings {
            collector: collector.local_addr().unwrap(),
            template_refresh: Duration::from_secs(3600),
            observation_domain: 1,
            destinations: false,
        };
        let ex = IpfixExporter::spawn(settings, Instant::now()).unwrap();
        for i in 0..200 {
            ex.queue.push(event(true, 0, i)).unwrap();
        }
        let counters = Arc::clone(&ex.counters);
        ex.finish();
        let (mut records, mut first) = (0, None);
        let mut buf = [0u8; 2048];
        while records < 200 {
            let n = collector.recv(&mut buf).unwrap();
            first.get_or_insert(u16_at(&buf, 16));
            let mut at = 16;
            while at < n {
                let (id, len) = (u16_at(&buf, at), usize::from(u16_at(&buf, at + 2)));
                if id == TEMPLATE_ID {
                    records += (len - 4) / 22;
                }
                at += len;
            }
        }
        assert_eq!(first, Some(TEMPLATE_SET_ID), "the template comes first");
        assert_eq!(counters.records_exported.load(Ordering::Relaxed), 200);
        assert_eq!(counters.templates_sent.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_closed_collector_port_counts_send_errors() {
        // Nothing listens here: loopback answers port unreachable, and the
        // connected socket's next send fails.
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let settings = ExportSettings {
            collector: port,
            template_refresh: Duration::from_secs(3600),
            observation_domain: 1,
            destinations: false,
        };
        let ex = IpfixExporter::spawn(settings, Instant::now()).unwrap();
        let counters = Arc::clone(&ex.counters);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut i = 0;
        while counters.send_errors.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            let _ = ex.queue.push(event(true, 0, i));
            i = i.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(2));
        }
        ex.finish();
        assert!(counters.send_errors.load(Ordering::Relaxed) >= 1);
        let (sent, failed) =
            (counters.records_exported.load(Ordering::Relaxed), counters.records_send_failed.load(Ordering::Relaxed));
        assert_eq!(sent + failed, u64::from(i), "every queued record is either sent or counted");
    }
}
