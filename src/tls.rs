//! Mutual TLS between cluster nodes: the PEM files of `[cluster.tls]` (or
//! `funnel admin --tls-*`) turned into tonic's server and client TLS
//! settings, and the endpoint for an internal `HOST:PORT`.
//!
//! Owns: `TlsFiles` (the three paths, as `[cluster.tls]` and the admin
//! flags name them), reading and checking the files (every error names the
//! setting and the file and says what to fix), the rule that the internal
//! server accepts only clients with a certificate signed by the CA, the
//! URL scheme of internal addresses (`http` plain, `https` with TLS), and
//! the probe that tells a plaintext caller a port wants TLS. Must not
//! touch: which services are served or called (`node`, `network`,
//! `control::link`, `admin`), channel caching, or the client-facing
//! APIs (`api.http`, `api.grpc`), which stay plaintext behind the load
//! balancer.
//!
//! A client verifies the server against the host of the address it dials
//! (a member's `internal`), so every node certificate must carry the hosts
//! or IPs of its `internal` addresses as subject alternative names, and
//! both the serverAuth and the clientAuth extended key usage when it has
//! that extension at all: every node is a server and a client.
//!
//! Crypto is rustls on ring (tonic's `tls-ring`), the only provider
//! compiled in, so rustls picks it as the process default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use serde::{Deserialize, Serialize};

/// `cluster.tls`: PEM files for mTLS between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        [&self.cert, &self.key, &self.ca]
            .iter()
            .all(|p| p.as_os_str().is_empty())
    }
}

/// How long the server waits for a client to finish its TLS handshake: a
/// peer that opens a connection and stalls must not hold it for ever.
const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the three files are called where they came from, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingNames {
    pub cert: &'static str,
    pub key: &'static str,
    pub ca: &'static str,
}

/// The node's `[cluster.tls]` keys.
pub const CONFIG_KEYS: SettingNames = SettingNames {
    cert: "cluster.tls.cert",
    key: "cluster.tls.key",
    ca: "cluster.tls.ca",
};

/// The operator tool's flags (`funnel admin --tls-*`).
pub const ADMIN_FLAGS: SettingNames = SettingNames {
    cert: "--tls-cert",
    key: "--tls-key",
    ca: "--tls-ca",
};

/// Why TLS settings cannot be used, or an internal address not dialled.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{given} given without {missing}; mutual TLS needs the certificate, its private key \
         and the CA bundle together (or none of them for plaintext)"
    )]
    Incomplete { given: String, missing: String },

    #[error(
        "{setting} = {:?}: cannot read the file: {source}; check the path (relative paths \
         start at the working directory) and that this user may read it",
        path.display().to_string()
    )]
    Read {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is readable but is not what the setting needs.
    #[error("{setting} = {:?}: {problem}; {fix}", path.display().to_string())]
    Content {
        setting: &'static str,
        path: PathBuf,
        problem: String,
        fix: &'static str,
    },

    /// The files parse, but the certificate would be refused by the
    /// other nodes (wrong CA, expired, missing SAN or key usage) or does
    /// not belong to the key.
    #[error("{setting} = {:?}: {problem}; {fix}", path.display().to_string())]
    Refused {
        setting: &'static str,
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error("internal address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
}

/// This process's TLS identity and the CA it trusts, checked at load;
/// cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    ca: Certificate,
    files: TlsFiles,
}

// never print the key: only where it came from
impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("cert", &self.inner.files.cert)
            .field("key", &self.inner.files.key)
            .field("ca", &self.inner.files.ca)
            .finish()
    }
}

