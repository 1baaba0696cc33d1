//! AF_XDP sockets, built on xdpilone (pure Rust: no libbpf/libxdp C build,
//! and it lets our own XDP program own the XSKMAP, which xsk-rs's libxdp
//! path fights). One UMEM per worker, shared by that worker's sockets (the
//! inside and outside queue it serves), so a frame received on one
//! interface is sent on the other without a copy.

use super::rx_bound::RxBound;
use crate::wire::{ethernet, ipv4};
use core::num::NonZeroU32;
use core::ptr::NonNull;
use std::io;
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig};

const SOL_XDP: libc::c_int = 283;
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;

/// UMEM and ring sizes.
#[derive(Debug, Clone, Copy)]
pub struct XskSizes {
    pub frames: u32,
    pub frame_size: u32,
    pub ring: u32,
}

/// Frames an AF_XDP socket lost in the kernel (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketDrops {
    /// No fill-ring buffer for an arriving frame, or it did not fit one.
    pub no_buffer: u64,
    /// The RX ring was full: the worker fell behind.
    pub rx_ring_full: u64,
    /// Descriptors the kernel refused on the RX or TX ring.
    pub invalid_desc: u64,
}

/// One AF_XDP socket bound to (interface, queue).
pub struct Port {
    pub ifname: String,
    pub ifindex: u32,
    pub queue: u32,
    pub mac: [u8; 6],
    pub zero_copy: bool,
    device: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
    /// Frames handed to the TX ring and not yet completed.
    in_flight: u32,
    fd: libc::c_int,
}

/// A worker's UMEM, its free frames and its sockets.
pub struct WorkerIo {
    _umem: Umem,
    base: NonNull<u8>,
    len: usize,
    pub frame_size: u32,
    free: Vec<u64>,
    pub ports: Vec<Port>,
}

// The mapping and sockets move to the worker thread once and stay there.
unsafe impl Send for WorkerIo {}

pub fn mac_of(ifname: &str) -> io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let mut mac = [0u8; 6];
    for (i, part) in s.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).map_err(|_| io::Error::other("bad MAC"))?;
    }
    Ok(mac)
}

/// The start of the frame holding `addr` (frame sizes are powers of two,
/// so a mask: this runs several times a packet, and a 64-bit divide showed
/// in `Worker::handle`'s profile).
#[inline]
fn frame_base(addr: u64, frame_size: u32) -> u64 {
    addr & !(u64::from(frame_size) - 1)
}

/// The frame at `addr` of the UMEM mapped at `base` (`len` bytes), to its
/// frame's end.
///
/// # Safety
/// As [`WorkerIo::frame_mut`].
#[inline]
unsafe fn frame_in<'a>(base: NonNull<u8>, len: usize, frame_size: u32, addr: u64) -> &'a mut [u8] {
    let end = frame_base(addr, frame_size) + u64::from(frame_size);
    debug_assert!(end as usize <= len);
    core::slice::from_raw_parts_mut(base.as_ptr().add(addr as usize), (end - addr) as usize)
}

/// Frames at the head of a standing queue looked at to tell whether it is
/// TCP's.
const HEAD_SAMPLE: u32 = 16;

/// What [`WorkerIo::shed_standing`] did: frames shed, and frames marked
/// Congestion Experienced (kept, to be forwarded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shed {
    pub shed: u32,
    pub marked: u32,
}

fn errno(e: xdpilone::Errno, what: &str) -> io::Error {
    io::Error::other(format!("{what}: {e:?}"))
}

impl WorkerIo {
    /// Opens one socket per (interface, queue), zero-copy where the driver
    /// supports it and copy mode otherwise.
    pub fn open(targets: &[(String, u32)], sizes: XskSizes) -> io::Result<WorkerIo> {
        match Self::open_with(targets, sizes, XDP_ZEROCOPY) {
            Ok(io) => Ok(io),
            Err(_) => Self::open_with(targets, sizes, XDP_COPY),
        }
    }

