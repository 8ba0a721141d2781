//! true: exits 0.

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
    0
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
