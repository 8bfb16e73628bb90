//! Certificates made at test time (rcgen with ring): CAs, server and client
//! leaves, and a secret directory laid out and updated the way the kubelet
//! does it (timestamped directory, `..data` symlink swapped atomically).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate with its key.
#[derive(Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The serial number as the server logs it (colon-separated hex).
    pub serial: String,
}

impl Leaf {
    /// Certificate and key in one PEM, as `reqwest::Identity::from_pem` wants.
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// The same certificate with another (unrelated) key.
    pub fn with_foreign_key(&self) -> Leaf {
        Leaf {
            key_pem: KeyPair::generate().expect("key").serialize_pem(),
            ..self.clone()
        }
    }
}

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(0x1000);

/// A serial no other certificate of this test process has.
pub fn fresh_serial() -> u64 {
    NEXT_SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// How `SerialNumber` bytes print in x509-parser's `raw_serial_as_string`.
fn serial_string(serial: u64) -> String {
    let bytes = serial.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    bytes[first..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Ca {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, mut params: CertificateParams, serial: u64) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_string(serial),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self, serial: u64) -> Leaf {
        self.issue(server_params(), serial)
    }

    /// A server certificate whose notAfter has passed.
    pub fn expired_server(&self, serial: u64) -> Leaf {
        let mut params = server_params();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.issue(params, serial)
    }

    /// A client certificate with subject CN `cn` and the `sans` as URI names.
    pub fn client(&self, cn: &str, uris: &[&str]) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI((*uri).try_into().expect("URI")))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, fresh_serial())
    }
}

fn server_params() -> CertificateParams {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "durable-streams test server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// A directory laid out like a mounted Kubernetes secret:
/// `dir/tls.crt -> ..data/tls.crt`, `dir/..data -> ..<timestamp>`, and the
/// files in `dir/..<timestamp>/`. [`SecretDir::publish`] updates it the way
/// the kubelet's atomic writer does.
pub struct SecretDir {
    pub dir: PathBuf,
    generation: u32,
}

impl SecretDir {
    /// A secret directory at `dir` holding `files` (name, contents).
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> SecretDir {
        std::fs::create_dir_all(dir).expect("secret dir");
        let mut secret = SecretDir {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        secret.publish(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name))
                .expect("file symlink");
        }
        secret
    }

    /// The path clients of the secret use for `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `files` into a new timestamped directory, points `..data` at
    /// it with one atomic rename, and removes the previous directory.
    pub fn publish(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let previous = std::fs::read_link(self.dir.join("..data")).ok();
        let stamp = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        let fresh = self.dir.join(&stamp);
        std::fs::create_dir(&fresh).expect("timestamped dir");
        for (name, contents) in files {
            std::fs::write(fresh.join(name), contents).expect("secret file");
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if let Some(previous) = previous {
            let _ = std::fs::remove_dir_all(self.dir.join(previous));
        }
    }
}
