//! The workloads of `just reproduce` (issue 15), standing in for Fluke's
//! evaluation runs:
//!
//! * `mk` + `mcc`: a compile-like multi-process job (Fluke's gcc/make run):
//!   `mk` starts one `mcc` per source file of a folder (20 files in the
//!   image, `/src`), each reads its file through the file server, tokenizes
//!   and parses it ([`mc`]), writes an output file and reports diagnostics
//!   on a pipe; a final `mcc --link` reads every output.
//! * `ipcload`: many small requests to a server in another space (the file
//!   server's `stat`).
//! * `hello` (in coreutils): start-up and exit only.
//!
//! `reprobench` runs each of them bare and under stacks of nesters, timing
//! each run with the TSC (under `-icount` it counts retired instructions),
//! and prints one `REPRO {json}` line per run.
//!
//! Every workload prints `steady CYCLES` last on standard output: the TSC
//! span of its own work, without its start-up, so start-up and steady state
//! are reported apart.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod mc;

/// The TSC now (retired instructions under QEMU's `-icount`).
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}
