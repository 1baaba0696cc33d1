//! The Linux capabilities egret-gateway needs, and which of them a failed
//! start lacked. The kernel's refusals say only "Operation not permitted"
//! or "No buffer space available"; the line an operator reads should name
//! the capability. deploy/gateway.yaml grants exactly these
//! (tests/test_image.py runs the image without each one).

use super::error::StartError;

/// One capability the gateway uses, and what for.
pub struct Need {
    pub name: &'static str,
    bit: u32,
    pub why: &'static str,
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

pub const NEEDED: [Need; 4] = [
    Need {
        name: "CAP_NET_ADMIN",
        bit: CAP_NET_ADMIN,
        why: "attaching XDP, the AF_XDP socket map, the forward guard's nftables table",
    },
    Need { name: "CAP_NET_RAW", bit: CAP_NET_RAW, why: "opening AF_XDP sockets" },
    Need { name: "CAP_BPF", bit: CAP_BPF, why: "creating BPF maps and loading the XDP program" },
    Need { name: "CAP_IPC_LOCK", bit: CAP_IPC_LOCK, why: "locking the UMEM beyond RLIMIT_MEMLOCK" },
];

/// This process's effective capability set (/proc/self/status), if readable.
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn memlock_unlimited() -> bool {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the one struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) == 0 && r.rlim_cur == libc::RLIM_INFINITY }
}

/// The needed capabilities missing from `eff`. CAP_SYS_ADMIN stands in for
/// CAP_BPF (as the kernel lets it); CAP_IPC_LOCK is not missing where the
/// memlock limit is unlimited.
fn missing_from(eff: u64, memlock_unlimited: bool) -> Vec<&'static Need> {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    NEEDED
        .iter()
        .filter(|n| match n.bit {
            CAP_BPF => !has(CAP_BPF) && !has(CAP_SYS_ADMIN),
            CAP_IPC_LOCK => !has(CAP_IPC_LOCK) && !memlock_unlimited,
            bit => !has(bit),
        })
        .collect()
}

/// What to add to a start error that a missing capability may explain.
fn hint_for(missing: &[&Need]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let what = missing.iter().map(|n| format!("{} ({})", n.name, n.why)).collect::<Vec<_>>().join(", ");
    let all = NEEDED.iter().map(|n| n.name).collect::<Vec<_>>().join(", ");
    Some(format!("this process lacks {what}; egret-gateway needs {all}"))
}

/// Whether a seccomp filter is in force on this process (/proc/self/status).
fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.strip_prefix("Seccomp:").is_some_and(|v| v.trim() == "2")))
}

const SECCOMP_HINT: &str = "a seccomp filter is in force and container runtimes' default profiles refuse bpf(2) \
     without CAP_SYS_ADMIN: run egret-gateway with seccomp Unconfined (as deploy/gateway.yaml does)";

impl StartError {
    /// For a start that failed on XDP, AF_XDP or the forward guard: which
    /// needed capabilities this process lacks, as one sentence; with all of
    /// them, a BPF refusal under a seccomp filter says so. None otherwise.
    pub fn capability_hint(&self) -> Option<String> {
        match self {
            StartError::Xdp { .. } | StartError::Afxdp { .. } | StartError::ForwardGuard(_) => {
                let missing = missing_from(effective()?, memlock_unlimited());
                if !missing.is_empty() {
                    return hint_for(&missing);
                }
                let refused = self.to_string().contains("Operation not permitted");
                (matches!(self, StartError::Xdp { .. }) && refused && seccomp_filtered()).then(|| SECCOMP_HINT.into())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(eff: u64, unlimited: bool) -> Vec<&'static str> {
        missing_from(eff, unlimited).iter().map(|n| n.name).collect()
    }

    #[test]
    fn each_needed_capability_is_named_when_missing() {
        let all: u64 = NEEDED.iter().map(|n| 1u64 << n.bit).sum();
        assert!(names(all, false).is_empty());
        for n in &NEEDED {
            assert_eq!(names(all & !(1u64 << n.bit), false), vec![n.name]);
        }
        assert_eq!(names(0, false).len(), 4);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_an_unlimited_memlock_for_ipc_lock() {
        let all: u64 = NEEDED.iter().map(|n| 1u64 << n.bit).sum();
        assert!(names((all & !(1u64 << CAP_BPF)) | (1u64 << CAP_SYS_ADMIN), false).is_empty());
        assert!(names(all & !(1u64 << CAP_IPC_LOCK), true).is_empty());
    }

    #[test]
    fn the_hint_names_what_is_missing_and_what_is_needed() {
        let h = hint_for(&missing_from(0, false)).unwrap();
        assert!(h.starts_with("this process lacks CAP_NET_ADMIN ("), "{h}");
        assert!(h.ends_with("egret-gateway needs CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_IPC_LOCK"), "{h}");
        assert_eq!(hint_for(&[]), None);
    }
}
