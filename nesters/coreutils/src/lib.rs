//! What the programs of /bin share: reading their input, printing errors
//! the usual way (`NAME: what: why`, exit status 1), and the file system.
//! Each program is a binary of this crate (`src/bin/NAME.rs`) and its own
//! executable in the boot archive.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use matryoshka_nest::client::{Fs, Stream};
use matryoshka_nest::proto::{open, Error};
use matryoshka_nest::{errln, io};

/// The program's arguments after argv\[0\].
pub fn args() -> Vec<&'static str> {
    matryoshka_rt::env::args().skip(1).collect()
}

/// The file system, or an error line and `None`.
pub fn fs(name: &str) -> Option<Fs> {
    let f = io::fs();
    if f.is_none() {
        errln!("{name}: no file system");
    }
    f
}

/// Opens `path` (relative to PWD) for reading.
pub fn open_read(fs: &Fs, path: &str) -> Result<Stream, Error> {
    fs.open(&io::absolute(path), open::READ)
}

/// Copies a stream to standard output.
pub fn copy_out(from: Stream) -> Result<(), Error> {
    let out = io::stdout().ok_or(Error::NotFound)?;
    let mut buf = alloc::vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
    }
}

/// Reports `what: err` as `name: what: err`; returns status 1.
pub fn fail(name: &str, what: &str, err: Error) -> i32 {
    errln!("{name}: {what}: {err}");
    1
}

/// Joins words with single spaces.
pub fn join(words: &[&str]) -> String {
    let mut s = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(w);
    }
    s
}
