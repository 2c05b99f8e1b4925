//! Network namespaces with unique names, deleted on drop.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};

/// Prefix of every namespace the test bed creates: `xdpc<pid>x<n>-<role>`.
pub const PREFIX: &str = "xdpc";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique stem for one test bed's namespaces.
pub fn unique_stem() -> String {
    format!("{PREFIX}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// Runs `ip ARGS...`.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

/// The value of `counter` in `nstat` output (`NAME  VALUE  RATE` lines).
fn nstat_value(text: &str, counter: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        (fields.next()? == counter).then(|| fields.next()?.parse().ok()).flatten()
    })
}

/// Deletes namespaces left by test processes that no longer exist (killed before their
/// `Drop` could run). Namespaces of live processes are left alone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('x').next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

/// A network namespace, deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: String) -> anyhow::Result<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside this namespace (`ip netns exec`, which execs in place, so the
    /// child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside this namespace to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        run(self.command(program).args(args))
    }

    /// A kernel network counter of this namespace (`nstat -az NAME`: absolute, not since the
    /// last call).
    pub fn nstat(&self, counter: &str) -> anyhow::Result<u64> {
        let out = self.exec("nstat", &["-az", counter])?;
        let text = String::from_utf8_lossy(&out.stdout);
        nstat_value(&text, counter).with_context(|| format!("no {counter} in nstat's output: {text}"))
    }

    /// Sets a sysctl inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]).map(drop)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live here.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> anyhow::Result<R> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::spawn(move || {
            // SAFETY: setns on a netns fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::Error::from(std::io::Error::last_os_error()).context("setns"));
            }
            Ok(f())
        })
        .join()
        .map_err(|panic| anyhow::anyhow!("thread in {} panicked: {panic:?}", self.name))?
    }

    /// The XDP program id on `iface`, if one is attached.
    pub fn xdp_program(&self, iface: &str) -> anyhow::Result<Option<u32>> {
        let out = self.ip(&["-d", "link", "show", "dev", iface])?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse().ok()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "delete", &self.name]) {
            eprintln!("test bed: could not delete namespace {}: {err:#}", self.name);
        }
    }
}

#[cfg(test)]
mod nstat_tests {
    use super::nstat_value;

    #[test]
    fn nstat_values_are_read_by_exact_name() {
        let text = "#kernel\nIpInReceives                    862986             0.0\nIpInReceivesX 5 0.0\n";
        assert_eq!(nstat_value(text, "IpInReceives"), Some(862_986));
        assert_eq!(nstat_value(text, "IpInDelivers"), None);
        assert_eq!(nstat_value("IpInReceives garbage 0.0", "IpInReceives"), None);
    }
}
