//! The small Rust test server, in one of two modes:
//!
//! - `testbed-server ADDR LOG`: answers every newline-terminated request line with `ok <n>` and
//!   appends the line to LOG, so tests can count what arrived.
//! - `testbed-server http ADDR LOG DELAY_MS [PREFIX=MS ...]`: an HTTP/1.1 backend that reads
//!   each request whole (its `Content-Length` body too), waits DELAY_MS (or the delay of the
//!   longest PREFIX the path starts with), answers `200` with a small body, and logs
//!   `METHOD PATH BODY_LENGTH`. A test server that takes its time to answer, as real ones do,
//!   finds copiers that close or reset a session before its answer.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

type Log = Arc<Mutex<File>>;

fn lines(stream: TcpStream, log: Log) {
    let Ok(mut writer) = stream.try_clone() else { return };
    for (n, line) in BufReader::new(stream).lines().map_while(Result::ok).enumerate() {
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
        if writeln!(writer, "ok {n}").is_err() {
            return;
        }
    }
}

/// Path prefixes and their delays; the default for the rest.
#[derive(Clone)]
struct Delays {
    default: Duration,
    by_prefix: Vec<(String, Duration)>,
}

impl Delays {
    fn parse(default_ms: &str, rules: &[String]) -> Option<Self> {
        let ms = |s: &str| s.parse::<u64>().ok().map(Duration::from_millis);
        let by_prefix = rules
            .iter()
            .map(|r| r.split_once('=').and_then(|(prefix, v)| Some((prefix.to_owned(), ms(v)?))))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { default: ms(default_ms)?, by_prefix })
    }

    fn of(&self, path: &str) -> Duration {
        self.by_prefix
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default, |(_, d)| *d)
    }
}

/// One request at a time from `stream` (pipelined ones wait their turn, as HTTP/1.1 says).
fn http(stream: TcpStream, log: Log, delays: Delays) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else { return };
        let (mut length, mut close) = (0usize, false);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            close |= header == "connection: close";
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        std::thread::sleep(delays.of(path));
        let answer = format!("ok {path} {length}\n");
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n", answer.len());
        if writer.write_all([head, answer].concat().as_bytes()).is_err() {
            return;
        }
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{method} {path} {length}");
        }
        if close {
            return;
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, log, delays) = match args.as_slice() {
        [mode, addr, log, delay, rules @ ..] if mode == "http" => match Delays::parse(delay, rules) {
            Some(d) => (addr, log, Some(d)),
            None => {
                eprintln!("testbed-server: delays are milliseconds: DELAY_MS [PREFIX=MS ...]");
                return std::process::ExitCode::from(2);
            }
        },
        [addr, log] => (addr, log, None),
        _ => {
            eprintln!("usage: testbed-server ADDR LOG | testbed-server http ADDR LOG DELAY_MS [PREFIX=MS ...]");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(addr.as_str()) {
        Ok(l) => l,
        Err(err) => {
            eprintln!("testbed-server: cannot listen on {addr}: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let log = match OpenOptions::new().create(true).append(true).open(log) {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(err) => {
            eprintln!("testbed-server: cannot open {log}: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    for stream in listener.incoming().flatten() {
        let log = Arc::clone(&log);
        let delays = delays.clone();
        std::thread::spawn(move || match delays {
            Some(d) => http(stream, log, d),
            None => lines(stream, log),
        });
    }
    std::process::ExitCode::SUCCESS
}
