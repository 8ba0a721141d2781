//! ps: lists the processes of this process manager.

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
    let Some(pm) = io::pm() else { return 1 };
    outln!("  PID  PPID STATE   COMMAND");
    let mut i = 0;
    while let Ok(Some(p)) = pm.list(i) {
        let state = if p.exited { alloc::format!("exit {}", p.status) } else { alloc::string::String::from("run") };
        outln!("{:5} {:5} {state:7} {}", p.pid, p.ppid, p.command);
        i += 1;
    }
    0
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
