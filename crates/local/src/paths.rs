//! Where the local backend keeps things: a private state directory (`WUKONG_HOME`), one private
//! directory per VM, the guest image cache.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wukong_engine::VmRef;

/// Unix socket paths longer than this do not fit `sun_path`.
pub const MAX_SOCKET_PATH: usize = 107;

/// The state directory and everything under it.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `WUKONG_HOME`, else the user's state directory (`~/.local/state/wukong`).
    pub fn from_env() -> Home {
        let root = std::env::var_os("WUKONG_HOME")
            .map(PathBuf::from)
            .or_else(|| dirs::state_dir().map(|d| d.join("wukong")))
            .or_else(|| dirs::home_dir().map(|d| d.join(".wukong")))
            .unwrap_or_else(|| PathBuf::from("/var/lib/wukong"));
        Home { root }
    }

    /// A home at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The embedded database.
    pub fn database(&self) -> PathBuf {
        self.root.join("state.redb")
    }

    /// The API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.root.join("api.sock")
    }

    /// The daemon's log.
    pub fn daemon_log(&self) -> PathBuf {
        self.root.join("daemon.log")
    }

    /// One VM's private directory.
    pub fn vm_dir(&self, vm: &VmRef) -> PathBuf {
        self.root.join("vms").join(&vm.namespace).join(&vm.name)
    }

    /// Creates the root (0700) if missing and tightens it if it exists.
    pub fn ensure(&self) -> std::io::Result<()> {
        private_dir(&self.root)
    }
}

/// Creates `dir` and its parents with mode 0700 (and sets 0700 on `dir` if it existed).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Sets a file (a socket) to 0600.
pub fn owner_only(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Refuses socket paths that would not fit.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        Err(format!(
            "socket path {} is {len} bytes, more than the {MAX_SOCKET_PATH} a unix socket allows: use a shorter WUKONG_HOME",
            path.display()
        ))
    } else {
        Ok(())
    }
}

/// The guest image cache: `WUKONG_IMAGE_DIR`, else the user's cache directory.
pub fn image_dir() -> PathBuf {
    std::env::var_os("WUKONG_IMAGE_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("wukong").join("guest")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/wukong/guest"))
}
