//! What the benchmark's tools share: their exit, MAC
//! addresses, and the Internet checksum.

use std::process::ExitCode;

/// The Internet checksum (RFC 1071) of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A MAC address as `ip link` prints it.
pub fn mac(text: &str) -> Result<[u8; 6], String> {
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

/// A tool's exit: an error is printed as `TOOL CMD: error` and exits 1.
pub fn exit_with(tool: &str, cmd: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool} {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

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

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Runs XDP program `prog_fd` `repeat` times on `frame` as live frames
/// (BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, batches of 64): what the
/// program redirects or transmits is sent for real.
pub fn run_live_frames(prog_fd: i32, frame: &[u8], repeat: u32) -> Result<(), String> {
    let attr = TestRunAttr {
        prog_fd: prog_fd as u32,
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
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &attr as *const TestRunAttr, std::mem::size_of::<TestRunAttr>())
    };
    if rc != 0 {
        return Err(format!("BPF_PROG_RUN (live frames): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
