//! Throwaway certificate authorities for the mTLS tests, made with rcgen
//! and written as PEM files: a CA and node certificates it signs, with the
//! SANs and key usages `cluster::tls` expects of a node. Included by path
//! (`#[path = "support/pki.rs"] mod pki;`) in the files that need it.
#![allow(dead_code)]

use funnel::config::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A CA whose certificate is at `ca_pem`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: PathBuf,
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// A new CA named `name`; its files go to `dir/name-*.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("funnel test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_pem, issuer.pem()).unwrap();
        TestCa {
            issuer,
            ca_pem,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// A node (server and client) certificate for `sans` (IPs or DNS
    /// names), as `[cluster.tls]` files that trust this CA.
    pub fn node(&self, label: &str, sans: &[&str]) -> TlsFiles {
        self.issue(
            label,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A certificate with the given extended key usages.
    pub fn issue(
        &self,
        label: &str,
        sans: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> TlsFiles {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("funnel {label}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        let base = format!("{}-{label}", self.name);
        let files = TlsFiles {
            cert: self.dir.join(format!("{base}.pem")),
            key: self.dir.join(format!("{base}-key.pem")),
            ca: self.ca_pem.clone(),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

/// `[cluster.tls]` lines for `files`.
pub fn tls_section(files: &TlsFiles) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    )
}
