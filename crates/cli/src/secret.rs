//! `dev-secret`: random secrets for development stacks (docker-compose), made once and kept.

use std::path::Path;

use tcb_ingress::tls::write_private;

use crate::CliError;

/// `dev-secret`: `dir/name` holding 64 random hexadecimal characters (from the OS's random
/// source), unless the file exists already (a secret set by hand, or one from an earlier start,
/// is kept). Mode 0600, or 0644 when `shared` (a secret another container's user must read, such
/// as a broker's password). Returns whether the file was written.
pub fn ensure_secret(dir: &Path, name: &str, shared: bool) -> Result<bool, CliError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(CliError::Io(format!(
            "{name:?} is not a secret name: letters, digits, '.', '_' and '-', not starting with '.'"
        )));
    }
    let file = dir.join(name);
    if file.exists() {
        return Ok(false);
    }
    let io = |e: std::io::Error| CliError::Io(format!("cannot write {}: {e}", file.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&file, secret.as_bytes()).map_err(io)?;
    #[cfg(unix)]
    if shared {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_secret(dir.path(), "webhook-password", false).unwrap());
        let first = std::fs::read_to_string(dir.path().join("webhook-password")).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!ensure_secret(dir.path(), "webhook-password", false).unwrap());
        let again = std::fs::read_to_string(dir.path().join("webhook-password")).unwrap();
        assert_eq!(first, again, "an existing secret is kept");
        assert!(ensure_secret(dir.path(), "broker", true).unwrap());
        assert_ne!(
            std::fs::read_to_string(dir.path().join("broker")).unwrap(),
            first
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |n: &str| {
                std::fs::metadata(dir.path().join(n))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("webhook-password"), 0o600);
            assert_eq!(mode("broker"), 0o644);
        }
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(ensure_secret(dir.path(), bad, false).is_err(), "{bad:?}");
        }
    }
}