impl NodeTls {
    /// Reads and checks the three files: the chain and the CA bundle hold
    /// certificates, the key file a private key that matches the chain's
    /// first certificate, and that certificate is one the CA's other
    /// holders accept from a client — and, given `server_host` (the host
    /// others dial this node at), from a server at that host. Errors name
    /// the setting as `names` spells it.
    pub fn load(
        files: &TlsFiles,
        names: SettingNames,
        server_host: Option<&str>,
    ) -> Result<NodeTls, TlsError> {
        let cert_pem = read(names.cert, &files.cert)?;
        let key_pem = read(names.key, &files.key)?;
        let ca_pem = read(names.ca, &files.ca)?;

        let chain = certificates(
            names.cert,
            &files.cert,
            &cert_pem,
            "this node's certificate",
        )?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Content {
            setting: names.key,
            path: files.key.clone(),
            problem: match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "holds no private key (a PEM block BEGIN PRIVATE KEY, RSA PRIVATE KEY or \
                     EC PRIVATE KEY)"
                        .to_string()
                }
                other => format!("is not valid PEM: {other}"),
            },
            fix: "give the unencrypted PEM private key of the certificate",
        })?;
        let roots = trust_anchors(names.ca, &files.ca, &ca_pem)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // the key against the certificate: what the server's own config
        // would refuse at start anyway, said with the file names
        rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
            TlsError::Refused {
                setting: names.key,
                path: files.key.clone(),
                problem: format!("does not fit {}: {e}", names.cert),
                fix: format!(
                    "give the private key of the first certificate in {} (RSA, ECDSA or Ed25519)",
                    files.cert.display()
                ),
            }
        })?;

        let refused = |problem: String, fix: String| TlsError::Refused {
            setting: names.cert,
            path: files.cert.clone(),
            problem,
            fix,
        };
        let (end_entity, intermediates) = chain.split_first().ok_or_else(|| {
            // `certificates` refuses an empty chain; kept total anyway
            refused("holds no certificate".into(), "give a PEM chain".into())
        })?;
        let now = UnixTime::now();
        // as the other nodes' servers will check it when this node dials
        let as_client =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Content {
                    setting: names.ca,
                    path: files.ca.clone(),
                    problem: format!("cannot verify clients with these CAs: {e}"),
                    fix: "give the PEM certificate(s) of the CA that signed every node",
                })?;
        as_client
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| {
                refused(
                    format!(
                        "is not accepted as a client certificate by a server trusting {}: {e}",
                        files.ca.display()
                    ),
                    "sign it with that CA (give intermediates after it in the same file), keep it \
                     within its validity dates, and give it the clientAuth extended key usage"
                        .into(),
                )
            })?;
        if let Some(host) = server_host {
            let name = ServerName::try_from(host.to_string()).map_err(|e| {
                refused(
                    format!("cannot check it against the host {host:?}: {e}"),
                    "use a host name or IP in the internal address".into(),
                )
            })?;
            let as_server = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError::Content {
                    setting: names.ca,
                    path: files.ca.clone(),
                    problem: format!("cannot verify servers with these CAs: {e}"),
                    fix: "give the PEM certificate(s) of the CA that signed every node",
                })?;
            as_server
                .verify_server_cert(end_entity, intermediates, &name, &[], now)
                .map_err(|e| {
                    refused(
                        format!(
                            "is not accepted for {host}, the host other nodes dial this node at: {e}"
                        ),
                        format!(
                            "issue it with {host} as a subject alternative name (DNS name or IP) \
                             and the serverAuth extended key usage"
                        ),
                    )
                })?;
        }

        Ok(NodeTls {
            inner: Arc::new(Inner {
                identity: Identity::from_pem(cert_pem, key_pem),
                ca: Certificate::from_pem(ca_pem),
                files: files.clone(),
            }),
        })
    }

    /// The operator tool's TLS from its three optional flags: `None` when
    /// none is given, an error when only some are.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<NodeTls>, TlsError> {
        let given = [
            (ADMIN_FLAGS.cert, cert.is_some()),
            (ADMIN_FLAGS.key, key.is_some()),
            (ADMIN_FLAGS.ca, ca.is_some()),
        ];
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                Self::load(&TlsFiles { cert, key, ca }, ADMIN_FLAGS, None).map(Some)
            }
            _ => {
                let list = |set: bool| -> String {
                    given
                        .iter()
                        .filter(|(_, g)| *g == set)
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                Err(TlsError::Incomplete {
                    given: list(true),
                    missing: list(false),
                })
            }
        }
    }

    /// The internal server's settings: this node's identity, and a client
    /// certificate signed by the CA required of every connection.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.inner.identity.clone())
            .client_ca_root(self.inner.ca.clone())
            .client_auth_optional(false)
            .timeout(SERVER_HANDSHAKE_TIMEOUT)
    }

    /// A client's settings: trust only the CA, present this identity.
    /// The server name checked is the host of the dialled address.
    pub fn client_config(&self, handshake_timeout: Duration) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.inner.ca.clone())
            .identity(self.inner.identity.clone())
            .timeout(handshake_timeout)
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_path_buf(),
        source,
    })
}

/// Every CERTIFICATE block of a PEM file; at least one.
fn certificates(
    setting: &'static str,
    path: &Path,
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let content = |problem: String| TlsError::Content {
        setting,
        path: path.to_path_buf(),
        problem,
        fix: "give PEM certificates (blocks BEGIN CERTIFICATE ... END CERTIFICATE)",
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(content(format!("holds no certificate ({what} is needed)")));
    }
    Ok(certs)
}

