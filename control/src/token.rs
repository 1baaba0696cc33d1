//! Gateways' identity in token mode (`--gateway-auth=token`).
//!
//! Each gateway pod sends its bound ServiceAccount token (a projected
//! volume with audience `egret-control`, rotated by the kubelet and re-read
//! by the gateway on every connect) as `authorization: Bearer <token>`.
//! egret-control asks the Kubernetes API server about it (TokenReview,
//! `authentication.k8s.io/v1`, with `spec.audiences`), as Linkerd's and
//! Istio's identity services do, and takes from the answer:
//! - who: the username must be the gateways' ServiceAccount
//!   (`system:serviceaccount:<ns>:<name>`);
//! - where: the node of the pod the token is bound to — the review's
//!   `authentication.kubernetes.io/node-name` extra (Kubernetes ≥ 1.32 puts
//!   it in bound tokens), else the `spec.nodeName` of the pod named by the
//!   `pod-name` extra, after checking its UID against the `pod-uid` extra.
//!
//! A gateway then may subscribe only as that node. The token is bound to
//! its pod, and the pod to its node, so no other node can present it: a
//! compromised node holds only its own gateway's token. Successful reviews
//! are cached briefly ([`ReviewCache`]: by the token's SHA-256, bounded,
//! never past the token's own expiry) so a reconnect storm does not become a
//! TokenReview storm; refusals are not cached.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The audience gateways' tokens are issued for (the projected volume's
/// `audience`): a token for this audience opens nothing else, and the API
/// server itself refuses it.
pub const DEFAULT_AUDIENCE: &str = "egret-control";
/// deploy/gateway.yaml's ServiceAccount.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "system:serviceaccount:egret-system:egret-gateway";

/// The extras of a bound ServiceAccount token's review.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// Longest token accepted (ServiceAccount tokens are about 1 KiB).
const MAX_TOKEN: usize = 16 << 10;
/// TokenReviews in flight at once: unauthenticated callers can make
/// egret-control ask, but not without bound.
const MAX_REVIEWS_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// The audience asked for in each review, and required in its answer.
    pub audience: String,
    /// The gateways' username: `system:serviceaccount:<namespace>:<name>`.
    pub service_account: String,
    /// Longest a successful review is trusted without asking again (less
    /// when the token expires sooner).
    pub cache_ttl: Duration,
    /// Most reviews cached (about one per gateway pod is needed).
    pub cache_entries: usize,
    /// A review or pod lookup slower than this fails (UNAVAILABLE: the
    /// gateway retries).
    pub timeout: Duration,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            audience: DEFAULT_AUDIENCE.into(),
            service_account: DEFAULT_SERVICE_ACCOUNT.into(),
            cache_ttl: Duration::from_secs(60),
            cache_entries: 4096,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `namespace:name` or `system:serviceaccount:namespace:name` → the
/// username a review names that ServiceAccount by.
pub fn service_account_username(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix(SERVICE_ACCOUNT_PREFIX).unwrap_or(s);
    match rest.split_once(':') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => {
            Ok(format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{name}"))
        }
        _ => Err(format!("'{s}' is not a ServiceAccount: write namespace:name")),
    }
}

/// Who a reviewed token is: the gateways' ServiceAccount, on `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayIdentity {
    /// `namespace/name` of the pod the token is bound to.
    pub pod: String,
    pub node: String,
}

/// Verifies gateways' tokens against the Kubernetes API.
pub struct TokenAuth {
    client: kube::Client,
    opts: TokenOptions,
    cache: Mutex<ReviewCache>,
    in_flight: Semaphore,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl TokenAuth {
    pub fn new(client: kube::Client, opts: TokenOptions) -> TokenAuth {
        TokenAuth {
            client,
            cache: Mutex::new(ReviewCache::new(opts.cache_entries)),
            opts,
            in_flight: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
        }
    }

    pub fn options(&self) -> &TokenOptions {
        &self.opts
    }

    /// Reviews cached now.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap().len()
    }

    /// May the caller whose metadata is `meta` subscribe as `node`?
    pub async fn check_node(&self, meta: &MetadataMap, node: &str) -> Result<GatewayIdentity, Status> {
        let token = bearer(meta)?;
        let id = self.identify(token).await?;
        if id.node != node {
            return Err(Status::permission_denied(format!(
                "a gateway may read only its own node's plan: its token is bound to pod {}, which runs on node \
                 '{}', not '{node}'",
                id.pod, id.node
            )));
        }
        Ok(id)
    }

