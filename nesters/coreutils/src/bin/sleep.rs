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
    let hz = matryoshka_rt::object::system_info().map(|i| i.tsc_hz).unwrap_or(1_000_000_000).max(1);
    // SAFETY: rdtsc is allowed in ring 3.
    let start = unsafe { core::arch::x86_64::_rdtsc() };
    let until = start + ms * (hz / 1000);
    // SAFETY: as above.
    while unsafe { core::arch::x86_64::_rdtsc() } < until {
        matryoshka_rt::object::yield_now();
    }
    0
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
