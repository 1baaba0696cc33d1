//! Where the gateway's plan comes from: a manifests file it re-reads when
//! it changes (standalone), or a subscription to egret-control. Either way
//! the gateway compiles what it gets, and a plan that does not compile is
//! rejected whole while the previous one keeps serving.

use super::{load_plan, mtime, ControlSettings, LoadedPlan, PlanRefused, StartError};
use crate::nat::CompiledPlan;
use egret_api::client::{subscribe_in_thread, Received, SubscribeConfig, Subscription, TlsFiles};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

pub enum PlanSource {
    File {
        path: PathBuf,
        seen: Option<SystemTime>,
        version: u64,
    },
    Control {
        sub: Subscription,
        plans: watch::Receiver<Option<Arc<Received>>>,
        /// The last plan compiled, by its `Received::seq`: the next delta
        /// may change it.
        last: Option<(u64, Arc<CompiledPlan>)>,
    },
}

impl PlanSource {
    pub fn file(path: PathBuf) -> PlanSource {
        PlanSource::File { seen: mtime(&path), path, version: 0 }
    }

    pub fn control(c: &ControlSettings) -> Result<PlanSource, StartError> {
        let mut cfg = SubscribeConfig::new(&c.url, &c.node);
        if let Some(ca) = &c.ca {
            let s = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            cfg.tls = Some(
                TlsFiles::read(&ca.display().to_string(), s(&c.cert).as_deref(), s(&c.key).as_deref())
                    .map_err(StartError::ControlTls)?,
            );
        }
        cfg.token_file = c.token_file.clone();
        let sub = subscribe_in_thread(cfg).map_err(StartError::ControlClient)?;
        let plans = sub.plans();
        Ok(PlanSource::Control { sub, plans, last: None })
    }

    /// The first plan; from the control plane, waits until one arrives that
    /// compiles (logging while it waits), or `give_up` says stop.
    pub fn first(&mut self, give_up: impl Fn() -> bool) -> Result<LoadedPlan, StartError> {
        match self {
            PlanSource::File { path, version, .. } => {
                *version = 1;
                Ok(load_plan(path, 1)?)
            }
            PlanSource::Control { .. } => {
                let started = Instant::now();
                let mut told = Instant::now();
                loop {
                    if let Some(r) = self.poll(false) {
                        match r {
                            Ok(p) => return Ok(p),
                            Err(e) => tracing::error!(error = %e, "plan from the control plane rejected"),
                        }
                    }
                    if give_up() {
                        return Err(StartError::StoppedBeforePlan);
                    }
                    if told.elapsed() >= Duration::from_secs(5) {
                        told = Instant::now();
                        tracing::warn!(waited = ?started.elapsed(), "waiting for the first plan from the control plane");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// A new plan if the source has one (compiled, or why it was rejected).
    pub fn poll(&mut self, force: bool) -> Option<Result<LoadedPlan, PlanRefused>> {
        match self {
            PlanSource::File { path, seen, version } => {
                let now = mtime(path);
                if now == *seen && !force {
                    return None;
                }
                *seen = now;
                *version += 1;
                Some(load_plan(path, *version))
            }
            PlanSource::Control { sub, plans, last } => {
                if !plans.has_changed().unwrap_or(false) {
                    return None;
                }
                let r = plans.borrow_and_update().clone()?;
                let mut plan = r.plan.clone();
                plan.version = r.version;
                // A delta on the plan compiled last changes its tables;
                // anything else (a version skipped, a config changed) is
                // compiled whole.
                let base = last.as_ref().filter(|(seq, _)| seq + 1 == r.seq).map(|(_, p)| p);
                let changed = base.zip(r.delta.as_ref()).and_then(|(base, d)| base.changed_by(d, &plan));
                let compiled = changed.unwrap_or_else(|| CompiledPlan::new(&plan)).map(Arc::new);
                *last = compiled.as_ref().ok().map(|p| (r.seq, p.clone()));
                sub.ack(r.version, compiled.as_ref().map(|_| ()).map_err(ToString::to_string));
                let source_name = format!("plan version {} from the control plane", r.version);
                let compiled = compiled.map_err(|error| PlanRefused::Invalid { source_name, error });
                // egret-control keeps the problems of its objects (egretctl problems).
                Some(compiled.map(|p| (p, Vec::new())))
            }
        }
    }

    /// Whether the stream from the control plane is up; `None` for a file.
    pub fn connected(&self) -> Option<bool> {
        match self {
            PlanSource::File { .. } => None,
            PlanSource::Control { sub, .. } => Some(*sub.link().borrow() == egret_api::client::LinkState::Connected),
        }
    }

    /// Sends the control plane what the gateway sees (no-op for a file).
    pub fn report(&self, report: egret_api::v1::Report) {
        if let PlanSource::Control { sub, .. } = self {
            sub.report(report);
        }
    }

    pub fn set_path(&mut self, new: PathBuf) {
        if let PlanSource::File { path, seen, .. } = self {
            *path = new;
            *seen = None;
        }
    }
}
