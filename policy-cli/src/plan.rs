//! `llmgw-policy canary plan`: how long each canary's rollout takes at a stated traffic rate;
//! and `canary simulate --policy`: each canary's rollout run by fleets of replicas.

use llmgw_canary::plan::{Detection, FleetReport, Plan, PlanConfig, MONTH_HOURS};
use serde::Serialize;
use std::fmt::Write as _;

/// A rate such as `100/h`, `2/s`, `30/min`, `5000/d` (a bare number is per hour), in requests
/// an hour.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (count, per) = text.split_once('/').unwrap_or((text, "h"));
    let hours = match per.trim() {
        "s" | "sec" => 1.0 / 3600.0,
        "m" | "min" => 1.0 / 60.0,
        "h" | "hour" => 1.0,
        "d" | "day" => 24.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use s, min, h or d)"
            ))
        }
    };
    match count.trim().parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(n / hours),
        _ => Err(format!(
            "`{text}`: the rate must be a positive number of requests per unit, e.g. `100/h`"
        )),
    }
}

/// An error rate such as `1%` or `0.01`, in (0, 0.5).
pub fn parse_error_rate(text: &str) -> Result<f64, String> {
    let value = match text.trim().strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.trim().parse::<f64>(),
    };
    match value {
        Ok(r) if r > 0.0 && r < 0.5 => Ok(r),
        _ => Err(format!(
            "`{text}`: the base error rate must be in (0, 50%), e.g. `1%`"
        )),
    }
}

/// The plan of one canary.
#[derive(Debug, Serialize)]
pub struct CanaryPlan {
    /// The canary.
    pub canary: String,
    /// Its plan.
    #[serde(flatten)]
    pub plan: Plan,
    /// A healthy candidate takes more than a month.
    pub longer_than_a_month: bool,
}

/// Fleet sizes `canary simulate --policy` runs.
pub const FLEET_SIZES: [usize; 4] = [1, 2, 4, 8];
/// Requests each simulated replica queues before adding them to the shared rollout: a
/// 200 ms tick at 50 requests a second.
pub const FLEET_BATCH: usize = 10;
/// The traffic of the fleet simulation: 100 requests an hour, so that every step lasts for
/// its `min_requests` rather than its duration, at a baseline error rate of 1%.
pub const FLEET_TRAFFIC: PlanConfig = PlanConfig {
    requests_per_hour: 100.0,
    base_error_rate: 0.01,
    sims: 0,
    seed: 0,
    threads: 0,
};

/// One canary run by each fleet.
#[derive(Debug, Serialize)]
pub struct CanaryFleet {
    /// The canary.
    pub canary: String,
    /// Its rollouts on every fleet and in every case.
    #[serde(flatten)]
    pub report: FleetReport,
}

/// The fleet simulations, for people: one table per canary.
pub fn render_fleet(fleets: &[CanaryFleet], cfg: &PlanConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} simulated rollouts per row and column (seed {}) at {} requests an hour, baseline error rate {}%; each replica adds its outcomes to the shared rollout every {FLEET_BATCH} of its requests; regressions: candidate requests served by the whole fleet until the rollback, median (p90)",
        cfg.sims,
        cfg.seed,
        cfg.requests_per_hour,
        cfg.base_error_rate * 100.0
    );
    let row = |out: &mut String,
               case: &str,
               replicas: usize,
               false_rollback: f64,
               x2: &str,
               latency: &str| {
        let _ = writeln!(
            out,
            "  {case:<36}  {replicas:>8}  {:>13.2}%  {x2:>16}  {latency:>16}",
            false_rollback * 100.0
        );
    };
    for f in fleets {
        let _ = writeln!(out, "\ncanary `{}`", f.canary);
        let _ = writeln!(
            out,
            "  {:<36}  {:>8}  {:>14}  {:>16}  {:>16}",
            "case", "replicas", "false rollback", "error x2", "latency x1.3"
        );
        let results = &f.report.results;
        for r in results {
            let (x2, latency) = (requests(&r.error_rate_x2), requests(&r.latency_x1_3));
            row(
                &mut out,
                "healthy; regressions",
                r.replicas,
                r.false_rollbacks,
                &x2,
                &latency,
            );
        }
        for r in results {
            let x2 = requests(&r.error_rate_x2_with_incident);
            row(
                &mut out,
                "provider incident",
                r.replicas,
                r.false_rollbacks_with_incident,
                &x2,
                "",
            );
        }
        let users = &f.report.different_users;
        let case = |split| format!("{} different users, {split}", users.users);
        row(
            &mut out,
            &case("per request"),
            1,
            users.false_rollbacks_per_request,
            "",
            "",
        );
        row(
            &mut out,
            &case("sticky"),
            1,
            users.false_rollbacks_sticky,
            "",
            "",
        );
        let _ = writeln!(
            out,
            "  provider incident: 30% errors on both arms for 3,000 requests from the 10,000th"
        );
        let _ = writeln!(
            out,
            "  different users: error rates and latencies of their own (lognormal factors, sigma 1 and 0.5)"
        );
        if let Some(one) = results.first() {
            let promoted = one
                .promoted_after_hours
                .map_or("never".to_owned(), duration);
            let _ = writeln!(
                out,
                "  low traffic, {} requests an hour (1 replica): healthy promoted after {promoted} (median); error x2 rolled back after {}; latency x1.3 after {}",
                f.report.requests_per_hour,
                hours(&one.error_rate_x2),
                hours(&one.latency_x1_3)
            );
        }
    }
    out
}

