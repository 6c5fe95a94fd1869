//! `og-fuzz [--target NAME|all] [--seconds N] [--seed S]`: fuzzes each target for N seconds
//! from its committed corpus and prints executions, accepted inputs and panics; panicking
//! inputs are written to `target/fuzz-findings/<target>/`. Exits 1 when anything panicked.

use std::time::Duration;

use og_fuzz::{Budget, TARGETS, corpus_dir, fuzz, read_corpus};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let which = flag("--target").unwrap_or_else(|| "all".into());
    let seconds: u64 = flag("--seconds").and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = flag("--seed").and_then(|s| s.parse().ok()).unwrap_or(1);
    let chosen: Vec<_> = TARGETS
        .iter()
        .filter(|t| which == "all" || t.name == which)
        .collect();
    if chosen.is_empty() {
        let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
        eprintln!(
            "unknown target {which:?}; targets: all, {}",
            names.join(", ")
        );
        return std::process::ExitCode::from(2);
    }
    let mut failed = false;
    for t in chosen {
        let seeds = read_corpus(&corpus_dir(t.name));
        let n = seeds.len();
        let r = fuzz(t, seeds, seed, Budget::Time(Duration::from_secs(seconds)));
        println!(
            "{:<14} seed {seed}: {} executions in {:.0} s ({:.0}/s), {} accepted, corpus {n} → {}, {} panics",
            t.name,
            r.execs,
            r.seconds,
            r.execs as f64 / r.seconds.max(1e-9),
            r.accepted,
            r.corpus,
            r.panics.len()
        );
        if !r.panics.is_empty() {
            failed = true;
            let dir = std::path::Path::new("target/fuzz-findings").join(t.name);
            let _ = std::fs::create_dir_all(&dir);
            for (i, (input, message)) in r.panics.iter().enumerate().take(20) {
                let _ = std::fs::write(dir.join(format!("panic-{i}")), input);
                println!("  panic {i}: {message}");
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
