//! egret-loadgen: the load generator, counting sink, reflector and latency
//! probe behind `bench/run.sh`.
//!
//! ```text
//! egret-loadgen gen  --dev IF --dst-mac MAC --src IP --dst IP --seconds S
//!                    [--proto udp|tcp] [--flows N | --new-flows] [--rate PPS] [--limit N]
//!                    [--sport-base P] [--sport-count N] [--saddrs N] [--dport-base P]
//!                    [--dport-count N] [--dport-by-saddr] [--size B]
//! egret-loadgen sink --dev IF [--echo PORT] [--distinct] [--untranslated-tcp] [--warmup S] [--measure S] [--hold S]
//! egret-loadgen pod-ack --dev IF --seconds S
//! egret-loadgen ping --dst IP --port P [--count N] [--interval-us U] [--timeout-ms T]
//! ```
//!
//! `gen` runs an XDP program with `BPF_PROG_RUN` in live-frames mode: the
//! kernel hands it the same template frame over and over, the program writes
//! the next flow's header into it and redirects it out of `--dev`, so the
//! frames enter the veth peer (the gateway) as if a NIC had received them.
//! Debian's xdp-trafficgen does not work on this kernel, and this runs at
//! several Mpps on one core, well above what a gateway core forwards. Flow f
//! takes its source port from `--sport-base` (fastest), then its source
//! address from `--src` up (`--saddrs`), then its destination port from
//! `--dport-base` up; `--flows N` cycles over N flows, `--new-flows` makes
//! every frame a flow of its own (no 5-tuple repeats within 4 billion
//! frames). `--proto tcp` sends SYNs. `--rate` paces (frames over the rate are
//! dropped in the program, not sent), `--limit` stops after that many frames.
//!
//! `sink` attaches a counting XDP program to `--dev` (the far end of the
//! gateway's outside link, or the gateway's inside link for the ceiling) and
//! prints the rates it saw over the measuring window: IPv4 UDP, split by
//! source (translated 198.19.0.0/16, untranslated 198.18.0.0/16), TCP SYNs
//! it answered with a SYN-ACK and final ACKs (handshakes done); `--echo`
//! reflects UDP to that port back to its sender (the latency probe's far
//! end); `--distinct` also counts distinct translated 5-tuples;
//! `--untranslated-tcp` answers and counts untranslated handshakes as well
//! (the TCP floor, whose forwarder does not translate). At exit it
//! prints totals since it attached. SIGTERM or SIGINT cuts its windows
//! short: it reports what it has and exits.
//!
//! `pod-ack` attaches to the generator's veth and answers each SYN-ACK with
//! the handshake's ACK. `ping` is a UDP ping-pong client: one probe in
//! flight, round trips as percentiles.
//!
//! All are bounded: `gen` stops after `--seconds` (at most 120), `sink` after
//! warmup + measure + hold (at most 120 s each), `ping` after `--count`
//! probes (at most 1,000,000) and `pod-ack` after `--seconds`. Everything
//! they attach detaches on exit.

use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use egret_bench::{checksum, mac};

static PROGRAMS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/loadgen.bpf.o"));

/// Frames in the first `BPF_PROG_RUN` call (~10 ms at 5 Mpps); later calls
/// are sized from the measured rate to last about `CALL_SECONDS`.
const REPEAT_FIRST: u32 = 1 << 16;
const REPEAT_MAX: u32 = 1 << 24;
const CALL_SECONDS: f64 = 0.5;
const MAX_SECONDS: f64 = 120.0;
/// Ethernet + IPv4 + TCP: what `gen` rewrites in every frame.
const HEADER_LEN: usize = 54;
/// Distinct translated 5-tuples a `sink --distinct` can count.
const DISTINCT_FLOWS: u32 = 1 << 22;
/// Ports a source address offers: 1024..=65535.
const PORTS: u32 = 64_512;

/// `struct gen_config` in loadgen.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GenConfig {
    ifindex: u32,
    proto: u32,
    sport_base: u32,
    sport_count: u32,
    dport_base: u32,
    dport_count: u32,
    saddr_count: u32,
    dport_by_saddr: u32,
    flows: u64,
    interval_ps: u64,
    limit: u64,
}

/// `struct gen_state` in loadgen.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct GenState {
    seq: u64,
    start_ns: u64,
    paced: u64,
    next_ps: u64,
    f: u64,
    sp: u32,
    sa: u32,
    dq: u32,
    _pad: u32,
}

