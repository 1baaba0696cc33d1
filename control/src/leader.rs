//! Leader election: of the egret-control replicas that serve plans at once,
//! only the holder of a `coordination.k8s.io/v1` Lease writes to the
//! cluster (GatewayStatus objects and Events, [`crate::kube_status`]).
//!
//! The Lease API is used directly (get, create, and update guarded by the
//! object's resourceVersion), not through a crate such as
//! kube-leader-election or kube-lease-manager, because:
//! - writers must be able to ask "may I write *now*?" right before each
//!   write, against a local monotonic deadline that expires by itself when
//!   renewals stop succeeding (a hung API call included), so a replica
//!   that loses the lease stops writing at once; those crates report
//!   leadership as the result of their last renewal, which stays true
//!   until the next one comes back;
//! - they pin kube-rs releases behind the kube 5 this workspace uses, and a
//!   leader election is ~150 lines of this protocol, tested here against
//!   the fake API server.
//!
//! The protocol is client-go's `leaderelection` with a `LeaseLock`: a
//! candidate takes a Lease whose holder has not renewed it for
//! `leaseDurationSeconds`, as measured on the candidate's own monotonic
//! clock from when it last saw the record change (no clock comparison
//! between machines); the holder renews every `retry_period` and counts
//! itself leader only until `renew_deadline` (shorter than the lease
//! duration) after the start of its last successful renewal, so it has
//! stopped writing before any candidate can take over. A stopping leader
//! releases the Lease (empty holder) so another takes it on its next try.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease's default name, in egret-control's own namespace.
pub const LEASE_NAME: &str = "egret-control";

#[derive(Clone, Debug)]
pub struct LeaderOptions {
    /// Where the Lease lives (egret-control's own namespace: RBAC grants
    /// Leases there only).
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (its pod name): unique per
    /// replica.
    pub identity: String,
    /// How long a Lease not renewed stays its holder's.
    pub lease_duration: Duration,
    /// How long after the start of its last successful renewal the holder
    /// still counts itself leader; shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Between tries, to renew or to acquire.
    pub retry_period: Duration,
}

