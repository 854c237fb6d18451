//! Where a bridge listens and an agent dials: `vsock://CID:PORT`, `tcp://HOST:PORT` or
//! `unix:///PATH`.
//!
//! Both binaries take these strings on the command line (`guest-agent --connect`,
//! `host-bridge serve --listen`), so the grammar lives here, once. Parsing only: host names stay
//! strings (the agent resolves them at each connect, so `host.docker.internal` follows Docker
//! Desktop's DNS; the bridge resolves them when binding) and nothing is opened.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// `VMADDR_CID_ANY` (`linux/vm_sockets.h`): every local CID. Written `vsock://any:PORT`; only
/// meaningful for listening.
pub const VSOCK_CID_ANY: u32 = u32::MAX;

/// A socket address in one of the three accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// AF_VSOCK: context id and port. CID 2 is the host; [`VSOCK_CID_ANY`] listens on all.
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// TCP on a host name or address literal (IPv6 without the brackets).
    Tcp {
        /// Host name or address literal.
        host: String,
        /// Port (0 = any free port when listening).
        port: u16,
    },
    /// A Unix domain socket at an absolute path.
    Unix(PathBuf),
}

/// An endpoint string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The string is not one of the accepted forms.
    #[error(
        "invalid endpoint {input:?}: {reason}; expected vsock://CID:PORT (CID `any` to listen on every CID), tcp://HOST:PORT or unix:///PATH"
    )]
    Parse {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &'static str| EndpointError::Parse {
            input: s.to_string(),
            reason,
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| err("missing scheme"))?;
        match scheme {
            "vsock" => {
                let (cid, port) = rest.split_once(':').ok_or_else(|| err("missing :PORT"))?;
                let cid = if cid.eq_ignore_ascii_case("any") {
                    VSOCK_CID_ANY
                } else {
                    cid.parse()
                        .map_err(|_| err("the CID is not a 32-bit unsigned number or `any`"))?
                };
                let port = port
                    .parse()
                    .map_err(|_| err("the port is not a 32-bit unsigned number"))?;
                Ok(Self::Vsock { cid, port })
            }
            "tcp" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(err("missing host"));
                }
                let port = port
                    .parse()
                    .map_err(|_| err("the port is not a number in 0..=65535"))?;
                Ok(Self::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(err("the socket path must be absolute (unix:///path)"));
                }
                Ok(Self::Unix(PathBuf::from(rest)))
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } if *cid == VSOCK_CID_ANY => write!(f, "vsock://any:{port}"),
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Endpoint {
        s.parse()
            .unwrap_or_else(|e| panic!("{s} should parse: {e}"))
    }

    #[test]
    fn vsock_parses_cid_and_port() {
        let e = parse("vsock://2:7777");
        assert_eq!(e, Endpoint::Vsock { cid: 2, port: 7777 });
        assert_eq!(e.to_string(), "vsock://2:7777");
    }

    #[test]
    fn vsock_any_is_cid_any_and_round_trips() {
        let e = parse("vsock://any:7777");
        assert_eq!(
            e,
            Endpoint::Vsock {
                cid: VSOCK_CID_ANY,
                port: 7777
            }
        );
        assert_eq!(e.to_string(), "vsock://any:7777");
        assert_eq!(parse("vsock://ANY:1"), parse("vsock://any:1"));
    }

    #[test]
    fn tcp_keeps_host_name_for_later_resolution() {
        let e = parse("tcp://host.docker.internal:7777");
        assert_eq!(
            e,
            Endpoint::Tcp {
                host: "host.docker.internal".into(),
                port: 7777
            }
        );
        assert_eq!(e.to_string(), "tcp://host.docker.internal:7777");
        let v4 = parse("tcp://127.0.0.1:0");
        assert_eq!(v4.to_string(), "tcp://127.0.0.1:0");
        let v6 = parse("tcp://[::1]:9");
        assert_eq!(
            v6,
            Endpoint::Tcp {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(v6.to_string(), "tcp://[::1]:9");
    }

    #[test]
    fn unix_takes_absolute_path() {
        let e = parse("unix:///run/jb.sock");
        assert_eq!(e, Endpoint::Unix(PathBuf::from("/run/jb.sock")));
        assert_eq!(e.to_string(), "unix:///run/jb.sock");
        assert!("unix://relative.sock".parse::<Endpoint>().is_err());
    }

    #[test]
    fn errors_name_input_reason_and_accepted_forms() {
        for (input, reason) in [
            ("http://x:1", "unknown scheme"),
            ("udp://x:1", "unknown scheme"),
            ("localhost:1", "missing scheme"),
            ("vsock://2", "missing :PORT"),
            ("vsock://host:1", "the CID is not"),
            ("vsock://2:-1", "the port is not"),
            ("tcp://host:99999", "0..=65535"),
            ("tcp://:80", "missing host"),
            ("tcp://host", "missing :PORT"),
            ("unix://jb.sock", "must be absolute"),
        ] {
            let err = input.parse::<Endpoint>().expect_err(input).to_string();
            assert!(
                err.contains(&format!("{input:?}"))
                    && err.contains(reason)
                    && err.contains("vsock://CID:PORT")
                    && err.contains("tcp://HOST:PORT")
                    && err.contains("unix:///PATH"),
                "{err}"
            );
        }
    }
}
