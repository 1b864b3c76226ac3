//! Where the data plane lives in bpffs, so it outlives the daemon: maps under
//! `PIN_DIR/maps/NAME`, XDP links under `PIN_DIR/links/IFACE`. A restarted
//! daemon adopts both; `bg-lb teardown` removes them (detaching XDP).

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

const LINK_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_links,
};
use bg_lb_common::maps::ALL_MAPS;
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("mounting bpffs at {path}: {cause}")]
    Mount { path: PathBuf, cause: nix::Error },
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("XDP links {0:?} are still attached after unpinning: another process holds them open")]
    StillAttached(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn link(&self, iface: &str) -> PathBuf {
        self.root.join("links").join(iface)
    }

    /// Where the bpffs holding the pins is mounted: the root's parent.
    pub fn mount_point(&self) -> PathBuf {
        self.root.parent().unwrap_or(Path::new("/")).to_path_buf()
    }

    /// Mounts bpffs on the pin root's parent if nothing is mounted there
    /// (a fresh machine has no /sys/fs/bpf mount), then creates the
    /// directories. Returns whether it mounted bpffs.
    pub fn prepare(&self) -> Result<bool, PinError> {
        let mount_point = self.mount_point();
        let mounted = !is_bpffs(&mount_point);
        if mounted {
            create_dir(&mount_point)?;
            mount(Some("bpf"), &mount_point, Some("bpf"), MsFlags::empty(), None::<&str>).map_err(|cause| {
                PinError::Mount {
                    path: mount_point.clone(),
                    cause,
                }
            })?;
            tracing::info!(path = %mount_point.display(), "mounted bpffs");
        }
        for dir in [self.maps_dir(), self.root.join("links")] {
            create_dir(&dir)?;
        }
        Ok(mounted)
    }

    /// Removes every pin: links first (detaching XDP from the interfaces),
    /// then maps (freeing the flow table). Missing pins are not an error.
    /// Returns once the kernel has released the links: it does so
    /// asynchronously, and callers rely on XDP being gone.
    pub fn remove_all(&self) -> Result<(), PinError> {
        let links = self.root.join("links");
        let mut link_ids = Vec::new();
        if let Ok(entries) = fs::read_dir(&links) {
            for entry in entries.flatten() {
                link_ids.extend(link_id(&entry.path()));
                remove_file(&entry.path())?;
            }
        }
        wait_released(&link_ids)?;
        for name in ALL_MAPS {
            remove_file(&self.maps_dir().join(name))?;
            remove_file(&super::migration::next_pin(&self.maps_dir(), name))?;
        }
        for dir in [links, self.maps_dir(), self.root.clone()] {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(cause) => return Err(PinError::Io { path: dir, cause }),
            }
        }
        Ok(())
    }
}

/// The kernel id of the link pinned at `path`, if it is one.
fn link_id(path: &Path) -> Option<u32> {
    let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
    link.info().ok().map(|info| info.id())
}

/// Waits until none of `ids` is a live link any more.
fn wait_released(ids: &[u32]) -> Result<(), PinError> {
    let deadline = Instant::now() + LINK_RELEASE_TIMEOUT;
    loop {
        let live: Vec<u32> = loaded_links()
            .flatten()
            .map(|l| l.id())
            .filter(|id| ids.contains(id))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PinError::StillAttached(live));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

fn create_dir(path: &Path) -> Result<(), PinError> {
    fs::create_dir_all(path).map_err(|cause| PinError::Io {
        path: path.to_owned(),
        cause,
    })
}

fn remove_file(path: &Path) -> Result<(), PinError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(cause) => Err(PinError::Io {
            path: path.to_owned(),
            cause,
        }),
    }
}
