//! Kubernetes Secrets for `credentialName`, kept as files the proxy's TLS code already reads
//! and watches for rotation: `DIR/NAME/tls.crt`, `tls.key` and `ca.crt`, by Istio's key names.
//!
//! Istio's SDS reads a secret's certificate from `tls.crt` (or `cert`), its key from `tls.key`
//! (or `key`), and its CA from `ca.crt` (or `cacert`), else from the secret `NAME-cacert`; the
//! files are written that way, so `ca.crt` is whichever applies. Each file is written to a
//! temporary name and renamed into place (a reader never sees half a key, and the rename is a
//! new inode, which the proxy's certificate check notices), with mode 0600 in a 0700 directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;

use crate::kinds::Document;

/// The files a secret provides, by Istio's key names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Material {
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
}

fn material(secret: &Secret) -> Material {
    let get = |names: &[&str]| {
        let data = secret.data.as_ref()?;
        names.iter().find_map(|n| data.get(*n)).map(|b| b.0.clone())
    };
    Material {
        cert: get(&["tls.crt", "cert"]),
        key: get(&["tls.key", "key"]),
        ca: get(&["ca.crt", "cacert"]),
    }
}

/// Writes the secrets among `documents` (the Secret kind's objects) to `dir`, and removes what
/// no longer applies. Returns how many secrets were written; logs what it could not do.
pub(crate) fn write_all(dir: &Path, documents: &[&Document]) -> usize {
    let mut by_name: BTreeMap<String, Material> = BTreeMap::new();
    for doc in documents {
        match serde_json::from_str::<Secret>(&doc.text) {
            Ok(s) => {
                let name = s.metadata.name.clone().unwrap_or_default();
                by_name.insert(name, material(&s));
            }
            Err(e) => tracing::warn!(secret = %doc.origin, error = %e, "cannot read a secret"),
        }
    }
    // A secret without its own CA takes NAME-cacert's, as Istio's SDS does.
    let cas: BTreeMap<String, Vec<u8>> = by_name
        .iter()
        .filter_map(|(n, m)| Some((n.strip_suffix("-cacert")?.to_string(), m.ca.clone()?)))
        .collect();
    for (name, m) in &mut by_name {
        if m.ca.is_none()
            && let Some(ca) = cas.get(name)
        {
            m.ca = Some(ca.clone());
        }
    }
    let mut written = 0;
    for (name, m) in &by_name {
        let d = dir.join(name);
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&d) {
            tracing::error!(dir = %d.display(), error = %e, "cannot write a secret");
            continue;
        }
        for (file, bytes) in [("tls.crt", &m.cert), ("tls.key", &m.key), ("ca.crt", &m.ca)] {
            let path = d.join(file);
            let result = match bytes {
                Some(b) => write_if_changed(&path, b),
                None => remove(&path),
            };
            if let Err(e) = result {
                tracing::error!(file = %path.display(), error = %e, "cannot write a secret");
            }
        }
        written += 1;
    }
    // Secrets deleted since the last write.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !by_name.contains_key(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    written
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Unchanged bytes are not rewritten: the proxy's check would take a new inode for a rotation.
fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn secret(name: &str, data: &[(&str, &str)]) -> Document {
        let encode = |s: &str| {
            // Base64 by hand: the test must not share the decoder it checks.
            const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let b = s.as_bytes();
            let mut out = Vec::new();
            for c in b.chunks(3) {
                let n = (u32::from(c[0]) << 16)
                    | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                    | u32::from(*c.get(2).unwrap_or(&0));
                for i in 0..4 {
                    if i <= c.len() {
                        out.push(T[((n >> (18 - 6 * i)) & 63) as usize]);
                    } else {
                        out.push(b'=');
                    }
                }
            }
            String::from_utf8(out).unwrap()
        };
        let data: serde_json::Map<String, serde_json::Value> =
            data.iter().map(|(k, v)| ((*k).to_string(), encode(v).into())).collect();
        let text = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "istio-system"},
            "type": "kubernetes.io/tls", "data": data
        })
        .to_string();
        Document {
            origin: format!("kubernetes://istio-system/Secret/{name}").into(),
            text: text.into(),
        }
    }

    #[test]
    fn secrets_become_files_by_istios_key_names_and_follow_changes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tls = secret("gw", &[("tls.crt", "CERT"), ("tls.key", "KEY")]);
        let generic = secret("client", &[("cert", "C2"), ("key", "K2"), ("cacert", "CA2")]);
        let ca_only = secret("gw-cacert", &[("ca.crt", "GWCA")]);
        assert_eq!(write_all(d, &[&tls, &generic, &ca_only]), 3);
        let read = |p: &str| std::fs::read_to_string(d.join(p)).ok();
        assert_eq!(read("gw/tls.crt").as_deref(), Some("CERT"));
        assert_eq!(read("gw/tls.key").as_deref(), Some("KEY"));
        assert_eq!(read("gw/ca.crt").as_deref(), Some("GWCA"), "from gw-cacert");
        assert_eq!(read("client/tls.crt").as_deref(), Some("C2"));
        assert_eq!(read("client/ca.crt").as_deref(), Some("CA2"));
        let mode = std::fs::metadata(d.join("gw/tls.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(d.join("gw")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        // Rotation: a new inode for the changed file only.
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &str| std::fs::metadata(d.join(p)).unwrap().ino();
        let (cert_ino, key_ino) = (ino("gw/tls.crt"), ino("gw/tls.key"));
        let rotated = secret("gw", &[("tls.crt", "CERT2"), ("tls.key", "KEY")]);
        write_all(d, &[&rotated, &generic]);
        assert_eq!(read("gw/tls.crt").as_deref(), Some("CERT2"));
        assert_ne!(ino("gw/tls.crt"), cert_ino);
        assert_eq!(ino("gw/tls.key"), key_ino, "unchanged bytes are not rewritten");
        assert_eq!(read("gw/ca.crt"), None, "gw-cacert was deleted");
        assert!(!d.join("gw-cacert").exists());

        write_all(d, &[&generic]);
        assert!(!d.join("gw").exists(), "a deleted secret's files go");
    }
}
