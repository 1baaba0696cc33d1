//! Arbitrary bytes as a manifests file (the standalone gateway's plan file,
//! the YAML `kubectl get -o yaml` prints): parsing and reconciling never
//! panic, and every plan that comes back compiles (bad objects are left out
//! and reported, never served) and can be served by an engine.
#![no_main]

use egret_cluster::plan_from_yaml_str;
use egret_core::nat::{CompiledPlan, EngineSettings, NatEngine, Time};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    // Lossy: the fuzzer's invalid UTF-8 still reaches the YAML parser.
    let text = String::from_utf8_lossy(data);
    let Ok((plan, problems)) = plan_from_yaml_str(&text, "fuzz.yaml", 7) else { return };
    assert_eq!(plan.version, 7);
    for p in &problems {
        assert!(!p.object.is_empty(), "a problem names its object: {p}");
    }
    let compiled = match CompiledPlan::new(&plan) {
        Ok(c) => c,
        Err(e) => panic!("a plan the YAML source returned does not compile: {e}\n{plan:?}"),
    };
    // The same plan through JSON (the control plane's wire form) compiles too.
    let json = serde_json::to_vec(&plan).expect("plans serialise");
    let back: egret_core::plan::Plan = serde_json::from_slice(&json).expect("plans deserialise");
    assert_eq!(back, plan, "JSON round trip");
    let settings =
        EngineSettings { session_capacity: 16, frag_datagrams: 4, frag_held: 2, seed: 1, ..Default::default() };
    let mut e = NatEngine::new(settings, Arc::new(compiled));
    // A UDP packet from the first bound pod, if any.
    let src = plan.bindings.first().map_or([198, 18, 0, 2], |b| b.pod_ip.octets());
    let mut buf = [0u8; 128];
    buf[..28].copy_from_slice(&[
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 198, 19, 0, 1, 0x13, 0x88, 0, 53, 0, 8, 0, 0,
    ]);
    buf[12..16].copy_from_slice(&src);
    let c = egret_core::wire::checksum::checksum(&buf[..20]);
    buf[10..12].copy_from_slice(&c.to_be_bytes());
    let _ = e.process(&mut buf, 28, Time::from_secs(1));
    e.expire(Time::from_secs(1000), 64);
});
