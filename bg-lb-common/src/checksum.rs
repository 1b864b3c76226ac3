//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! All values are raw wire-order fields read as native integers: one's
//! complement sums are byte-order independent, so no swapping is needed as
//! long as the checksum field is read the same way.

/// Folds a 32-bit one's complement sum into 16 bits. Two folds suffice for
/// the few terms summed here, and a fixed count keeps the verifier happy.
#[inline(always)]
const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// Checksum after a 32-bit field changed from `old` to `new`.
#[inline(always)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum = !check as u32 + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// One's complement sum of a buffer's 16-bit words (native reads), to be
/// finished with [`finish`]. For the few small headers the data plane builds
/// from scratch (a RST reply).
#[inline(always)]
pub fn sum_words<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// The checksum field value for a one's complement sum.
#[inline(always)]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{checksum_of_words, words};

    fn full(words: &[u16]) -> u16 {
        checksum_of_words(words.iter().copied())
    }

    #[test]
    fn replace16_matches_full_recompute() {
        for seed in 1..2000 {
            let mut w = words(seed, 10);
            let check = full(&w);
            let new = words(seed.wrapping_mul(31), 1)[0];
            let old = w[3];
            w[3] = new;
            assert_eq!(replace16(check, old, new), full(&w), "seed {seed}");
        }
    }

    #[test]
    fn replace32_matches_full_recompute() {
        for seed in 1..2000 {
            let mut w = words(seed, 10);
            let check = full(&w);
            let old = (w[5] as u32) << 16 | w[4] as u32;
            let new = words(seed.wrapping_mul(7), 2);
            let new32 = (new[1] as u32) << 16 | new[0] as u32;
            w[4] = new[0];
            w[5] = new[1];
            assert_eq!(replace32(check, old, new32), full(&w), "seed {seed}");
        }
    }

    #[test]
    fn sum_words_then_finish_is_the_internet_checksum() {
        // RFC 1071's example header (as wire bytes): checksum 0xb861.
        let header: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(finish(sum_words(&header)).to_ne_bytes(), [0xb8, 0x61]);
    }

    #[test]
    fn replace_with_same_value_keeps_checksum() {
        assert_eq!(replace32(0x1234, 0xdead_beef, 0xdead_beef), 0x1234);
        assert_eq!(replace16(0xabcd, 0x0050, 0x0050), 0xabcd);
    }
}
