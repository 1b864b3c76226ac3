use std::{cell::RefCell, collections::BTreeMap, convert::Infallible};

use super::*;

/// A hash map as the kernel walks it: keys in a fixed order (their own
/// value), a batch token naming the next "bucket" (so deletions never move
/// it), and GET_NEXT_KEY restarting from the first key when asked to
/// continue from a key that is gone.
struct FakeMap {
    entries: RefCell<BTreeMap<u32, u32>>,
    batch: bool,
    /// Every GET_NEXT_KEY restarts, as under endless churn.
    always_restart: bool,
}

impl FakeMap {
    fn new(keys: impl IntoIterator<Item = u32>, batch: bool) -> Self {
        Self {
            entries: RefCell::new(keys.into_iter().map(|k| (k, k * 10)).collect()),
            batch,
            always_restart: false,
        }
    }

    fn remove(&self, key: u32) {
        self.entries.borrow_mut().remove(&key);
    }
}

impl WalkMap<u32, u32> for FakeMap {
    type Error = Infallible;

    fn lookup_batch(&self, token: Option<u64>, max: usize) -> Result<Option<Batch<u32, u32>>, Infallible> {
        if !self.batch {
            return Ok(None);
        }
        let from = token.unwrap_or(0) as u32;
        let entries: Vec<(u32, u32)> = self
            .entries
            .borrow()
            .range(from..)
            .take(max)
            .map(|(k, v)| (*k, *v))
            .collect();
        let next = entries
            .last()
            .map(|(k, _)| k + 1)
            .filter(|&k| self.entries.borrow().range(k..).next().is_some());
        Ok(Some(Batch {
            entries,
            next: next.map(u64::from),
        }))
    }

    fn next_key(&self, key: Option<&u32>) -> Result<Option<u32>, Infallible> {
        let entries = self.entries.borrow();
        let first = entries.keys().next().copied();
        Ok(match key {
            Some(k) if entries.contains_key(k) && !self.always_restart => {
                entries.range(k + 1..).next().map(|(k, _)| *k)
            }
            _ => first,
        })
    }

    fn get(&self, key: &u32) -> Result<Option<u32>, Infallible> {
        Ok(self.entries.borrow().get(key).copied())
    }
}

/// Walks `map` in slices of `slice`, running `between` with each slice's
/// keys before reading the next; returns every key read, in order.
fn walk_all(map: &FakeMap, slice: usize, mut between: impl FnMut(&[u32])) -> (Vec<u32>, Walk<u32>) {
    let mut walk = Walk::new(16);
    let mut read = Vec::new();
    while !walk.finished() {
        let keys: Vec<u32> = walk
            .next_slice(map, slice)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(keys.len() <= slice, "a slice is bounded: {keys:?}");
        read.extend(&keys);
        between(&keys);
    }
    (read, walk)
}

#[test]
fn a_batch_walk_reads_bounded_slices_and_resumes_past_deletions() {
    let map = FakeMap::new(0..10, true);
    let (read, walk) = walk_all(&map, 3, |keys| {
        // The sweep deletes what it read, and the data plane deletes an
        // entry not read yet: neither sends the walk back.
        keys.iter().for_each(|&k| map.remove(k));
        map.remove(8);
    });
    assert_eq!(read, [0, 1, 2, 3, 4, 5, 6, 7, 9]);
    assert!(walk.complete());
    assert_eq!(walk.stats.slices, 3);
    assert_eq!(walk.stats.repeats, 0);
}

#[test]
fn a_key_walk_resumes_from_the_last_key_read() {
    let map = FakeMap::new(0..10, false);
    let (read, walk) = walk_all(&map, 4, |_| {});
    assert_eq!(read, (0..10).collect::<Vec<_>>());
    assert!(walk.complete());
    assert_eq!(walk.stats.slices, 3);
    assert_eq!(walk.stats.visited, 10);
}

#[test]
fn a_key_walk_steps_back_when_the_key_to_continue_from_is_deleted() {
    let map = FakeMap::new(0..10, false);
    let mut first = true;
    let (read, walk) = walk_all(&map, 3, |_| {
        // Read 0, 1, 2; the walk continues from 3, which goes.
        if std::mem::take(&mut first) {
            map.remove(3);
        }
    });
    assert_eq!(read, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert!(walk.complete());
    assert_eq!(walk.stats.fallbacks, 1);
    assert_eq!(walk.stats.repeats, 0, "stepping back is no restart");
}

#[test]
fn a_restarted_key_walk_returns_no_key_twice_and_still_completes() {
    let map = FakeMap::new(0..10, false);
    let mut first = true;
    let (read, walk) = walk_all(&map, 3, |keys| {
        // The sweep deletes the last key read and the next one goes too:
        // the kernel restarts the walk from the first key.
        if std::mem::take(&mut first) {
            map.remove(keys[2]);
            map.remove(3);
        }
    });
    assert_eq!(read, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert!(walk.complete());
    assert_eq!(walk.stats.repeats, 2, "0 and 1 came again after the restart");
}

#[test]
fn a_key_walk_that_restarts_forever_gives_up_after_four_visits_per_entry() {
    let mut map = FakeMap::new(0..10, false);
    map.always_restart = true;
    let (read, walk) = walk_all(&map, 3, |_| {});
    assert_eq!(read, [0], "only the first key, once");
    assert!(walk.finished() && !walk.complete());
    assert_eq!(walk.stats.visited, 16 * VISITS_PER_ENTRY);
}

#[test]
fn an_empty_map_finishes_at_once_either_way() {
    for batch in [true, false] {
        let map = FakeMap::new([], batch);
        let (read, walk) = walk_all(&map, 3, |_| {});
        assert!(read.is_empty());
        assert!(walk.complete());
    }
}
