//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::process::Command;

/// These tests build namespaces on the real kernel: they need root. Failing loudly
/// (rather than skipping) keeps a CI job without privileges from passing silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests create network namespaces and need root: run them as root (see README)"
    );
}

/// The machine's own networking state, as the brief says to check it: namespaces,
/// links, mounts and iptables rules of the namespace this test process runs in.
#[derive(Debug, PartialEq, Eq)]
pub struct MachineState {
    pub netns: String,
    pub links: String,
    pub mounts: String,
    pub iptables: String,
}

fn stdout(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("<{cmd} failed: {e}>"),
    }
}

pub fn machine_state() -> MachineState {
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    mounts.sort();
    MachineState {
        netns: stdout("ip", &["netns", "list"]),
        links: stdout("ip", &["-br", "link"]),
        mounts: mounts.join("\n"),
        iptables: stdout("iptables-save", &[])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                // Counters of the machine's own chains move with its own traffic.
                match l.find(" [") {
                    Some(i) if l.starts_with(':') => l[..i].to_string(),
                    _ => l.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Pids of processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(marker) {
                    out.push(pid);
                }
            }
        }
    }
    out
}
