//! A process's world as its spawner gave it: standard streams, its file
//! system session, its process manager and its parent (auxiliary entries
//! `AT_REF + slot`, see `crate::loader`), `print!`-style output to its
//! standard output, and paths relative to `PWD`.

use alloc::string::String;
use core::fmt;

use matryoshka_rt::object::Handle;

use crate::client::{Fs, Parent, Pm, Stream};
use crate::loader::AT_REF;
use crate::proto::slot;

/// The aux slot of the process manager reference (after the spawn slots).
pub const SLOT_PM: u64 = slot::COUNT as u64;

fn reference(slot: u64) -> Option<Handle> {
    matryoshka_rt::env::aux(AT_REF + slot).filter(|&h| h != 0).map(Handle)
}

pub fn stdin() -> Option<Stream> {
    reference(slot::STDIN).map(Stream)
}
pub fn stdout() -> Option<Stream> {
    reference(slot::STDOUT).map(Stream)
}
pub fn stderr() -> Option<Stream> {
    reference(slot::STDERR).map(Stream)
}
pub fn fs() -> Option<Fs> {
    reference(slot::FS).map(Fs)
}
pub fn pm() -> Option<Pm> {
    reference(SLOT_PM).map(Pm)
}
pub fn parent() -> Option<Parent> {
    matryoshka_rt::env::parent_port().map(Parent)
}

/// `path` made absolute against `PWD` (or `/`), with `.` and `..` resolved.
pub fn absolute(path: &str) -> String {
    let mut out: alloc::vec::Vec<&str> = alloc::vec::Vec::new();
    let base = if path.starts_with('/') { "" } else { matryoshka_rt::env::var("PWD").unwrap_or("/") };
    for part in base.split('/').chain(path.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    let mut s = String::from("/");
    s.push_str(&out.join("/"));
    s
}

/// Buffered writer to a stream (flushed when full and at drop).
pub struct Writer {
    to: Option<Stream>,
    buf: [u8; 1024],
    len: usize,
}

impl Writer {
    pub fn new(to: Option<Stream>) -> Self {
        Writer { to, buf: [0; 1024], len: 0 }
    }
    pub fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        match self.to {
            Some(s) => {
                let _ = s.write_all(&self.buf[..self.len]);
            }
            // No stream: the kernel console (a program started without one).
            None => {
                for chunk in self.buf[..self.len].chunks(matryoshka_rt::CONSOLE_WRITE_MAX) {
                    let _ = matryoshka_rt::console_write(chunk);
                }
            }
        }
        self.len = 0;
    }
}

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.flush();
    }
}

#[doc(hidden)]
pub fn _out(args: fmt::Arguments) {
    let mut w = Writer::new(stdout());
    let _ = fmt::Write::write_fmt(&mut w, args);
}

#[doc(hidden)]
pub fn _err(args: fmt::Arguments) {
    let mut w = Writer::new(stderr().or(stdout()));
    let _ = fmt::Write::write_fmt(&mut w, args);
}

/// Prints to standard output.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::io::_out(format_args!($($arg)*)) };
}

/// Prints a line to standard output.
#[macro_export]
macro_rules! outln {
    () => { $crate::io::_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::io::_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints a line to standard error.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::io::_err(format_args!("{}\n", format_args!($($arg)*))) };
}
