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
