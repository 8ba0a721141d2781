//! Locating the workspace and building what boots: the kernel image
//! (`cargo build` of the kernel + symbol embedding -> `build/kernel.elf`),
//! the root user program (`cargo build -p init` -> `build/init.elf`,
//! passed to the kernel as the boot module `init`) and the system-call
//! fuzzer, the root program of fuzz boots (`cargo build -p fuzz` ->
//! `build/fuzz.elf`).

use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::ksyms;

/// Bare-metal target the kernel is built for.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";
/// Cargo package name of the kernel.
pub const KERNEL_PACKAGE: &str = "kernel";
/// Cargo package (and binary) name of the root user program.
pub const INIT_PACKAGE: &str = "init";
/// Cargo package (and binary) name of the system-call fuzzer.
pub const FUZZ_PACKAGE: &str = "fuzz";
/// Name of the boot module that holds the root user program.
pub const INIT_MODULE_NAME: &str = "init";

/// The workspace root: `$MATRYOSHKA_ROOT`, else the nearest ancestor of the
/// current directory holding a `Cargo.toml` with `[workspace]` and a
/// `kernel/` folder, else the root this crate was compiled in.
pub fn root() -> Result<PathBuf> {
    if let Some(r) = env::var_os("MATRYOSHKA_ROOT") {
        return Ok(PathBuf::from(r));
    }
    if let Ok(cwd) = env::current_dir() {
        for dir in cwd.ancestors() {
            if is_root(dir) {
                return Ok(dir.to_path_buf());
            }
        }
    }
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    if is_root(&compiled) {
        return Ok(compiled);
    }
    bail!("cannot find the Matryoshka workspace root (run inside the repository or set MATRYOSHKA_ROOT)")
}

fn is_root(dir: &Path) -> bool {
    dir.join("kernel").is_dir() && std::fs::read_to_string(dir.join("Cargo.toml")).map(|s| s.contains("[workspace]")).unwrap_or(false)
}

/// `<root>/build`, where every generated image lives.
pub fn build_dir(root: &Path) -> PathBuf {
    root.join("build")
}

/// `<root>/build/kernel.elf`, the final kernel image (symbols embedded).
pub fn kernel_image(root: &Path) -> PathBuf {
    build_dir(root).join("kernel.elf")
}

/// `<root>/build/init.elf`, the root user program (boot module `init`).
pub fn init_image(root: &Path) -> PathBuf {
    build_dir(root).join("init.elf")
}

/// `<root>/build/fuzz.elf`, the system-call fuzzer (the root program of fuzz boots).
pub fn fuzz_image(root: &Path) -> PathBuf {
    build_dir(root).join("fuzz.elf")
}

/// Options for [`build_kernel`].
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Print cargo's progress to stderr (otherwise only on failure).
    pub verbose: bool,
}

/// `cargo build -p PACKAGE --release --target x86_64-unknown-none`; returns
/// the path of the binary named `PACKAGE` that cargo reports.
fn cargo_build_bin(root: &Path, package: &str, opts: &BuildOptions) -> Result<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "-p", package, "--release", "--target", KERNEL_TARGET])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(if opts.verbose { Stdio::inherit() } else { Stdio::piped() });
    let mut child = cmd.spawn().with_context(|| format!("cannot run cargo to build {package}"))?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut buf = String::new();
        if let Some(mut e) = stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut buf);
        }
        buf
    });
    let mut artifact: Option<PathBuf> = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            if let Some(p) = bin_artifact_from_message(&line, package) {
                artifact = Some(p);
            }
        }
    }
    let status = child.wait()?;
    let err_text = err_thread.join().unwrap_or_default();
    if !status.success() {
        if !err_text.is_empty() {
            eprint!("{err_text}");
        }
        bail!("cargo build of {package} failed ({status})");
    }
    artifact.with_context(|| format!("cargo did not report a {package} executable (is the {package} package a binary?)"))
}

