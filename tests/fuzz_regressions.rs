//! The inputs the fuzzer found interesting (fuzz/regressions/, a minimized slice of
//! its corpus) keep holding the fuzz target's invariant: a valid scenario or a
//! pointed error, never a panic. No root needed.

#[test]
fn fuzz_regressions_hold_the_parse_invariant() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let result =
                std::panic::catch_unwind(|| netscenario::scenario::assert_parse_invariants(text));
            assert!(
                result.is_ok(),
                "{} breaks the parse invariant",
                path.display()
            );
            n += 1;
        }
    }
    assert!(n > 20, "only {n} regression inputs in {}", dir.display());
}