// SAFETY: plain `repr(C)` integers without padding, as the BPF side declares them.
unsafe impl aya::Pod for GenConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for GenState {}

/// The sink's counters (`enum` in loadgen.bpf.c), in order.
const COUNTERS: [&str; 10] = [
    "udp",
    "translated",
    "untranslated",
    "syn",
    "ack",
    "echo",
    "tcp_untranslated",
    "distinct",
    "distinct_full",
    "pod_ack",
];

fn ifindex(dev: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(dev).map_err(|_| format!("bad interface name '{dev}'"))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no interface '{dev}' in this namespace")),
        i => Ok(i),
    }
}

/// Ethernet + IPv4 + UDP (checksum 0) or TCP SYN (no options), padded to
/// `size` bytes (without FCS). `gen` rewrites ports, address and checksums.
fn template(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, tcp: bool, size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    // A TCP SYN carries no payload: what pads it to `size` is Ethernet's.
    let ip_len = if tcp { 40 } else { (size - 14) as u16 };
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = if tcp { 6 } else { 17 };
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    if tcp {
        let t = &mut f[34..54];
        t[12] = 5 << 4; // data offset: 5 words
        t[13] = 0x02; // SYN
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    } else {
        let udp = &mut f[34..42];
        udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    }
    f
}

/// Loads the programs. The distinct-flow map is sized only for a sink that
/// counts distinct flows: a hash map's buckets are allocated when it is
/// created and walked when it is freed (on a kworker, during a later run).
fn load(distinct_flows: bool) -> Result<Ebpf, String> {
    let entries = if distinct_flows { DISTINCT_FLOWS } else { 1 };
    EbpfLoader::new().map_max_entries("sink_seen", entries).load(PROGRAMS).map_err(|e| e.to_string())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, String> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load().map_err(|e| format!("loading {name}: {e:?}"))?;
    Ok(p)
}

/// Flow layout from the command line: how flow numbers map onto source
/// ports, source addresses and destination ports.
fn layout(a: &LayoutArgs) -> Result<GenConfig, String> {
    let new_flows = a.new_flows;
    let flows = a.flows;
    let proto = match a.proto {
        Proto::Udp => 17,
        Proto::Tcp => 6,
    };
    let saddr_count = a.saddrs;
    let by_saddr = a.dport_by_saddr;
    let sport_base = a.sport_base;
    let max_sports = 65_536 - sport_base.min(65_535);
    let default_sports = if new_flows { PORTS } else { flows.min(u64::from(PORTS)) as u32 };
    let sport_count = a.sport_count.unwrap_or(default_sports.min(max_sports));
    let dport_base = a.dport_base;
    let max_dports = 65_536 - dport_base.min(65_535);
    let per_dport = u64::from(sport_count) * u64::from(if by_saddr { 1 } else { saddr_count.max(1) });
    let default_dports = if new_flows || by_saddr {
        if by_saddr {
            1
        } else {
            max_dports
        }
    } else {
        flows.div_ceil(per_dport.max(1)).min(u64::from(max_dports)) as u32
    };
    let dport_count = a.dport_count.unwrap_or(default_dports);
    if !new_flows && flows == 0 {
        return Err("--flows must be at least 1".into());
    }
    if sport_count == 0 || sport_count > max_sports {
        return Err(format!("--sport-count {sport_count}: must be 1..={max_sports} from port {sport_base}"));
    }
    if dport_count == 0 || dport_count > max_dports {
        return Err(format!("--dport-count {dport_count}: must be 1..={max_dports} from port {dport_base}"));
    }
    if saddr_count == 0 || saddr_count > 65_536 {
        return Err(format!("--saddrs {saddr_count}: must be 1..=65536"));
    }
    let distinct = if by_saddr {
        u64::from(sport_count) * u64::from(saddr_count)
    } else {
        u64::from(sport_count) * u64::from(saddr_count) * u64::from(dport_count)
    };
    if !new_flows && flows > distinct {
        return Err(format!(
            "--flows {flows}: only {distinct} distinct flows from {sport_count} source ports, {saddr_count} addresses, {dport_count} destination ports"
        ));
    }
    Ok(GenConfig {
        ifindex: 0,
        proto,
        sport_base,
        sport_count,
        dport_base,
        dport_count,
        saddr_count,
        dport_by_saddr: u32::from(by_saddr),
        flows: if new_flows { 0 } else { flows },
        interval_ps: match a.rate {
            0 => 0,
            r if r > 100_000_000 => return Err(format!("--rate {r}: at most 100,000,000 frames/s")),
            r => 1_000_000_000_000 / r,
        },
        limit: a.limit,
    })
}