    fn open_with(targets: &[(String, u32)], sizes: XskSizes, mode: u16) -> io::Result<WorkerIo> {
        if !sizes.frame_size.is_power_of_two() {
            return Err(io::Error::other(format!("frame size {} is not a power of two", sizes.frame_size)));
        }
        let len = sizes.frames as usize * sizes.frame_size as usize;
        // SAFETY: a fresh anonymous mapping, owned by WorkerIo and unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr as *mut u8).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let area = NonNull::slice_from_raw_parts(base, len);
        let config = UmemConfig {
            fill_size: sizes.ring,
            complete_size: sizes.ring,
            frame_size: sizes.frame_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the area is page aligned and lives as long as the Umem (both owned here).
        let umem = match unsafe { Umem::new(config, area) } {
            Ok(u) => u,
            Err(e) => {
                unsafe { libc::munmap(ptr, len) };
                return Err(errno(e, "registering UMEM"));
            }
        };
        let mut io = WorkerIo {
            _umem: umem,
            base,
            len,
            frame_size: sizes.frame_size,
            free: (0..sizes.frames).map(|i| u64::from(i) * u64::from(sizes.frame_size)).collect(),
            ports: Vec::new(),
        };
        for (i, (ifname, queue)) in targets.iter().enumerate() {
            let mut info = IfInfo::invalid();
            let cname = std::ffi::CString::new(ifname.as_str()).map_err(|_| io::Error::other("interface name"))?;
            info.from_name(&cname).map_err(|e| errno(e, &format!("interface {ifname}")))?;
            info.set_queue(*queue);
            let sock = if i == 0 { Socket::with_shared(&info, &io._umem) } else { Socket::new(&info) }
                .map_err(|e| errno(e, "creating AF_XDP socket"))?;
            let device = io._umem.fq_cq(&sock).map_err(|e| errno(e, "fill/completion rings"))?;
            let rxtx = io
                ._umem
                .rx_tx(
                    &sock,
                    &SocketConfig {
                        rx_size: NonZeroU32::new(sizes.ring),
                        tx_size: NonZeroU32::new(sizes.ring),
                        // Sockets sharing the first one's UMEM inherit its
                        // mode; the kernel refuses mode flags on them.
                        bind_flags: if i == 0 { SocketConfig::XDP_BIND_NEED_WAKEUP | mode } else { 0 },
                    },
                )
                .map_err(|e| errno(e, "rx/tx rings"))?;
            let rx = rxtx.map_rx().map_err(|e| errno(e, "mapping rx ring"))?;
            let tx = rxtx.map_tx().map_err(|e| errno(e, "mapping tx ring"))?;
            io._umem.bind(&rxtx).map_err(|e| errno(e, &format!("binding to {ifname} queue {queue}")))?;
            let fd = rx.as_raw_fd();
            // Copy-mode TX sends at most this many frames per kick (measured: +10%).
            let budget: libc::c_int = 256;
            // SAFETY: plain setsockopt on our socket; failure (old kernels) is harmless.
            unsafe {
                libc::setsockopt(fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget as *const _ as *const libc::c_void, 4);
            }
            io.ports.push(Port {
                ifname: ifname.clone(),
                ifindex: info.ifindex(),
                queue: *queue,
                mac: mac_of(ifname)?,
                zero_copy: mode == XDP_ZEROCOPY,
                device,
                rx,
                tx,
                in_flight: 0,
                fd,
            });
        }
        Ok(io)
    }

    pub fn socket_fd(&self, port: usize) -> libc::c_int {
        self.ports[port].fd
    }

    /// The bytes of the frame holding `addr`, from `addr` to the frame's end.
    ///
    /// # Safety
    /// `addr` must be a descriptor address from this UMEM that the caller
    /// owns (received and not yet handed back), used by one `&mut` at a time.
    #[inline]
    pub unsafe fn frame_mut<'a>(&self, addr: u64) -> &'a mut [u8] {
        frame_in(self.base, self.len, self.frame_size, addr)
    }

    /// Starts loading the first bytes of received frame `addr`: the
    /// kernel's RX copy wrote them on another core, so each is a cache miss
    /// that a whole batch's prefetches overlap (DPDK l3fwd does the same).
    #[inline]
    pub fn prefetch_frame(&self, addr: u64) {
        if (addr as usize) < self.len {
            // SAFETY: within the UMEM mapping; a prefetch never faults.
            crate::nat::prefetch(unsafe { &*self.base.as_ptr().add(addr as usize) });
        }
    }

    /// Takes a free frame (its base address), if any.
    #[inline]
    pub fn alloc(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Returns a frame (any address inside it).
    #[inline]
    pub fn release(&mut self, addr: u64) {
        self.free.push(frame_base(addr, self.frame_size));
    }

    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Keeps the fill ring of `port` stocked and reaps its TX completions.
    pub fn service(&mut self, port: usize) {
        let p = &mut self.ports[port];
        {
            let mut c = p.device.complete(p.in_flight.min(256));
            while let Some(addr) = c.read() {
                self.free.push(frame_base(addr, self.frame_size));
                p.in_flight -= 1;
            }
            c.release();
        }
        // Keep some frames back for TX of replies and handoffs.
        let spare = self.free.len().saturating_sub(64) as u32;
        if spare > 0 {
            // As many as the ring takes: frames shed unread come back here
            // faster than a batch a turn.
            let mut f = p.device.fill(spare);
            let n = f.capacity() as usize;
            let start = self.free.len() - n.min(self.free.len());
            let inserted = f.insert(self.free[start..].iter().copied()) as usize;
            f.commit();
            self.free.truncate(self.free.len() - inserted);
        }
        if p.device.needs_wakeup() {
            p.device.wake();
        }
    }

    /// Receives up to `out.len()` descriptors from `port`.
    pub fn receive(&mut self, port: usize, out: &mut Vec<XdpDesc>, max: u32) {
        let p = &mut self.ports[port];
        let mut r = p.rx.receive(max);
        while let Some(d) = r.read() {
            out.push(d);
        }
        r.release();
    }

    /// Takes from the head of `port`'s RX ring what `bound` finds standing
    /// at `now_ns`, oldest first: the frames it sheds are freed unread; the
    /// control law's frame, when ECN-capable, is marked Congestion
    /// Experienced (RFC 8289 5.2), or kept when it is TCP (which slows by
    /// itself), and pushed to `kept` to be forwarded; otherwise it is shed.
    #[inline]
    pub fn shed_standing(&mut self, port: usize, bound: &mut RxBound, now_ns: u64, kept: &mut Vec<XdpDesc>) -> Shed {
        let WorkerIo { base, len, frame_size, free, ports, .. } = self;
        // SAFETY: a received frame is ours until we send or release it, and
        // each is looked at once at a time, here.
        let frame = |d: &XdpDesc| unsafe { frame_in(*base, *len, *frame_size, d.addr) }.get_mut(..d.len as usize);
        let p = &mut ports[port];
        // Advisory (the kernel may be adding), which is all the bound needs.
        let queued = p.rx.available();
        let excess = bound.excess(port, queued, now_ns, || {
            // The head of the queue, looked at and left in the ring (a
            // reader dropped unreleased gives its frames back).
            let mut head = p.rx.receive(HEAD_SAMPLE);
            let (mut tcp, mut n) = (0, 0);
            while let Some(d) = head.read() {
                n += 1;
                tcp += u32::from(frame(&d).is_some_and(|f| ethernet::carries_tcp(f)));
            }
            n > 0 && 4 * tcp >= 3 * n
        });
        let mut out = Shed::default();
        if excess.total() == 0 {
            return out;
        }
        let mut r = p.rx.receive(excess.total());
        for _ in 0..excess.hard {
            let Some(d) = r.read() else { break };
            free.push(frame_base(d.addr, *frame_size));
            out.shed += 1;
        }
        if excess.law {
            if let Some(d) = r.read() {
                let f = frame(&d).unwrap_or_default();
                if Self::mark_congestion(f) {
                    kept.push(d);
                    out.marked += 1;
                } else if ethernet::carries_tcp(f) {
                    kept.push(d);
                } else {
                    free.push(frame_base(d.addr, *frame_size));
                    out.shed += 1;
                }
            }
        }
        r.release();
        out
    }

    /// Marks the IPv4 packet of an Ethernet frame Congestion Experienced;
    /// false when it is not one, or not ECN-capable.
    fn mark_congestion(frame: &mut [u8]) -> bool {
        if ethernet::ethertype(frame) != Some(ethernet::ETHERTYPE_IPV4) {
            return false;
        }
        ipv4::Ipv4Packet::new_checked(&mut frame[ethernet::HEADER_LEN..]).is_ok_and(|mut ip| ip.mark_congestion())
    }

    /// Queues frames on `port`'s TX ring and kicks the kernel; returns how
    /// many the ring took (the caller keeps the rest for the next round).
    pub fn transmit(&mut self, port: usize, descs: &[XdpDesc]) -> usize {
        let p = &mut self.ports[port];
        let sent = if descs.is_empty() {
            0
        } else {
            let mut w = p.tx.transmit(descs.len() as u32);
            let n = w.insert(descs.iter().copied()) as usize;
            w.commit();
            n
        };
        p.in_flight += sent as u32;
        // Copy mode transmits only inside sendto(), a budget per call: kick
        // until the kernel has taken everything, or TCP through us stalls.
        for _ in 0..64 {
            if p.tx.pending() == 0 {
                break;
            }
            p.tx.wake();
        }
        sent
    }

    /// What the kernel dropped before the worker saw it, summed over this
    /// worker's sockets (cumulative, as the kernel counts).
    pub fn socket_drops(&self) -> SocketDrops {
        let mut sum = SocketDrops::default();
        for p in &self.ports {
            // Kernels before 5.9 lack these: count nothing rather than fail.
            if let Ok(s) = p.device.statistics_v2() {
                sum.no_buffer += s.rx_dropped;
                sum.rx_ring_full += s.rx_ring_full;
                sum.invalid_desc += s.rx_invalid_descs + s.tx_invalid_descs;
            }
        }
        sum
    }

    /// The descriptor for `len` bytes at the frame `addr` starts.
    pub fn desc(addr: u64, len: usize) -> XdpDesc {
        XdpDesc { addr, len: len as u32, options: 0 }
    }
}

impl Drop for WorkerIo {
    fn drop(&mut self) {
        self.ports.clear();
        // SAFETY: the sockets referencing the area are gone (ports dropped);
        // the Umem's fd closes after this body runs, and nothing reads the
        // area any more.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}
