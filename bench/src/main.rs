//! egret-loadgen: the load generator and counting sink behind `bench/run.sh`.
//!
//! ```text
//! egret-loadgen gen  --dev IF --dst-mac MAC --src IP --dst IP [--flows N] [--port P] [--size B] --seconds S
//! egret-loadgen sink --dev IF [--warmup S] [--measure S] [--hold S]
//! ```
//!
//! `gen` runs an XDP program with `BPF_PROG_RUN` in live-frames mode: the
//! kernel hands it the same template frame over and over, the program writes
//! the next of N UDP source ports into it and redirects it out of `--dev`,
//! so the frames enter the veth peer (the gateway) as if a NIC had received
//! them. Debian's xdp-trafficgen does not work on this kernel, and this runs
//! at several Mpps on one core, well above what a gateway core forwards.
//!
//! `sink` attaches a counting XDP_DROP program to `--dev` (the far end of the
//! gateway's outside link) and prints the IPv4 UDP rate it saw over the
//! measuring window, split by source: translated (198.19.0.0/16) and
//! untranslated (198.18.0.0/16). Everything it attaches detaches on exit.
//!
//! Both are bounded: `gen` stops after `--seconds` (at most 60) and `sink`
//! after warmup + measure + hold (at most 120 s in all).

use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

static PROGRAMS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/loadgen.bpf.o"));

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames in the first `BPF_PROG_RUN` call (~10 ms at 5 Mpps); later calls
/// are sized from the measured rate to last about `CALL_SECONDS`.
const REPEAT_FIRST: u32 = 1 << 16;
const REPEAT_MAX: u32 = 1 << 24;
const CALL_SECONDS: f64 = 0.5;
const MAX_SECONDS: f64 = 60.0;
/// Ethernet + IPv4 + UDP: what `gen` rewrites in every frame.
const HEADER_LEN: usize = 42;

/// `union bpf_attr`'s `test` member (BPF_PROG_TEST_RUN), as in linux/bpf.h.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

struct Args(Vec<String>);

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1)).map(String::as_str)
    }

    fn req(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("missing {name}"))
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{name}: cannot parse '{v}'")),
        }
    }
}

fn mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(format!("'{}' is not a MAC address", text.trim()));
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| format!("'{}' is not a MAC address", text.trim()))?;
    }
    Ok(m)
}

fn ifindex(dev: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(dev).map_err(|_| format!("bad interface name '{dev}'"))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no interface '{dev}' in this namespace")),
        i => Ok(i),
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + UDP (checksum 0) padded to `size` bytes (without FCS).
fn template(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, port: u16, size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (size - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&port.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
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

fn gen(a: &Args) -> Result<(), String> {
    let dev = a.req("--dev")?;
    let dst_mac = mac(a.req("--dst-mac")?)?;
    let src: Ipv4Addr = a.req("--src")?.parse().map_err(|_| "--src: not an IPv4 address")?;
    let dst: Ipv4Addr = a.req("--dst")?.parse().map_err(|_| "--dst: not an IPv4 address")?;
    let flows: u32 = a.parse("--flows", 10_000)?;
    let port: u16 = a.parse("--port", 10_000)?;
    let size: usize = a.parse("--size", 60)?;
    let seconds: f64 = a.parse("--seconds", 5.0)?;
    if !(1..=65536 - u32::from(port)).contains(&flows) {
        return Err(format!("--flows {flows}: must be 1..={} from port {port}", 65536 - u32::from(port)));
    }
    if !(60..=1500).contains(&size) {
        return Err(format!("--size {size}: must be 60..=1500"));
    }
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!("--seconds {seconds}: must be in (0, {MAX_SECONDS}]"));
    }
    let index = ifindex(dev)?;
    let src_mac = mac(&std::fs::read_to_string(format!("/sys/class/net/{dev}/address")).map_err(|e| e.to_string())?)?;
    let frame = template(dst_mac, src_mac, src, dst, port, size);

    let mut ebpf = Ebpf::load(PROGRAMS).map_err(|e| e.to_string())?;
    {
        let m = ebpf.map_mut("gen_cfg").ok_or("map gen_cfg missing")?;
        let mut cfg: Array<&mut MapData, u32> = Array::try_from(m).map_err(|e| e.to_string())?;
        for (i, v) in [flows, u32::from(port), index].into_iter().enumerate() {
            cfg.set(i as u32, v, 0).map_err(|e| e.to_string())?;
        }
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
    let mut sent: u64 = 0;
    let mut repeat = REPEAT_FIRST;
    while start.elapsed() < deadline {
        let attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: 64,
            ..TestRunAttr::default()
        };
        // SAFETY: `attr` and the frame it points at outlive the call; the
        // kernel reads `size_of::<TestRunAttr>()` bytes and zero-fills the rest.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &attr as *const TestRunAttr, size_of::<TestRunAttr>())
        };
        if rc != 0 {
            return Err(format!("BPF_PROG_RUN (live frames): {}", std::io::Error::last_os_error()));
        }
        sent += u64::from(repeat);
        let elapsed = start.elapsed().as_secs_f64();
        if debug {
            eprintln!("gen: call of {repeat} frames done at {elapsed:.3} s");
        }
        // Each call sets up and tears down a page pool, and the teardown
        // sleeps: few long calls keep the offered load steady. Aim at
        // CALL_SECONDS per call without running past the deadline by much.
        let rate = sent as f64 / elapsed.max(1e-6);
        let left = (seconds - elapsed).max(0.0);
        repeat = (rate * CALL_SECONDS.min(left)).clamp(f64::from(REPEAT_FIRST), f64::from(REPEAT_MAX)) as u32;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "gen: {sent} frames of {size} B over {flows} flows in {secs:.2} s = {:.3} Mpps offered",
        sent as f64 / secs / 1e6
    );
    Ok(())
}

