//! Architecture support. Only x86_64 exists; the rest of the kernel reaches
//! it through the re-exports below.

pub mod x86_64;

pub use self::x86_64::exports as x86_64_exports;
pub use self::x86_64::{apic, cpu, idt, paging, percpu, serial, smp, stack, time};
pub use self::x86_64::{features, init_this_cpu, qemu_exit};
