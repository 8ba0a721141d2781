//! Hardware-level tests for the Matryoshka kernel: boot it under QEMU in a
//! matrix of boot paths and CPU counts, read the serial console and judge
//! the kernel's `KTEST` protocol records, panic report and SMP bring-up.

pub mod protocol;
pub mod runner;
pub mod scenario;
