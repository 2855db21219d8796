//! Reading a scenario file and validating it into a [`Scenario`]. No syscalls beyond
//! reading the file: nothing is created before this has passed.

use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::error::{Problems, ScenarioError};
use super::matrix;
use super::model::{
    Action, CaptureConfig, CountCmp, Expect, IptablesExpect, IptablesOp, MasterChange, Matrix,
    NftExpect, PacketExpect, Peer, PortMatrix, Scenario, Step, TopoBridge, TopoHost, Topology,
    HOST, L4,
};
use super::raw::{RawFile, RawStep, RawTiming, RawTopology};
use crate::probe::outcome::ProbeTiming;

const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// `ping -c N` in a `run` script sends every 2 ms rather than every second.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_millis(2);

/// Every scenario file named: files as given, directories searched recursively for
/// `*.toml`, each directory's entries in sorted order.
pub fn find_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out);
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// Read and validate one scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Validate scenario text; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let mut problems = Problems::new(path.to_path_buf(), text.to_string());
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut message = e.message().trim().to_string();
            // Name the step the error is in: the [[step]] tables before it.
            let before = &text[..span.start.min(text.len())];
            let n = before
                .lines()
                .filter(|l| l.trim_start().starts_with("[[step]]"))
                .count();
            if n > 0 {
                message = format!("step {n}: {message}");
            }
            let help = toml_help(&message);
            problems.push(span, message, "here", help);
            return Err(problems.into_error().expect("one problem"));
        }
    };
    let scenario = Validator {
        problems: &mut problems,
        path: path.to_path_buf(),
        step: None,
        capture: None,
    }
    .scenario(raw);
    match problems.into_error() {
        Some(err) => Err(err),
        None => Ok(scenario.expect("no problems means a scenario")),
    }
}

fn toml_help(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some(format!(
            "the keys a step takes are listed in the README (\"Scenario format\"); {}",
            "a misspelt key is an error, not ignored"
        ))
    } else if message.contains("missing field") {
        Some("add the missing key".into())
    } else {
        None
    }
}

/// Parse `3s`, `500ms`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => return None,
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    if !secs.is_finite() || !(0.0..=24.0 * 3600.0).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

struct Validator<'a> {
    problems: &'a mut Problems,
    path: PathBuf,
    /// The step being validated, to name it in messages: (index, name).
    step: Option<(usize, String)>,
    capture: Option<CaptureConfig>,
}

