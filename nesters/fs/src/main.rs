//! fs: the file server. A RAM file system (files and folders), filled at
//! start from the boot archive its parent lends it (Parent reference
//! `archive`, a read-only region), writable, served to many clients on
//! every CPU at once through the FileSystem and Stream protocols
//! (nesters/PROTOCOLS.md).
//!
//! Every reference the server hands out is a port of its one portset with
//! its own alias: sessions (what a process manager gives each process) and
//! open streams (files and folders; each stream belongs to the session that
//! opened it). Ending a session closes its streams, so a process that dies
//! leaves nothing open. Open streams share an *open description* (offset,
//! flags) when duplicated for a child, as POSIX descriptors do.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

extern crate alloc;

mod data;
mod tree;

#[cfg(target_os = "none")]
mod serve;

#[cfg(target_os = "none")]
matryoshka_rt::entry!(serve::main);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("fs: this program runs under the Matryoshka kernel (it is bin/fs in the boot archive)");
    std::process::exit(2);
}
