//! Reference arithmetic and deterministic input for the unit tests, which
//! check the packet-path code against a full recompute.

/// The Internet checksum (RFC 1071) of 16-bit words as read natively from
/// the wire, the way the data plane reads them.
pub fn checksum_of_words(words: impl IntoIterator<Item = u16>) -> u16 {
    let mut sum: u32 = words.into_iter().map(u32::from).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `bytes` (odd length padded with a zero).
pub fn checksum(bytes: &[u8]) -> u16 {
    checksum_of_words(
        bytes
            .chunks(2)
            .map(|w| u16::from_ne_bytes([w[0], *w.get(1).unwrap_or(&0)])),
    )
}

/// Deterministic pseudo-random numbers (xorshift32), so failures reproduce.
pub fn xorshift(seed: u32) -> impl Iterator<Item = u32> {
    let mut x = seed | 1;
    core::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    })
}

/// `n` deterministic pseudo-random bytes for `seed`.
pub fn bytes(seed: u32, n: usize) -> Vec<u8> {
    xorshift(seed).take(n).map(|x| x as u8).collect()
}

/// `n` deterministic pseudo-random 16-bit words for `seed`.
pub fn words(seed: u32, n: usize) -> Vec<u16> {
    xorshift(seed).take(n).map(|x| x as u16).collect()
}