/// Flow f's (source address offset, source port, destination port), as the
/// BPF program computes it (for tests and for reading a layout back).
#[cfg(test)]
fn flow(c: &GenConfig, n: u64) -> (u32, u16, u16) {
    let f = if c.flows == 0 { n } else { n % c.flows };
    let sp = (f % u64::from(c.sport_count)) as u32;
    let r = f / u64::from(c.sport_count);
    let sa = (r % u64::from(c.saddr_count)) as u32;
    let dp = if c.dport_by_saddr != 0 {
        sa % c.dport_count
    } else {
        ((r / u64::from(c.saddr_count)) % u64::from(c.dport_count)) as u32
    };
    (sa, (c.sport_base + sp) as u16, (c.dport_base + dp) as u16)
}

fn gen(a: &GenArgs) -> Result<(), String> {
    let (dev, dst_mac, src, dst, size, seconds) = (a.dev.as_str(), a.dst_mac, a.src, a.dst, a.size, a.seconds);
    let mut cfg = layout(&a.layout)?;
    if !(60..=1500).contains(&size) {
        return Err(format!("--size {size}: must be 60..=1500"));
    }
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!("--seconds {seconds}: must be in (0, {MAX_SECONDS}]"));
    }
    cfg.ifindex = ifindex(dev)?;
    let src_mac = mac(&std::fs::read_to_string(format!("/sys/class/net/{dev}/address")).map_err(|e| e.to_string())?)?;
    let frame = template(dst_mac, src_mac, src, dst, cfg.proto == 6, size);

    let mut ebpf = load(false)?;
    {
        let m = ebpf.map_mut("gen_cfg").ok_or("map gen_cfg missing")?;
        let mut c: Array<&mut MapData, GenConfig> = Array::try_from(m).map_err(|e| e.to_string())?;
        c.set(0, cfg, 0).map_err(|e| e.to_string())?;
    }
    {
        let m = ebpf.map_mut("gen_tmpl").ok_or("map gen_tmpl missing")?;
        let mut tmpl: Array<&mut MapData, [u8; 64]> = Array::try_from(m).map_err(|e| e.to_string())?;
        let mut hdr = [0u8; 64];
        hdr[..HEADER_LEN].copy_from_slice(&frame[..HEADER_LEN]);
        tmpl.set(0, hdr, 0).map_err(|e| e.to_string())?;
    }
    let prog = program(&mut ebpf, "gen")?;
    let fd = prog.fd().map_err(|e| e.to_string())?.as_fd().as_raw_fd();

    let start = Instant::now();
    let deadline = Duration::from_secs_f64(seconds);
    let debug = std::env::var_os("EGRET_LOADGEN_DEBUG").is_some();
    let mut runs: u64 = 0;
    let mut repeat = REPEAT_FIRST;
    let mut state = GenState::default();
    while start.elapsed() < deadline {
        egret_bench::run_live_frames(fd, &frame, repeat)?;
        runs += u64::from(repeat);
        let elapsed = start.elapsed().as_secs_f64();
        state = gen_state(&mut ebpf)?;
        if debug {
            eprintln!("gen: call of {repeat} frames done at {elapsed:.3} s, {} sent", state.seq);
        }
        if cfg.limit != 0 && state.seq >= cfg.limit {
            break;
        }
        // Each call sets up and tears down a page pool, and the teardown
        // sleeps: few long calls keep the offered load steady. Aim at
        // CALL_SECONDS per call without running past the deadline by much.
        let rate = runs as f64 / elapsed.max(1e-6);
        let left = (seconds - elapsed).max(0.0);
        repeat = (rate * CALL_SECONDS.min(left)).clamp(f64::from(REPEAT_FIRST), f64::from(REPEAT_MAX)) as u32;
    }
    let secs = start.elapsed().as_secs_f64();
    let flows = if cfg.flows == 0 { "new flows (one per frame)".to_string() } else { format!("{} flows", cfg.flows) };
    println!(
        "gen: {} frames of {size} B over {flows} in {secs:.2} s = {:.3} Mpps offered (paced out {})",
        state.seq,
        state.seq as f64 / secs / 1e6,
        state.paced
    );
    Ok(())
}

