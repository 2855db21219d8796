//! tests/ makes one test per scenario file with rstest's `#[files]`, which globs at
//! compile time: tell cargo to rebuild when a scenario (or an invalid fixture) is
//! added, removed or edited, so new files are picked up without touching Rust code.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=scenarios");
    println!("cargo:rerun-if-changed=tests/fixtures/invalid");
}