/// A detection's median and p90 in hours.
fn hours(d: &Detection) -> String {
    let show = |h: Option<f64>| h.map_or("never".to_owned(), duration);
    format!("{} ({})", show(d.median_hours), show(d.p90_hours))
}

fn requests(d: &Detection) -> String {
    let median = d
        .median_candidate_requests
        .map_or("never".to_owned(), |n| n.to_string());
    let p90 = d
        .p90_candidate_requests
        .map_or("never".to_owned(), |n| n.to_string());
    format!("{median} ({p90})")
}

/// The plans of every canary, for people.
pub fn render_human(plans: &[CanaryPlan], cfg: &PlanConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "at {} requests an hour to each canary's model, baseline error rate {}% ({} simulated rollouts per regression, seed {}):",
        cfg.requests_per_hour,
        cfg.base_error_rate * 100.0,
        cfg.sims,
        cfg.seed
    );
    if plans.is_empty() {
        let _ = writeln!(out, "no canary");
    }
    for p in plans {
        let steps: Vec<String> = p.plan.step_hours.iter().map(|h| duration(*h)).collect();
        let _ = writeln!(out, "\ncanary `{}`", p.canary);
        let _ = writeln!(
            out,
            "  healthy candidate: promoted after {} (steps: {})",
            duration(p.plan.promotion_hours),
            steps.join(", ")
        );
        let _ = writeln!(
            out,
            "  error rate x2:     {}",
            detection(&p.plan.error_rate_x2)
        );
        let _ = writeln!(
            out,
            "  latency x1.3:      {}",
            detection(&p.plan.latency_x1_3)
        );
        if p.longer_than_a_month {
            let _ = writeln!(
                out,
                "  warning: the rollout takes longer than a month ({} days) at this rate; lower the steps' `min_requests` or raise their weights",
                (MONTH_HOURS / 24.0) as u64
            );
        }
    }
    out
}

fn detection(d: &Detection) -> String {
    let median = d.median_hours.map_or("never (median)".to_owned(), duration);
    let p90 = d.p90_hours.map_or("never".to_owned(), duration);
    let requests = d.median_candidate_requests.map_or(String::new(), |n| {
        format!(", {n} candidate requests (median)")
    });
    format!(
        "rolled back after {median} (median), {p90} (p90){requests}; {:.1}% rolled back, {:.1}% promoted unnoticed",
        d.rolled_back * 100.0,
        d.promoted * 100.0
    )
}

/// Hours in the largest unit that reads well.
fn duration(hours: f64) -> String {
    if hours < 1.0 {
        format!("{:.0} min", hours * 60.0)
    } else if hours < 48.0 {
        format!("{hours:.1} h")
    } else {
        format!("{:.1} days", hours / 24.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_a_unit() {
        assert_eq!(parse_rate("100/h"), Ok(100.0));
        assert_eq!(parse_rate("2/s"), Ok(7200.0));
        assert_eq!(parse_rate("30/min"), Ok(1800.0));
        assert_eq!(parse_rate("48/d"), Ok(2.0));
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert!(parse_rate("0/h").unwrap_err().contains("positive"));
        assert!(parse_rate("10/week")
            .unwrap_err()
            .contains("unknown unit `week`"));
        assert_eq!(parse_error_rate("1%"), Ok(0.01));
        assert_eq!(parse_error_rate("0.02"), Ok(0.02));
        assert!(parse_error_rate("80%").is_err());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0.5), "30 min");
        assert_eq!(duration(27.0), "27.0 h");
        assert_eq!(duration(800.0), "33.3 days");
    }
}
