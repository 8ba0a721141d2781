//! cat: copies each file (or standard input, or `-`) to standard output.

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
    if a.is_empty() || a == ["-"] {
        return match io::stdin().map(copy_out) {
            Some(Err(e)) => fail("cat", "stdin", e),
            _ => 0,
        };
    }
    let Some(fs) = fs("cat") else { return 1 };
    let mut status = 0;
    for path in a {
        let r = open_read(&fs, path).and_then(|s| {
            let r = copy_out(s);
            let _ = s.close();
            r
        });
        if let Err(e) = r {
            status = fail("cat", path, e);
        }
    }
    status
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