/// The CA bundle as trust anchors; every certificate in it must be usable.
fn trust_anchors(
    setting: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(setting, path, pem, "the CA that signed every node")?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| TlsError::Content {
            setting,
            path: path.to_path_buf(),
            problem: format!("certificate {} is not a usable CA certificate: {e}", i + 1),
            fix: "give the PEM certificate(s) of the CA that signed every node",
        })?;
    }
    Ok(Arc::new(roots))
}

/// The tonic endpoint for an internal `HOST:PORT` (a leading `http://` or
/// `https://` is ignored): `https` with `tls`, `http` without. The
/// timeout bounds the TCP connect and, with TLS, the handshake each.
pub fn internal_endpoint(
    addr: &str,
    tls: Option<&NodeTls>,
    connect_timeout: Duration,
) -> Result<Endpoint, TlsError> {
    let bare = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr)
        .trim_end_matches('/');
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bad = |reason: String| TlsError::Address {
        addr: addr.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{bare}"))
        .map_err(|e| bad(format!("not a HOST:PORT address: {e}")))?
        .connect_timeout(connect_timeout)
        // a peer cut off at the network level never resets the connection:
        // without pings an established HTTP/2 connection stays "up" while
        // every request on it waits, and after the heal TCP's backed-off
        // retransmissions keep it stalled for seconds more. Pings find it
        // dead within a few seconds, and the next request reconnects.
        .http2_keep_alive_interval(KEEPALIVE_EVERY)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    match tls {
        None => Ok(endpoint),
        Some(tls) => endpoint
            .tls_config(tls.client_config(connect_timeout))
            .map_err(|e| bad(format!("cannot set up TLS: {}", error_chain(&e)))),
    }
}

/// How often an internal connection is pinged (HTTP/2 PING), and how long
/// an unanswered ping may stay so before the connection is dropped.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the server at `addr` speaks TLS: sends a TLS ClientHello and
/// looks at the first byte of the answer. A TLS server answers with a
/// handshake (0x16) or alert (0x15) record; an HTTP/2 server sends a frame
/// or hangs up, an HTTP/1 server sends "HTTP/1.1 400". For telling a
/// plaintext caller what to do; false when nothing answers in `wait`.
pub async fn speaks_tls(addr: &str, wait: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bare = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr);
    let Some(hello) = client_hello(bare) else {
        return false;
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(bare).await.ok()?;
        stream.write_all(&hello).await.ok()?;
        let mut first = [0u8; 1];
        let n = stream.read(&mut first).await.ok()?;
        Some(n == 1 && (first[0] == 0x16 || first[0] == 0x15))
    };
    matches!(tokio::time::timeout(wait, probe).await, Ok(Some(true)))
}

/// The bytes of a ClientHello for the host of `addr`, as rustls writes it.
fn client_hello(addr: &str) -> Option<Vec<u8>> {
    let host = crate::net::parse_host_port(addr)
        .map(|hp| hp.host)
        .unwrap_or_else(|_| "localhost".into());
    let name = ServerName::try_from(host)
        .or_else(|_| ServerName::try_from("localhost"))
        .ok()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).ok()?;
    Some(hello)
}

/// An error with its sources, `a: b: c` — a tonic transport error says
/// only "transport error" at the top, the TLS reason is further down.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_flags_are_all_or_none() {
        assert!(NodeTls::from_flags(None, None, None).unwrap().is_none());
        let err = NodeTls::from_flags(Some("c.pem".into()), None, Some("ca.pem".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--tls-cert, --tls-ca given without --tls-key"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_names_the_setting_and_the_path() {
        let files = TlsFiles {
            cert: "no/such/cert.pem".into(),
            key: "no/such/key.pem".into(),
            ca: "no/such/ca.pem".into(),
        };
        let err = NodeTls::load(&files, CONFIG_KEYS, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cluster.tls.cert = \"no/such/cert.pem\": cannot read the file"),
            "{err}"
        );
    }

    #[test]
    fn endpoints_choose_the_scheme_by_tls() {
        let ep = internal_endpoint("127.0.0.1:7001", None, Duration::from_secs(1)).unwrap();
        assert_eq!(ep.uri().to_string(), "http://127.0.0.1:7001/");
        let ep = internal_endpoint("http://node2:7001/", None, Duration::from_secs(1)).unwrap();
        assert_eq!(ep.uri().to_string(), "http://node2:7001/");
        assert!(internal_endpoint("no spaces:1", None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_client_hello_is_a_tls_handshake_record() {
        let hello = client_hello("127.0.0.1:7001").unwrap();
        assert_eq!(hello[0], 0x16);
        assert!(client_hello("node1:7001").is_some());
    }

    #[test]
    fn error_chains_keep_every_reason_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("received fatal alert: UnknownCA"));
        assert_eq!(
            error_chain(&e),
            "transport error: received fatal alert: UnknownCA"
        );
    }
}
