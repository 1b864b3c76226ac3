//! Walking a BPF hash map in bounded slices that resume where the last one
//! ended, while the data plane inserts and deletes under the walk.
//!
//! The walk prefers `BPF_MAP_LOOKUP_BATCH`: its position is an opaque
//! token (a bucket index for hash maps), so a deletion anywhere never sends
//! it back, and each bucket is read once. Where the kernel lacks batch
//! lookups the walk falls back to `BPF_MAP_GET_NEXT_KEY` from the last key
//! read. The kernel restarts that walk from its first bucket when the key
//! it continues from was deleted meanwhile, so the key walk does what
//! Cilium's reliable dump (`DumpReliablyWithCallback`) does: it asks for
//! the next key before using the current one, steps back to the previous
//! key when the current one vanished, never returns a key twice (a key seen
//! again is a restart), and gives up after visiting
//! [`VISITS_PER_ENTRY`] times `max_entries` keys. A walk that gave up is
//! not [`Walk::complete`]: what it missed must not be taken as absent.
//!
//! [`WalkMap`] is the kernel's side, so the logic is tested with fakes.

use std::{collections::HashSet, hash::Hash};

/// The key walk stops after visiting this many keys per map entry.
pub const VISITS_PER_ENTRY: u64 = 4;

/// One batch read: the entries, and the token to continue from (`None`
/// once the map is exhausted).
pub struct Batch<K, V> {
    pub entries: Vec<(K, V)>,
    pub next: Option<u64>,
}

/// The reads a walk needs from a map.
pub trait WalkMap<K, V> {
    type Error;
    /// Up to `max` entries from `token` (`None`: the start). `Ok(None)`
    /// when the kernel has no batch lookups for this map.
    fn lookup_batch(&self, token: Option<u64>, max: usize) -> Result<Option<Batch<K, V>>, Self::Error>;
    /// The key after `key` (the first key for `None`); `None` at the end.
    fn next_key(&self, key: Option<&K>) -> Result<Option<K>, Self::Error>;
    fn get(&self, key: &K) -> Result<Option<V>, Self::Error>;
}

/// What a walk did, for logs and the bench.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Entries read, repeats included.
    pub visited: u64,
    /// Keys the kernel returned again (it restarted the walk): dropped.
    pub repeats: u64,
    /// Times the key to continue from was gone and the walk stepped back
    /// to the key before it.
    pub fallbacks: u64,
    pub slices: u64,
}

impl WalkStats {
    /// Adds `other`'s counts (a sweep walks a table of each family).
    pub fn add(&mut self, other: &WalkStats) {
        self.visited += other.visited;
        self.repeats += other.repeats;
        self.fallbacks += other.fallbacks;
        self.slices += other.slices;
    }
}

enum Mode<K> {
    /// Not read yet: batch first.
    Fresh,
    Batch(Option<u64>),
    Keys {
        /// The next key to read (`None` before the first).
        current: Option<K>,
        /// The last key read, to step back to.
        prev: Option<K>,
        seen: HashSet<K>,
    },
}

/// A walk in progress; [`Walk::next_slice`] reads the next slice.
pub struct Walk<K> {
    mode: Mode<K>,
    done: bool,
    capped: bool,
    cap: u64,
    pub stats: WalkStats,
}

impl<K: Copy + Eq + Hash> Walk<K> {
    /// A walk of a map with room for `max_entries`.
    pub fn new(max_entries: u32) -> Self {
        Self {
            mode: Mode::Fresh,
            done: false,
            capped: false,
            cap: u64::from(max_entries.max(1)) * VISITS_PER_ENTRY,
            stats: WalkStats::default(),
        }
    }

    /// Whether there is nothing more to read.
    pub fn finished(&self) -> bool {
        self.done || self.capped
    }

    /// Whether the walk read the whole map: every entry present from its
    /// start to its end was returned once.
    pub fn complete(&self) -> bool {
        self.done && !self.capped
    }

    /// The next at most `max` entries, none of them returned before.
    /// Empty only when the walk is finished.
    pub fn next_slice<V, M: WalkMap<K, V>>(&mut self, map: &M, max: usize) -> Result<Vec<(K, V)>, M::Error> {
        let max = max.max(1);
        let mut out = Vec::new();
        while out.is_empty() && !self.finished() {
            match &mut self.mode {
                Mode::Fresh => {
                    self.mode = match map.lookup_batch(None, max)? {
                        Some(batch) => self.batch_read(batch, &mut out),
                        None => Mode::Keys {
                            current: None,
                            prev: None,
                            seen: HashSet::new(),
                        },
                    };
                }
                Mode::Batch(token) => {
                    let Some(batch) = map.lookup_batch(*token, max)? else {
                        // Batch lookups worked a moment ago; a map cannot lose them.
                        self.capped = true;
                        break;
                    };
                    self.mode = self.batch_read(batch, &mut out);
                }
                Mode::Keys { .. } => self.keys_read(map, max, &mut out)?,
            }
        }
        self.stats.slices += u64::from(!out.is_empty());
        Ok(out)
    }

    fn batch_read<V>(&mut self, batch: Batch<K, V>, out: &mut Vec<(K, V)>) -> Mode<K> {
        self.stats.visited += batch.entries.len() as u64;
        out.extend(batch.entries);
        self.done = batch.next.is_none();
        if self.stats.visited >= self.cap && !self.done {
            self.capped = true;
        }
        Mode::Batch(batch.next)
    }

    fn keys_read<V, M: WalkMap<K, V>>(&mut self, map: &M, max: usize, out: &mut Vec<(K, V)>) -> Result<(), M::Error> {
        let Mode::Keys { current, prev, seen } = &mut self.mode else {
            return Ok(());
        };
        while out.len() < max {
            if self.stats.visited >= self.cap {
                self.capped = true;
                break;
            }
            let key = match *current {
                Some(key) => key,
                None if self.stats.visited == 0 => match map.next_key(None)? {
                    Some(first) => first,
                    None => {
                        self.done = true;
                        break;
                    }
                },
                None => {
                    self.done = true;
                    break;
                }
            };
            self.stats.visited += 1;
            // The next key first: `key` may be deleted once it is returned.
            let next = map.next_key(Some(&key))?;
            let Some(value) = map.get(&key)? else {
                // Gone under the walk, and the next key with it may be a
                // restart: continue after the key before it instead.
                *current = match prev {
                    Some(before) => {
                        self.stats.fallbacks += 1;
                        map.next_key(Some(before))?
                    }
                    None => next,
                };
                if current.is_none() {
                    self.done = true;
                    break;
                }
                continue;
            };
            if seen.insert(key) {
                out.push((key, value));
            } else {
                self.stats.repeats += 1;
            }
            *prev = Some(key);
            *current = next;
            if next.is_none() {
                self.done = true;
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
