//! Compiles the generator and sink XDP programs with clang
//! (`scripts/install-deps.sh` installs it with the headers it needs).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/loadgen.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("loadgen.bpf.o");
    let arch_include = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args(["-O2", "-g", "-target", "bpf", &arch_include, "-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed to compile {src} ({s}); run scripts/install-deps.sh"),
        Err(e) => panic!("clang not found ({e}): run scripts/install-deps.sh (apt-get install clang libbpf-dev)"),
    }
}
