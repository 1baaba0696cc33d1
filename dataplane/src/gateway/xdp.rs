//! Loads and attaches the steering program (`bpf/steer.bpf.c`) with aya,
//! through bpf_link: the program detaches when the gateway exits, even on
//! `kill -9`, so a crash never leaves an attached program that blocks the
//! next start. The program's maps follow the plan.

use crate::plan::Ipv4Cidr;
use aya::maps::lpm_trie::{Key as TrieKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// Which XDP mode an interface ended up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

/// The steering program on one interface.
pub struct Steering {
    ebpf: Ebpf,
    pub ifname: String,
    pub mode: AttachMode,
    pods: HashSet<u32>,
    egress: HashSet<u32>,
    tunnels: HashSet<(u32, u16)>,
    sources: HashSet<Ipv4Cidr>,
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP program: {0}")]
    Load(String),
    #[error("attaching XDP to {ifname}: {reason}")]
    Attach { ifname: String, reason: String },
    #[error("updating XDP map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

/// An error and its causes ("failed to create map `xsks`: Operation not
/// permitted"): aya's own message leaves the kernel's answer out. A cause
/// that only repeats the message before it is skipped.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

fn key(a: Ipv4Addr) -> u32 {
    // Keys are the address bytes as the packet carries them.
    u32::from_ne_bytes(a.octets())
}

impl Steering {
    /// Loads the program and attaches it to `ifname`: native mode first,
    /// generic when the driver has no XDP support. `local` are the node's
    /// own addresses.
    pub fn attach(ifname: &str, local: &[Ipv4Addr]) -> Result<Steering, XdpError> {
        let mut ebpf = Ebpf::load(PROGRAM).map_err(|e| XdpError::Load(with_sources(&e)))?;
        let prog: &mut Xdp = ebpf
            .program_mut("egret_steer")
            .ok_or_else(|| XdpError::Load("program egret_steer missing".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpError::Load(e.to_string()))?;
        prog.load().map_err(|e| XdpError::Load(format!("{e:?}")))?;
        let mode = match prog.attach(ifname, XdpMode::Driver) {
            Ok(_) => AttachMode::Native,
            Err(native) => {
                prog.attach(ifname, XdpMode::Skb).map_err(|generic| XdpError::Attach {
                    ifname: ifname.into(),
                    reason: format!("native: {native}; generic: {generic}"),
                })?;
                AttachMode::Generic
            }
        };
        let mut s = Steering {
            ebpf,
            ifname: ifname.into(),
            mode,
            pods: HashSet::new(),
            egress: HashSet::new(),
            tunnels: HashSet::new(),
            sources: HashSet::new(),
        };
        let mut m = s.map("local")?;
        for &a in local {
            m.insert(key(a), 1u8, 0).map_err(|e| XdpError::Map { map: "local", reason: e.to_string() })?;
        }
        Ok(s)
    }

    fn map(&mut self, name: &'static str) -> Result<BpfHashMap<&mut MapData, u32, u8>, XdpError> {
        let m = self.ebpf.map_mut(name).ok_or(XdpError::Map { map: name, reason: "missing".into() })?;
        BpfHashMap::try_from(m).map_err(|e| XdpError::Map { map: name, reason: e.to_string() })
    }

    /// Makes the maps hold exactly these pods and egress addresses.
    pub fn follow_plan(&mut self, pods: &HashSet<u32>, egress: &HashSet<u32>) -> Result<(), XdpError> {
        for (name, want) in [("pods", pods), ("egress", egress)] {
            let have = if name == "pods" { self.pods.clone() } else { self.egress.clone() };
            let mut m = self.map(if name == "pods" { "pods" } else { "egress" })?;
            for &a in want.difference(&have) {
                m.insert(key(Ipv4Addr::from(a)), 1u8, 0)
                    .map_err(|e| XdpError::Map { map: "pods/egress", reason: e.to_string() })?;
            }
            for &a in have.difference(want) {
                let _ = m.remove(&key(Ipv4Addr::from(a)));
            }
        }
        self.pods = pods.clone();
        self.egress = egress.clone();
        Ok(())
    }

    /// Makes the tunnel map hold exactly these (address, port) pairs.
    pub fn follow_tunnels(&mut self, want: &HashSet<(u32, u16)>) -> Result<(), XdpError> {
        let have = self.tunnels.clone();
        let m = self.ebpf.map_mut("tunnels").ok_or(XdpError::Map { map: "tunnels", reason: "missing".into() })?;
        let mut m: BpfHashMap<&mut MapData, [u8; 8], u8> =
            BpfHashMap::try_from(m).map_err(|e| XdpError::Map { map: "tunnels", reason: e.to_string() })?;
        let key = |&(a, p): &(u32, u16)| {
            let (a, p) = (a.to_be_bytes(), p.to_be_bytes());
            [a[0], a[1], a[2], a[3], p[0], p[1], 0, 0]
        };
        for t in want.difference(&have) {
            m.insert(key(t), 1u8, 0).map_err(|e| XdpError::Map { map: "tunnels", reason: e.to_string() })?;
        }
        for t in have.difference(want) {
            let _ = m.remove(&key(t));
        }
        self.tunnels = want.clone();
        Ok(())
    }

    /// Makes the source trie hold exactly these fallback source CIDRs.
    pub fn follow_sources(&mut self, want: &HashSet<Ipv4Cidr>) -> Result<(), XdpError> {
        let have = self.sources.clone();
        let m = self.ebpf.map_mut("sources").ok_or(XdpError::Map { map: "sources", reason: "missing".into() })?;
        let mut m: LpmTrie<&mut MapData, u32, u8> =
            LpmTrie::try_from(m).map_err(|e| XdpError::Map { map: "sources", reason: e.to_string() })?;
        let key = |c: &Ipv4Cidr| TrieKey::new(u32::from(c.prefix_len()), key(c.addr()));
        for c in want.difference(&have) {
            m.insert(&key(c), 1u8, 0).map_err(|e| XdpError::Map { map: "sources", reason: e.to_string() })?;
        }
        for c in have.difference(want) {
            let _ = m.remove(&key(c));
        }
        self.sources = want.clone();
        Ok(())
    }

    /// Points queue `queue`'s traffic at an AF_XDP socket.
    pub fn register_socket(&mut self, queue: u32, fd: &impl AsRawFd) -> Result<(), XdpError> {
        let m = self.ebpf.map_mut("xsks").ok_or(XdpError::Map { map: "xsks", reason: "missing".into() })?;
        let mut xsks = XskMap::try_from(m).map_err(|e| XdpError::Map { map: "xsks", reason: e.to_string() })?;
        xsks.set(queue, fd.as_raw_fd(), 0).map_err(|e| XdpError::Map { map: "xsks", reason: e.to_string() })
    }

    /// The program's verdict counts, summed over CPUs.
    pub fn stats(&mut self) -> XdpStats {
        let Some(m) = self.ebpf.map_mut("stats") else { return XdpStats::default() };
        let Ok(arr) = PerCpuArray::<&mut MapData, u64>::try_from(m) else { return XdpStats::default() };
        let get = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        XdpStats { redirected: get(0), dropped_no_socket: get(1), passed: get(2) }
    }
}

/// What the steering program did with the frames it saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdpStats {
    /// Handed to the queue's AF_XDP socket.
    pub redirected: u64,
    /// Ours, but the queue had no socket (starting or stopping).
    pub dropped_no_socket: u64,
    /// Left to the kernel (ARP, the node's own traffic, other routes; what
    /// it would forward out of Egret's interfaces, the forward guard drops).
    pub passed: u64,
}
