//! The stream key: the broadcaster's ed25519 identity. Created once (atomically, mode 0600),
//! never overwritten, so a restarted broadcaster keeps its stream and its viewers' tickets.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;

/// `$XDG_DATA_HOME/shoal/broadcaster.key`, or under `~/.local/share`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("shoal").join("broadcaster.key")
}

/// A stream key file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// Loads the stream key at `path`, creating it (mode 0600) if there is none. Refuses a key
/// file other users can read.
pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
    load(path).map_err(|e| KeyError(format!("{e:#}")))
}

fn load(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "key file {} can be read by other users (mode {mode:o}): run chmod 600 {}",
                    path.display(),
                    path.display()
                );
            }
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?;
            parse(&text).with_context(|| format!("key file {} does not hold a shoal stream key", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(e).with_context(|| format!("cannot open key file {}", path.display())),
    }
}

fn parse(text: &str) -> anyhow::Result<SigningKey> {
    let hex = text.trim();
    if hex.len() != 64 {
        bail!("expected 64 hex digits, found {} characters", hex.len());
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("not hexadecimal")?;
    }
    Ok(SigningKey::from_bytes(&seed))
}

fn create(path: &Path) -> anyhow::Result<SigningKey> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness for a stream key: {e}"))?;
    let text: String = seed.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n";
    // Write a private temporary file, then link it into place: the link fails if a key
    // appeared meanwhile, so an existing key is never replaced.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create key file {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!("created a new stream key in {}", path.display());
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load(path),
        Err(e) => Err(e).with_context(|| format!("cannot create key file {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-key-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn created_once_private_and_reloaded() {
        let path = dir().join("sub/stream.key");
        let _ = std::fs::remove_file(&path);
        let key = load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn refuses_open_permissions_and_bad_content() {
        let path = dir().join("open.key");
        std::fs::write(&path, "00".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create(&path).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        assert!(load_or_create(&path).is_err());
        // And the bad file was not replaced.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