    /// Who `token` is: from the cache, or by review.
    pub async fn identify(&self, token: &str) -> Result<GatewayIdentity, Status> {
        let key = token_hash(token);
        if let Some(id) = self.cache.lock().unwrap().get(&key, Instant::now()) {
            return Ok(id);
        }
        let _permit = self.in_flight.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        // Another subscription with this token may have finished meanwhile.
        if let Some(id) = self.cache.lock().unwrap().get(&key, Instant::now()) {
            return Ok(id);
        }
        let id = tokio::time::timeout(self.opts.timeout, self.review(token))
            .await
            .map_err(|_| Status::unavailable("the Kubernetes API did not answer the TokenReview in time"))??;
        let now = Instant::now();
        let mut ttl = self.opts.cache_ttl;
        if let Some(left) = token_expiry(token).map(|exp| exp.duration_since(SystemTime::now()).unwrap_or_default()) {
            ttl = ttl.min(left);
        }
        if !ttl.is_zero() {
            self.cache.lock().unwrap().insert(key, id.clone(), now + ttl, now);
        }
        Ok(id)
    }

    async fn review(&self, token: &str) -> Result<GatewayIdentity, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), audiences: Some(vec![self.opts.audience.clone()]) },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| api_error("TokenReview", e))?;
        let status = answer.status.unwrap_or_default();
        self.accept(&status)?;
        let user = status.user.unwrap_or_default();
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).filter(|v| !v.is_empty()).cloned();
        // The ServiceAccount's namespace is its pods'.
        let namespace = self
            .opts
            .service_account
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|r| r.split(':').next())
            .unwrap_or_default();
        let Some(pod) = first(POD_NAME_EXTRA) else {
            return Err(Status::permission_denied(
                "the token is not bound to a pod: a gateway sends its pod's projected ServiceAccount token \
                 (a serviceAccountToken volume), not a long-lived Secret token",
            ));
        };
        let pod_ref = format!("{namespace}/{pod}");
        if let Some(node) = first(NODE_NAME_EXTRA) {
            return Ok(GatewayIdentity { pod: pod_ref, node });
        }
        // Before Kubernetes 1.32 bound tokens name the pod, not its node.
        let found = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(&pod)
            .await
            .map_err(|e| api_error("pod lookup", e))?
            .ok_or_else(|| Status::unauthenticated(format!("the token's pod {pod_ref} no longer exists")))?;
        let uid = first(POD_UID_EXTRA);
        if uid.is_none() || found.metadata.uid != uid {
            return Err(Status::unauthenticated(format!(
                "the token's pod {pod_ref} (UID {}) has been replaced (UID {})",
                uid.as_deref().unwrap_or("not given"),
                found.metadata.uid.as_deref().unwrap_or("none")
            )));
        }
        match found.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()) {
            Some(node) => Ok(GatewayIdentity { pod: pod_ref, node }),
            None => Err(Status::permission_denied(format!("the token's pod {pod_ref} is not scheduled on a node"))),
        }
    }

    /// The review's verdict: authenticated, for our audience, as the
    /// gateways' ServiceAccount.
    fn accept(&self, s: &TokenReviewStatus) -> Result<(), Status> {
        if s.authenticated != Some(true) {
            let why = s.error.as_deref().filter(|e| !e.is_empty()).unwrap_or("no reason given");
            return Err(Status::unauthenticated(format!("the Kubernetes API did not accept the token: {why}")));
        }
        // An API server that ignored spec.audiences would answer for a token
        // of any audience: it must name ours back.
        if !s.audiences.iter().flatten().any(|a| *a == self.opts.audience) {
            return Err(Status::unauthenticated(format!(
                "the token is not for audience '{}' (the review answered {:?})",
                self.opts.audience,
                s.audiences.as_deref().unwrap_or_default()
            )));
        }
        let user = s.user.as_ref().and_then(|u| u.username.as_deref()).unwrap_or_default();
        if user != self.opts.service_account {
            return Err(Status::permission_denied(format!(
                "the token is {}'s; only the gateways' ServiceAccount ({}) may subscribe",
                if user.is_empty() { "nobody" } else { user },
                self.opts.service_account
            )));
        }
        Ok(())
    }
}

/// The bearer token in `authorization`.
fn bearer(meta: &MetadataMap) -> Result<&str, Status> {
    let missing = || {
        Status::unauthenticated(
            "no token: egret-control runs with --gateway-auth=token, and a gateway sends its ServiceAccount token \
             as 'authorization: Bearer ...' (control.token_file in gateway.toml)",
        )
    };
    let v = meta.get("authorization").ok_or_else(missing)?;
    let v = v.to_str().map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
    let (scheme, token) = v.split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    if token.len() > MAX_TOKEN {
        return Err(Status::unauthenticated(format!("the token is longer than {MAX_TOKEN} bytes")));
    }
    Ok(token)
}

