//! `cargo xtask fuzz` runs this in release: the interop shim's rewriter
//! over random client byte streams (see `fuzz.rs` for the invariants).
//!
//! ```text
//! interop_fuzz [--cases N] [--seed S] [--start I]
//! ```
//!
//! Cases are numbered; case `I` of seed `S` is the same on every machine,
//! and a failure prints the command that replays it alone.

mod fuzz;

use std::time::Instant;

fn main() {
    let mut cases = 1_000_000u64;
    let mut seed = None;
    let mut start = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || -> u64 {
            let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
            v.parse().unwrap_or_else(|_| panic!("{a} {v}: a number"))
        };
        match a.as_str() {
            "--cases" => cases = value(),
            "--seed" => seed = Some(value()),
            "--start" => start = value(),
            other => {
                eprintln!(
                    "interop_fuzz: unknown argument {other:?} (--cases N, --seed S, --start I)"
                );
                std::process::exit(2);
            }
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "interop_fuzz: seed {seed}, cases {start}..{}",
        start + cases
    );
    // The panic hook prints where a failing case panicked; the summary
    // below says which case it was.
    let began = Instant::now();
    let mut stats = fuzz::Stats::default();
    let mut result = Ok(());
    // In slices, to show progress on long runs.
    let mut next = start;
    while next < start + cases && result.is_ok() {
        let n = (start + cases - next).min(100_000);
        match fuzz::run(seed, next, n) {
            Ok(s) => stats.add(&s),
            Err(e) => result = Err(e),
        }
        next += n;
        if result.is_ok() && next < start + cases {
            println!(
                "interop_fuzz: {} cases, {:.0} s",
                next - start,
                began.elapsed().as_secs_f64()
            );
        }
    }
    match result {
        Ok(()) => {
            let secs = began.elapsed().as_secs_f64();
            println!(
                "interop_fuzz: {} cases in {secs:.1} s ({:.0}/s): {} blocks seen unchanged by h2 ({} authorities trimmed), \
                 {} refused as h2 would, {} hostile tails, {} mutated streams; at most {} bytes held, {:.0}% of the case's bound",
                stats.cases,
                stats.cases as f64 / secs,
                stats.blocks_equal,
                stats.trimmed,
                stats.blocks_refused,
                stats.hostile,
                stats.mutated,
                stats.max_held,
                stats.max_share * 100.0,
            );
        }
        Err((case, msg)) => {
            eprintln!("interop_fuzz: case {case} of seed {seed} failed: {msg}");
            eprintln!("replay: cargo xtask fuzz shim --seed {seed} --start {case} --cases 1");
            std::process::exit(1);
        }
    }
}
