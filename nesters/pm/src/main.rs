//! pm: the process manager, a nester that gives its subtree POSIX-like
//! processes (nesters/PROTOCOLS.md, ProcessManager): spawn from a file
//! with arguments, environment and standard streams, exit status,
//! wait (blocking or not), kill (TERM, INT, KILL), getpid/getppid, a process
//! list, and pipes with blocking reads and writes, end of file and broken
//! pipes; a process's record and pipe ends (with their buffered bytes) can
//! be exported and re-imported (PROTOCOLS.md, exporting a client's state).
//!
//! Each process is a child space built with the nester library's loader
//! from memory the manager got from its parent (Parent reference
//! `memory`), one slot per process. A reaper thread per process waits for
//! its first thread; when it ends (exit, fault or kill) the manager destroys
//! the space (and with it the process's whole subtree), closes the streams
//! it gave it and ends its file-system session, so nothing it held stays
//! open. Whoever spawns may replace any of the child's starting references
//! (`PM_SPAWN_REF`): that is how a nester interposes (its own port as the
//! child's Parent) and how a shell wires pipes.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

extern crate alloc;

#[cfg(target_os = "none")]
mod manager;

#[cfg(target_os = "none")]
matryoshka_rt::entry!(manager::main);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("pm: this program runs under the Matryoshka kernel (it is bin/pm in the boot archive)");
    std::process::exit(2);
}
