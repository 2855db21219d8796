//! The runner's own check that a run left the machine's network namespace exactly as
//! it found it: links, addresses, routes, `/run/netns`, iptables and nft rulesets,
//! and the sysctls scenarios touch, read before and after every run from the
//! machine's side. A difference is a failure of the run, reported loudly.

use std::path::Path;
use std::process::Command;

/// What the machine's own network namespace looks like, as text, one entry a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    parts: Vec<(&'static str, String)>,
}

fn stdout(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => format!(
            "<{cmd} failed: {}>",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(_) => String::new(),
    }
}

/// Strip what moves by itself (counters, link statistics, timestamps).
fn stable(text: &str, counters: bool) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if !counters {
                return l.to_string();
            }
            // iptables-save: ":INPUT ACCEPT [12:345]" and "[1:2] -A ..."
            let l = match (l.starts_with(':'), l.rfind(" [")) {
                (true, Some(i)) => &l[..i],
                _ => l,
            };
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Read the view from the calling thread, which must be in the machine's namespaces.
/// The commands run side by side (threads spawned here are in the caller's
/// namespaces): the view costs one `iptables-save`, not six processes in a row.
pub fn machine_view(sysctls: &[String]) -> MachineView {
    let links = || {
        let links: Vec<String> = stdout("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect();
        links.join(" ")
    };
    let addresses = || {
        stdout("ip", &["-o", "addr", "show"])
            .lines()
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let routes = || stdout("ip", &["route", "show", "table", "all"]);
    let save = |bin: &str| {
        Path::new(bin)
            .exists()
            .then(|| stable(&stdout(bin, &[]), true))
    };
    let nft = || {
        Path::new("/usr/sbin/nft")
            .exists()
            .then(|| stdout("/usr/sbin/nft", &["list", "ruleset"]))
    };
    let (links, addresses, routes, ipt, ip6t, nft) = std::thread::scope(|s| {
        let l = s.spawn(links);
        let a = s.spawn(addresses);
        let r = s.spawn(routes);
        let i4 = s.spawn(|| save("/usr/sbin/iptables-save"));
        let i6 = s.spawn(|| save("/usr/sbin/ip6tables-save"));
        let n = s.spawn(nft);
        fn j<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
            h.join().expect("a guard reader panicked")
        }
        (j(l), j(a), j(r), j(i4), j(i6), j(n))
    });
    let mut parts = vec![
        ("links", links),
        ("addresses", addresses),
        ("routes", routes),
    ];
    parts.push((
        "/run/netns",
        match std::fs::read_dir("/run/netns") {
            Ok(d) => {
                let mut v: Vec<String> = d
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v.join(" ")
            }
            Err(_) => "<none>".into(),
        },
    ));
    if let Some(t) = ipt {
        parts.push(("iptables", t));
    }
    if let Some(t) = ip6t {
        parts.push(("ip6tables", t));
    }
    if let Some(t) = nft {
        parts.push(("nft", t));
    }
    let mut keys: Vec<String> = sysctls.to_vec();
    keys.sort();
    keys.dedup();
    let values: Vec<String> = keys
        .iter()
        .map(|k| {
            let v = std::fs::read_to_string(format!("/proc/sys/{}", k.replace('.', "/")))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|_| "<absent>".into());
            format!("{k} = {v}")
        })
        .collect();
    parts.push(("sysctls", values.join("\n")));
    MachineView { parts }
}

impl MachineView {
    /// What differs, one line per changed part.
    pub fn diff(&self, after: &MachineView) -> Vec<String> {
        let mut out = Vec::new();
        for ((name, a), (_, b)) in self.parts.iter().zip(&after.parts) {
            if a != b {
                let gone: Vec<&str> = a.lines().filter(|l| !b.lines().any(|x| x == *l)).collect();
                let new: Vec<&str> = b.lines().filter(|l| !a.lines().any(|x| x == *l)).collect();
                out.push(format!(
                    "{name} changed: before {:?}, after {:?}",
                    gone.join(" | "),
                    new.join(" | ")
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_part_is_named_with_what_changed() {
        let a = MachineView {
            parts: vec![("links", "lo eth0".into()), ("/run/netns", "<none>".into())],
        };
        let b = MachineView {
            parts: vec![("links", "lo eth0".into()), ("/run/netns", "ns1".into())],
        };
        assert!(a.diff(&a.clone()).is_empty());
        assert_eq!(
            a.diff(&b),
            ["/run/netns changed: before \"<none>\", after \"ns1\""]
        );
    }

    #[test]
    fn iptables_counters_do_not_count_as_changes() {
        assert_eq!(
            stable(
                "# Generated\n*filter\n:INPUT ACCEPT [12:345]\n-A INPUT -j ACCEPT",
                true
            ),
            "*filter\n:INPUT ACCEPT\n-A INPUT -j ACCEPT"
        );
    }
}