impl LeaderOptions {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retries.
    pub fn new(namespace: &str, identity: &str) -> LeaderOptions {
        LeaderOptions {
            namespace: namespace.into(),
            name: LEASE_NAME.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.identity.is_empty() {
            return Err("the replica's identity is empty".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return Err("the renew deadline must be shorter than the lease duration".into());
        }
        if self.retry_period >= self.renew_deadline {
            return Err("the retry period must be shorter than the renew deadline".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err("the lease duration must be at least 1 s (leaseDurationSeconds)".into());
        }
        Ok(())
    }
}

/// Whether this replica may write: the deadline of its leadership, if it
/// leads. Cheap to clone; read before every write.
#[derive(Clone, Debug)]
pub struct Leadership {
    until: watch::Receiver<Option<Instant>>,
}

impl Leadership {
    /// Always leader: the only replica that writes (no election), as in
    /// tests of the writers themselves.
    pub fn sole() -> Leadership {
        let (tx, until) = watch::channel(Some(Instant::now() + Duration::from_secs(100 * 365 * 86_400)));
        // The receiver keeps the value; a dropped sender only means it
        // never changes.
        drop(tx);
        Leadership { until }
    }

    /// True while this replica holds the lease, up to the deadline of its
    /// last renewal: false the moment it passes, renewal or not.
    pub fn is_leader(&self) -> bool {
        self.until.borrow().is_some_and(|d| Instant::now() < d)
    }

    /// Resolves once this replica leads (at once if it does).
    pub async fn until_leader(&mut self) {
        loop {
            if self.is_leader() {
                return;
            }
            if self.until.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Resolves once this replica no longer leads: its deadline passed or
    /// the elector stepped down. Pending while it is not the leader.
    pub async fn until_lost(&mut self) {
        let mut led = false;
        loop {
            let deadline = *self.until.borrow_and_update();
            match deadline {
                Some(d) if Instant::now() < d => {
                    led = true;
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => return,
                        r = self.until.changed() => if r.is_err() { return std::future::pending().await },
                    }
                }
                _ if led => return,
                _ => {
                    if self.until.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

/// The part of a Lease the election reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: String,
    pub lease_duration: Duration,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl LeaseRecord {
    fn of(lease: &Lease) -> LeaseRecord {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.unwrap_or_default(),
            lease_duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What a candidate does with the Lease as it finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is none: create it, held.
    Create,
    /// Held by this replica: renew it.
    Renew,
    /// Released, or not renewed for its duration: take it over.
    Acquire,
    /// Held by another, not expired.
    Follow { holder: String },
}

/// The decision, from the Lease as found (`None`: there is none), when this
/// candidate first saw that record, and now.
pub fn step(identity: &str, lease: Option<&LeaseRecord>, seen_since: Instant, now: Instant) -> Step {
    let Some(l) = lease else { return Step::Create };
    if l.holder == identity {
        Step::Renew
    } else if l.holder.is_empty() || now >= seen_since + l.lease_duration {
        Step::Acquire
    } else {
        Step::Follow { holder: l.holder.clone() }
    }
}

/// The Lease after `step` by `identity` at wall-clock `now`, from `found`.
pub fn next_lease(found: Option<&Lease>, opts: &LeaderOptions, step: &Step, now: Timestamp) -> Lease {
    let mut lease = found.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(opts.name.clone()),
            namespace: Some(opts.namespace.clone()),
            ..Default::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_else(LeaseSpec::default);
    let took_over = !matches!(step, Step::Renew);
    if took_over {
        spec.acquire_time = Some(MicroTime(now));
        if found.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        } else {
            spec.lease_transitions = Some(0);
        }
    }
    spec.holder_identity = Some(opts.identity.clone());
    spec.lease_duration_seconds = Some(opts.lease_duration.as_secs().max(1) as i32);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    lease
}

/// A released Lease: no holder, so a candidate takes it on its next try.
fn released(mut lease: Lease) -> Lease {
    let mut spec = lease.spec.take().unwrap_or_default();
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    lease.spec = Some(spec);
    lease
}

/// Starts an election for `opts.identity`; the returned future runs it
/// until `stop` resolves, then releases the Lease if held. Spawn the
/// future; hand the [`Leadership`] to the writers.
pub fn elect(
    client: kube::Client,
    opts: LeaderOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (Leadership, impl Future<Output = ()> + Send + 'static) {
    let (tx, until) = watch::channel(None);
    (Leadership { until }, run(Api::namespaced(client, &opts.namespace), opts, tx, stop))
}

async fn run(
    api: Api<Lease>,
    opts: LeaderOptions,
    until: watch::Sender<Option<Instant>>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let mut seen: Option<(LeaseRecord, Instant)> = None;
    let mut warned: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let started = Instant::now();
        let attempt = tokio::time::timeout(opts.renew_deadline, try_once(&api, &opts, &mut seen, started));
        let outcome = tokio::select! {
            r = attempt => r.unwrap_or_else(|_| Err("the Lease API did not answer within the renew deadline".into())),
            _ = &mut stop => break,
        };
        match outcome {
            Ok(Some(())) => {
                if until.borrow().is_none() {
                    tracing::info!(identity = %opts.identity, lease = %opts.name, "leading: this replica writes GatewayStatus and Events");
                }
                until.send_replace(Some(started + opts.renew_deadline));
            }
            Ok(None) => step_down(&until, &opts, seen.as_ref().map(|(r, _)| r.holder.as_str())),
            // A failed call keeps a leader leading until its deadline,
            // which `Leadership` enforces by itself.
            Err(e) => {
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(lease = %opts.name, error = %e, "leader election: Lease call failed; retrying (this warning: once a minute)");
                    warned = Some(Instant::now());
                }
                if until.borrow().is_some_and(|d| Instant::now() >= d) {
                    step_down(&until, &opts, None);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.retry_period) => {}
            _ = &mut stop => break,
        }
    }
    let held = until.send_replace(None).is_some();
    if held {
        match release(&api, &opts).await {
            Ok(()) => tracing::info!(lease = %opts.name, "stopping: Lease released"),
            Err(e) => {
                tracing::warn!(lease = %opts.name, error = %e, "stopping: Lease not released; it expires by itself")
            }
        }
    }
}

fn step_down(until: &watch::Sender<Option<Instant>>, opts: &LeaderOptions, holder: Option<&str>) {
    if until.send_replace(None).is_some() {
        tracing::warn!(identity = %opts.identity, holder = holder.unwrap_or("?"), "lost the Lease: no longer writing");
    }
}

/// One round: reads the Lease and acts on it. `Ok(Some(()))`: this replica
/// holds it now; `Ok(None)`: another does.
async fn try_once(
    api: &Api<Lease>,
    opts: &LeaderOptions,
    seen: &mut Option<(LeaseRecord, Instant)>,
    started: Instant,
) -> Result<Option<()>, String> {
    let found = api.get_opt(&opts.name).await.map_err(|e| e.to_string())?;
    let record = found.as_ref().map(LeaseRecord::of);
    // The record's age is measured from when this replica saw it change.
    if let Some(r) = &record {
        if seen.as_ref().is_none_or(|(s, _)| s != r) {
            *seen = Some((r.clone(), started));
        }
    }
    let since = seen.as_ref().map_or(started, |(_, t)| *t);
    let step = step(&opts.identity, record.as_ref(), since, Instant::now());
    if let Step::Follow { .. } = step {
        return Ok(None);
    }
    let next = next_lease(found.as_ref(), opts, &step, Timestamp::now());
    let written = match step {
        Step::Create => api.create(&PostParams::default(), &next).await,
        // Guarded by the resourceVersion read above: a 409 means another
        // replica wrote first.
        _ => api.replace(&opts.name, &PostParams::default(), &next).await,
    };
    match written {
        Ok(lease) => {
            *seen = Some((LeaseRecord::of(&lease), started));
            Ok(Some(()))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn release(api: &Api<Lease>, opts: &LeaderOptions) -> Result<(), String> {
    let call = async {
        let Some(lease) = api.get_opt(&opts.name).await.map_err(|e| e.to_string())? else { return Ok(()) };
        if LeaseRecord::of(&lease).holder != opts.identity {
            return Ok(());
        }
        api.replace(&opts.name, &PostParams::default(), &released(lease)).await.map(|_| ()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(opts.retry_period, call).await.unwrap_or_else(|_| Err("timed out".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, secs: u64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            lease_duration: Duration::from_secs(secs),
            renew_time: None,
            transitions: 0,
        }
    }

    #[test]
    fn no_lease_is_created() {
        let now = Instant::now();
        assert_eq!(step("a", None, now, now), Step::Create);
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        let now = Instant::now();
        assert_eq!(step("a", Some(&record("a", 15)), now, now + Duration::from_secs(60)), Step::Renew);
    }

    #[test]
    fn another_holders_lease_is_followed_until_it_was_not_seen_renewed_for_its_duration() {
        let seen = Instant::now();
        let held = record("b", 15);
        assert_eq!(
            step("a", Some(&held), seen, seen + Duration::from_millis(14_999)),
            Step::Follow { holder: "b".into() }
        );
        assert_eq!(step("a", Some(&held), seen, seen + Duration::from_secs(15)), Step::Acquire);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let now = Instant::now();
        assert_eq!(step("a", Some(&record("", 15)), now, now), Step::Acquire);
    }

    #[test]
    fn a_takeover_counts_a_transition_and_a_renewal_does_not() {
        let opts = LeaderOptions::new("egret-system", "a");
        let t0: Timestamp = "2026-12-07T06:00:00Z".parse().unwrap();
        let created = next_lease(None, &opts, &Step::Create, t0);
        let spec = created.spec.clone().unwrap();
        assert_eq!(
            (spec.holder_identity.as_deref(), spec.lease_duration_seconds, spec.lease_transitions),
            (Some("a"), Some(15), Some(0))
        );
        assert_eq!(created.metadata.namespace.as_deref(), Some("egret-system"));

        let t1: Timestamp = "2026-12-07T06:00:02Z".parse().unwrap();
        let renewed = next_lease(Some(&created), &opts, &Step::Renew, t1).spec.unwrap();
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t0)), "a renewal keeps the acquire time");
        assert_eq!(renewed.renew_time, Some(MicroTime(t1)));

        let b = LeaderOptions::new("egret-system", "b");
        let taken = next_lease(Some(&created), &b, &Step::Acquire, t1).spec.unwrap();
        assert_eq!((taken.holder_identity.as_deref(), taken.lease_transitions), (Some("b"), Some(1)));
        assert_eq!(taken.acquire_time, Some(MicroTime(t1)));
    }

    #[test]
    fn leadership_ends_at_its_deadline_without_a_word_from_the_elector() {
        let (tx, until) = watch::channel(Some(Instant::now() + Duration::from_millis(30)));
        let l = Leadership { until };
        assert!(l.is_leader());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!l.is_leader(), "the deadline passed: no longer leader, although the sender still says so");
        drop(tx);
        assert!(Leadership::sole().is_leader());
    }

    #[test]
    fn options_need_a_renew_deadline_within_the_lease_and_retries_within_that() {
        let mut o = LeaderOptions::new("ns", "a");
        assert!(o.check().is_ok());
        o.renew_deadline = o.lease_duration;
        assert!(o.check().unwrap_err().contains("renew deadline"));
        o = LeaderOptions::new("ns", "");
        assert!(o.check().unwrap_err().contains("identity"));
    }
}
