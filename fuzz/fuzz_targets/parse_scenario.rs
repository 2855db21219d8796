//! Fuzz the scenario parser and validator: every input is either a valid scenario
//! or an error whose problems all point inside the input, and rendering that error
//! never fails. Nothing here touches the kernel.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use netscenario::scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match scenario::parse(Path::new("fuzz.toml"), text) {
        Ok(sc) => {
            assert!(!sc.steps.is_empty());
            // Planning helpers must not panic on any valid scenario either.
            let _ = sc.namespaces();
            let _ = sc.firewall_scope();
            let _ = sc.sysctl_keys();
        }
        Err(e) => {
            let problems = e.problems();
            assert!(!problems.is_empty(), "an error without a located problem");
            for p in problems {
                let end = p.span.offset() + p.span.len();
                assert!(end <= text.len(), "span {:?} outside the input", p.span);
            }
            let mut out = String::new();
            miette::GraphicalReportHandler::new()
                .render_report(&mut out, &e)
                .expect("rendering an error");
        }
    }
});
