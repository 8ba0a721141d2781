//! kill: `kill [-TERM|-INT|-KILL|-N] PID...` ends processes.

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
    use matryoshka_nest::proto::signal;
    let Some(pm) = io::pm() else { return 1 };
    let a = args();
    let (sig, pids) = match a.first() {
        Some(s) if s.starts_with('-') => {
            let sig = match &s[1..] {
                "TERM" | "15" => signal::TERM,
                "INT" | "2" => signal::INT,
                "KILL" | "9" => signal::KILL,
                other => {
                    errln!("kill: unknown signal {other}");
                    return 2;
                }
            };
            (sig, &a[1..])
        }
        _ => (signal::TERM, &a[..]),
    };
    if pids.is_empty() {
        errln!("usage: kill [-TERM|-INT|-KILL] PID...");
        return 2;
    }
    let mut status = 0;
    for p in pids {
        match p.parse::<u64>() {
            Ok(pid) => {
                if let Err(e) = pm.kill(pid, sig) {
                    status = fail("kill", p, e);
                }
            }
            Err(_) => {
                errln!("kill: {p}: not a process id");
                status = 2;
            }
        }
    }
    status
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
