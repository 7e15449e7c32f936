//! A local cluster of model instances, each its own `parm worker` process on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One model instance to start.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Weights file (`.bpk`, with its `.json` beside it).
    pub model: PathBuf,
    /// Name the instance serves the model under.
    pub name: String,
    /// Fault injection, in `parm worker --fault` syntax (empty: none).
    pub fault: String,
    /// Address to listen on; `None` picks a free loopback port.
    pub listen: Option<String>,
    /// Network namespace to run in (an emulated host, [`crate::netns`]); `None`: this one.
    pub netns: Option<String>,
    /// CPUs to run on (`taskset -c` syntax, [`crate::cpus`]); `None`: any.
    pub cpus: Option<String>,
}

impl InstanceSpec {
    /// An instance of `model` serving it as `name`, with `fault` (empty: none), on a free
    /// loopback port of this host.
    pub fn new(model: &Path, name: &str, fault: &str) -> Self {
        Self { model: model.to_path_buf(), name: name.into(), fault: fault.into(), listen: None, netns: None, cpus: None }
    }
}

/// A running instance: its process and address.
pub struct Instance {
    pub spec: InstanceSpec,
    pub addr: String,
    child: Child,
}

impl Instance {
    /// Process id, for fault injection with signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit (e.g. after SIGTERM) and returns its exit status.
    ///
    /// Errors: waiting on the process failed.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }
}

/// A command running `exe` in network namespace `netns` (an emulated host; `None`: this one)
/// on `cpus` (`taskset -c` syntax; `None`: any).
pub fn placed(exe: &Path, netns: Option<&str>, cpus: Option<&str>) -> Command {
    // Wrappers, outermost first: `taskset -c CPUS`, then `ip netns exec NS`.
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if let Some(cpus) = cpus {
        argv.extend(["taskset".into(), "-c".into(), cpus.into()]);
    }
    if let Some(ns) = netns {
        argv.extend(["ip".into(), "netns".into(), "exec".into(), ns.into()]);
    }
    argv.push(exe.into());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// Starts `parm worker` (the binary at `exe`) for `spec` on 127.0.0.1 with an ephemeral port
/// and one compute thread, and waits (up to 60 s) for the address it prints.
///
/// Errors: the process cannot start, exits, or prints no address in time.
pub async fn start_instance(exe: &Path, spec: InstanceSpec) -> anyhow::Result<Instance> {
    let mut cmd = placed(exe, spec.netns.as_deref(), spec.cpus.as_deref());
    cmd.arg("worker").arg("--model").arg(&spec.model).arg("--name").arg(&spec.name);
    cmd.arg("--listen").arg(spec.listen.as_deref().unwrap_or("127.0.0.1:0"));
    if !spec.fault.is_empty() {
        cmd.arg("--fault").arg(&spec.fault);
    }
    // One compute thread per instance gives the best single-query latency (and instances
    // must not fight over the same cores).
    cmd.env("RAYON_NUM_THREADS", "1").stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("worker printed no address within 60 s")??
        .context("worker exited before listening")?;
    let addr = line.strip_prefix("listening on ").context("unexpected first line from worker")?.trim().to_string();
    // Keep draining stdout so the worker never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Instance { spec, addr, child })
}

/// Starts all `specs` concurrently.
pub async fn start_instances(exe: &Path, specs: Vec<InstanceSpec>) -> anyhow::Result<Vec<Instance>> {
    let futs = specs.into_iter().map(|s| start_instance(exe, s));
    futures::future::try_join_all(futs).await
}