fn gen_state(ebpf: &mut Ebpf) -> Result<GenState, String> {
    let m = ebpf.map_mut("gen_state").ok_or("map gen_state missing")?;
    let arr: PerCpuArray<&mut MapData, GenState> = PerCpuArray::try_from(m).map_err(|e| e.to_string())?;
    let mut total = GenState::default();
    for s in arr.get(&0, 0).map_err(|e| e.to_string())?.iter() {
        total.seq += s.seq;
        total.paced += s.paced;
    }
    Ok(total)
}

fn read_counts(ebpf: &mut Ebpf) -> Result<[u64; COUNTERS.len()], String> {
    let m = ebpf.map_mut("sink_count").ok_or("map sink_count missing")?;
    let arr: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(m).map_err(|e| e.to_string())?;
    let mut out = [0u64; COUNTERS.len()];
    for (i, o) in out.iter_mut().enumerate() {
        *o = arr.get(&(i as u32), 0).map_err(|e| e.to_string())?.iter().sum();
    }
    Ok(out)
}

/// Attaches `name` to `dev`: native XDP, generic if native is refused.
fn attach(ebpf: &mut Ebpf, name: &str, dev: &str) -> Result<&'static str, String> {
    let prog = program(ebpf, name)?;
    match prog.attach(dev, XdpMode::Driver) {
        Ok(_) => Ok("native"),
        Err(native) => {
            prog.attach(dev, XdpMode::Skb)
                .map_err(|e| format!("attaching to {dev}: native: {native}; generic: {e}"))?;
            Ok("generic")
        }
    }
}

fn seconds_arg(name: &str, v: f64) -> Result<f64, String> {
    if !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(format!("{name} {v}: must be 0..={MAX_SECONDS} seconds"));
    }
    Ok(v)
}

