//! The default guest image: built from Debian packages by a fixed script (embedded here, run
//! with its arguments as argv), cached, rebuilt only when its inputs change.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::machine::{BootSource, DEFAULT_CMDLINE};

const BUILD_SCRIPT: &str = include_str!("../guest/build-guest.sh");
const INIT: &str = include_str!("../guest/init");
const HOTPLUG: &str = include_str!("../guest/hotplug");

/// A built guest image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    /// Directory holding it.
    pub dir: PathBuf,
}

impl GuestImage {
    /// The image in `dir`, if built.
    pub fn existing(dir: &Path) -> Option<GuestImage> {
        let img = GuestImage {
            dir: dir.to_path_buf(),
        };
        (img.kernel().is_file() && img.initrd().is_file()).then_some(img)
    }
    /// The kernel.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// The initramfs.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initramfs.cpio.gz")
    }
    /// How a VM boots it.
    pub fn boot_source(&self) -> BootSource {
        BootSource {
            kernel: Some(self.kernel()),
            initrd: Some(self.initrd()),
            cmdline: DEFAULT_CMDLINE.into(),
            uefi: None,
        }
    }
}

/// Why the image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host tool is missing or failed to start.
    #[error("cannot run the image build: {0}")]
    Spawn(#[source] std::io::Error),
    /// The build script failed.
    #[error("guest image build failed:\n{0}")]
    Build(String),
}

/// Builds (or confirms up to date) the default guest in `dir`. Needs apt package lists,
/// dpkg-deb, depmod (kmod), cpio, gzip, xz. Returns the build's own report line.
pub async fn build(dir: &Path) -> Result<(GuestImage, String), ImageError> {
    crate::paths::private_dir(dir).map_err(ImageError::Spawn)?;
    let scripts = tempfile_dir().map_err(ImageError::Spawn)?;
    let init = scripts.join("init");
    let hotplug = scripts.join("hotplug");
    std::fs::write(&init, INIT).map_err(ImageError::Spawn)?;
    std::fs::write(&hotplug, HOTPLUG).map_err(ImageError::Spawn)?;
    let script = scripts.join("build-guest.sh");
    std::fs::write(&script, BUILD_SCRIPT).map_err(ImageError::Spawn)?;
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg(&init)
        .arg(&hotplug)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(ImageError::Spawn);
    let _ = std::fs::remove_dir_all(&scripts);
    let out = out?;
    if !out.status.success() {
        return Err(ImageError::Build(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let report = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let image = GuestImage::existing(dir)
        .ok_or_else(|| ImageError::Build("the build left no kernel or initramfs".into()))?;
    Ok((image, report))
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wukong-image-{}", std::process::id()));
    crate::paths::private_dir(&dir)?;
    Ok(dir)
}
