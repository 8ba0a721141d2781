//! echo: prints its arguments, separated by spaces (`-n`: no newline).

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
    let a = args();
    let (newline, words) = match a.first() {
        Some(&"-n") => (false, &a[1..]),
        _ => (true, &a[..]),
    };
    out!("{}{}", join(words), if newline { "\n" } else { "" });
    0
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
