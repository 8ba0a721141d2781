//! stat: prints kind and size of each path.

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
    use matryoshka_nest::proto::kind;
    let Some(fs) = fs("stat") else { return 1 };
    let mut status = 0;
    for p in args() {
        match fs.stat(&io::absolute(p)) {
            Ok(st) => outln!("{p}: {} {} bytes", if st.kind == kind::DIR { "folder" } else { "file" }, st.size),
            Err(e) => status = fail("stat", p, e),
        }
    }
    status
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
