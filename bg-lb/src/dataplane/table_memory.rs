//! LOOKUP_TABLES mapped into the daemon's memory (the map is created
//! `BPF_F_MMAPABLE`): a whole table is written with plain stores, so its cost
//! no longer grows by one `bpf()` syscall per slot.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering, fence},
};

/// `u32`s per slot in the mapping: the kernel stores array values at a
/// stride of `round_up(value_size, 8)`, so a slot's `u32` is followed by 4
/// bytes of padding.
const SLOT_STRIDE: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum TableMemoryError {
    #[error("mapping LOOKUP_TABLES into memory: {0}")]
    Map(io::Error),
    #[error("slots {base}..{end} are outside LOOKUP_TABLES' {capacity} slots")]
    OutOfBounds { base: u32, end: u64, capacity: u32 },
}

/// A shared, writable mapping of every slot of LOOKUP_TABLES.
pub(super) struct TableMemory {
    slots: NonNull<AtomicU32>,
    capacity: u32,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, owned by this value and
// accessed only through atomics, so it may move to and be shared with other
// threads (the packet tests run the program from several).
unsafe impl Send for TableMemory {}
unsafe impl Sync for TableMemory {}

impl TableMemory {
    /// Maps the `capacity` slots of the array behind `fd`.
    pub(super) fn new(fd: impl AsFd, capacity: u32) -> Result<Self, TableMemoryError> {
        let len = (capacity as usize * SLOT_STRIDE * size_of::<u32>()).next_multiple_of(page_size());
        // SAFETY: a fresh shared mapping of a BPF map's value area; the kernel
        // checks that the map is mmapable and `len` within its size.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(TableMemoryError::Map(io::Error::last_os_error()));
        }
        let slots = NonNull::new(addr.cast()).ok_or(TableMemoryError::Map(io::ErrorKind::InvalidData.into()))?;
        Ok(Self { slots, capacity, len })
    }

    /// Writes `table` to the slots from `base` on.
    ///
    /// Each slot is one aligned atomic store, never torn: a packet still
    /// reading this region (it loaded `lut_base` before the previous flip)
    /// sees an old or a new backend id, as with per-slot map updates. The
    /// caller publishes the table afterwards with a SERVICES update. The
    /// release fence keeps these stores before that syscall; in the kernel,
    /// the new hash element is published with a release store on this same
    /// thread, so every slot is visible before the new `lut_base` is, and
    /// the program reads the table at an address computed from the
    /// `lut_base` it loaded (a dependency), so it sees every slot written.
    pub(super) fn write(&self, base: u32, table: &[u32]) -> Result<(), TableMemoryError> {
        let end = u64::from(base) + table.len() as u64;
        if end > u64::from(self.capacity) {
            return Err(TableMemoryError::OutOfBounds {
                base,
                end,
                capacity: self.capacity,
            });
        }
        for (i, &id) in table.iter().enumerate() {
            // SAFETY: the mapping holds `capacity` slots, each an aligned
            // `u32` every SLOT_STRIDE, and `base + i < end <= capacity`.
            let slot = unsafe { &*self.slots.as_ptr().add((base as usize + i) * SLOT_STRIDE) };
            slot.store(id, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        Ok(())
    }
}

impl Drop for TableMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}
