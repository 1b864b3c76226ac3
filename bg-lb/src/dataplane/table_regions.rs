//! Placement of services' lookup tables inside the one LOOKUP_TABLES array.
//!
//! Each service owns one region: two buffers per pool
//! ([`bg_lb_common::maps::service_table_slots`]). Packets read one buffer
//! of each pool while userspace writes the other, then one update of the
//! service's map entry flips the pool's buffer flag. A packet therefore
//! sees a pool's old table or its new one, never a half-written mix.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("lookup tables need {needed} more slots than the {capacity} configured (lookup_capacity)")]
pub struct RegionsExhausted {
    pub needed: u32,
    pub capacity: u32,
}

/// First-fit allocator of slot ranges in LOOKUP_TABLES.
#[derive(Debug)]
pub struct RegionAllocator {
    capacity: u32,
    /// Free ranges `(start, len)`, sorted by start, never adjacent.
    free: Vec<(u32, u32)>,
}

impl RegionAllocator {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            free: vec![(0, capacity)],
        }
    }

    /// The start of a free range of `size` slots, now taken.
    pub fn allocate(&mut self, size: u32) -> Result<u32, RegionsExhausted> {
        let i = self
            .free
            .iter()
            .position(|&(_, len)| len >= size)
            .ok_or_else(|| RegionsExhausted {
                needed: size.saturating_sub(self.free.iter().map(|&(_, l)| l).max().unwrap_or(0)),
                capacity: self.capacity,
            })?;
        let (start, len) = self.free[i];
        if len == size {
            self.free.remove(i);
        } else {
            self.free[i] = (start + size, len - size);
        }
        Ok(start)
    }

    /// Marks a region found in adopted maps as taken.
    pub fn reserve(&mut self, start: u32, size: u32) -> Result<(), RegionsExhausted> {
        let end = start.checked_add(size).filter(|&e| e <= self.capacity);
        let i = self
            .free
            .iter()
            .position(|&(s, len)| s <= start && end.is_some_and(|e| e <= s + len));
        let (Some(i), Some(end)) = (i, end) else {
            return Err(RegionsExhausted {
                needed: size,
                capacity: self.capacity,
            });
        };
        let (s, len) = self.free.remove(i);
        if end < s + len {
            self.free.insert(i, (end, s + len - end));
        }
        if s < start {
            self.free.insert(i, (s, start - s));
        }
        Ok(())
    }

    pub fn release(&mut self, start: u32, size: u32) {
        let i = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(i, (start, size));
        // Merge with the following range, then with the preceding one.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free.remove(i + 1).1;
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free.remove(i).1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_never_overlap_and_fit_the_capacity() {
        let mut a = RegionAllocator::new(100);
        assert_eq!(a.allocate(40), Ok(0));
        assert_eq!(a.allocate(60), Ok(40));
        assert_eq!(
            a.allocate(1),
            Err(RegionsExhausted {
                needed: 1,
                capacity: 100
            })
        );
    }

    #[test]
    fn released_regions_are_merged_and_reused() {
        let mut a = RegionAllocator::new(100);
        let r1 = a.allocate(20).unwrap();
        let r2 = a.allocate(30).unwrap();
        a.release(r1, 20);
        a.release(r2, 30);
        assert_eq!(a.allocate(100), Ok(0));
    }

    #[test]
    fn failed_allocation_leaks_nothing() {
        let mut a = RegionAllocator::new(100);
        assert!(a.allocate(101).is_err());
        assert_eq!(a.allocate(100), Ok(0));
    }

    #[test]
    fn reserved_regions_are_not_allocated_again() {
        let mut a = RegionAllocator::new(100);
        a.reserve(10, 30).unwrap();
        assert_eq!(a.allocate(10), Ok(0));
        assert_eq!(a.allocate(20), Ok(40));
        assert!(a.reserve(35, 10).is_err(), "overlaps a taken region");
        assert!(a.reserve(95, 10).is_err(), "past the capacity");
    }
}
