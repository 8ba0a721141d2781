//! Locating the workspace and building what boots: the kernel image
//! (`cargo build` of the kernel + symbol embedding -> `build/kernel.elf`),
//! the boot archive (every user program of [`PROGRAMS`] as `bin/NAME` and
//! the data files of `nesters/files/` -> `build/boot.cpio`, passed to the
//! kernel as the boot module `init`; the kernel runs its `bin/init`) and the
//! system-call fuzzer, the root program of fuzz boots (`cargo build -p fuzz`
//! -> `build/fuzz.elf`).

use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{archive, ksyms};

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

/// The user programs of the boot archive: (cargo package, its binaries).
/// Each binary lands in the archive as `bin/NAME`; `init` is the root.
pub const PROGRAMS: &[(&str, &[&str])] = &[
    (INIT_PACKAGE, &["init"]),
    ("fs", &["fs"]),
    ("pm", &["pm"]),
    ("msh", &["msh"]),
    ("passthru", &["passthru"]),
    (
        "coreutils",
        &[
            "echo",
            "cat",
            "ls",
            "wc",
            "ps",
            "kill",
            "sleep",
            "true",
            "false",
            "mkdir",
            "rm",
            "stat",
            "hello",
            "systest",
            "nestbench",
            "seqwriter",
        ],
    ),
    ("workloads", &["mk", "mcc", "ipcload", "reprobench"]),
];

/// Folder of data files copied into the archive as they are (relative paths kept).
pub const FILES_DIR: &str = "nesters/files";

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

/// `<root>/build/init.elf`, the root user program alone.
pub fn init_image(root: &Path) -> PathBuf {
    build_dir(root).join("init.elf")
}

/// `<root>/build/boot.cpio`, the boot archive (boot module `init`): every
/// program and data file; the kernel runs its `bin/init`.
pub fn boot_archive(root: &Path) -> PathBuf {
    build_dir(root).join("boot.cpio")
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
    let bins = cargo_build_bins(root, &[package], opts)?;
    bins.into_iter()
        .find(|(name, _)| name == package)
        .map(|(_, p)| p)
        .with_context(|| format!("cargo did not report a {package} executable (is the {package} package a binary?)"))
}

/// One `cargo build -p A -p B ... --release --target x86_64-unknown-none`;
/// returns every binary cargo reports, as (name, path).
fn cargo_build_bins(root: &Path, packages: &[&str], opts: &BuildOptions) -> Result<Vec<(String, PathBuf)>> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).arg("build");
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.args(["--release", "--target", KERNEL_TARGET])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(if opts.verbose { Stdio::inherit() } else { Stdio::piped() });
    let what = packages.join(", ");
    let mut child = cmd.spawn().with_context(|| format!("cannot run cargo to build {what}"))?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut buf = String::new();
        if let Some(mut e) = stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut buf);
        }
        buf
    });
    let mut artifacts = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            if let Some(a) = any_bin_artifact_from_message(&line?) {
                artifacts.push(a);
            }
        }
    }
    let status = child.wait()?;
    let err_text = err_thread.join().unwrap_or_default();
    if !status.success() {
        if !err_text.is_empty() {
            eprint!("{err_text}");
        }
        bail!("cargo build of {what} failed ({status})");
    }
    Ok(artifacts)
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

/// Build every user program of [`PROGRAMS`] (one cargo run), copy the root
/// program to `build/init.elf` and write the boot archive
/// `build/boot.cpio`: `bin/NAME` for every binary, then the files of
/// [`FILES_DIR`]. Returns the archive's path.
pub fn build_init(root: &Path, opts: &BuildOptions) -> Result<PathBuf> {
    let packages: Vec<&str> = PROGRAMS.iter().map(|(p, _)| *p).collect();
    let built = cargo_build_bins(root, &packages, opts)?;
    let mut entries = Vec::new();
    for (_, bins) in PROGRAMS {
        for bin in bins.iter() {
            let path = built
                .iter()
                .find(|(name, _)| name == bin)
                .map(|(_, p)| p.clone())
                .with_context(|| format!("cargo did not report the program {bin}"))?;
            entries.push(archive::Entry::file(
                format!("bin/{bin}"),
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                0o755,
            ));
        }
    }
    let init = built.iter().find(|(n, _)| n == INIT_PACKAGE).map(|(_, p)| p.clone()).context("no init binary")?;
    copy_atomically(&init, &init_image(root))?;
    entries.extend(archive::entries_from_dir(&root.join(FILES_DIR))?);
    let out = boot_archive(root);
    archive::write(&out, &entries)?;
    if opts.verbose {
        eprintln!("{} entries -> {}", entries.len(), out.display());
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

/// Build everything that boots: `build/kernel.elf`, `build/boot.cpio` (with
/// `build/init.elf`) and `build/fuzz.elf`. Returns (kernel, boot archive);
/// the fuzzer is at [`fuzz_image`].
/// The kernel and boot archive a measuring tool boots: built now, or with
/// `reuse` those of the last build (`--no-build`).
pub fn images(root: &Path, reuse: bool) -> Result<(PathBuf, PathBuf)> {
    if reuse {
        Ok((kernel_image(root), boot_archive(root)))
    } else {
        build_all(root, &BuildOptions::default())
    }
}

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

/// (name, executable) from one cargo JSON message if it is a binary's `compiler-artifact`.
pub fn any_bin_artifact_from_message(line: &str) -> Option<(String, PathBuf)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let target = v.get("target")?;
    if !target.get("kind")?.as_array()?.iter().any(|k| k.as_str() == Some("bin")) {
        return None;
    }
    Some((target.get("name")?.as_str()?.to_string(), PathBuf::from(v.get("executable")?.as_str()?)))
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
