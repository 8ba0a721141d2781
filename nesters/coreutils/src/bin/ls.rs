//! ls: lists folders (`-l`: with kind and size), or names files.

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
    use matryoshka_nest::proto::{kind, open};
    let a = args();
    let long = a.contains(&"-l");
    let mut paths: alloc::vec::Vec<&str> = a.iter().copied().filter(|x| *x != "-l").collect();
    if paths.is_empty() {
        paths.push(".");
    }
    let Some(fs) = fs("ls") else { return 1 };
    let mut status = 0;
    for p in paths {
        let abs = io::absolute(p);
        match fs.stat(&abs) {
            Ok(st) if st.kind == kind::DIR => match fs.open(&abs, open::DIRECTORY) {
                Ok(d) => {
                    let mut i = 0;
                    while let Ok(Some((name, k, size))) = d.readdir(i) {
                        if long {
                            outln!("{} {:>8} {}", if k == kind::DIR { "d" } else { "-" }, size, name);
                        } else {
                            outln!("{name}{}", if k == kind::DIR { "/" } else { "" });
                        }
                        i += 1;
                    }
                    let _ = d.close();
                }
                Err(e) => status = fail("ls", p, e),
            },
            Ok(st) => {
                if long {
                    outln!("- {:>8} {}", st.size, p);
                } else {
                    outln!("{p}");
                }
            }
            Err(e) => status = fail("ls", p, e),
        }
    }
    status
}

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(run());
}
