//! ipcload: many small requests to a server in another space (`ipcload
//! [N]`: N `stat` calls on the file server, default 2000), the IPC-heavy
//! client/server workload. Prints `steady CYCLES`.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

extern crate alloc;

use matryoshka_nest::{errln, io, outln};

#[cfg(target_os = "none")]
matryoshka_rt::entry!(run);

fn run() -> i32 {
    let n: u64 = matryoshka_rt::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let Some(fs) = io::fs() else { return 1 };
    let start = workloads::tsc();
    for _ in 0..n {
        if fs.stat("/etc/motd").is_err() {
            errln!("ipcload: stat failed");
            return 1;
        }
    }
    outln!("steady {}", workloads::tsc() - start);
    0
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
