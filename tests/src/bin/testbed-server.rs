//! `testbed-server ADDR LOG`: the small Rust test server. Answers every newline-terminated
//! request line with `ok <n>` and appends the line to LOG, so tests can count what arrived.

use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, log] = args.as_slice() else {
        eprintln!("usage: testbed-server ADDR LOG");
        return std::process::ExitCode::from(2);
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
        std::thread::spawn(move || {
            let mut writer = match stream.try_clone() {
                Ok(w) => w,
                Err(_) => return,
            };
            for (n, line) in BufReader::new(stream).lines().map_while(Result::ok).enumerate() {
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "{line}");
                }
                if writeln!(writer, "ok {n}").is_err() {
                    return;
                }
            }
        });
    }
    std::process::ExitCode::SUCCESS
}
