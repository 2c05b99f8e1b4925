//! A minimal copier side of the intercept protocol, for tests that check what the intercept
//! serves without a copier.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use common::{
    auth,
    endpoint::Endpoint,
    facts::ReplyFacts,
    proto::{self, Message},
};

use crate::Netns;

/// What an intercept sent, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Welcome { authenticates: bool, holds_early: bool, nonce: auth::Nonce, proof: auth::Proof },
    Facts(Vec<ReplyFacts>),
    Bye { permanent: bool, reason: String },
    Synced(u64),
    Sole(bool),
    Closed,
}

pub struct ProtoClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// WELCOME said the intercept holds a SYN-ACK that beats its OWN.
    pub holds_early: bool,
}

impl ProtoClient {
    /// Opens a TCP connection from inside `ns` (the socket stays in that namespace).
    pub fn connect_raw(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))??;
        Ok(Self { stream, buf: Vec::new(), holds_early: false })
    }

    /// Connects as copier process `instance`, proving `secret` (empty: none), and checks the
    /// intercept's proof when it has one; fails with what the intercept said if it refuses.
    pub fn connect(ns: &Netns, addr: SocketAddr, secret: &[u8], instance: u64) -> anyhow::Result<Self> {
        let mut c = Self::connect_raw(ns, addr)?;
        let ours = auth::nonce();
        let mut buf = [0; 128];
        let n = proto::encode_hello(&mut buf, instance, &ours)?;
        c.send_bytes(&buf[..n])?;
        let (authenticates, theirs, proof) = match c.recv(Duration::from_secs(5))? {
            Received::Welcome { authenticates, holds_early, nonce, proof } => {
                c.holds_early = holds_early;
                (authenticates, nonce, proof)
            }
            other => bail!("handshake refused: {other:?}"),
        };
        if authenticates && !secret.is_empty() && !auth::intercept_proof_holds(secret, &ours, &theirs, &proof) {
            bail!("the intercept's proof does not hold");
        }
        let proof = if secret.is_empty() { [0; proto::PROOF_LEN] } else { auth::copier_proof(secret, &theirs, &ours) };
        let n = proto::encode_auth(&mut buf, &proof)?;
        c.send_bytes(&buf[..n])?;
        // A refusal comes at once; silence means accepted (the intercept does not answer AUTH).
        match c.recv(Duration::from_millis(300)) {
            Ok(refused @ (Received::Bye { .. } | Received::Closed)) => bail!("handshake refused: {refused:?}"),
            Ok(other) => bail!("unexpected answer to AUTH: {other:?}"),
            Err(_) => Ok(c),
        }
    }

    /// Announces that this copier is alive (the intercept closes idle connections).
    pub fn ping(&mut self) -> anyhow::Result<()> {
        let mut buf = [0; 8];
        let n = proto::encode_ping(&mut buf)?;
        self.send_bytes(&buf[..n])
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).context("writing to the intercept")
    }

    /// Declares the client addresses this copier replays from: (first, last) ranges.
    pub fn space(&mut self, ranges: &[([u8; 16], [u8; 16])]) -> anyhow::Result<()> {
        let mut buf = vec![0; 16 + ranges.len() * proto::RANGE_LEN];
        let n = proto::encode_space(&mut buf, ranges)?;
        self.send_bytes(&buf[..n])
    }

    /// Offers to go without announcing while it is the intercept's only copier.
    pub fn solo(&mut self) -> anyhow::Result<()> {
        let mut buf = [0; 8];
        let n = proto::encode_solo(&mut buf)?;
        self.send_bytes(&buf[..n])
    }

    /// Announces that this copier owns `clients`.
    pub fn own(&mut self, clients: &[Endpoint]) -> anyhow::Result<()> {
        let mut buf = vec![0; 16 + clients.len() * proto::ENTRY_LEN];
        let n = proto::encode_endpoints(&mut buf, true, clients)?;
        self.send_bytes(&buf[..n])
    }

    /// Sends SYNC and waits for its SYNCED: the announcements before it are in effect.
    pub fn sync(&mut self, token: u64) -> anyhow::Result<()> {
        let mut buf = [0; 16];
        let n = proto::encode_sync(&mut buf, false, token)?;
        self.send_bytes(&buf[..n])?;
        match self.recv(Duration::from_secs(5))? {
            Received::Synced(t) if t == token => Ok(()),
            other => bail!("expected SYNCED {token}, got {other:?}"),
        }
    }

    /// The next frame, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> anyhow::Result<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((message, used)) =
                proto::decode(&self.buf).map_err(|e| anyhow::anyhow!("intercept sent garbage: {e}"))?
            {
                let out = match message {
                    Message::Welcome { authenticates, holds_early, nonce, proof, .. } => {
                        Received::Welcome { authenticates, holds_early, nonce, proof }
                    }
                    Message::Facts(records) => Received::Facts(records.collect()),
                    Message::Bye { permanent, reason } => Received::Bye { permanent, reason: reason.to_owned() },
                    Message::Synced(token) => Received::Synced(token),
                    Message::Sole(sole) => Received::Sole(sole),
                    other => bail!("unexpected frame from the intercept: {other:?}"),
                };
                self.buf.drain(..used);
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("nothing from the intercept within {timeout:?}");
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Received::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Collects facts for `window`, returning all of them (a BYE or close ends it early).
    pub fn facts_for(&mut self, window: Duration) -> anyhow::Result<Vec<ReplyFacts>> {
        let deadline = Instant::now() + window;
        let mut all = Vec::new();
        while Instant::now() < deadline {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Ok(Received::Facts(f)) => all.extend(f),
                Ok(other) => bail!("expected facts, got {other:?}"),
                Err(_) => break, // the window ran out
            }
        }
        Ok(all)
    }
}
