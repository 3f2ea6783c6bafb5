//! TLS for the public listener: TLS 1.2 and 1.3 only (rustls, aws-lc-rs), certificate and key
//! from PEM files; and a development CA and certificate generated on first start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::IngressError;

/// `[ingress.tls]`, picked by `mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum TlsConfig {
    /// Serve HTTPS with this certificate chain and private key (PEM files). The files are read
    /// again when they change (a renewal by cert-manager or Let's Encrypt): new connections get
    /// the new certificate, no restart needed; a new pair that cannot be used keeps the old one.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
        /// How often the files are checked for a change, seconds.
        #[serde(default = "default_reload_seconds")]
        reload_seconds: u64,
    },
    /// Plain HTTP: only behind a proxy or load balancer that terminates TLS for Tradecloud.
    Off,
}

fn default_reload_seconds() -> u64 {
    10
}

/// The listener's TLS: the rustls config and the certificate it serves, kept current.
pub struct ServerTls {
    pub config: ServerConfig,
    pub certificate: Arc<CertificateStore>,
}

/// The served certificate and key; [`CertificateStore::watch`] swaps in a changed pair.
#[derive(Debug)]
pub struct CertificateStore {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' state when last read (loaded or refused), so a change is read once.
    stamp: Mutex<Stamp>,
}

/// When and how large the two files were (metadata follows symbolic links, so Kubernetes's
/// swap of its `..data` link counts as a change).
type Stamp = Option<[(SystemTime, u64); 2]>;

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a certificate chain and its key, checking that they belong together.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, IngressError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            IngressError::Tls(format!(
                "cannot read certificates from {}: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(IngressError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        IngressError::Tls(format!(
            "cannot read the private key from {}: {e}",
            key.display()
        ))
    })?;
    check_validity(cert, &certs[0])?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| IngressError::Tls(format!("certificate and key do not fit: {e}")))
}

/// The leaf certificate must be valid now: an expired renewal (or one not valid yet) would make
/// every handshake fail, so it is refused and the current certificate kept.
fn check_validity(path: &Path, leaf: &CertificateDer<'_>) -> Result<(), IngressError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        IngressError::Tls(format!(
            "cannot read the certificate in {}: {e}",
            path.display()
        ))
    })?;
    let validity = cert.validity();
    if validity.is_valid() {
        Ok(())
    } else {
        Err(IngressError::Tls(format!(
            "the certificate in {} is valid from {} to {}, not now",
            path.display(),
            validity.not_before,
            validity.not_after
        )))
    }
}

impl rustls::server::ResolvesServerCert for CertificateStore {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl CertificateStore {
    /// Reads the files again if they changed since the last look; a pair that cannot be used is
    /// logged and the current one kept. Returns whether a new certificate is now served.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.cert, &self.key);
        {
            let mut seen = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if now.is_none() || *seen == now {
                return false;
            }
            *seen = now;
        }
        match load(&self.cert, &self.key) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the changed TLS certificate cannot be used; the current one stays");
                false
            }
        }
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks the files every `reload_seconds` until the task is aborted.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.interval).await;
            let store = self.clone();
            // File reads off the async threads.
            let _ = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
        }
    }
}

/// The rustls config for the listener; `None` for `mode = "off"`.
pub fn server_config(config: &TlsConfig) -> Result<Option<ServerTls>, IngressError> {
    let TlsConfig::Files {
        cert,
        key,
        reload_seconds,
    } = config
    else {
        return Ok(None);
    };
    let seen = stamp(cert, key);
    let store = Arc::new(CertificateStore {
        current: RwLock::new(Arc::new(load(cert, key)?)),
        cert: cert.clone(),
        key: key.clone(),
        interval: Duration::from_secs((*reload_seconds).max(1)),
        stamp: Mutex::new(seen),
    });
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| IngressError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    Ok(Some(ServerTls {
        config,
        certificate: store,
    }))
}

/// Files of a development certificate: a local CA and a `localhost` certificate it signed.
#[derive(Debug, Clone)]
pub struct DevCertificate {
    /// The CA certificate a client must trust (`--cacert`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCertificate {
    pub fn tls_config(&self) -> TlsConfig {
        TlsConfig::Files {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reload_seconds: default_reload_seconds(),
        }
    }
}

