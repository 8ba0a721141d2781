//! Host-side boot tooling for the Matryoshka kernel, shared by the `mkboot`
//! CLI and the `hw-tests` harness:
//!
//! - [`ksyms`]: embed the demangled function symbol table into `.ksyms`;
//! - [`workspace`]: find the repository and build `build/kernel.elf`;
//! - [`image`]: GRUB hybrid ISO and PXE (TFTP) trees;
//! - [`qemu`]: QEMU command lines for every boot mode and a captured runner;
//! - [`emulators`]: Bochs (PCID) and an unpacked QEMU 10 (x2APIC) for the boot matrix;
//! - [`doctor`]: detect and install missing host tools.

pub mod archive;
pub mod cli;
pub mod doctor;
pub mod emulators;
pub mod image;
pub mod ksyms;
pub mod qemu;
pub mod workspace;