fn api_error(what: &str, e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) if s.code == 403 => Status::unavailable(format!(
            "{what} refused by the Kubernetes API (egret-control's RBAC needs create on tokenreviews, get on \
             pods): {}",
            s.message
        )),
        e => Status::unavailable(format!("{what} failed: {e}")),
    }
}

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The `exp` of a JWT, unverified (the review verified the token; this only
/// keeps the cache from outliving it).
fn token_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// Successful reviews by token hash, each until its deadline, at most
/// `max` of them: when full, expired ones go first, then the one that
/// would expire soonest.
#[derive(Debug)]
pub struct ReviewCache {
    entries: HashMap<TokenHash, (GatewayIdentity, Instant)>,
    max: usize,
}

impl ReviewCache {
    pub fn new(max: usize) -> ReviewCache {
        ReviewCache { entries: HashMap::new(), max }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&mut self, key: &TokenHash, now: Instant) -> Option<GatewayIdentity> {
        match self.entries.get(key) {
            Some((id, until)) if *until > now => Some(id.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&mut self, key: TokenHash, id: GatewayIdentity, until: Instant, now: Instant) {
        if self.max == 0 {
            return;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, u)| *u > now);
            if self.entries.len() >= self.max {
                if let Some(soonest) = self.entries.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k) {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(key, (id, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> GatewayIdentity {
        GatewayIdentity { pod: format!("egret-system/gw-{n}"), node: format!("node-{n}") }
    }

    #[test]
    fn the_cache_holds_at_most_its_bound_and_drops_the_soonest_to_expire() {
        let t0 = Instant::now();
        let mut c = ReviewCache::new(4);
        for n in 0..100 {
            let until = t0 + Duration::from_secs(60 + n as u64);
            c.insert(token_hash(&format!("token-{n}")), id(n), until, t0);
            assert!(c.len() <= 4, "{} entries after {} inserts", c.len(), n + 1);
        }
        assert_eq!(c.len(), 4);
        // The four that expire last are the ones kept.
        for n in 0..96 {
            assert_eq!(c.get(&token_hash(&format!("token-{n}")), t0), None, "token-{n}");
        }
        for n in 96..100 {
            assert_eq!(c.get(&token_hash(&format!("token-{n}")), t0), Some(id(n)), "token-{n}");
        }
        // Re-inserting a cached token does not evict another.
        c.insert(token_hash("token-99"), id(99), t0 + Duration::from_secs(500), t0);
        assert_eq!(c.len(), 4);
        assert!(c.get(&token_hash("token-96"), t0).is_some());
    }

    #[test]
    fn a_cached_review_ends_at_its_deadline_and_expired_ones_make_room_first() {
        let t0 = Instant::now();
        let mut c = ReviewCache::new(2);
        c.insert(token_hash("short"), id(1), t0 + Duration::from_secs(1), t0);
        c.insert(token_hash("long"), id(2), t0 + Duration::from_secs(600), t0);
        assert_eq!(c.get(&token_hash("short"), t0), Some(id(1)));
        let later = t0 + Duration::from_secs(2);
        // Full: the expired entry goes, the live one stays.
        c.insert(token_hash("new"), id(3), later + Duration::from_secs(30), later);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&token_hash("short"), later), None);
        assert_eq!(c.get(&token_hash("long"), later), Some(id(2)));
        assert_eq!(c.get(&token_hash("new"), later), Some(id(3)));
        assert_eq!(c.get(&token_hash("new"), later + Duration::from_secs(30)), None, "expired at its deadline");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_jwt_expiry_is_read_and_anything_else_has_none() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(r#"{"aud":["egret-control"],"exp":1700000000}"#));
        assert_eq!(token_expiry(&jwt), Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
        assert_eq!(token_expiry("opaque-token"), None);
        assert_eq!(token_expiry("a.b.c"), None);
    }

    #[test]
    fn service_accounts_are_written_namespace_colon_name() {
        assert_eq!(service_account_username("egret-system:egret-gateway").unwrap(), DEFAULT_SERVICE_ACCOUNT);
        assert_eq!(service_account_username(DEFAULT_SERVICE_ACCOUNT).unwrap(), DEFAULT_SERVICE_ACCOUNT);
        for bad in ["egret-gateway", "a:b:c", ":x", "x:", "system:serviceaccount:x"] {
            assert!(service_account_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bearer_token_is_taken_from_authorization() {
        let mut m = MetadataMap::new();
        assert_eq!(bearer(&m).unwrap_err().code(), tonic::Code::Unauthenticated);
        m.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&m).unwrap_err().code(), tonic::Code::Unauthenticated);
        m.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&m).unwrap_err().code(), tonic::Code::Unauthenticated);
        m.insert("authorization", "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&m).unwrap(), "abc.def.ghi");
    }
}
