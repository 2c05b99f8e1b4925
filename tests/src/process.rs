//! Child processes whose output goes to files, killed on drop.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// A running program; stdout and stderr go to `<dir>/<name>.out` and `.err`.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Self> {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null()).stdout(File::create(&stdout)?).stderr(File::create(&stderr)?);
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self { name: name.into(), child, stdout, stderr, exited: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends a signal (SIGINT, SIGTERM, SIGKILL...).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            bail!("kill({}, {signal}): {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether it has exited (and with what), without waiting.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}\n{}", self.name, self.describe());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits at most `timeout` until stdout or stderr holds a line matching `pred`; fails early
    /// if the process exits first.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.stdout().lines().chain(self.stderr().lines()).find(|l| pred(l)).map(str::to_owned);
            if let Some(line) = found {
                return Ok(line);
            }
            if let Some(status) = self.try_status()? {
                bail!("{} exited ({status}) before printing the expected line\n{}", self.name, self.describe());
            }
            if Instant::now() >= deadline {
                bail!("{} printed no expected line within {timeout:?}\n{}", self.name, self.describe());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Output for failure messages.
    pub fn describe(&self) -> String {
        format!("--- {} stdout ---\n{}--- {} stderr ---\n{}", self.name, self.stdout(), self.name, self.stderr())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.try_status(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