fn read_sink(ebpf: &mut Ebpf) -> Result<[u64; 3], String> {
    let m = ebpf.map_mut("sink_count").ok_or("map sink_count missing")?;
    let arr: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(m).map_err(|e| e.to_string())?;
    let mut out = [0u64; 3];
    for (i, o) in out.iter_mut().enumerate() {
        *o = arr.get(&(i as u32), 0).map_err(|e| e.to_string())?.iter().sum();
    }
    Ok(out)
}

fn sink(a: &Args) -> Result<(), String> {
    let dev = a.req("--dev")?;
    let warmup: f64 = a.parse("--warmup", 1.5)?;
    let measure: f64 = a.parse("--measure", 3.0)?;
    let hold: f64 = a.parse("--hold", 1.0)?;
    for (name, v) in [("--warmup", warmup), ("--measure", measure), ("--hold", hold)] {
        if !(0.0..=40.0).contains(&v) {
            return Err(format!("{name} {v}: must be 0..=40 seconds"));
        }
    }
    if measure <= 0.0 {
        return Err("--measure must be more than 0".into());
    }
    let mut ebpf = Ebpf::load(PROGRAMS).map_err(|e| e.to_string())?;
    let prog = program(&mut ebpf, "sink")?;
    let mode = match prog.attach(dev, XdpMode::Driver) {
        Ok(_) => "native",
        Err(native) => {
            prog.attach(dev, XdpMode::Skb)
                .map_err(|e| format!("attaching to {dev}: native: {native}; generic: {e}"))?;
            "generic"
        }
    };
    eprintln!("sink: counting on {dev} ({mode} XDP)");
    println!("ready");
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let (c0, t0) = (read_sink(&mut ebpf)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(measure));
    let (c1, t1) = (read_sink(&mut ebpf)?, Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    let rate = |i: usize| (c1[i] - c0[i]) as f64 / secs / 1e6;
    println!(
        "sink: mpps={:.3} translated_mpps={:.3} untranslated_mpps={:.3} seconds={secs:.2}",
        rate(0),
        rate(1),
        rate(2)
    );
    std::thread::sleep(Duration::from_secs_f64(hold));
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match argv.split_first() {
        Some((c, r)) => (c.as_str(), Args(r.to_vec())),
        None => ("", Args(Vec::new())),
    };
    let result = match cmd {
        "gen" => gen(&rest),
        "sink" => sink(&rest),
        _ => {
            eprintln!("usage: egret-loadgen gen --dev IF --dst-mac MAC --src IP --dst IP [--flows N] [--port P] [--size B] [--seconds S]");
            eprintln!("       egret-loadgen sink --dev IF [--warmup S] [--measure S] [--hold S]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret-loadgen {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_a_valid_udp_frame() {
        let f = template([2; 6], [4; 6], "198.18.0.2".parse().unwrap(), "198.19.0.2".parse().unwrap(), 10_000, 60);
        assert_eq!(f.len(), 60);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum verifies");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26, "UDP length");
        assert_eq!(&f[40..42], &[0, 0], "no UDP checksum");
    }

    #[test]
    fn parses_macs() {
        assert_eq!(mac("02:00:0a:ff:00:01\n").unwrap(), [2, 0, 10, 255, 0, 1]);
        assert!(mac("02:00").is_err());
    }
}
