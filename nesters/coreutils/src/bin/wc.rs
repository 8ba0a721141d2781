//! wc: counts lines, words and bytes of each file or of standard input (`-l`, `-w`, `-c` pick).

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

/// Counts what `s` holds; with `scan` false only the bytes (`wc -c` need
/// not look at them).
fn count(s: matryoshka_nest::client::Stream, scan: bool) -> Result<(u64, u64, u64), matryoshka_nest::proto::Error> {
    // As much as one reply carries: a pipe's whole buffer in one request.
    let mut buf = alloc::vec![0u8; matryoshka_nest::proto::MAX_PAYLOAD];
    let (mut lines, mut words, mut bytes, mut in_word) = (0u64, 0u64, 0u64, false);
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok((lines, words, bytes));
        }
        bytes += n as u64;
        if !scan {
            continue;
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                lines += 1;
            }
            let space = b.is_ascii_whitespace();
            if !space && !in_word {
                words += 1;
            }
            in_word = !space;
        }
    }
}

fn run() -> i32 {
    let a = args();
    let flags: alloc::vec::Vec<&str> = a.iter().copied().filter(|x| x.starts_with('-') && x.len() > 1).collect();
    let files: alloc::vec::Vec<&str> = a.iter().copied().filter(|x| !(x.starts_with('-') && x.len() > 1)).collect();
    let (l, w, c) =
        if flags.is_empty() { (true, true, true) } else { (flags.contains(&"-l"), flags.contains(&"-w"), flags.contains(&"-c")) };
    let show = |(lines, words, bytes): (u64, u64, u64), name: &str| {
        let mut s = alloc::string::String::new();
        for (on, v) in [(l, lines), (w, words), (c, bytes)] {
            if on {
                if !s.is_empty() {
                    s.push(' ');
                }
                s.push_str(&alloc::format!("{v}"));
            }
        }
        if !name.is_empty() {
            s.push(' ');
            s.push_str(name);
        }
        outln!("{s}");
    };
    if files.is_empty() {
        return match io::stdin().map(|s| count(s, l || w)) {
            Some(Ok(t)) => {
                show(t, "");
                0
            }
            Some(Err(e)) => fail("wc", "stdin", e),
            None => 1,
        };
    }
    let Some(fs) = fs("wc") else { return 1 };
    let mut status = 0;
    for f in files {
        match open_read(&fs, f).and_then(|s| {
            let r = count(s, l || w);
            let _ = s.close();
            r
        }) {
            Ok(t) => show(t, f),
            Err(e) => status = fail("wc", f, e),
        }
    }
    status
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
