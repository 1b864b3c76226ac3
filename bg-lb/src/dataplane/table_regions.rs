//! Placement of services' lookup tables inside the one LOOKUP_TABLES array.
//!
//! Each service owns two regions of its table size: packets read the active
//! one while userspace writes the other, then one update of the service's
//! map entry flips `lut_base`. A packet therefore sees the old table or the
//! new one, never a half-written mix.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("lookup tables need {needed} more slots than the {capacity} configured (lookup_capacity)")]
pub struct RegionsExhausted {
    pub needed: u32,
    pub capacity: u32,
}

/// A service's two table buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRegions {
    pub size: u32,
    pub bases: [u32; 2],
}

impl TableRegions {
    /// The buffer not named by `active_base`: where the next table is written.
    pub fn inactive(&self, active_base: u32) -> u32 {
        if active_base == self.bases[0] {
            self.bases[1]
        } else {
            self.bases[0]
        }
    }
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

    pub fn allocate(&mut self, size: u32) -> Result<TableRegions, RegionsExhausted> {
        let first = self.take(size)?;
        match self.take(size) {
            Ok(second) => Ok(TableRegions {
                size,
                bases: [first, second],
            }),
            Err(e) => {
                self.give_back(first, size);
                Err(e)
            }
        }
    }

    /// Marks regions found in adopted maps as taken.
    pub fn reserve(&mut self, regions: TableRegions) -> Result<(), RegionsExhausted> {
        for base in regions.bases {
            self.take_at(base, regions.size)?;
        }
        Ok(())
    }

    pub fn release(&mut self, regions: TableRegions) {
        for base in regions.bases {
            self.give_back(base, regions.size);
        }
    }

    fn take(&mut self, size: u32) -> Result<u32, RegionsExhausted> {
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

    fn take_at(&mut self, start: u32, size: u32) -> Result<(), RegionsExhausted> {
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

    fn give_back(&mut self, start: u32, size: u32) {
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
        let r1 = a.allocate(20).unwrap();
        let r2 = a.allocate(30).unwrap();
        assert_eq!(r1.bases, [0, 20]);
        assert_eq!(r2.bases, [40, 70]);
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
        a.release(r1);
        a.release(r2);
        assert_eq!(a.allocate(50).unwrap().bases, [0, 50]);
    }

    #[test]
    fn failed_allocation_leaks_nothing() {
        let mut a = RegionAllocator::new(100);
        assert!(a.allocate(60).is_err());
        assert_eq!(a.allocate(50).unwrap().bases, [0, 50]);
    }

    #[test]
    fn reserved_regions_are_not_allocated_again() {
        let mut a = RegionAllocator::new(100);
        a.reserve(TableRegions {
            size: 10,
            bases: [40, 10],
        })
        .unwrap();
        assert_eq!(a.allocate(10).unwrap().bases, [0, 20]);
        assert_eq!(a.allocate(20).unwrap().bases, [50, 70]);
        assert!(
            a.reserve(TableRegions {
                size: 10,
                bases: [45, 90]
            })
            .is_err(),
            "overlaps a taken region"
        );
    }

    #[test]
    fn inactive_names_the_other_buffer() {
        let r = TableRegions { size: 7, bases: [0, 7] };
        assert_eq!(r.inactive(0), 7);
        assert_eq!(r.inactive(7), 0);
    }
}
