//! Runs the canary Monte Carlo and prints its table, the time it took, and optionally JSON.
//!
//! `cargo run --release -p llmgw-canary --example simulate -- [--sims N] [--seed S]
//! [--threads T] [--json]`

use std::time::Instant;

use llmgw_canary::{simulate, SimConfig};

fn main() {
    let mut cfg = SimConfig::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--sims" => cfg.sims = value("--sims") as usize,
            "--seed" => cfg.seed = value("--seed"),
            "--threads" => cfg.threads = value("--threads") as usize,
            "--json" => json = true,
            other => panic!("unknown argument `{other}`"),
        }
    }
    let started = Instant::now();
    let report = simulate(&cfg);
    let elapsed = started.elapsed();
    print!("{}", report.render_human());
    println!("took {:.1} s", elapsed.as_secs_f64());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    }
}
