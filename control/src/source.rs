//! Cluster-state sources. The file source reads a manifests file or
//! directory (as `kubectl get -o yaml` prints objects) and re-reads it when
//! anything in it changes (polling names, sizes and modification times:
//! works on every filesystem, including ConfigMap volumes whose files are
//! swapped by symlink).

use crate::state::ControlState;
use egret_cluster::{manifest_files, ClusterState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What identifies a version of the manifests.
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let files = manifest_files(path).unwrap_or_default();
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let len = m.as_ref().map_or(u64::MAX, |m| m.len());
            (f, len, m.and_then(|m| m.modified().ok()))
        })
        .collect()
}

/// Loads `path` once into `state`; errors (unreadable file, broken YAML)
/// leave the state as it was.
pub fn load_file(state: &ControlState, path: &Path) -> Result<u64, String> {
    let st = ClusterState::read_path(path).map_err(|e| e.to_string())?;
    Ok(state.update(&st))
}

/// Watches `path` forever, re-reading it on change. A broken edit is logged
/// and the last good state kept, so gateways keep their plans.
pub async fn watch_file(state: Arc<ControlState>, path: PathBuf, every: Duration) {
    let mut seen = None;
    loop {
        let fp = fingerprint(&path);
        if seen.as_ref() != Some(&fp) {
            let what = format!("manifests {}", path.display());
            match load_file(&state, &path) {
                Ok(generation) => {
                    state.set_source_error(&what, None);
                    tracing::info!(path = %path.display(), generation, "manifests loaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "manifests not loaded; keeping the last good state");
                    state.set_source_error(&what, Some(format!("not loaded, the last good state keeps serving: {e}")));
                }
            }
            seen = Some(fp);
        }
        tokio::time::sleep(every).await;
    }
}
