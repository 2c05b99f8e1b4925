//! Real clients, bounded in count and time. Call them inside [`crate::Netns::run`].

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context as _};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One HTTP/1.1 GET on its own connection; returns the status code.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = connect(addr)?;
    // One write per request, as real clients do (`write!` on a bare stream writes piecewise).
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).context("empty HTTP response")?;
    Ok(status.parse()?)
}

/// Sends request lines on one connection, reading one reply line for each.
pub fn line_requests(addr: SocketAddr, lines: &[String]) -> anyhow::Result<()> {
    let stream = connect(addr)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    for line in lines {
        writer.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        if !reply.starts_with("ok") {
            bail!("unexpected reply {reply:?} to {line:?}");
        }
    }
    Ok(())
}

/// Sends one raw Ethernet frame out of `iface` (AF_PACKET), e.g. a deliberately malformed one.
pub fn send_raw_frame(iface: &str, frame: &[u8]) -> anyhow::Result<()> {
    // SAFETY: plain libc calls on a socket we own and close below.
    unsafe {
        let index = xdp_runtime::iface::index(iface)?;
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            bail!("sending a raw frame on {iface}: {err}");
        }
    }
    Ok(())
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns its status.
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<u16> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line.split_whitespace().nth(1).context("no status")?.parse()?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

fn get_request(addr: SocketAddr, path: &str, last: bool) -> String {
    let connection = if last { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n\r\n")
}

/// Several HTTP/1.1 GETs on one keep-alive connection, each after the previous answer;
/// returns the status codes.
pub fn http_keepalive(addr: SocketAddr, paths: &[String]) -> anyhow::Result<Vec<u16>> {
    let stream = connect(addr)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut statuses = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        writer.write_all(get_request(addr, path, i + 1 == paths.len()).as_bytes())?;
        statuses.push(read_response(&mut reader)?);
    }
    Ok(statuses)
}

/// Several HTTP/1.1 GETs pipelined: written at once, in one segment, then every answer read;
/// returns the status codes.
pub fn http_pipelined(addr: SocketAddr, paths: &[String]) -> anyhow::Result<Vec<u16>> {
    let stream = connect(addr)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let requests: String = paths.iter().enumerate().map(|(i, p)| get_request(addr, p, i + 1 == paths.len())).collect();
    writer.write_all(requests.as_bytes())?;
    paths.iter().map(|_| read_response(&mut reader)).collect()
}

/// One HTTP/1.1 POST with `body` on its own connection; returns the status code.
pub fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<u16> {
    let mut stream = connect(addr)?;
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(&[head.as_bytes(), body].concat())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split_whitespace().nth(1).context("empty HTTP response")?.parse()?)
}

/// A GET whose client resets the connection (RST, not FIN) once the answer arrived.
pub fn http_get_then_reset(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    use std::os::fd::AsRawFd;
    let mut stream = connect(addr)?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf)?;
    let status = String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).context("no status")?.parse()?;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on our socket with a valid linger struct; closing then sends RST.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
    drop(stream);
    Ok(status)
}