/// Set by SIGTERM or SIGINT: the sink cuts its windows short, reports and exits.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Sleeps `secs`, or less when asked to stop.
fn nap(secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

fn sink(a: &SinkArgs) -> Result<(), String> {
    let dev = a.dev.as_str();
    let warmup = seconds_arg("--warmup", a.warmup)?;
    let measure = seconds_arg("--measure", a.measure)?;
    let hold = seconds_arg("--hold", a.hold)?;
    if measure <= 0.0 {
        return Err("--measure must be more than 0".into());
    }
    let echo = a.echo;
    let mut ebpf = load(a.distinct)?;
    {
        let m = ebpf.map_mut("sink_cfg").ok_or("map sink_cfg missing")?;
        let mut c: Array<&mut MapData, u32> = Array::try_from(m).map_err(|e| e.to_string())?;
        c.set(0, u32::from(echo), 0).map_err(|e| e.to_string())?;
        c.set(1, u32::from(a.distinct), 0).map_err(|e| e.to_string())?;
        c.set(2, u32::from(a.untranslated_tcp), 0).map_err(|e| e.to_string())?;
    }
    let mode = attach(&mut ebpf, "sink", dev)?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
    eprintln!("sink: counting on {dev} ({mode} XDP)");
    println!("ready");
    nap(warmup);
    let (c0, t0) = (read_counts(&mut ebpf)?, Instant::now());
    nap(measure);
    let (c1, t1) = (read_counts(&mut ebpf)?, Instant::now());
    let secs = (t1 - t0).as_secs_f64().max(1e-6);
    let rate = |i: usize| (c1[i] - c0[i]) as f64 / secs / 1e6;
    println!(
        "sink: mpps={:.3} translated_mpps={:.3} untranslated_mpps={:.3} syn_mpps={:.4} ack_mpps={:.4} seconds={secs:.2}",
        rate(0),
        rate(1),
        rate(2),
        rate(3),
        rate(4)
    );
    nap(hold);
    let total = read_counts(&mut ebpf)?;
    let fields: Vec<String> = COUNTERS.iter().zip(total).map(|(n, v)| format!("{n}={v}")).collect();
    println!("sink-total: {}", fields.join(" "));
    Ok(())
}

fn pod_ack(a: &PodAckArgs) -> Result<(), String> {
    let dev = a.dev.as_str();
    let seconds = seconds_arg("--seconds", a.seconds)?;
    let mut ebpf = load(false)?;
    let mode = attach(&mut ebpf, "pod_ack", dev)?;
    eprintln!("pod-ack: answering SYN-ACKs on {dev} ({mode} XDP)");
    println!("ready");
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let c = read_counts(&mut ebpf)?;
    println!("pod-ack: acks={}", c[9]);
    Ok(())
}

/// Percentile of sorted samples (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ping(a: &PingArgs) -> Result<(), String> {
    let (dst, port, count) = (a.dst, a.port, a.count);
    let interval = Duration::from_micros(a.interval_us);
    let timeout = Duration::from_millis(a.timeout_ms);
    if count == 0 || count > 1_000_000 {
        return Err(format!("--count {count}: must be 1..=1000000"));
    }
    if timeout.is_zero() || timeout > Duration::from_secs(5) {
        return Err("--timeout-ms must be 1..=5000".into());
    }
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.connect((dst, port)).map_err(|e| e.to_string())?;
    let mut rtts = Vec::with_capacity(count as usize);
    let mut buf = [0u8; 64];
    let epoch = Instant::now();
    for seq in 0..u64::from(count) {
        let sent = Instant::now();
        let mut msg = [0u8; 18];
        msg[..8].copy_from_slice(&seq.to_be_bytes());
        msg[8..16].copy_from_slice(&(sent - epoch).as_nanos().to_be_bytes()[8..]);
        // A full socket buffer or a missing neighbour is a lost probe, not an error.
        if sock.send(&msg).is_ok() {
            loop {
                let left = timeout.saturating_sub(sent.elapsed());
                if left.is_zero() {
                    break;
                }
                sock.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 8 && buf[..8] == seq.to_be_bytes() => {
                        rtts.push(sent.elapsed().as_secs_f64() * 1e6);
                        break;
                    }
                    Ok(_) => continue, // a late answer to an earlier probe
                    Err(_) => break,
                }
            }
        }
        if let Some(rest) = interval.checked_sub(sent.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let received = rtts.len();
    rtts.sort_by(f64::total_cmp);
    println!(
        "ping: sent={count} received={received} lost={} p50_us={:.1} p90_us={:.1} p99_us={:.1} max_us={:.1}",
        count as usize - received,
        percentile(&rtts, 50.0),
        percentile(&rtts, 90.0),
        percentile(&rtts, 99.0),
        rtts.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

#[derive(Parser)]
#[command(name = "egret-loadgen", about = "Load generator, counting sink, reflector and latency probe of bench/run.sh")]
enum Cli {
    /// Send frames out of --dev with BPF_PROG_RUN live frames.
    Gen(GenArgs),
    /// Count (and optionally reflect) what arrives on --dev.
    Sink(SinkArgs),
    /// Answer SYN-ACKs on --dev with the handshake's ACK.
    PodAck(PodAckArgs),
    /// UDP ping-pong: round trips as percentiles.
    Ping(PingArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Udp,
    Tcp,
}

/// How flow numbers map onto source ports, addresses and destination ports.
#[derive(clap::Args)]
struct LayoutArgs {
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    proto: Proto,
    /// Flows to cycle over.
    #[arg(long, default_value_t = 10_000)]
    flows: u64,
    /// Every frame a flow of its own.
    #[arg(long)]
    new_flows: bool,
    /// Frames per second (0: unpaced).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Stop after this many frames (0: no limit).
    #[arg(long, default_value_t = 0)]
    limit: u64,
    #[arg(long, default_value_t = 1024)]
    sport_base: u32,
    #[arg(long)]
    sport_count: Option<u32>,
    #[arg(long, default_value_t = 1)]
    saddrs: u32,
    #[arg(long, default_value_t = 9)]
    dport_base: u32,
    #[arg(long)]
    dport_count: Option<u32>,
    #[arg(long)]
    dport_by_saddr: bool,
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long)]
    dev: String,
    #[arg(long, value_parser = mac)]
    dst_mac: [u8; 6],
    #[arg(long)]
    src: Ipv4Addr,
    #[arg(long)]
    dst: Ipv4Addr,
    /// Frame size in bytes.
    #[arg(long, default_value_t = 60)]
    size: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[command(flatten)]
    layout: LayoutArgs,
}

#[derive(clap::Args)]
struct SinkArgs {
    #[arg(long)]
    dev: String,
    /// Reflect UDP to this port back to its sender (0: none).
    #[arg(long, default_value_t = 0)]
    echo: u16,
    /// Also count distinct translated 5-tuples.
    #[arg(long)]
    distinct: bool,
    /// Answer untranslated SYNs and count their handshakes too (the TCP
    /// floor: a forwarder that does not translate).
    #[arg(long)]
    untranslated_tcp: bool,
    #[arg(long, default_value_t = 1.5)]
    warmup: f64,
    #[arg(long, default_value_t = 3.0)]
    measure: f64,
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
}

#[derive(clap::Args)]
struct PodAckArgs {
    #[arg(long)]
    dev: String,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

#[derive(clap::Args)]
struct PingArgs {
    #[arg(long)]
    dst: Ipv4Addr,
    #[arg(long, default_value_t = 7)]
    port: u16,
    #[arg(long, default_value_t = 1000)]
    count: u32,
    #[arg(long, default_value_t = 1000)]
    interval_us: u64,
    #[arg(long, default_value_t = 100)]
    timeout_ms: u64,
}

fn main() -> ExitCode {
    let (name, result) = match Cli::parse() {
        Cli::Gen(a) => ("gen", gen(&a)),
        Cli::Sink(a) => ("sink", sink(&a)),
        Cli::PodAck(a) => ("pod-ack", pod_ack(&a)),
        Cli::Ping(a) => ("ping", ping(&a)),
    };
    egret_bench::exit_with("egret-loadgen", name, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn args(s: &str) -> LayoutArgs {
        let base = "egret-loadgen gen --dev x --dst-mac 02:00:00:00:00:01 --src 198.18.0.2 --dst 198.19.0.2";
        match Cli::try_parse_from(format!("{base} {s}").split_whitespace()).unwrap() {
            Cli::Gen(g) => g.layout,
            _ => unreachable!(),
        }
    }

    #[test]
    fn udp_template_is_a_valid_frame() {
        let f = template([2; 6], [4; 6], "198.18.0.2".parse().unwrap(), "198.19.0.2".parse().unwrap(), false, 60);
        assert_eq!(f.len(), 60);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum verifies");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46);
        assert_eq!(f[23], 17);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26, "UDP length");
        assert_eq!(&f[40..42], &[0, 0], "no UDP checksum");
    }

    #[test]
    fn tcp_template_is_a_syn_without_payload() {
        let f = template([2; 6], [4; 6], "198.18.0.2".parse().unwrap(), "198.19.0.2".parse().unwrap(), true, 60);
        assert_eq!(f.len(), 60, "padded to the Ethernet minimum");
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 40, "IPv4 total length: headers only");
        assert_eq!(f[23], 6);
        assert_eq!(f[46], 0x50, "data offset 5");
        assert_eq!(f[47], 0x02, "SYN");
    }

    #[test]
    fn parses_macs() {
        assert_eq!(mac("02:00:0a:ff:00:01\n").unwrap(), [2, 0, 10, 255, 0, 1]);
        assert!(mac("02:00").is_err());
    }

    #[test]
    fn cycling_flows_are_distinct_and_repeat() {
        for n in [1u64, 1000, 100_000] {
            let c = layout(&args(&format!("--flows {n}"))).unwrap();
            let seen: HashSet<_> = (0..n).map(|i| flow(&c, i)).collect();
            assert_eq!(seen.len() as u64, n, "{n} flows");
            assert_eq!(flow(&c, 0), flow(&c, n), "flow n is flow 0 again");
        }
        let c = layout(&args("--flows 1000000")).unwrap();
        assert_eq!((c.sport_count, c.dport_count), (64_512, 16));
        assert!(layout(&args("--flows 5000000000")).is_err(), "more flows than tuples");
    }

    #[test]
    fn new_flows_never_repeat() {
        let c = layout(&args("--new-flows")).unwrap();
        assert_eq!(c.flows, 0);
        let n = 3 * u64::from(PORTS) + 17;
        let seen: HashSet<_> = (0..n).map(|i| flow(&c, i)).collect();
        assert_eq!(seen.len() as u64, n);
        assert_eq!(flow(&c, 0), (0, 1024, 9));
        assert_eq!(flow(&c, u64::from(PORTS)), (0, 1024, 10), "the destination port moves on once sources wrap");
    }

    #[test]
    fn pod_endpoints_each_keep_one_destination() {
        let c =
            layout(&args("--flows 120000 --saddrs 4 --sport-count 30000 --dport-count 2 --dport-by-saddr")).unwrap();
        let all: Vec<_> = (0..120_000).map(|i| flow(&c, i)).collect();
        let endpoints: HashSet<_> = all.iter().map(|&(a, p, _)| (a, p)).collect();
        assert_eq!(endpoints.len(), 120_000, "every flow its own pod endpoint");
        let to_first = all.iter().filter(|f| f.2 == 9).count();
        assert_eq!(to_first, 60_000, "half the pods to each destination");
        assert!(
            layout(&args("--flows 120001 --saddrs 4 --sport-count 30000 --dport-count 2 --dport-by-saddr")).is_err()
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v[..1], 99.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
