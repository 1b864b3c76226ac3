//! A map reached through its own file descriptor with raw `bpf()` calls:
//! what the flow sweep uses on its own thread (and tests, to fill a table
//! fast). aya 0.14 has no batch
//! lookups and no GET_NEXT_KEY from a given key, which a walk in slices
//! needs (see [`crate::dataplane::walk`]).

use std::{
    io,
    marker::PhantomData,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use aya::{Pod, maps::Map};

use crate::dataplane::{
    DataplaneError,
    sweep::removal::Elements,
    walk::{Batch, WalkMap},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
/// The update flag "only if the key is absent".
const BPF_NOEXIST: u64 = 1;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// The kernel's ENOTSUPP (not in libc): a map type without batch ops.
const ENOTSUPP: i32 = 524;

/// `bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// The value, or the next key for GET_NEXT_KEY.
    value: u64,
    flags: u64,
}

/// `bpf_attr` for the batch commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A map of `K` to `V` through a duplicate of its file descriptor: owned,
/// so it can live on another thread than the loaded object.
pub struct RawMap<K, V> {
    fd: OwnedFd,
    name: &'static str,
    max_entries: u32,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Pod, V: Pod> RawMap<K, V> {
    /// `map` (named `name`) through a duplicate of its fd; fails unless
    /// its key and value sizes are those of `K` and `V`.
    pub fn duplicate(map: &Map, name: &'static str) -> Result<Self, DataplaneError> {
        let (Map::HashMap(data) | Map::LruHashMap(data) | Map::Array(data)) = map else {
            return Err(DataplaneError::MissingMap(name));
        };
        let info = data.info().map_err(|cause| DataplaneError::Map { name, cause })?;
        if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
            return Err(DataplaneError::MissingMap(name));
        }
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|cause| DataplaneError::Syscall {
                name,
                call: "dup",
                cause,
            })?;
        Ok(Self {
            fd,
            name,
            max_entries: info.max_entries(),
            _types: PhantomData,
        })
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// The failure of `call` on this map, as the daemon reports it.
    pub fn error(&self, call: &'static str, cause: io::Error) -> DataplaneError {
        DataplaneError::Syscall {
            name: self.name,
            call,
            cause,
        }
    }

    pub fn lookup(&self, key: &K) -> io::Result<Option<V>> {
        self.read(BPF_MAP_LOOKUP_ELEM, key)
    }

    /// Removes `key` and returns what it held, in one step: no other
    /// writer's value can come between the read and the removal.
    pub fn lookup_and_delete(&self, key: &K) -> io::Result<Option<V>> {
        self.read(BPF_MAP_LOOKUP_AND_DELETE_ELEM, key)
    }

    /// Inserts `key` unless it is there (BPF_NOEXIST); `false` if it was.
    pub fn insert_new(&self, key: &K, value: &V) -> io::Result<bool> {
        let mut attr = ElemAttr {
            map_fd: self.raw_fd(),
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags: BPF_NOEXIST,
            ..Default::default()
        };
        match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `cmd` (a lookup) of `key`: its value, `None` if it is not there.
    fn read(&self, cmd: libc::c_long, key: &K) -> io::Result<Option<V>> {
        let mut value = MaybeUninit::<V>::uninit();
        let mut attr = ElemAttr {
            map_fd: self.raw_fd(),
            key: key as *const K as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(cmd, &mut attr) {
            // SAFETY: the kernel wrote `size_of::<V>()` bytes (the map's
            // value size, checked when the fd was taken), and V is Pod.
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `entries` with one syscall per 65,536 (BPF_MAP_UPDATE_BATCH).
    pub fn update_batch(&self, entries: &[(K, V)]) -> io::Result<()> {
        for chunk in entries.chunks(1 << 16) {
            let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
            let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
            let mut attr = BatchAttr {
                keys: keys.as_ptr() as u64,
                values: values.as_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: self.raw_fd(),
                ..Default::default()
            };
            bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        }
        Ok(())
    }

    fn raw_fd(&self) -> u32 {
        self.fd.as_raw_fd() as u32
    }
}

impl<K: Pod, V: Pod> Elements<K, V> for RawMap<K, V> {
    fn lookup(&self, key: &K) -> io::Result<Option<V>> {
        RawMap::lookup(self, key)
    }

    fn lookup_and_delete(&self, key: &K) -> io::Result<Option<V>> {
        RawMap::lookup_and_delete(self, key)
    }

    fn insert_new(&self, key: &K, value: &V) -> io::Result<bool> {
        RawMap::insert_new(self, key, value)
    }
}

impl<K: Pod, V: Pod> WalkMap<K, V> for RawMap<K, V> {
    type Error = io::Error;

    fn lookup_batch(&self, token: Option<u64>, max: usize) -> io::Result<Option<Batch<K, V>>> {
        let mut count = max.max(1);
        loop {
            let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(count);
            let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(count);
            // The token is opaque: a u32 bucket index for hash maps; eight
            // bytes leave room for any map type.
            let in_batch = token.unwrap_or(0);
            let mut out_batch = 0u64;
            let mut attr = BatchAttr {
                in_batch: token.map_or(0, |_| &in_batch as *const u64 as u64),
                out_batch: &mut out_batch as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: count as u32,
                map_fd: self.raw_fd(),
                ..Default::default()
            };
            let end = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
                Ok(()) => false,
                // The last entries come with ENOENT.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                // One bucket holds more than `count`: ask for more.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && count < self.max_entries as usize => {
                    count = (count * 2).min(self.max_entries as usize);
                    continue;
                }
                Err(e) if token.is_none() && batch_unsupported(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            let n = (attr.count as usize).min(count);
            // SAFETY: the kernel wrote `n` keys and `n` values of the map's
            // sizes (checked when the fd was taken); K and V are Pod.
            unsafe {
                keys.set_len(n);
                values.set_len(n);
            }
            let entries = keys
                .into_iter()
                .zip(values)
                // SAFETY: as above, each of the first `n` is initialised.
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) })
                .collect();
            return Ok(Some(Batch {
                entries,
                next: (!end).then_some(out_batch),
            }));
        }
    }

    fn next_key(&self, key: Option<&K>) -> io::Result<Option<K>> {
        let mut next = MaybeUninit::<K>::uninit();
        let mut attr = ElemAttr {
            map_fd: self.raw_fd(),
            key: key.map_or(0, |k| k as *const K as u64),
            value: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            // SAFETY: the kernel wrote a key of the map's key size.
            Ok(()) => Ok(Some(unsafe { next.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &K) -> io::Result<Option<V>> {
        self.lookup(key)
    }
}

/// Kernels before 5.6, and map types without batch ops, refuse it so.
fn batch_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a `bpf_attr` prefix of the size passed; every
    // pointer in it names memory that lives across the call and is as large
    // as the map's key or value size (or the count of them) requires.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as u32) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
