//! mk: a make-like driver (`mk [-j N] SRC_DIR OUT_DIR`): compiles every
//! `.mc` file of SRC_DIR with its own `mcc` process (at most N at once,
//! default 4), each one's diagnostics coming back on a pipe, then links
//! with `mcc --link`. Prints a summary and `steady CYCLES`; exit 1 if any
//! step failed.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use matryoshka_nest::client::{Pm, SpawnRefs, Stream};
use matryoshka_nest::proto::{open, slot};
use matryoshka_nest::{errln, io, outln};

#[cfg(target_os = "none")]
matryoshka_rt::entry!(run);

/// A running compile: its pid and the read end of its diagnostics pipe.
struct Job {
    pid: u64,
    diagnostics: Stream,
}

fn start(pm: &Pm, argv: &[&str]) -> Result<Job, String> {
    let (r, w) = pm.pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut refs = SpawnRefs::default();
    refs.refs[slot::STDERR as usize] = Some(w.0);
    // Standard output (the child's `steady` line) goes nowhere useful here: mk's own.
    let spawned = pm.spawn("/bin/mcc", argv, &[], &refs, 0);
    // Only our handle: a protocol close would end the pipe end the child holds too.
    let _ = matryoshka_rt::object::close(w.0);
    match spawned {
        Ok(c) => Ok(Job { pid: c.pid, diagnostics: r }),
        Err(e) => {
            let _ = r.close();
            Err(format!("{}: {e}", argv.join(" ")))
        }
    }
}

/// Waits for a job; returns (status, diagnostic lines).
fn finish(pm: &Pm, job: Job) -> (u64, usize) {
    let text = job.diagnostics.read_to_end().unwrap_or_default();
    let _ = job.diagnostics.close();
    let status = pm.wait(job.pid, true).map(|w| w.1).unwrap_or(1);
    (status, text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count())
}

fn run() -> i32 {
    let start_tsc = workloads::tsc();
    let mut args: Vec<&str> = matryoshka_rt::env::args().skip(1).collect();
    let mut jobs_max = 4;
    if args.first() == Some(&"-j") && args.len() > 1 {
        jobs_max = args[1].parse().unwrap_or(4).max(1);
        args.drain(..2);
    }
    let [src, out] = args.as_slice() else {
        errln!("usage: mk [-j N] SRC_DIR OUT_DIR");
        return 2;
    };
    let (Some(fs), Some(pm)) = (io::fs(), io::pm()) else { return 1 };
    // mkdir -p OUT_DIR.
    let mut at = String::new();
    for part in out.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        let _ = fs.mkdir(&at);
    }
    let Ok(dir) = fs.open(src, open::READ | open::DIRECTORY) else {
        errln!("mk: {src}: cannot open");
        return 1;
    };
    let mut sources = Vec::new();
    let mut i = 0;
    while let Ok(Some((name, _, _))) = dir.readdir(i) {
        i += 1;
        if let Some(stem) = name.strip_suffix(".mc") {
            sources.push(String::from(stem));
        }
    }
    let _ = dir.close();
    sources.sort();
    let (mut failed, mut diagnostics, mut running) = (0, 0, Vec::new());
    for stem in &sources {
        if running.len() == jobs_max {
            let (s, d) = finish(&pm, running.remove(0));
            failed += (s != 0) as usize;
            diagnostics += d;
        }
        let (from, to) = (format!("{src}/{stem}.mc"), format!("{out}/{stem}.s"));
        match start(&pm, &["mcc", &from, &to]) {
            Ok(j) => running.push(j),
            Err(e) => {
                errln!("mk: {e}");
                failed += 1;
            }
        }
    }
    for j in running {
        let (s, d) = finish(&pm, j);
        failed += (s != 0) as usize;
        diagnostics += d;
    }
    let image = format!("{out}/image");
    let linked = start(&pm, &["mcc", "--link", out, &image]).map(|j| finish(&pm, j));
    let link_ok = matches!(linked, Ok((0, _)));
    let summary = fs.read_file(&image).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    outln!("mk: {} compiled, {failed} failed, {diagnostics} diagnostics; {}", sources.len(), summary.trim());
    outln!("steady {}", workloads::tsc() - start_tsc);
    if failed == 0 && link_ok {
        0
    } else {
        1
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
