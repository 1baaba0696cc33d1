//! What the benchmark's tools share: the argument reader and `main`, MAC
//! addresses, and the Internet checksum.

use std::process::ExitCode;

/// `--name value` arguments, as the tools take them.
pub struct Args(pub Vec<String>);

impl Args {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1)).map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    pub fn req(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("missing {name}"))
    }

    pub fn parse<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{name}: cannot parse '{v}'")),
        }
    }
}

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

/// A tool's `main`: the first argument names the command, `run` runs it
/// (`None`: no such command, so `usage` goes to stderr and the exit code
/// is 2); an error is printed as `TOOL CMD: error` and exits 1.
pub fn run_tool(tool: &str, usage: &str, run: impl FnOnce(&str, &Args) -> Option<Result<(), String>>) -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match argv.split_first() {
        Some((c, r)) => (c.as_str(), Args(r.to_vec())),
        None => ("", Args(Vec::new())),
    };
    match run(cmd, &rest) {
        None => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("{tool} {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}
