//! Where the data plane lives in bpffs, so it outlives the daemon: maps under
//! `PIN_DIR/maps/NAME`, XDP links under `PIN_DIR/links/IFACE`. A restarted
//! daemon adopts both; `bg-lb teardown` removes them (detaching XDP).

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_links, loaded_programs,
};
use bg_lb_common::maps::ALL_MAPS;
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// How long the kernel may take to let go of an unpinned link before it is
/// taken as held open by another process. Generous: a host busy creating
/// and deleting network namespaces holds the RTNL lock the detach needs for
/// seconds at a time.
const LINK_RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

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
        let mut pinned = Vec::new();
        if let Ok(entries) = fs::read_dir(&links) {
            for entry in entries.flatten() {
                pinned.extend(link_ids(&entry.path()));
                remove_file(&entry.path())?;
            }
        }
        wait_released(&pinned)?;
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

/// A pinned link's kernel ids.
#[derive(Clone, Copy, Debug)]
struct LinkIds {
    link: u32,
    /// The program attached through it.
    program: u32,
}

/// The kernel ids of the link pinned at `path`, if it is one.
fn link_ids(path: &Path) -> Option<LinkIds> {
    let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
    link.info().ok().map(|info| LinkIds {
        link: info.id(),
        program: info.program_id(),
    })
}

/// Waits until the kernel has released each of `links`: the link is gone and
/// so is its program. The link's id alone is not enough: the kernel frees it
/// first, then detaches the program from the interface (waiting for the RTNL
/// lock), and only then drops the link's reference to the program, which
/// frees the program (nothing else holds it once the daemon is gone).
fn wait_released(links: &[LinkIds]) -> Result<(), PinError> {
    if links.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + LINK_RELEASE_TIMEOUT;
    loop {
        let live_links: Vec<u32> = loaded_links().flatten().map(|l| l.id()).collect();
        let loaded_programs: Vec<u32> = loaded_programs().flatten().map(|p| p.id()).collect();
        let held: Vec<u32> = links
            .iter()
            .filter(|l| live_links.contains(&l.link) || loaded_programs.contains(&l.program))
            .map(|l| l.link)
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PinError::StillAttached(held));
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
