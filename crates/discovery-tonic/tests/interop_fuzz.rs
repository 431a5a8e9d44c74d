//! A short deterministic run of the interop shim's fuzzer, so every test
//! run covers it; `cargo xtask fuzz` runs a million cases in release.

#[path = "../examples/interop_fuzz/fuzz.rs"]
mod fuzz;

#[test]
fn rewriter_keeps_its_invariants_over_20k_random_streams() {
    const SEED: u64 = 27;
    match fuzz::run(SEED, 0, 20_000) {
        Ok(stats) => {
            eprintln!("{stats:?}");
            // The generator must reach what the invariants are about.
            assert!(stats.blocks_equal > 20_000, "{stats:?}");
            assert!(stats.trimmed > 3_000, "{stats:?}");
            assert!(stats.blocks_refused > 2_000, "{stats:?}");
        }
        Err((case, msg)) => panic!(
            "case {case} of seed {SEED}: {msg}\nreplay: cargo xtask fuzz shim --seed {SEED} \
             --start {case} --cases 1"
        ),
    }
}
