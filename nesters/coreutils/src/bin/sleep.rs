//! sleep: waits SECONDS (a decimal, e.g. 0.5).

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
    let Some(secs) = a.first() else {
        errln!("usage: sleep SECONDS");
        return 2;
    };
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    let (Ok(w), Ok(f)) =
        (whole.parse::<u64>(), if frac.is_empty() { Ok(0) } else { frac.get(..3.min(frac.len())).unwrap_or("0").parse::<u64>() })
    else {
        errln!("sleep: {secs}: not a number");
        return 2;
    };
    let scale = [1000, 100, 10, 1][frac.len().min(3)];
    let ms = w * 1000 + f * scale;
    if let Err(e) = matryoshka_rt::time::sleep_ns(ms.saturating_mul(matryoshka_rt::time::MS)) {
        errln!("sleep: {e:?}");
        return 1;
    }
    0
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
