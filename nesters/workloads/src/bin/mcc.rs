//! mcc: compiles one MC source file (`mcc SRC OUT`): reads it through the
//! file server, tokenizes, parses and checks it, writes stack-machine code
//! to OUT and its diagnostics (`SRC:LINE: warning|error: ...`) to standard
//! error. `mcc --link DIR OUT` reads every `.s` file of DIR and writes a
//! summary (the final step of `mk`). Exit 1 on an error.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use matryoshka_nest::proto::open;
use matryoshka_nest::{errln, io, outln};

#[cfg(target_os = "none")]
matryoshka_rt::entry!(run);

fn write_file(fs: &matryoshka_nest::client::Fs, path: &str, bytes: &[u8]) -> Result<(), matryoshka_nest::proto::Error> {
    let f = fs.open(path, open::WRITE | open::CREATE | open::TRUNCATE)?;
    let r = f.write_all(bytes);
    let _ = f.close();
    r
}

fn link(fs: &matryoshka_nest::client::Fs, dir: &str, out: &str) -> i32 {
    let Ok(d) = fs.open(dir, open::READ | open::DIRECTORY) else {
        errln!("mcc: {dir}: cannot open");
        return 1;
    };
    let (mut files, mut funcs, mut lines) = (0, 0, 0);
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while let Ok(Some((name, _, _))) = d.readdir(i) {
        i += 1;
        if !name.ends_with(".s") {
            continue;
        }
        let Ok(code) = fs.read_file(&format!("{dir}/{name}")) else {
            errln!("mcc: {dir}/{name}: cannot read");
            return 1;
        };
        let text = String::from_utf8_lossy(&code);
        files += 1;
        lines += text.lines().count();
        for l in text.lines().filter(|l| l.starts_with("func ")) {
            funcs += 1;
            names.push(String::from(l.split(' ').nth(1).unwrap_or("")));
        }
    }
    let _ = d.close();
    names.sort();
    let dups = names.windows(2).filter(|w| w[0] == w[1]).count();
    let summary = format!("linked {files} files, {funcs} functions, {lines} lines, {dups} duplicate names\n");
    if write_file(fs, out, summary.as_bytes()).is_err() {
        errln!("mcc: {out}: cannot write");
        return 1;
    }
    0
}

fn run() -> i32 {
    let start = workloads::tsc();
    let args: Vec<&str> = matryoshka_rt::env::args().skip(1).collect();
    let Some(fs) = io::fs() else { return 1 };
    let status = match args.as_slice() {
        ["--link", dir, out] => link(&fs, dir, out),
        [src, out] => {
            let Ok(bytes) = fs.read_file(src) else {
                errln!("mcc: {src}: cannot read");
                return 1;
            };
            let c = workloads::mc::compile(&String::from_utf8_lossy(&bytes));
            for d in &c.diagnostics {
                errln!("{src}:{}: {}: {}", d.line, if d.error { "error" } else { "warning" }, d.message);
            }
            if c.errors() > 0 {
                1
            } else if write_file(&fs, out, c.code.as_bytes()).is_err() {
                errln!("mcc: {out}: cannot write");
                1
            } else {
                0
            }
        }
        _ => {
            errln!("usage: mcc SRC OUT | mcc --link DIR OUT");
            2
        }
    };
    outln!("steady {}", workloads::tsc() - start);
    status
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
