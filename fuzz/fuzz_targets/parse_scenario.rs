//! Fuzz the scenario parser and validator: every input is either a valid scenario
//! or an error whose problems all point inside the input, and rendering that error
//! never fails (`scenario::assert_parse_invariants`). Nothing here touches the kernel.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        netscenario::scenario::assert_parse_invariants(text);
    }
});
