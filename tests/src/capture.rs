//! Packet captures of the test bed's own traffic, with Debian's tcpdump.

use std::{path::PathBuf, time::Duration};

use crate::{process::Process, topology::Host, Testbed};

/// A running tcpdump writing a pcap file; [`Tcpdump::finish`] stops it and returns the file.
pub struct Tcpdump {
    process: Process,
    path: PathBuf,
}

impl Tcpdump {
    /// Captures `filter` on `iface` of `host`: full packets, each written at once
    /// (`--immediate-mode`: without it packets wait in the kernel's TPACKET_V3 block and are
    /// lost when tcpdump is stopped).
    pub fn start(tb: &Testbed, host: Host, iface: &str, filter: &str, name: &str) -> anyhow::Result<Self> {
        let path = tb.dir().join(format!("{name}.pcap"));
        let file = path.to_string_lossy().into_owned();
        let mut process = tb.spawn(
            host,
            name,
            "tcpdump",
            &["-i", iface, "--immediate-mode", "-B", "131072", "-U", "-s", "0", "-w", &file, filter],
        )?;
        process.wait_for_line(Duration::from_secs(10), |l| l.contains("listening on"))?;
        Ok(Self { process, path })
    }

    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        // Give the last packets a moment to reach the capture before stopping it.
        std::thread::sleep(Duration::from_millis(300));
        self.process.signal(libc::SIGINT)?;
        self.process.wait_timeout(Duration::from_secs(10))?;
        // A capture that lost packets would make any replay test meaningless.
        let err = self.process.stderr();
        let dropped: u64 =
            err.lines().find_map(|l| l.strip_suffix(" packets dropped by kernel")?.trim().parse().ok()).unwrap_or(0);
        anyhow::ensure!(dropped == 0, "tcpdump lost {dropped} packets:\n{err}");
        Ok(self.path)
    }
}

/// The packets of a pcap file (as [`Tcpdump`] writes them), in order.
pub fn packets(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let mut reader = pcap_file::pcap::PcapReader::new(std::io::BufReader::new(file))?;
    let mut packets = Vec::new();
    while let Some(packet) = reader.next_packet() {
        packets.push(packet?.data.into_owned());
    }
    Ok(packets)
}
