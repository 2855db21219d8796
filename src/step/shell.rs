//! `run` steps: a shell script run verbatim by `bash -e` in a namespace of the
//! sandbox, stopping at the first failing command. Processes the script leaves
//! running (`nc -l 8080 &`) live on in the sandbox's PID namespace until teardown.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::sandbox::{Sandbox, SandboxError, WORK_DIR};
use crate::scenario::HOST;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Run by the DEBUG trap before each command when the step's namespaces are
/// captured: for every namespace in `$NETSCENARIO_CAPTURE_NETNS` that exists now but
/// whose capture has not said it is running, wait (up to 1 s) until it does, so that
/// a script that creates a namespace and uses it at once loses no packet to the
/// capture's start-up. Builtins only, unless there is something to wait for.
const CAPTURE_WAIT: &str = "for __n in $NETSCENARIO_CAPTURE_NETNS; do [ -e /run/netns/$__n ] || continue; __i=0; while [ ! -e /run/netscenario/capturing/$__n ] && [ $__i -lt 200 ]; do sleep 0.005; __i=$((__i+1)); done; done";

/// Where the step shell finds netscenario's `ping` first (inside the sandbox's
/// private /run).
const SHIM_DIR: &str = "/run/netscenario/bin";

/// `ping` as a step's script sees it: the real one, with `-i` set to
/// `$NETSCENARIO_PING_INTERVAL` when it is given a count (`-c`) and no interval,
/// deadline or flood of its own. A tutorial's `ping -c 3` waits two seconds between
/// its three echoes for a human to read them; the packets, the replies, the output
/// and the exit status are the same at 10 ms. An `-i` in the script wins.
const PING_SHIM: &str = r#"#!/bin/sh
# netscenario's ping pacing (see the README): the real ping, faster when counted.
real=/usr/bin/ping; [ -x "$real" ] || real=/bin/ping
pace=
for a in "$@"; do
  case $a in
    -c*) pace=1 ;;
    -i*|-w*|-f|-*f*) pace=; break ;;
  esac
done
if [ -n "$pace" ] && [ -n "$NETSCENARIO_PING_INTERVAL" ]; then
  exec "$real" -i "$NETSCENARIO_PING_INTERVAL" "$@"
fi
exec "$real" "$@"
"#;

fn install_shim() -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = PathBuf::from(SHIM_DIR).join("ping");
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(SHIM_DIR)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, PING_SHIM)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)
}

/// What a script printed.
#[derive(Debug, Clone, Default)]
pub struct ShellOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Why a script failed.
#[derive(Debug, Clone)]
pub struct ShellFailure {
    pub netns: String,
    /// The command that failed and its line in the script, when bash told us.
    pub command: Option<(usize, String)>,
    /// `exit status 1`, `killed after the 60s step timeout`, ...
    pub status: String,
    pub output: ShellOutput,
}

#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("failed to write the step script {}", path.display())]
    WriteScript {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start bash for the step")]
    Spawn(#[source] SandboxError),
    #[error("failed to wait for the step's shell")]
    Wait(#[source] std::io::Error),
}

/// Run `script` in namespace `netns`. `Ok(Err(failure))` is a script that ran and failed.
pub fn run(
    sandbox: &Sandbox,
    step: usize,
    netns: &str,
    script: &str,
    timeout: Duration,
    captured_netns: &[String],
    ping_interval: Option<Duration>,
) -> Result<Result<ShellOutput, ShellFailure>, ShellError> {
    let base = PathBuf::from(WORK_DIR).join(format!("step-{step}"));
    let file = |ext: &str| base.with_extension(ext);
    let script_path = file("sh");
    let failed_path = file("failed");
    std::fs::write(&script_path, script).map_err(|source| ShellError::WriteScript {
        path: script_path.clone(),
        source,
    })?;
    let out_path = file("out");
    let err_path = file("err");
    let create = |p: &PathBuf| {
        std::fs::File::create(p).map_err(|source| ShellError::WriteScript {
            path: p.clone(),
            source,
        })
    };
    let stdout = create(&out_path)?;
    let stderr = create(&err_path)?;

    // `-E`/`-T` let the ERR and DEBUG traps see into functions and the sourced
    // script. The ERR trap records which command failed before `-e` ends the shell,
    // the DEBUG trap which command is running, for a step that hangs.
    let current_path = file("current");
    let preamble = format!(
        "set -eET; trap 'printf \"%s\\n%s\" \"$LINENO\" \"$BASH_COMMAND\" > {failed}' ERR; \
         trap 'printf \"%s\\n%s\" \"$LINENO\" \"$BASH_COMMAND\" > {current}; {wait}' DEBUG; . {script}",
        wait = CAPTURE_WAIT,
        failed = failed_path.display(),
        current = current_path.display(),
        script = script_path.display(),
    );
    let mut cmd = if netns == HOST {
        Command::new("bash")
    } else {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns, "bash"]);
        c
    };
    let path = match ping_interval {
        Some(i) => {
            install_shim().map_err(|source| ShellError::WriteScript {
                path: PathBuf::from(SHIM_DIR).join("ping"),
                source,
            })?;
            cmd.env(
                "NETSCENARIO_PING_INTERVAL",
                format!("{:.3}", i.as_secs_f64()),
            );
            format!("{SHIM_DIR}:{PATH}")
        }
        None => PATH.to_string(),
    };
    cmd.arg("-c")
        .arg(preamble)
        .env("PATH", path)
        .env("NETSCENARIO_NETNS", netns)
        .env("NETSCENARIO_CAPTURE_NETNS", captured_netns.join(" "))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = sandbox.spawn(cmd).map_err(ShellError::Spawn)?;
    let pid = Pid::from_raw(child.id() as i32);

    let (tx, rx) = mpsc::channel::<std::io::Result<ExitStatus>>();
    let status = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(timeout) {
            Ok(r) => r.map(Some),
            Err(_) => {
                let _ = killpg(pid, Signal::SIGKILL);
                rx.recv()
                    .unwrap_or_else(|_| Err(std::io::Error::other("wait thread died")))
                    .map(|_| None)
            }
        }
    })
    .map_err(ShellError::Wait)?;

    let read = |p: &PathBuf| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let output = ShellOutput {
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    match status {
        Some(st) if st.success() => Ok(Ok(output)),
        other => {
            let status = match other {
                None => format!("killed after the {}s step timeout", timeout.as_secs_f64()),
                Some(st) => describe_status(st),
            };
            let which = if other.is_none() {
                &current_path
            } else {
                &failed_path
            };
            let command = std::fs::read_to_string(which).ok().and_then(|s| {
                let (line, cmd) = s.split_once('\n')?;
                Some((line.trim().parse().ok()?, cmd.to_string()))
            });
            Ok(Err(ShellFailure {
                netns: netns.to_string(),
                command,
                status,
                output,
            }))
        }
    }
}

fn describe_status(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => "unknown status".into(),
    }
}
