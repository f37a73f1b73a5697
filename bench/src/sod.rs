//! `accessgate-bench sod`: time per SoD decision with the indexed evaluator, against a naive scan
//! of every risk in the same run, on a seeded synthetic rule set.

use std::collections::BTreeMap;
use std::time::Instant;

use accessgate::callout::Named;
use accessgate::checks::sod::{PackageRef, RawRisk, RawSet, Severity, SodRules};
use accessgate::directory::{Held, HeldAppRole, Holdings};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// The `p`th percentile of sorted values (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const PACKAGES: usize = 3_000;
const GROUPS: usize = 5_000;
const APP_ROLES: usize = 500;
const EXTERNAL: usize = 1_000;

#[derive(clap::Args)]
pub struct SodArgs {
    /// Risks in the rule set.
    #[arg(long, default_value_t = 10_000)]
    risks: usize,
    /// Entitlements the user holds (assignments, pending requests, groups, app roles, external).
    #[arg(long, default_value_t = 1_000)]
    held: usize,
    /// Decisions timed with the index.
    #[arg(long, default_value_t = 20_000)]
    decisions: usize,
    /// Decisions timed with the scan (it is slow).
    #[arg(long, default_value_t = 300)]
    scan_decisions: usize,
}

fn set(rng: &mut StdRng) -> RawSet {
    let mut s = RawSet::default();
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..10) {
            0..=4 => s
                .access_packages
                .push(format!("p{}", rng.random_range(0..PACKAGES))),
            5..=6 => s
                .groups
                .push(format!("group-{}", rng.random_range(0..GROUPS))),
            7 => s.app_roles.push(format!(
                "sp-{}/role-{}",
                rng.random_range(0..50),
                rng.random_range(0..APP_ROLES / 50)
            )),
            _ => s
                .entitlements
                .push(format!("SAP:E{}", rng.random_range(0..EXTERNAL))),
        }
    }
    s
}

fn us(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(name: &str, times: &mut [f64], found: usize) {
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!(
        "  {name:<8} {:>6} decisions: mean {mean:8.2} µs, p50 {:8.2} µs, p99 {:8.2} µs, max {:9.2} µs; {found} violation(s) found",
        times.len(),
        percentile(times, 50.0),
        percentile(times, 99.0),
        times.last().copied().unwrap_or_default(),
    );
}

pub fn run(a: &SodArgs) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(42);
    let packages: BTreeMap<String, PackageRef> = (0..PACKAGES)
        .map(|i| {
            (
                format!("p{i}"),
                PackageRef {
                    alias: format!("p{i}"),
                    id: Some(format!("pkg-{i:05}")),
                    display_name: Some(format!("Package {i}")),
                },
            )
        })
        .collect();
    let risks: Vec<RawRisk> = (0..a.risks)
        .map(|i| RawRisk {
            name: format!("risk-{i}"),
            description: None,
            severity: Severity::High,
            owner: "owner@contoso.example".into(),
            symmetric: Some(rng.random_range(0..4) != 0),
            correction_advice: None,
            sets: (0..rng.random_range(2..=3))
                .map(|_| set(&mut rng))
                .collect(),
        })
        .collect();
    let started = Instant::now();
    let rules = SodRules::build(&BTreeMap::new(), &risks, &[], &packages)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let build = started.elapsed();
    let scan = rules.scan_model();
    // The user: a tenth each pending and app roles, the rest spread over the kinds.
    let mut h = Holdings::default();
    for i in 0..a.held {
        match i % 10 {
            0..=2 => {
                let p = rng.random_range(0..PACKAGES);
                h.access_packages.push(Held {
                    id: format!("pkg-{p:05}"),
                    display_name: Some(format!("Package {p}")),
                });
            }
            3 => {
                let p = rng.random_range(0..PACKAGES);
                h.pending_access_packages.push(Held {
                    id: format!("pkg-{p:05}"),
                    display_name: Some(format!("Package {p}")),
                });
            }
            4..=6 => {
                let g = rng.random_range(0..GROUPS);
                h.groups.push(Held {
                    id: format!("gid-{g}"),
                    display_name: Some(format!("group-{g}")),
                });
            }
            7 => h.app_roles.push(HeldAppRole {
                resource_id: format!("sp-{}", rng.random_range(0..50)),
                resource_display_name: None,
                app_role_id: format!("role-{}", rng.random_range(0..APP_ROLES / 50)),
            }),
            _ => h
                .external_entitlements
                .push(format!("SAP:E{}", rng.random_range(0..EXTERNAL))),
        }
    }
    let requests: Vec<Named> = (0..a.decisions.max(a.scan_decisions))
        .map(|_| Named {
            id: Some(format!("pkg-{:05}", rng.random_range(0..PACKAGES))),
            display_name: None,
        })
        .collect();
    let now = jiff::Timestamp::now();
    println!(
        "SoD: {} risks (indexed in {:.0} ms), a user holding {} entitlements ({} assignments, {} pending, {} groups, {} app roles, {} external)",
        rules.risk_count(),
        build.as_secs_f64() * 1000.0,
        a.held,
        h.access_packages.len(),
        h.pending_access_packages.len(),
        h.groups.len(),
        h.app_roles.len(),
        h.external_entitlements.len()
    );
    // Warm up, then time each decision.
    for r in requests.iter().take(1000) {
        std::hint::black_box(rules.evaluate(r, &["u1"], &h, true, now));
    }
    let mut indexed = Vec::with_capacity(a.decisions);
    let mut found = 0;
    for r in requests.iter().take(a.decisions) {
        let t = Instant::now();
        let rep = std::hint::black_box(rules.evaluate(r, &["u1"], &h, true, now));
        indexed.push(us(t.elapsed()));
        found += rep.violations.len();
    }
    let mut scanned = Vec::with_capacity(a.scan_decisions);
    let (mut scan_found, mut agree) = (0, true);
    for r in requests.iter().take(a.scan_decisions) {
        let t = Instant::now();
        let mut names = std::hint::black_box(scan.evaluate(r, &h, true));
        scanned.push(us(t.elapsed()));
        scan_found += names.len();
        let mut idx: Vec<String> = rules
            .evaluate(r, &["u1"], &h, true, now)
            .violations
            .into_iter()
            .map(|v| v.risk)
            .collect();
        names.sort();
        idx.sort();
        agree &= names == idx;
    }
    report("indexed", &mut indexed, found);
    report("scan", &mut scanned, scan_found);
    let p50 = percentile(&indexed, 50.0);
    let mean = indexed.iter().sum::<f64>() / indexed.len().max(1) as f64;
    let scan_mean = scanned.iter().sum::<f64>() / scanned.len().max(1) as f64;
    println!(
        "  speed-up (mean): {:.0}x; both found the same violations on the scanned decisions: {}",
        scan_mean / mean.max(1e-9),
        if agree { "yes" } else { "NO" }
    );
    println!(
        "  target <= 50 µs per decision (mean) at {} rules / {} held: {} (mean {mean:.2} µs, p50 {p50:.2} µs, p99 {:.2} µs)",
        a.risks,
        a.held,
        if mean <= 50.0 { "met" } else { "NOT met" },
        percentile(&indexed, 99.0)
    );
    anyhow::ensure!(agree, "the index and the scan disagree");
    Ok(())
}
