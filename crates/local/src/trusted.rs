//! Host files a spec may name (`source.image`, `boot.kernel`): only from the directories the daemon was told
//! to trust (`serve --image-root`), and over TCP never without one. An image is read by the
//! format it has, given to qemu-img explicitly, and refused when it would pull in other files
//! (a backing file outside the roots, a qcow2 external data file, a `json:` filename).

use std::path::{Path, PathBuf};

use wukong_engine::BackendError;

/// The roots as the daemon trusts them: each resolved (symlinks followed) once at start.
pub fn resolve_roots(roots: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    roots
        .iter()
        .map(|r| {
            std::fs::canonicalize(r)
                .map_err(|e| format!("--image-root {}: {e}", r.display()))
                .and_then(|c| {
                    if c.is_dir() {
                        Ok(c)
                    } else {
                        Err(format!("--image-root {}: not a directory", r.display()))
                    }
                })
        })
        .collect()
}

/// Where `image` really is, if a request may name it: within `roots` (after symlinks), or
/// anywhere the daemon's own user can read when no root is set and the request came over the
/// daemon's private socket (that user's own request). `roots` are resolved already.
pub fn check_source(image: &str, roots: &[PathBuf], over_tcp: bool) -> Result<PathBuf, String> {
    // Also what keeps out qemu's `json:` and protocol names (`nbd:`, `http:`…).
    if !image.starts_with('/') {
        return Err(format!("'{image}' is not an absolute file path"));
    }
    if roots.is_empty() && over_tcp {
        return Err(
            "host images are refused over TCP unless the daemon trusts a directory (serve --image-root DIR)"
                .into(),
        );
    }
    let real = std::fs::canonicalize(image).map_err(|e| format!("'{image}': {e}"))?;
    if !real.is_file() {
        return Err(format!("'{image}' is not a regular file"));
    }
    if !roots.is_empty() && !roots.iter().any(|r| real.starts_with(r)) {
        return Err(format!(
            "'{image}' is outside the trusted image directories ({})",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(real)
}

/// A source file held open from its check to its read, so that what is read is what was
/// checked: opened without following a symlink in its last component, a regular file, and
/// where it really is (after the open) still within the roots.
pub struct Pinned {
    file: std::fs::File,
}

impl Pinned {
    /// Opens `real` (a path [`check_source`] returned).
    pub fn open(real: &Path, roots: &[PathBuf]) -> Result<Pinned, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let shown = real.display();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(real)
            .map_err(|e| format!("'{shown}': {e}"))?;
        let meta = file.metadata().map_err(|e| format!("'{shown}': {e}"))?;
        if !meta.is_file() {
            return Err(format!("'{shown}' is not a regular file"));
        }
        let pinned = Pinned { file };
        let now = std::fs::read_link(format!("/proc/self/fd/{}", pinned.fd()))
            .map_err(|e| format!("'{shown}': {e}"))?;
        if !roots.is_empty() && !roots.iter().any(|r| now.starts_with(r)) {
            return Err(format!(
                "'{shown}' moved outside the trusted image directories (to {})",
                now.display()
            ));
        }
        Ok(pinned)
    }

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }

    /// A name of the open file that a child process of this user can open (qemu-img): it
    /// names the file this process holds, whatever its path has become since.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.fd()))
    }
}

/// The format (`raw`, `qcow2`, …) and virtual size in bytes of the pinned `image` (named
/// `shown` in errors), refusing one that would read other files: a backing chain leaving
/// `roots` (any backing file when there is no root), or a qcow2 external data file.
pub async fn inspect(
    image: &Pinned,
    shown: &Path,
    roots: &[PathBuf],
) -> Result<(String, u64), BackendError> {
    let path = image.path();
    let failed = |m: String| BackendError::Failed(format!("source image {}: {m}", shown.display()));
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json", "--backing-chain", "-U"])
        .arg(&path)
        .output()
        .await
        .map_err(|e| failed(format!("qemu-img: {e}")))?;
    let chain: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        let mut why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if why.contains("backing") {
            why.push_str(
                " (a backing file is read by its absolute path only: `qemu-img rebase -u -b /absolute/base -F FORMAT IMAGE`)",
            );
        }
        failed(why)
    })?;
    let chain = chain.as_array().cloned().unwrap_or_default();
    let first = chain
        .first()
        .ok_or_else(|| failed("qemu-img says nothing".into()))?;
    for layer in &chain {
        if layer["format-specific"]["data"].get("data-file").is_some() {
            return Err(failed(
                "a qcow2 image with an external data file is refused".into(),
            ));
        }
    }
    for backing in chain.iter().skip(1) {
        let file = backing["filename"].as_str().unwrap_or_default();
        let inside = std::fs::canonicalize(file)
            .ok()
            .is_some_and(|f| roots.iter().any(|r| f.starts_with(r)));
        if !inside {
            return Err(failed(format!(
                "its backing file {file} is outside the trusted image directories"
            )));
        }
    }
    let format = first["format"]
        .as_str()
        .ok_or_else(|| failed("no format".into()))?;
    let size = first["virtual-size"]
        .as_u64()
        .ok_or_else(|| failed("no virtual-size".into()))?;
    Ok((format.to_string(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_come_from_the_roots_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("ok.img"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link.img")).unwrap();
        let roots = resolve_roots(std::slice::from_ref(&root)).unwrap();
        let ok = root.join("ok.img").display().to_string();
        assert!(check_source(&ok, &roots, true).is_ok());
        let outside = dir.path().join("secret").display().to_string();
        let e = check_source(&outside, &roots, false).unwrap_err();
        assert!(e.contains("outside the trusted"), "{e}");
        let link = root.join("link.img").display().to_string();
        assert!(
            check_source(&link, &roots, false).is_err(),
            "a symlink out of the root"
        );
        let dotdot = format!("{}/../secret", root.display());
        assert!(check_source(&dotdot, &roots, false).is_err());
        assert!(check_source("json:{\"file\":{}}", &roots, false).is_err());
        assert!(check_source("relative.img", &roots, false).is_err());
        // No root: the owner's own socket may name any file it can read, TCP nothing.
        assert!(check_source(&outside, &[], false).is_ok());
        let e = check_source(&outside, &[], true).unwrap_err();
        assert!(e.contains("--image-root"), "{e}");
        assert!(resolve_roots(&[dir.path().join("none")]).is_err());
    }

    #[test]
    fn a_pinned_source_is_read_as_it_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        std::fs::create_dir(&root).unwrap();
        let image = root.join("disk.img");
        std::fs::write(&image, b"the checked image").unwrap();
        std::fs::write(dir.path().join("secret"), b"a host secret").unwrap();
        let roots = resolve_roots(std::slice::from_ref(&root)).unwrap();
        let real = check_source(&image.display().to_string(), &roots, true).unwrap();
        let pinned = Pinned::open(&real, &roots).unwrap();
        // Swapped for a symlink out of the root after the check: the pinned name still reads
        // the checked file, and a fresh open refuses the link.
        std::fs::remove_file(&image).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), &image).unwrap();
        assert_eq!(std::fs::read(pinned.path()).unwrap(), b"the checked image");
        let e = Pinned::open(&real, &roots).err().unwrap();
        assert!(e.contains("symbolic links"), "{e}");
        // A directory is not an image.
        assert!(Pinned::open(&root, &roots).is_err());
    }
}
