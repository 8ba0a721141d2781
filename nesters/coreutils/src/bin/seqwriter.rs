//! seqwriter: `seqwriter N` writes the lines `0` to `N-1` to standard
//! output, one write request per line (systest stops and resumes it in the
//! middle of those requests to check that none is lost or doubled).

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

extern crate alloc;

use matryoshka_nest::io;

#[cfg(target_os = "none")]
matryoshka_rt::entry!(run);

fn run() -> i32 {
    let n: u64 = coreutils::args().first().and_then(|s| s.parse().ok()).unwrap_or(100);
    let Some(out) = io::stdout() else { return 1 };
    for i in 0..n {
        let line = alloc::format!("{i}\n");
        if out.write_all(line.as_bytes()).is_err() {
            return 1;
        }
    }
    0
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
