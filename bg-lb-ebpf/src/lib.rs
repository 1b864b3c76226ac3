#![no_std]
// This crate's programs are its binaries; the library target only exists so
// bg-lb can list it as a build-dependency and be rebuilt when it changes.
