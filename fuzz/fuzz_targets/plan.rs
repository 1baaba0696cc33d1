//! Arbitrary plan documents: decoding and validation never panic, and a plan
//! that compiles can be served (an engine built on it survives a packet).
#![no_main]

use egret_core::nat::{CompiledPlan, EngineSettings, NatEngine, Time};
use egret_core::plan::Plan;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(plan) = serde_json::from_slice::<Plan>(data) else { return };
    let Ok(compiled) = CompiledPlan::new(&plan) else { return };
    let settings =
        EngineSettings { session_capacity: 16, frag_datagrams: 4, frag_held: 2, seed: 1, ..Default::default() };
    let mut e = NatEngine::new(settings, Arc::new(compiled));
    let mut buf = [0u8; 128];
    buf[..28].copy_from_slice(&[
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 19, 0, 1, 0x13, 0x88, 0, 53, 0, 8, 0, 0,
    ]);
    let c = egret_core::wire::checksum::checksum(&buf[..20]);
    buf[10..12].copy_from_slice(&c.to_be_bytes());
    let _ = e.process(&mut buf, 28, Time::from_secs(1));
    e.expire(Time::from_secs(1000), 64);
});