/// Build the kernel (`cargo build -p kernel --release --target
/// x86_64-unknown-none`), embed its symbols and write `build/kernel.elf`.
/// Returns the path of the final image.
pub fn build_kernel(root: &Path, opts: &BuildOptions) -> Result<PathBuf> {
    let raw = cargo_build_bin(root, KERNEL_PACKAGE, opts)?;
    let out = kernel_image(root);
    let stats = ksyms::embed_symbols(&raw, &out)?;
    if opts.verbose {
        eprintln!("embedded {} symbols ({} of {} bytes) -> {}", stats.symbols, stats.table_bytes, stats.section_size, out.display());
    }
    Ok(out)
}

/// Build the root user program (`cargo build -p init --release --target
/// x86_64-unknown-none`) and copy it to `build/init.elf`.
pub fn build_init(root: &Path, opts: &BuildOptions) -> Result<PathBuf> {
    let raw = cargo_build_bin(root, INIT_PACKAGE, opts)?;
    let out = init_image(root);
    copy_atomically(&raw, &out)?;
    if opts.verbose {
        eprintln!("{} -> {}", raw.display(), out.display());
    }
    Ok(out)
}

/// Build the system-call fuzzer (`cargo build -p fuzz --release --target
/// x86_64-unknown-none`) and copy it to `build/fuzz.elf`.
pub fn build_fuzz(root: &Path, opts: &BuildOptions) -> Result<PathBuf> {
    let raw = cargo_build_bin(root, FUZZ_PACKAGE, opts)?;
    let out = fuzz_image(root);
    copy_atomically(&raw, &out)?;
    if opts.verbose {
        eprintln!("{} -> {}", raw.display(), out.display());
    }
    Ok(out)
}

/// Build everything that boots: `build/kernel.elf`, `build/init.elf` and
/// `build/fuzz.elf`. Returns (kernel, init); the fuzzer is at [`fuzz_image`].
pub fn build_all(root: &Path, opts: &BuildOptions) -> Result<(PathBuf, PathBuf)> {
    let kernel = build_kernel(root, opts)?;
    let init = build_init(root, opts)?;
    build_fuzz(root, opts)?;
    Ok((kernel, init))
}

/// Copy `from` to `to` through a temporary file in `to`'s folder, so a
/// reader never sees half a file.
pub fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.partial", to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    std::fs::copy(from, &tmp).with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

/// Extract the executable path from one cargo JSON message if it is the
/// kernel's `compiler-artifact`.
pub fn kernel_artifact_from_message(line: &str) -> Option<PathBuf> {
    bin_artifact_from_message(line, KERNEL_PACKAGE)
}

/// Extract the executable path from one cargo JSON message if it is the
/// `compiler-artifact` of the binary target `name`.
pub fn bin_artifact_from_message(line: &str, name: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let target = v.get("target")?;
    let is_bin = target.get("kind")?.as_array()?.iter().any(|k| k.as_str() == Some("bin"));
    if !is_bin || target.get("name")?.as_str()? != name {
        return None;
    }
    v.get("executable")?.as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_message_parsing() {
        let msg = r#"{"reason":"compiler-artifact","package_id":"x","target":{"kind":["bin"],"crate_types":["bin"],"name":"kernel","src_path":"/r/kernel/src/main.rs"},"executable":"/r/target/x86_64-unknown-none/release/kernel","fresh":true}"#;
        assert_eq!(kernel_artifact_from_message(msg), Some(PathBuf::from("/r/target/x86_64-unknown-none/release/kernel")));
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"kernel"},"executable":null}"#;
        assert_eq!(kernel_artifact_from_message(lib), None);
        let other = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"mkboot"},"executable":"/x"}"#;
        assert_eq!(kernel_artifact_from_message(other), None);
        let init = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"init"},"executable":"/r/target/x86_64-unknown-none/release/init"}"#;
        assert_eq!(kernel_artifact_from_message(init), None);
        assert_eq!(bin_artifact_from_message(init, INIT_PACKAGE), Some(PathBuf::from("/r/target/x86_64-unknown-none/release/init")));
        assert_eq!(kernel_artifact_from_message("not json"), None);
        assert_eq!(kernel_artifact_from_message(r#"{"reason":"build-finished","success":true}"#), None);
    }
}
