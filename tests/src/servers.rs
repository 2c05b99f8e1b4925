//! Real servers in the test bed: Debian's nginx and redis, and the small Rust line server.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    process::Process,
    topology::{Host, Testbed},
};

/// Waits until `addr` accepts TCP connections from inside `host`.
pub fn wait_listening(tb: &Testbed, host: Host, addr: SocketAddr, server: &mut Process) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = tb
            .host(host)
            .run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
        if ok {
            return Ok(());
        }
        if let Some(status) = server.try_status()? {
            bail!("server exited ({status}) before listening on {addr}\n{}", server.describe());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on {addr} after 10 s\n{}", server.describe());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debian nginx answering every request with 200 (`/upload/...`: reads the whole body, then
/// 502), one access-log line per request: `"$request" $status $request_length`.
pub struct Nginx {
    pub addr: SocketAddr,
    access_log: PathBuf,
    _process: Process,
}

impl Nginx {
    /// nginx answering `200 ok` itself (`/upload/` reads the body, then answers 502).
    pub fn start(tb: &Testbed, host: Host, name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let locations = r#"location / { return 200 "ok\n"; }
        # Reads whole request bodies (to buffer them for an upstream that is never there), so
        # $request_length counts every body byte; answers 502.
        location /upload/ { proxy_pass http://127.0.0.1:9; }"#;
        Self::start_with(tb, host, name, addr, locations)
    }

    /// nginx in front of `backend` (a [`SlowBackend`]): it reads each request whole, the body
    /// too, then waits for the backend's answer. A client that goes before the answer is logged
    /// with status 499, as production's nginx would log it.
    pub fn start_proxy(
        tb: &Testbed,
        host: Host,
        name: &str,
        addr: SocketAddr,
        backend: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_with(tb, host, name, addr, &format!("location / {{ proxy_pass http://{backend}; }}"))
    }

    /// nginx with `locations` (its `location` blocks).
    pub fn start_with(tb: &Testbed, host: Host, name: &str, addr: SocketAddr, locations: &str) -> anyhow::Result<Self> {
        let dir = tb.dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let access_log = dir.join("access.log");
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 40000;
events {{ worker_connections 20000; }}
http {{
    log_format xdpcopy '"$request" $status $request_length';
    access_log {log} xdpcopy;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    client_max_body_size 64m;
    server {{
        listen {addr} reuseport;
        {locations}
    }}
}}
"#,
                log = access_log.display()
            ),
        )?;
        std::fs::write(&access_log, "")?;
        let conf = conf.to_string_lossy().into_owned();
        let mut process = tb.spawn(host, name, "nginx", &["-e", &format!("{d}/error.log"), "-c", &conf])?;
        wait_listening(tb, host, addr, &mut process)?;
        Ok(Self { addr, access_log, _process: process })
    }

    /// Every logged request, in order: its line (`GET /x HTTP/1.1`), the status nginx answered
    /// with, and the request's length with its body.
    pub fn log(&self) -> Vec<LogEntry> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (request, rest) = l.strip_prefix('"')?.split_once('"')?;
                let mut fields = rest.split_whitespace();
                let status = fields.next()?.parse().ok()?;
                let length = fields.next()?.parse().ok()?;
                Some(LogEntry { request: request.to_owned(), status, length })
            })
            .collect()
    }

    /// (request line, request length with the body) of every logged request, in order.
    pub fn entries(&self) -> Vec<(String, u64)> {
        self.log().into_iter().map(|e| (e.request, e.length)).collect()
    }

    /// (request line, status nginx answered with) of every logged request, in order.
    pub fn answers(&self) -> Vec<(String, u16)> {
        self.log().into_iter().map(|e| (e.request, e.status)).collect()
    }

    /// The request lines nginx logged, in order.
    pub fn requests(&self) -> Vec<String> {
        self.log().into_iter().map(|e| e.request).collect()
    }
}

/// One line of nginx's access log, as the test bed's format writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub request: String,
    pub status: u16,
    pub length: u64,
}

/// Per-command call counts from `INFO commandstats`, without the INFO calls that read them.
pub fn redis_command_counts(
    tb: &Testbed,
    host: Host,
    addr: SocketAddr,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
    let out = tb.host(host).exec("redis-cli", &["-h", &ip, "-p", &port, "info", "commandstats"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            (name != "info").then(|| (name.to_owned(), calls))
        })
        .collect())
}

/// Debian redis-server with persistence off.
pub struct Redis {
    pub addr: SocketAddr,
    host: Host,
    _process: Process,
}

impl Redis {
    pub fn start(tb: &Testbed, host: Host, name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let dir = tb.dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let (ip, port, d) = (addr.ip().to_string(), addr.port().to_string(), dir.to_string_lossy().into_owned());
        let args =
            ["--bind", &ip, "--port", &port, "--save", "", "--appendonly", "no", "--dir", &d, "--protected-mode", "no"];
        let mut process = tb.spawn(host, name, "redis-server", &args)?;
        wait_listening(tb, host, addr, &mut process)?;
        Ok(Self { addr, host, _process: process })
    }

    /// Commands processed so far, from `INFO stats` (which counts a command once it completes,
    /// so not the INFO asking).
    pub fn commands_processed(&self, tb: &Testbed) -> anyhow::Result<u64> {
        let (ip, port) = (self.addr.ip().to_string(), self.addr.port().to_string());
        let out = tb.host(self.host).exec("redis-cli", &["-h", &ip, "-p", &port, "info", "stats"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("total_commands_processed:"))
            .context("redis INFO has no total_commands_processed")?;
        Ok(value.parse()?)
    }
}

/// The small Rust server (`testbed-server`): answers each newline-terminated request line with
/// `ok` and logs it.
pub struct LineServer {
    pub addr: SocketAddr,
    log: PathBuf,
    _process: Process,
}

impl LineServer {
    pub fn start(tb: &Testbed, host: Host, name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let log = tb.dir().join(format!("{name}.requests"));
        let bin = crate::bins::testbed_server();
        let mut process = tb.spawn(host, name, bin, &[&addr.to_string(), &log.to_string_lossy()])?;
        wait_listening(tb, host, addr, &mut process)?;
        Ok(Self { addr, log, _process: process })
    }

    /// The request lines received, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

/// `testbed-server http`: an HTTP backend that reads each request whole and answers after a
/// delay (per path prefix), for [`Nginx::start_proxy`].
pub struct SlowBackend {
    pub addr: SocketAddr,
    log: PathBuf,
    _process: Process,
}

impl SlowBackend {
    /// `delays`: (path prefix, milliseconds) pairs beside the default.
    pub fn start(
        tb: &Testbed,
        host: Host,
        name: &str,
        addr: SocketAddr,
        default_ms: u64,
        delays: &[(&str, u64)],
    ) -> anyhow::Result<Self> {
        let log = tb.dir().join(format!("{name}.requests"));
        let mut args =
            vec!["http".to_owned(), addr.to_string(), log.to_string_lossy().into_owned(), default_ms.to_string()];
        args.extend(delays.iter().map(|(prefix, ms)| format!("{prefix}={ms}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = tb.spawn(host, name, crate::bins::testbed_server(), &args)?;
        wait_listening(tb, host, addr, &mut process)?;
        Ok(Self { addr, log, _process: process })
    }

    /// `METHOD PATH BODY_LENGTH` of every request answered, in order.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}
