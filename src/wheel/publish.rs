//! `wheel-build --upload` with a `cipd://` cache first: every wanted wheel is also
//! published under the package names vpython expects ([`crate::cache::cipd::wheels`]).

use super::run::JobResult;
use super::{ANY, Catalogue};
use crate::cache::CacheError;
use crate::cache::cipd::CipdCache;
use crate::cache::cipd::wheels::{Published, WheelTarget};

/// Where a wanted wheel goes: nowhere when it has no wheel files (it failed) or is not a
/// wheel of the catalogue; one package when universal; otherwise one per CPython it
/// serves (an abi3 wheel serves every Python its spec lists).
pub fn targets(catalogue: &Catalogue, r: &JobResult) -> Vec<WheelTarget> {
    let (Some(id), Some(platform)) = (&r.spec, &r.platform) else {
        return Vec::new();
    };
    let Ok(spec) = catalogue.spec(id) else {
        return Vec::new();
    };
    if r.wheels.is_empty() || !r.status.ok() {
        return Vec::new();
    }
    if spec.kind.is_universal() || platform == ANY {
        return vec![WheelTarget::Universal];
    }
    let Some(p) = catalogue.platform(platform) else {
        return Vec::new();
    };
    let pythons: Vec<&String> = if spec.abi3 {
        spec.python.iter().collect()
    } else {
        r.python.iter().collect()
    };
    pythons
        .into_iter()
        .map(|py| WheelTarget::Platform {
            cipd_platform: p.cipd_platform.clone(),
            python: py.clone(),
        })
        .collect()
}

/// Publishes each wanted wheel of `results`; one answer per package, labelled with the
/// job's label. Errors do not stop the others.
pub fn publish(
    cache: &CipdCache,
    catalogue: &Catalogue,
    results: &[JobResult],
) -> Vec<(String, Result<Published, CacheError>)> {
    let mut out = Vec::new();
    for r in results.iter().filter(|r| r.wanted) {
        let Some(spec) = r.spec.as_deref().and_then(|id| catalogue.spec(id).ok()) else {
            continue;
        };
        for t in targets(catalogue, r) {
            out.push((
                r.label.clone(),
                cache.publish_wheel(&spec.name, &spec.version, &t, &r.wheels),
            ));
        }
    }
    out
}
