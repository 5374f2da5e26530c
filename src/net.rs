//! Network addresses as funnel's configuration and tools write them:
//! `HOST:PORT` checked for form without resolving it.
//!
//! Owns: `HostPort` and `parse_host_port`. Must not touch: sockets or name
//! resolution (callers bind or connect).

use std::net::SocketAddr;

/// A HOST:PORT string split into its parts. `host` keeps IPv6 brackets off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// 0.0.0.0 and [::] bind every interface, so they clash with any host
    /// on the same port.
    pub fn binds_everything(&self) -> bool {
        self.host == "0.0.0.0" || self.host == "::"
    }
}

/// How an address must look, quoted by every `AddressError`.
const FORM: &str = "expected HOST:PORT such as 127.0.0.1:8080, [::1]:8080 or node1:8080";

/// Why a text is not a `HOST:PORT` address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} has no port; {FORM}", FORM = FORM)]
    NoPort(String),
    #[error("{text:?} has port {port:?}, not a number in 0..=65535; {FORM}", FORM = FORM)]
    BadPort { text: String, port: String },
    #[error(
        "{text:?} is not a valid IPv6 socket address; write it in brackets, like [::1]:{port}"
    )]
    UnbracketedIpv6 { text: String, port: u16 },
    #[error(
        "{text:?} has host {host:?}, which is neither an IP address nor a host name \
         (letters, digits, '-', '_' and '.'); {FORM}",
        FORM = FORM
    )]
    BadHost { text: String, host: String },
}

/// Checks the form of an address without resolving it: an IP socket
/// address (`127.0.0.1:8080`, `[::1]:8080`) or a host name with a port
/// (`node1:7001`), which is resolved when the node binds or connects.
/// Port 0 is accepted here (it means "any free port" for a bind).
pub fn parse_host_port(text: &str) -> Result<HostPort, AddressError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(AddressError::NoPort(text.to_string()));
    };
    let port: u16 = port.parse().map_err(|_| AddressError::BadPort {
        text: text.to_string(),
        port: port.to_string(),
    })?;
    if host.contains(':') || host.starts_with('[') {
        return Err(AddressError::UnbracketedIpv6 {
            text: text.to_string(),
            port,
        });
    }
    if !is_host_name(host) {
        return Err(AddressError::BadHost {
            text: text.to_string(),
            host: host.to_string(),
        });
    }
    Ok(HostPort {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_ips_and_host_names() {
        assert_eq!(
            parse_host_port("127.0.0.1:8080").unwrap(),
            HostPort {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(parse_host_port("[::1]:0").unwrap().host, "::1");
        assert_eq!(parse_host_port("node1:7001").unwrap().port, 7001);
        assert_eq!(
            parse_host_port("Funnel-2.svc.local:1").unwrap().host,
            "funnel-2.svc.local"
        );
    }

    #[test]
    fn host_port_refuses_malformed_addresses() {
        for bad in [
            "",
            "8080",
            "node1",
            ":8080",
            "node1:",
            "node1:65536",
            "node1:http",
            "::1:8080",
            "no de:1",
            "-node:1",
            "a..b:1",
            "[::1]:x",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn refusals_name_the_broken_part() {
        assert_eq!(
            parse_host_port("node1"),
            Err(AddressError::NoPort("node1".into()))
        );
        assert_eq!(
            parse_host_port("node1:http"),
            Err(AddressError::BadPort {
                text: "node1:http".into(),
                port: "http".into()
            })
        );
        assert_eq!(
            parse_host_port("::1:8080"),
            Err(AddressError::UnbracketedIpv6 {
                text: "::1:8080".into(),
                port: 8080
            })
        );
        let e = parse_host_port("no de:1").unwrap_err();
        assert!(matches!(e, AddressError::BadHost { .. }), "{e:?}");
        assert!(e.to_string().ends_with(FORM), "{e}");
    }
}
