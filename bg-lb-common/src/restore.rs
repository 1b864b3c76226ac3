//! The frame the benchmark's `xdp_restore` (aux object) writes over every
//! live-frames packet before it tail-calls the program under test: in live
//! mode the kernel reuses a page without rewriting it, so a NAT rewrite
//! would otherwise be fed its own output.

/// Map of one [`Pristine`]: the frame to restore.
pub const PRISTINE: &str = "PRISTINE";
/// `ProgramArray` of one slot: the program `xdp_restore` tail-calls.
pub const RESTORED_TARGET: &str = "RESTORED_TARGET";
/// The longest frame `xdp_restore` restores.
pub const PRISTINE_MAX: usize = 128;
/// Source ports `xdp_restore` hands out from 1024 when it varies them.
pub const VARIED_PORTS: u32 = 60_000;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pristine {
    /// Bytes of `frame` in use; the packet must be exactly this long.
    pub len: u32,
    /// Non-zero: every repetition gets the next TCP source port (a new
    /// 5-tuple), from a per-CPU count; the TCP checksum is left as it was.
    pub vary_source_port: u32,
    pub frame: [u8; PRISTINE_MAX],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` of integers and bytes, without padding.
    unsafe impl aya::Pod for super::Pristine {}

    impl super::Pristine {
        /// `frame` (at most [`super::PRISTINE_MAX`] bytes), restored as is
        /// or with a new source port each time.
        pub fn new(frame: &[u8], vary_source_port: bool) -> Self {
            let mut bytes = [0; super::PRISTINE_MAX];
            bytes[..frame.len()].copy_from_slice(frame);
            Self {
                len: frame.len() as u32,
                vary_source_port: u32::from(vary_source_port),
                frame: bytes,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pristine_has_no_padding() {
        assert_eq!(core::mem::size_of::<Pristine>(), 8 + PRISTINE_MAX);
    }
}
