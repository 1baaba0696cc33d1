//! egret-xdpfwd: the I/O floor of `bench/run.sh`. The gateway's own
//! steering program and AF_XDP sockets (`egret_dataplane::gateway`'s
//! `Steering` and `WorkerIo`, same UMEM and ring sizes, one worker on one
//! core, the same RX latency bound), but no NAT: every frame from the pod is readdressed to the sink's
//! MAC and sent out of the outside interface. What this moves is what Egret
//! could move at best on the same path; Egret's figure over this one is the
//! share of the floor it reaches. With `--pod-mac`, frames from the outside
//! to the pod are forwarded back the same way (the TCP handshakes' floor:
//! SYN-ACKs reach the pod side as they do through Egret).
//!
//! ```text
//! egret-xdpfwd --inside IF --outside IF --pod IP --dst-mac MAC --seconds S [--ring N] [--core C]
//!              [--rx-latency-budget-us US] [--pod-mac MAC]
//! ```

use clap::Parser;
use egret_bench::mac;
use egret_dataplane::gateway::rx_bound::RxBound;
use egret_dataplane::gateway::xdp::Steering;
use egret_dataplane::gateway::xsk::{WorkerIo, XskSizes};
use egret_dataplane::wire::ethernet::EthernetFrame;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "egret-xdpfwd", about = "AF_XDP forwarder without NAT: the benchmark's I/O floor")]
struct Cli {
    /// Where the pod's frames arrive.
    #[arg(long)]
    inside: String,
    /// Where they leave.
    #[arg(long)]
    outside: String,
    /// The pod's address: the steering program redirects its frames.
    #[arg(long)]
    pod: Ipv4Addr,
    /// The next hop's MAC on the outside.
    #[arg(long, value_parser = mac)]
    dst_mac: [u8; 6],
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// AF_XDP ring size (the gateway's `umem.ring`).
    #[arg(long, default_value_t = 2048)]
    ring: u32,
    /// Core to pin to.
    #[arg(long)]
    core: Option<usize>,
    /// RX latency budget, as the gateway's `umem.rx_latency_budget_us`.
    #[arg(long, default_value_t = 250)]
    rx_latency_budget_us: u32,
    /// The pod's MAC: forward frames from the outside to the pod too.
    #[arg(long, value_parser = mac)]
    pod_mac: Option<[u8; 6]>,
}

const BATCH: u32 = 64;

/// Set by SIGTERM or SIGINT: the loop ends and XDP is detached on the way out.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}
const MAX_SECONDS: f64 = 120.0;

fn run(cli: &Cli) -> Result<(), String> {
    if !(cli.seconds > 0.0 && cli.seconds <= MAX_SECONDS) {
        return Err(format!("--seconds {}: must be in (0, {MAX_SECONDS}]", cli.seconds));
    }
    if let Some(c) = cli.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
            return Err(format!("could not pin to core {c}"));
        }
    }
    let mut steering = Vec::new();
    for i in [&cli.inside, &cli.outside] {
        steering.push(Steering::attach(i, &[]).map_err(|e| e.to_string())?);
    }
    let pods: HashSet<u32> = [u32::from(cli.pod)].into();
    steering[0].follow_plan(&pods, &HashSet::new()).map_err(|e| e.to_string())?;
    if cli.pod_mac.is_some() {
        // Frames to the pod arrive at the outside socket too.
        steering[1].follow_plan(&pods, &HashSet::new()).map_err(|e| e.to_string())?;
    }
    let sizes = XskSizes { frames: 8192, frame_size: 2048, ring: cli.ring };
    let targets = [(cli.inside.clone(), 0), (cli.outside.clone(), 0)];
    let mut io = WorkerIo::open(&targets, sizes).map_err(|e| format!("AF_XDP: {e}"))?;
    for (pi, s) in steering.iter_mut().enumerate() {
        s.register_socket(0, &io.socket_fd(pi)).map_err(|e| e.to_string())?;
    }
    let (in_mac, out_mac) = (io.ports[0].mac, io.ports[1].mac);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
    println!("ready");
    let mut rx = Vec::with_capacity(BATCH as usize);
    // Frames waiting for each port's TX ring: to the outside, to the pod.
    let mut tx = [Vec::with_capacity(4 * BATCH as usize), Vec::with_capacity(4 * BATCH as usize)];
    // Frames sent: to the pod (returned), to the outside (forwarded).
    let (mut sent_to, mut shed) = ([0u64; 2], 0u64);
    let (mut bound, mut latency_shed) = (RxBound::new(cli.rx_latency_budget_us, 2), 0u64);
    let mut marked = [Vec::new(), Vec::new()];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(cli.seconds);
    while !STOP.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // The gateway's RX latency bound, so that the floor differs from
        // Egret by the NAT alone.
        let now_ns = (now - start).as_nanos() as u64;
        bound.begin_turn(now_ns);
        for port in 0..2 {
            io.service(port);
        }
        // Both rings, as the gateway's worker bounds both (the frame the
        // law marks, or keeps in a queue of TCP's, is forwarded first, as
        // there).
        for (port, marked) in marked.iter_mut().enumerate() {
            latency_shed += u64::from(io.shed_standing(port, &mut bound, now_ns, marked).shed);
        }
        for (from, to) in [(0usize, 1usize), (1, 0)] {
            rx.clear();
            rx.append(&mut marked[from]);
            if tx[to].len() < 2 * BATCH as usize {
                io.receive(from, &mut rx, BATCH);
            }
            bound.received(rx.len());
            let (dst, src) = if to == 1 { (Some(cli.dst_mac), out_mac) } else { (cli.pod_mac, in_mac) };
            match dst {
                Some(dst) => {
                    for d in rx.drain(..) {
                        // SAFETY: a received descriptor is ours until sent or released.
                        EthernetFrame::new_unchecked(unsafe { io.frame_mut(d.addr) }).readdress(dst, src);
                        tx[to].push(d);
                    }
                }
                // One way only: what the sink sends back is not forwarded.
                None => rx.drain(..).for_each(|d| io.release(d.addr)),
            }
            let sent = io.transmit(to, &tx[to]);
            sent_to[to] += sent as u64;
            tx[to].drain(..sent);
            if tx[to].len() > 8 * BATCH as usize {
                // The kernel takes nothing: drop the oldest, as the gateway does.
                let n = tx[to].len() - 4 * BATCH as usize;
                for d in tx[to].drain(..n) {
                    io.release(d.addr);
                }
                shed += n as u64;
            }
        }
    }
    let [returned, forwarded] = sent_to;
    println!("xdpfwd: forwarded={forwarded} returned={returned} shed={shed} latency_shed={latency_shed}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    egret_bench::exit_with("egret-xdpfwd", "", run(&cli))
}