impl Validator<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>, label: &str, help: &str) {
        let help = (!help.is_empty()).then(|| help.to_string());
        let message = match &self.step {
            Some((i, name)) => format!("step {i} (\"{name}\"): {}", message.into()),
            None => message.into(),
        };
        self.problems.push(span, message, label, help);
    }

    fn duration(&mut self, s: &Spanned<String>) -> Option<Duration> {
        let d = parse_duration(s.get_ref());
        if d.is_none() {
            self.err(
                s.span(),
                format!("`{}` is not a duration", s.get_ref()),
                "not a duration",
                "write a number with a unit: 500ms, 3s, 1.5s, 2m",
            );
        }
        d
    }

    fn timing(&mut self, base: ProbeTiming, raw: &RawTiming) -> ProbeTiming {
        let mut t = base;
        if let Some(d) = raw.deadline.as_ref().and_then(|s| self.duration(s)) {
            t.deadline = d;
        }
        if let Some(d) = raw.window.as_ref().and_then(|s| self.duration(s)) {
            t.window = d;
            t.adaptive = false;
        }
        if let Some(s) = &raw.interval {
            if let Some(d) = self.duration(s) {
                if d < Duration::from_millis(10) {
                    self.err(
                        s.span(),
                        "the probe interval is too short",
                        "below 10ms",
                        "use 10ms or more",
                    );
                } else {
                    t.interval = d;
                }
            }
        }
        t
    }

    fn scenario(&mut self, raw: RawFile) -> Option<Scenario> {
        let header = raw.scenario.into_inner();
        let name = header.name.get_ref().clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            self.err(
                header.name.span(),
                format!("`{name}` is not a valid scenario name"),
                "names the report and the snapshot",
                "use letters, digits, `-`, `_` and `.` only",
            );
        }
        let timing = match &header.probe {
            Some(p) => self.timing(ProbeTiming::default(), p.get_ref()),
            None => ProbeTiming::default(),
        };
        let step_timeout = header
            .step_timeout
            .as_ref()
            .and_then(|s| self.duration(s))
            .unwrap_or(DEFAULT_STEP_TIMEOUT);

        let ping_interval = match &header.ping_interval {
            None => Some(DEFAULT_PING_INTERVAL),
            Some(s) => match self.duration(s) {
                Some(d) if d >= Duration::from_secs(1) => None,
                Some(d) if d < Duration::from_millis(2) => {
                    self.err(
                        s.span(),
                        "the ping interval is too short",
                        "below 2ms",
                        "use 2ms or more (\"1s\" keeps ping's own pace)",
                    );
                    None
                }
                Some(d) => Some(d),
                None => None,
            },
        };
        let mut requires = Vec::new();
        for r in &header.requires {
            let name = r.get_ref();
            if crate::runner::requirement::is_known(name) {
                requires.push(name.clone());
            } else {
                self.err(
                    r.span(),
                    format!("`{name}` is not a requirement netscenario knows"),
                    "unknown",
                    &format!(
                        "a requirement is a kernel feature ({}) or a tool written as \"tool:NAME\"",
                        crate::runner::requirement::FEATURES
                            .iter()
                            .map(|f| f.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        let capture = header.capture.as_ref().map(|c| {
            let c = c.get_ref();
            CaptureConfig {
                all: c.all,
                on: c
                    .on
                    .iter()
                    .map(|o| {
                        let o = o.get_ref();
                        (
                            o.netns.get_ref().clone(),
                            o.iface.get_ref().clone(),
                            o.filter.as_ref().map(|f| f.get_ref().clone()),
                        )
                    })
                    .collect(),
            }
        });
        if let Some(c) = header.capture.as_ref() {
            if !c.get_ref().all && c.get_ref().on.is_empty() {
                self.err(c.span(), "`capture` captures nothing", "here", "say `all = true`, or list interfaces: on = [{ netns = \"host\", iface = \"br0\" }]");
            }
        }
        self.capture = capture.clone();
        let topology = match &raw.topology {
            Some(t) => {
                let mut topo = self.topology(t.get_ref());
                topo.line = self.problems.line_of(t.span().start);
                topo
            }
            None => Topology::default(),
        };
        let mut known = vec![HOST.to_string()];
        known.extend(topology.hosts.iter().map(|h| h.name.clone()));
        let mut steps = Vec::new();
        for (i, raw_step) in raw.step.into_iter().enumerate() {
            let line = self.problems.line_of(raw_step.span().start);
            if let Some(step) = self.step(
                i + 1,
                line,
                raw_step.into_inner(),
                &mut known,
                timing,
                step_timeout,
            ) {
                steps.push(step);
            }
        }
        self.step = None;
        if steps.is_empty() && self.problems.is_empty() {
            self.err(
                header.name.span(),
                "the scenario has no steps",
                "in this scenario",
                "add [[step]] tables after [scenario]",
            );
        }
        Some(Scenario {
            name,
            about: header.about,
            source: header.source,
            path: self.path.clone(),
            timing,
            step_timeout,
            ping_interval,
            requires,
            capture,
            topology,
            steps,
        })
    }

    fn topology(&mut self, raw: &RawTopology) -> Topology {
        let mut topo = Topology {
            static_neighbors: raw.static_neighbors,
            ..Topology::default()
        };
        for b in &raw.bridge {
            let b = b.get_ref();
            self.ifname(&b.name);
            let name = b.name.get_ref().clone();
            if topo.bridges.iter().any(|x| x.name == name) {
                self.err(
                    b.name.span(),
                    format!("bridge `{name}` is declared twice"),
                    "again here",
                    "give each [[topology.bridge]] its own name",
                );
            }
            let addresses = self.addresses(&b.address, &b.addresses);
            topo.bridges.push(TopoBridge { name, addresses });
        }
        let mut ports: Vec<String> = topo.bridges.iter().map(|b| b.name.clone()).collect();
        for h in &raw.host {
            let h = h.get_ref();
            let name = h.name.get_ref().clone();
            let duplicate = topo.hosts.iter().any(|x| x.name == name);
            if !valid_ifname_like(&name) {
                self.err(
                    h.name.span(),
                    format!("`{name}` is not a valid namespace name"),
                    "here",
                    "use letters, digits, `-`, `_` and `.`",
                );
            } else if name == HOST || duplicate {
                self.err(
                    h.name.span(),
                    format!("host `{name}` already exists"),
                    if name == HOST {
                        "the scenario's top namespace"
                    } else {
                        "declared earlier"
                    },
                    "give each [[topology.host]] its own name",
                );
            }
            let bridge = h.bridge.get_ref().clone();
            if !topo.bridges.iter().any(|b| b.name == bridge) {
                let declared: Vec<&str> = topo.bridges.iter().map(|b| b.name.as_str()).collect();
                self.err(
                    h.bridge.span(),
                    format!("unknown bridge `{bridge}`"),
                    "not declared",
                    &if declared.is_empty() {
                        format!("declare it: [[topology.bridge]] name = \"{bridge}\"")
                    } else {
                        format!("bridges declared: {}", declared.join(", "))
                    },
                );
            }
            let iface = match &h.iface {
                Some(i) => {
                    self.ifname(i);
                    i.get_ref().clone()
                }
                None => "eth0".to_string(),
            };
            let port = match &h.port {
                Some(p) => {
                    self.ifname(p);
                    p.get_ref().clone()
                }
                None => {
                    let p = format!("{bridge}-{name}");
                    if p.len() > 15 {
                        self.err(
                            h.name.span(),
                            format!("the bridge port of `{name}` would be `{p}`, longer than 15 characters"),
                            "this host",
                            "name the port: port = \"...\" (at most 15 characters)",
                        );
                    }
                    p
                }
            };
            if ports.contains(&port) && !duplicate {
                let span = h.port.as_ref().map_or(h.name.span(), |p| p.span());
                self.err(
                    span,
                    format!("link `{port}` is declared twice in `host`"),
                    "this host's bridge port",
                    "name the port: port = \"...\"",
                );
            }
            ports.push(port.clone());
            let addresses = self.addresses(&h.address, &h.addresses);
            let gateway = h
                .gateway
                .as_ref()
                .and_then(|g| match g.get_ref().parse::<IpAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        self.err(
                            g.span(),
                            format!("`{}` is not a valid address", g.get_ref()),
                            "here",
                            "a gateway is an address without prefix: gateway = \"10.0.0.254\"",
                        );
                        None
                    }
                });
            topo.hosts.push(TopoHost {
                name,
                bridge,
                iface,
                port,
                addresses,
                gateway,
            });
        }
        topo
    }

    fn addresses(&mut self, one: &Option<Spanned<String>>, many: &[Spanned<String>]) -> Vec<IpNet> {
        one.iter()
            .chain(many)
            .filter_map(|a| self.ipnet(a, "write an address with its prefix: \"10.0.0.1/24\""))
            .collect()
    }

    fn known_netns(&mut self, known: &[String], name: &Spanned<String>) -> Option<String> {
        let n = name.get_ref();
        if known.iter().any(|k| k == n) {
            return Some(n.clone());
        }
        self.err(
            name.span(),
            format!("unknown namespace `{n}`"),
            "not created by an earlier step",
            &format!(
                "namespaces known at this step: {}; a namespace must be created by an earlier step (`ip netns add {n}` or `netns = \"{n}\"`)",
                known.join(", ")
            ),
        );
        None
    }

    fn step(
        &mut self,
        index: usize,
        line: usize,
        raw: RawStep,
        known: &mut Vec<String>,
        timing: ProbeTiming,
        step_timeout: Duration,
    ) -> Option<Step> {
        let name = raw.name.get_ref().clone();
        self.step = Some((index, name.clone()));
        let netns = match &raw.in_ {
            Some(ns) => self.known_netns(known, ns).unwrap_or_default(),
            None => HOST.to_string(),
        };
        let timeout = raw
            .timeout
            .as_ref()
            .and_then(|s| self.duration(s))
            .unwrap_or(step_timeout);

        // Which actions are present, with their spans.
        let mut present: Vec<(&str, Range<usize>)> = Vec::new();
        macro_rules! note {
            ($field:ident, $key:literal) => {
                if let Some(v) = &raw.$field {
                    present.push(($key, v.span()));
                }
            };
        }
        note!(run, "run");
        note!(netns, "netns");
        note!(bridge, "bridge");
        note!(veth, "veth");
        note!(move_, "move");
        note!(link, "link");
        note!(addr, "addr");
        note!(route, "route");
        note!(sysctl, "sysctl");
        note!(iptables, "iptables");
        note!(listen, "listen");
        if present.len() > 1 {
            let (first, _) = &present[0];
            let (second, span) = &present[1];
            self.err(
                span.clone(),
                format!("two actions: `{first}` and `{second}`"),
                "second action",
                "a step has at most one action; split it into two [[step]] tables",
            );
        }

        let action = if let Some(run) = &raw.run {
            Some(Action::Run {
                script: run.get_ref().clone(),
            })
        } else if let Some(ns) = &raw.netns {
            let n = ns.get_ref();
            if !valid_ifname_like(n) {
                self.err(
                    ns.span(),
                    format!("`{n}` is not a valid namespace name"),
                    "here",
                    "use letters, digits, `-`, `_` and `.`",
                );
            } else if n == HOST || known.contains(n) {
                self.err(
                    ns.span(),
                    format!("namespace `{n}` already exists"),
                    "created earlier",
                    "pick another name",
                );
            }
            Some(Action::Netns { name: n.clone() })
        } else if let Some(b) = &raw.bridge {
            let b = b.get_ref();
            self.ifname(&b.name);
            Some(Action::Bridge {
                name: b.name.get_ref().clone(),
                up: b.up,
            })
        } else if let Some(v) = &raw.veth {
            let v = v.get_ref();
            self.ifname(&v.name);
            self.ifname(&v.peer);
            let ns_of = |this: &mut Self, n: &Option<Spanned<String>>| match n {
                Some(n) => this.known_netns(known, n).unwrap_or_default(),
                None => netns.clone(),
            };
            let vn = ns_of(self, &v.netns);
            let pn = ns_of(self, &v.peer_netns);
            Some(Action::Veth {
                name: v.name.get_ref().clone(),
                peer: v.peer.get_ref().clone(),
                netns: vn,
                peer_netns: pn,
                master: v.master.as_ref().map(|m| m.get_ref().clone()),
                peer_master: v.peer_master.as_ref().map(|m| m.get_ref().clone()),
                up: v.up,
            })
        } else if let Some(m) = &raw.move_ {
            let m = m.get_ref();
            let to = self.known_netns(known, &m.to).unwrap_or_default();
            Some(Action::Move {
                link: m.link.get_ref().clone(),
                to,
            })
        } else if let Some(l) = &raw.link {
            let span = l.span();
            let l = l.get_ref();
            let up = match &l.state {
                None => None,
                Some(s) => match s.get_ref().as_str() {
                    "up" => Some(true),
                    "down" => Some(false),
                    other => {
                        self.err(
                            s.span(),
                            format!("`{other}` is not a link state"),
                            "here",
                            "state is \"up\" or \"down\"",
                        );
                        None
                    }
                },
            };
            let master = match (&l.master, l.nomaster) {
                (Some(m), true) => {
                    self.err(
                        m.span(),
                        "`master` and `nomaster` together",
                        "conflicts with nomaster",
                        "keep one of them",
                    );
                    None
                }
                (Some(m), false) => Some(MasterChange::Set(m.get_ref().clone())),
                (None, true) => Some(MasterChange::Clear),
                (None, false) => None,
            };
            if l.state.is_none() && master.is_none() && !l.nomaster {
                self.err(
                    span,
                    "`link` changes nothing",
                    "here",
                    "give `state = \"up\"`, `master = \"br0\"` or `nomaster = true`",
                );
            }
            Some(Action::Link {
                name: l.name.get_ref().clone(),
                up,
                master,
            })
        } else if let Some(a) = &raw.addr {
            let a = a.get_ref();
            let address = self.ipnet(
                &a.address,
                "write an address with its prefix length, e.g. 192.168.1.61/24 or fd00::1/64",
            );
            address.map(|address| Action::Addr {
                dev: a.dev.get_ref().clone(),
                address,
            })
        } else if let Some(r) = &raw.route {
            let r = r.get_ref();
            let via = r.via.as_ref().and_then(|v| {
                let p = v.get_ref().parse::<IpAddr>();
                if p.is_err() {
                    self.err(
                        v.span(),
                        format!("`{}` is not an IP address", v.get_ref()),
                        "not an address",
                        "write a gateway address such as 10.0.0.1",
                    );
                }
                p.ok()
            });
            let dst = if r.dst.get_ref() == "default" {
                Some(match via {
                    Some(IpAddr::V6(_)) => "::/0".parse().unwrap(),
                    _ => "0.0.0.0/0".parse().unwrap(),
                })
            } else {
                self.ipnet(&r.dst, "write a prefix such as 10.0.2.0/24, or \"default\"")
            };
            if r.via.is_none() && r.dev.is_none() {
                self.err(
                    r.dst.span(),
                    "a route needs `via` or `dev`",
                    "where does it go?",
                    "add via = \"10.0.0.1\" or dev = \"veth0\"",
                );
            }
            dst.map(|dst| Action::Route {
                dst,
                via,
                dev: r.dev.as_ref().map(|d| d.get_ref().clone()),
            })
        } else if let Some(s) = &raw.sysctl {
            let s = s.get_ref();
            let key = s.key.get_ref();
            if key.is_empty()
                || key.contains("..")
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
            {
                self.err(
                    s.key.span(),
                    format!("`{key}` is not a sysctl key"),
                    "here",
                    "write it as sysctl does, e.g. net.ipv4.ip_forward",
                );
            }
            Some(Action::Sysctl {
                key: key.clone(),
                value: s.value.get_ref().clone(),
            })
        } else if let Some(t) = &raw.iptables {
            let span = t.span();
            let t = t.get_ref();
            let table = self.iptables_table(&t.table);
            let ops: Vec<(IptablesOp, Range<usize>)> = [
                t.append
                    .as_ref()
                    .map(|r| (IptablesOp::Append(r.get_ref().clone()), r.span())),
                t.insert
                    .as_ref()
                    .map(|r| (IptablesOp::Insert(r.get_ref().clone()), r.span())),
                t.policy
                    .as_ref()
                    .map(|r| (IptablesOp::Policy(r.get_ref().clone()), r.span())),
            ]
            .into_iter()
            .flatten()
            .collect();
            if ops.len() != 1 {
                let s = ops.get(1).map(|o| o.1.clone()).unwrap_or(span);
                self.err(
                    s,
                    "`iptables` takes exactly one of `append`, `insert`, `policy`",
                    "here",
                    "one rule or policy per step",
                );
                None
            } else {
                let (op, op_span) = ops.into_iter().next().unwrap();
                if let IptablesOp::Policy(p) = &op {
                    if p != "ACCEPT" && p != "DROP" {
                        self.err(
                            op_span,
                            format!("`{p}` is not a chain policy"),
                            "here",
                            "a built-in chain's policy is ACCEPT or DROP",
                        );
                    }
                }
                Some(Action::Iptables {
                    ipv6: t.ipv6,
                    table,
                    chain: t.chain.get_ref().clone(),
                    op,
                })
            }
        } else if let Some(l) = &raw.listen {
            let span = l.span();
            let l = l.get_ref();
            let address = l.address.as_ref().and_then(|a| {
                let p = a.get_ref().parse::<IpAddr>();
                if p.is_err() {
                    self.err(
                        a.span(),
                        format!("`{}` is not an IP address", a.get_ref()),
                        "not an address",
                        "write the address to bind, e.g. 10.0.0.2, or leave it out to bind all",
                    );
                }
                p.ok()
            });
            match (&l.tcp, &l.udp) {
                (Some(p), None) => Some(Action::Listen {
                    proto: L4::Tcp,
                    port: *p.get_ref(),
                    address,
                }),
                (None, Some(p)) => Some(Action::Listen {
                    proto: L4::Udp,
                    port: *p.get_ref(),
                    address,
                }),
                _ => {
                    self.err(
                        span,
                        "`listen` takes exactly one of `tcp` and `udp`",
                        "here",
                        "listen = { tcp = 80 } or listen = { udp = 53 }; one per step",
                    );
                    None
                }
            }
        } else {
            None
        };

        // The action's namespaces exist from here on.
        let mut step = Step {
            index,
            name,
            netns,
            line,
            action,
            timeout,
            expect: Expect::default(),
        };
        for ns in step.creates_netns() {
            if !known.contains(&ns) {
                known.push(ns);
            }
        }

        if let Some(e) = &raw.expect {
            let e = e.get_ref();
            let step_timing = e.probe.as_ref().map(|p| self.timing(timing, p.get_ref()));
            step.expect.timing = step_timing;
            if let Some(ping) = &e.ping {
                step.expect.ping = self.matrix(ping, known);
            }
            if let Some(ping6) = &e.ping6 {
                step.expect.ping6 = self.matrix(ping6, known);
            }
            for (list, proto) in [(&e.tcp, L4::Tcp), (&e.udp, L4::Udp)] {
                for pm in list {
                    let pm = pm.get_ref();
                    if *pm.port.get_ref() == 0 {
                        self.err(
                            pm.port.span(),
                            "port 0 cannot be probed",
                            "here",
                            "give the port the service listens on",
                        );
                    }
                    let runner_listens = match &pm.listener {
                        None => true,
                        Some(l) => match l.get_ref().as_str() {
                            "runner" => true,
                            "scenario" => false,
                            other => {
                                self.err(l.span(), format!("`{other}` is not a listener"), "here", "listener is \"runner\" (the runner listens in each destination) or \"scenario\" (the scenario's own service)");
                                true
                            }
                        },
                    };
                    if let Some(matrix) = self.matrix(&pm.matrix, known) {
                        let v = PortMatrix {
                            proto,
                            port: *pm.port.get_ref(),
                            v6: pm.ipv6,
                            runner_listens,
                            matrix,
                        };
                        match proto {
                            L4::Tcp => step.expect.tcp.push(v),
                            L4::Udp => step.expect.udp.push(v),
                        }
                    }
                }
            }
            for ie in &e.iptables {
                let ie = ie.get_ref();
                let netns = match &ie.in_ {
                    Some(n) => self.known_netns(known, n).unwrap_or_default(),
                    None => step.netns.clone(),
                };
                let table = self.iptables_table(&ie.table);
                let mut policies = Vec::new();
                for (chain, p) in &ie.policy {
                    if !["ACCEPT", "DROP"].contains(&p.get_ref().as_str()) {
                        self.err(
                            p.span(),
                            format!("`{}` is not a chain policy", p.get_ref()),
                            "here",
                            "a built-in chain's policy is ACCEPT or DROP",
                        );
                    }
                    policies.push((chain.clone(), p.get_ref().clone()));
                }
                let lines = |this: &mut Self, v: &[Spanned<String>]| -> Vec<String> {
                    v.iter()
                        .map(|l| {
                            let t = l.get_ref().trim();
                            if !(t.starts_with("-A ") || t.starts_with("-N ") || t.starts_with("-P ")) {
                                this.err(l.span(), format!("`{t}` is not an `iptables -S` line"), "here", "write rules as `iptables -S` prints them, e.g. \"-A FORWARD -i br0 -j ACCEPT\"");
                            }
                            normalize_rule(t)
                        })
                        .collect()
                };
                let present = lines(self, &ie.present);
                let absent = lines(self, &ie.absent);
                let counts = self.counts(&ie.counts, true);
                step.expect.iptables.push(IptablesExpect {
                    netns,
                    table,
                    ipv6: ie.ipv6,
                    policies,
                    present,
                    absent,
                    counts,
                });
            }
            for pe in &e.packets {
                let pe = pe.get_ref();
                let Some((ns, iface)) = pe.on.get_ref().split_once(':') else {
                    self.err(
                        pe.on.span(),
                        format!("`{}` names no interface", pe.on.get_ref()),
                        "here",
                        "write namespace:interface, e.g. \"host:br0\"",
                    );
                    continue;
                };
                if !known.iter().any(|k| k == ns) {
                    self.err(
                        pe.on.span(),
                        format!("unknown namespace `{ns}`"),
                        "not created by an earlier step",
                        &format!("namespaces known at this step: {}", known.join(", ")),
                    );
                    continue;
                }
                if !self.capture.as_ref().is_some_and(|c| c.covers(ns, iface)) {
                    self.err(pe.on.span(), format!("`{ns}:{iface}` is not captured"), "no capture here", "capture it: [scenario.capture] all = true, or on = [{ netns = \"...\", iface = \"...\" }]");
                }
                let (pattern, seen) = match (&pe.seen, &pe.not_seen) {
                    (Some(p), None) => (p.get_ref().clone(), true),
                    (None, Some(p)) => (p.get_ref().clone(), false),
                    _ => {
                        self.err(pe.on.span(), "a packet expectation takes exactly one of `seen` and `not_seen`", "here", "seen = \"icmp echo request 10.0.0.1 > 10.0.0.2\" or not_seen = \"icmp echo reply\"");
                        continue;
                    }
                };
                let count = pe.count.as_ref().and_then(|c| {
                    if !seen {
                        self.err(
                            c.span(),
                            "`count` goes with `seen`",
                            "here",
                            "not_seen means a count of 0",
                        );
                    }
                    let parsed = CountCmp::parse(c.get_ref());
                    if parsed.is_none() {
                        self.err(
                            c.span(),
                            format!("`{}` is not a packet count", c.get_ref()),
                            "here",
                            "a number or a comparison: \"3\", \">0\", \">=2\"",
                        );
                    }
                    parsed
                });
                step.expect.packets.push(PacketExpect {
                    netns: ns.into(),
                    iface: iface.into(),
                    pattern,
                    seen,
                    count,
                });
            }
            for ne in &e.nft {
                let ne = ne.get_ref();
                let netns = match &ne.in_ {
                    Some(n) => self.known_netns(known, n).unwrap_or_default(),
                    None => step.netns.clone(),
                };
                let counts = self.counts(&ne.counts, false);
                step.expect.nft.push(NftExpect {
                    netns,
                    present: ne.present.iter().map(|p| p.get_ref().clone()).collect(),
                    absent: ne.absent.iter().map(|p| p.get_ref().clone()).collect(),
                    counts,
                });
            }
            if let Some(list) = &e.stdout_contains {
                if !matches!(step.action, Some(Action::Run { .. })) {
                    if let Some(first) = list.first() {
                        self.err(
                            first.span(),
                            "`stdout_contains` needs a `run` action in the same step",
                            "no output to look at",
                            "add it to the step whose `run` prints the output",
                        );
                    }
                }
                step.expect.stdout_contains = list.iter().map(|s| s.get_ref().clone()).collect();
            }
        }
        if step.action.is_none() && raw.expect.is_none() && present.is_empty() {
            self.err(
                raw.name.span(),
                format!("step `{}` does nothing", step.name),
                "no action and no expectation",
                "give it an action (run, netns, bridge, veth, move, link, addr, route, sysctl, iptables, listen) or an `expect`",
            );
        }
        Some(step)
    }

    fn counts(
        &mut self,
        raw: &std::collections::BTreeMap<String, Spanned<String>>,
        iptables: bool,
    ) -> Vec<(String, CountCmp)> {
        let mut out = Vec::new();
        for (key, v) in raw {
            let key = key.trim();
            if iptables && !(key.starts_with("-A ") || key.starts_with("-P ")) {
                self.err(v.span(), format!("`{key}` names no rule or policy"), "counted here", "count a policy as \"-P FORWARD\" or a rule as its `iptables -S` line, \"-A FORWARD -i br0 -j ACCEPT\"");
                continue;
            }
            match CountCmp::parse(v.get_ref()) {
                Some(c) => out.push((
                    if iptables {
                        normalize_rule(key)
                    } else {
                        key.to_string()
                    },
                    c,
                )),
                None => self.err(
                    v.span(),
                    format!("`{}` is not a packet count", v.get_ref()),
                    "here",
                    "write a number or a comparison: \"0\", \"3\", \">0\", \">=2\", \"<5\"",
                ),
            }
        }
        out
    }

    /// The table an iptables action or expectation names; `filter` when absent.
    fn iptables_table(&mut self, table: &Option<Spanned<String>>) -> String {
        let Some(t) = table else {
            return "filter".into();
        };
        let name = t.get_ref();
        if !["filter", "nat", "mangle", "raw", "security"].contains(&name.as_str()) {
            self.err(
                t.span(),
                format!("`{name}` is not an iptables table"),
                "here",
                "one of filter, nat, mangle, raw, security",
            );
        }
        name.clone()
    }

    fn ifname(&mut self, s: &Spanned<String>) {
        let n = s.get_ref();
        if !valid_ifname_like(n) || n.len() > 15 {
            self.err(
                s.span(),
                format!("`{n}` is not a valid interface name"),
                "here",
                "at most 15 characters, no `/`, `:` or spaces",
            );
        }
    }

    fn ipnet(&mut self, s: &Spanned<String>, help: &str) -> Option<IpNet> {
        match s.get_ref().parse::<IpNet>() {
            Ok(n) => Some(n),
            Err(_) => {
                let label = if s.get_ref().parse::<IpAddr>().is_ok() {
                    "missing the prefix length"
                } else {
                    "not an address with prefix"
                };
                self.err(
                    s.span(),
                    format!("`{}` is not a valid address", s.get_ref()),
                    label,
                    help,
                );
                None
            }
        }
    }

    fn matrix(&mut self, text: &Spanned<String>, known: &[String]) -> Option<Matrix> {
        let span = text.span();
        let content = text.get_ref();
        // Map offsets inside the string to offsets in the file: for a literal written
        // without escapes the content sits verbatim after the opening quotes.
        let file = self.problems.text().to_string();
        let literal = &file[span.clone()];
        let base = content_offset(literal, content).map(|o| span.start + o);
        let map = |r: Range<usize>| match base {
            Some(b) => b + r.start..b + r.end,
            None => span.clone(),
        };
        let parsed = match matrix::parse(content) {
            Ok(m) => m,
            Err(e) => {
                self.err(map(e.range), e.message, "here", &e.help);
                return None;
            }
        };
        let mut ok = true;
        let mut destinations = Vec::new();
        for (label, range) in &parsed.columns {
            if let Ok(addr) = label.parse::<IpAddr>() {
                destinations.push(Peer::Addr(addr));
            } else if known.contains(label) {
                destinations.push(Peer::Netns(label.clone()));
            } else {
                ok = false;
                self.err(
                    map(range.clone()),
                    format!("unknown host `{label}` in the matrix"),
                    "not a namespace of this scenario",
                    &format!("a column is `host`, a namespace created by an earlier step ({}), or an address literal", known.join(", ")),
                );
            }
        }
        let mut sources = Vec::new();
        let mut cells = Vec::new();
        for row in &parsed.rows {
            let (label, range) = &row.label;
            if !known.contains(label) {
                ok = false;
                let help = if label.parse::<IpAddr>().is_ok() {
                    "a row is a source namespace; address literals can only be destinations"
                        .to_string()
                } else {
                    format!(
                        "a row is `host` or a namespace created by an earlier step ({})",
                        known.join(", ")
                    )
                };
                self.err(
                    map(range.clone()),
                    format!("unknown source `{label}` in the matrix"),
                    "not a namespace of this scenario",
                    &help,
                );
            }
            sources.push(label.clone());
            cells.push(row.cells.iter().map(|c| c.0).collect());
        }
        ok.then_some(Matrix {
            sources,
            destinations,
            cells,
            span,
        })
    }
}

/// Where `content` starts inside the TOML string literal `literal`, if it is there verbatim.
fn content_offset(literal: &str, content: &str) -> Option<usize> {
    for open in ["\"\"\"", "'''", "\"", "'"] {
        if let Some(rest) = literal.strip_prefix(open) {
            let mut off = open.len();
            let rest = if open.len() == 3 {
                if let Some(r) = rest.strip_prefix("\r\n") {
                    off += 2;
                    r
                } else if let Some(r) = rest.strip_prefix('\n') {
                    off += 1;
                    r
                } else {
                    rest
                }
            } else {
                rest
            };
            return rest.starts_with(content).then_some(off);
        }
    }
    None
}

/// An `iptables -S` line with its words separated by single spaces.
pub fn normalize_rule(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn valid_ifname_like(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == '@')
}
