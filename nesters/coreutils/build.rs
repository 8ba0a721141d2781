//! Links the bare-metal build with the user-program script of matryoshka-rt
//! (fixed address 0x400000, W^X segments, not position independent).

use std::path::PathBuf;

fn main() {
    let script = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../rt/user.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
