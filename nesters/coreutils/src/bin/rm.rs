//! rm: removes files and empty folders.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

extern crate alloc;

#[allow(unused_imports)]
use coreutils::*;
#[allow(unused_imports)]
use matryoshka_nest::{errln, io, out, outln};

#[cfg(target_os = "none")]
matryoshka_rt::entry!(run);

fn run() -> i32 {
    let Some(fs) = fs("rm") else { return 1 };
    let mut status = 0;
    for p in args() {
        if let Err(e) = fs.unlink(&io::absolute(p)) {
            status = fail("rm", p, e);
        }
    }
    status
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
