//! tcpcopy's `-F 'tcp and src port N [and src host IP]'`, for users who migrate.

use std::net::IpAddr;

use common::endpoint::Endpoint;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "cannot express the filter {filter:?} ({why}): only 'tcp and src port N [and src host IP]' \
         is understood; use --target IP:PORT instead"
    )]
    Unsupported { filter: String, why: String },
}

/// The test-server endpoint a tcpcopy filter selects; the wildcard address when it names no host.
pub fn parse_filter(filter: &str) -> Result<Endpoint, FilterError> {
    let unsupported = |why: &str| FilterError::Unsupported { filter: filter.into(), why: why.into() };
    let (mut port, mut host) = (None, None);
    for clause in filter.split(" and ").map(str::trim) {
        let words: Vec<&str> = clause.split_whitespace().collect();
        match words.as_slice() {
            ["tcp"] => {}
            ["src", "port", p] => {
                let p: u16 =
                    p.parse().ok().filter(|&p| p != 0).ok_or_else(|| unsupported(&format!("bad port {p:?}")))?;
                if port.replace(p).is_some() {
                    return Err(unsupported("two ports"));
                }
            }
            ["src", "host", h] => {
                let h: IpAddr = h.parse().map_err(|_| unsupported(&format!("{h:?} is not an IP address")))?;
                if host.replace(h).is_some() {
                    return Err(unsupported("two hosts"));
                }
            }
            _ => return Err(unsupported(&format!("clause {clause:?}"))),
        }
    }
    let port = port.ok_or_else(|| unsupported("no 'src port'"))?;
    Ok(match host {
        Some(ip) => std::net::SocketAddr::new(ip, port).into(),
        None => Endpoint::any(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpcopy_filters_become_target_endpoints() {
        assert_eq!(parse_filter("tcp and src port 8080"), Ok(Endpoint::any(8080)));
        assert_eq!(parse_filter("tcp and src port 80 and src host 10.0.0.2"), Ok(Endpoint::v4([10, 0, 0, 2], 80)));
        assert_eq!(parse_filter("src host 10.0.0.2 and src port 80"), Ok(Endpoint::v4([10, 0, 0, 2], 80)));
    }

    #[test]
    fn what_cannot_be_expressed_is_refused_with_the_reason() {
        for (filter, why) in [
            ("tcp", "no 'src port'"),
            ("tcp and dst port 80", "clause \"dst port 80\""),
            ("tcp and (src port 80 or src port 81)", "clause"),
            ("tcp and src port 80 and src port 81", "two ports"),
            ("tcp and src port http", "bad port"),
            ("tcp and src port 80 and src host example.com", "not an IP address"),
        ] {
            let err = parse_filter(filter).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("--target"), "{filter}: {err}");
        }
    }
}
