//! msh, the Matryoshka shell: a prompt on its standard input (the serial
//! console), or one command line with `-c`. Pipelines (`a | b`), `&`,
//! `;`, `< file` and `> file`, quotes, `$?`, and the built-ins a shell
//! needs: `cd`, `exit`, `help`, `jobs`, `wait` and
//! `run STACK -- PROGRAM ARGS`, which starts PROGRAM under a stack of
//! nesters named outermost first (`run passthru,passthru -- echo hi`).
//! Everything else is a program in `/bin` the shell spawns through its
//! process manager, so it can run under any stack.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

extern crate alloc;

mod parse;

#[cfg(target_os = "none")]
mod shell;

#[cfg(target_os = "none")]
matryoshka_rt::entry!(shell::main);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("msh: this program runs under the Matryoshka kernel (it is bin/msh in the boot archive)");
    std::process::exit(2);
}