/// The names every development certificate covers.
pub const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Reuses the development certificate in `dir` when it covers `localhost`, `127.0.0.1`, `::1`
/// and every name of `extra_names` (host names or IP addresses: `--san ingress`), or generates a
/// new CA and certificate. The names covered are kept in `dev-cert.names`. Never for production.
pub fn ensure_dev_certificate(
    dir: &Path,
    extra_names: &[String],
) -> Result<DevCertificate, IngressError> {
    let files = DevCertificate {
        ca: dir.join("dev-ca.pem"),
        cert: dir.join("dev-cert.pem"),
        key: dir.join("dev-key.pem"),
    };
    let mut names: Vec<String> = DEV_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for n in extra_names {
        let n = n.trim().to_owned();
        if n.is_empty() {
            return Err(IngressError::Tls(
                "an empty name cannot be put in a certificate".to_owned(),
            ));
        }
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let names_file = dir.join("dev-cert.names");
    let covered: Vec<String> = std::fs::read_to_string(&names_file)
        .map(|t| t.lines().map(str::to_owned).collect())
        // A certificate written before the names file existed covers the default names.
        .unwrap_or_else(|_| DEV_NAMES.iter().map(|n| (*n).to_owned()).collect());
    if files.ca.exists()
        && files.cert.exists()
        && files.key.exists()
        && names.iter().all(|n| covered.contains(n))
    {
        return Ok(files);
    }
    let err = |e: rcgen::Error| {
        IngressError::Tls(format!("cannot generate a development certificate: {e}"))
    };
    let io = |e: std::io::Error| {
        IngressError::Tls(format!(
            "cannot write the development certificate to {}: {e}",
            dir.display()
        ))
    };
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "tradecloud-bridge development CA",
    );
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params.serial_number = Some(serial());
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;
    let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut leaf_params = rcgen::CertificateParams::new(names.clone()).map_err(err)?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    // What strict validators (browsers, Python's cryptography, sslyze) require of a server
    // certificate: the issuer's key identifier, server-auth usage, a positive serial number.
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.serial_number = Some(serial());
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(err)?;
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(&files.ca, ca.pem()).map_err(io)?;
    std::fs::write(&files.cert, leaf.pem()).map_err(io)?;
    write_private(&files.key, leaf_key.serialize_pem().as_bytes()).map_err(io)?;
    std::fs::write(&names_file, names.join("\n") + "\n").map_err(io)?;
    Ok(files)
}

/// A random positive serial number (RFC 5280: positive, at most 20 bytes).
fn serial() -> rcgen::SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// Writes a file only its owner can read (mode 0600 on Unix): keys and credentials.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{ServerName, UnixTime};

    /// Whether a client trusting only the development CA accepts the certificate for `name`.
    fn verifies(c: &DevCertificate, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&c.ca).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::pem_file_iter(&c.cert)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn a_changed_certificate_is_served_and_a_broken_one_keeps_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_dev_certificate(&dir.path().join("a"), &[]).unwrap();
        let b = ensure_dev_certificate(&dir.path().join("b"), &[]).unwrap();
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).unwrap();
        let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
        std::fs::copy(&a.cert, &cert).unwrap();
        std::fs::copy(&a.key, &key).unwrap();
        let config = TlsConfig::Files {
            cert: cert.clone(),
            key: key.clone(),
            reload_seconds: 1,
        };
        let store = server_config(&config).unwrap().unwrap().certificate;
        let leaf = |c: &DevCertificate| {
            CertificateDer::pem_file_iter(&c.cert)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
        };
        let served =
            |s: &CertificateStore| s.current().end_entity_cert().unwrap().clone().into_owned();
        assert_eq!(served(&store), leaf(&a));
        assert!(!store.reload_if_changed(), "nothing changed");
        // A renewal: both files replaced.
        std::fs::copy(&b.cert, &cert).unwrap();
        std::fs::copy(&b.key, &key).unwrap();
        assert!(store.reload_if_changed());
        assert_eq!(served(&store), leaf(&b));
        // A broken certificate file, then a key that belongs to another certificate: the
        // current one stays.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        assert!(!store.reload_if_changed());
        assert_eq!(served(&store), leaf(&b));
        std::fs::copy(&a.cert, &cert).unwrap();
        assert!(!store.reload_if_changed(), "a's certificate with b's key");
        assert_eq!(served(&store), leaf(&b));
        std::fs::copy(&a.key, &key).unwrap();
        assert!(store.reload_if_changed(), "the pair fits again");
        assert_eq!(served(&store), leaf(&a));
        // An expired certificate (with its own key): refused, the current one stays.
        let expired_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = params.self_signed(&expired_key).unwrap();
        std::fs::write(&cert, expired.pem()).unwrap();
        std::fs::write(&key, expired_key.serialize_pem()).unwrap();
        assert!(
            !store.reload_if_changed(),
            "an expired certificate is not served"
        );
        assert_eq!(served(&store), leaf(&a));
    }

    #[test]
    fn the_development_certificate_covers_the_names_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let c = ensure_dev_certificate(dir.path(), &[]).unwrap();
        assert!(verifies(&c, "localhost"));
        assert!(verifies(&c, "127.0.0.1"));
        assert!(!verifies(&c, "ingress"));
        // A name it does not cover: a new certificate, which covers it and the defaults.
        let names = ["ingress".to_owned(), "10.0.0.7".to_owned()];
        let c = ensure_dev_certificate(dir.path(), &names).unwrap();
        for name in ["ingress", "10.0.0.7", "localhost", "::1"] {
            assert!(verifies(&c, name), "{name}");
        }
        assert!(!verifies(&c, "other"));
        // Asked again for names it covers: reused as it is.
        let before = std::fs::read(&c.cert).unwrap();
        ensure_dev_certificate(dir.path(), &names[..1]).unwrap();
        assert_eq!(std::fs::read(&c.cert).unwrap(), before);
        assert!(ensure_dev_certificate(dir.path(), &[" ".to_owned()]).is_err());
        // The key is readable by its owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&c.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
