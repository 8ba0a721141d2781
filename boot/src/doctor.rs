//! `mkboot doctor`: find missing host tools and say (or do) how to install
//! them on Debian/Ubuntu.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use crate::qemu::{Ovmf, QBOOT_ROM};
use crate::workspace::KERNEL_TARGET;

/// How to install a missing piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fix {
    Apt(&'static str),
    /// QEMU 10 unpacked from bookworm-backports (`emulators::install_qemu10`).
    Qemu10,
    RustTarget,
    PipJust,
}

impl Fix {
    pub fn describe(&self) -> String {
        match self {
            Fix::Apt(pkg) => format!("{}apt-get install -y {pkg}", sudo_prefix()),
            Fix::Qemu10 => format!(
                "mkboot doctor --install (apt-get download {} from {} + dpkg -x into {})",
                crate::emulators::QEMU10_PACKAGES.join(" "),
                crate::emulators::QEMU10_SUITE,
                crate::emulators::qemu10_dir().display()
            ),
            Fix::RustTarget => format!("rustup target add {KERNEL_TARGET}"),
            Fix::PipJust => "pip install rust-just   (or: cargo install just)".into(),
        }
    }
}

/// One requirement and whether it is met.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub purpose: &'static str,
    pub ok: bool,
    /// Not needed for `just test` (only for some interactive workflow).
    pub optional: bool,
    pub fix: Fix,
}

fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false)
}

fn rust_target_installed() -> bool {
    // Works with and without rustup: look in the active sysroot.
    let Ok(out) = Command::new("rustc").args(["--print", "sysroot"]).stderr(Stdio::null()).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot).join("lib/rustlib").join(KERNEL_TARGET).is_dir()
}

/// Every requirement, checked now.
pub fn checks() -> Vec<Check> {
    let apt = |name, purpose, ok, pkg| Check { name, purpose, ok, optional: false, fix: Fix::Apt(pkg) };
    vec![
        apt("qemu-system-x86_64", "runs the kernel", on_path("qemu-system-x86_64"), "qemu-system-x86"),
        apt(
            "iPXE option ROMs",
            "PXE boot under QEMU",
            Path::new("/usr/lib/ipxe/qemu/pxe-e1000.rom").is_file() || Path::new("/usr/share/qemu/pxe-e1000.rom").is_file(),
            "ipxe-qemu",
        ),
        apt("grub-mkrescue", "builds the ISO", on_path("grub-mkrescue"), "grub-common"),
        apt("grub-mknetdir", "builds the PXE tree", on_path("grub-mknetdir"), "grub-common"),
        apt("GRUB i386-pc modules", "BIOS boot of the ISO/PXE", Path::new("/usr/lib/grub/i386-pc").is_dir(), "grub-pc-bin"),
        apt("GRUB x86_64-efi modules", "UEFI boot of the ISO/PXE", Path::new("/usr/lib/grub/x86_64-efi").is_dir(), "grub-efi-amd64-bin"),
        apt("xorriso", "writes the ISO", on_path("xorriso"), "xorriso"),
        apt("mformat", "EFI system partition inside the ISO", on_path("mformat"), "mtools"),
        apt("OVMF", "UEFI firmware for QEMU", Ovmf::find().is_ok(), "ovmf"),
        apt("bochs", "the PCID scenario (Bochs emulates PCID and INVPCID)", on_path("bochs"), "bochs"),
        apt("Bochs BIOS", "the PCID scenario", Path::new(crate::emulators::BOCHS_BIOS).is_file(), "bochsbios"),
        apt("Bochs VGA BIOS", "the PCID scenario", Path::new(crate::emulators::BOCHS_VGABIOS).is_file(), "vgabios"),
        Check {
            name: "QEMU 10",
            purpose: "the x2APIC scenario (QEMU 7.2's TCG has no x2APIC)",
            ok: crate::emulators::qemu10_present(),
            optional: false,
            fix: Fix::Qemu10,
        },
        Check {
            name: "qboot",
            purpose: "optional fast firmware for direct boot (--firmware qboot)",
            ok: Path::new(QBOOT_ROM).is_file(),
            optional: true,
            fix: Fix::Apt("qemu-system-data"),
        },
        Check { name: "gdb", purpose: "debugging with `just qemu-gdb`", ok: on_path("gdb"), optional: true, fix: Fix::Apt("gdb") },
        Check {
            name: "rust target x86_64-unknown-none",
            purpose: "builds the kernel",
            ok: rust_target_installed(),
            optional: false,
            fix: Fix::RustTarget,
        },
        Check { name: "just", purpose: "runs the Justfile recipes", ok: on_path("just"), optional: false, fix: Fix::PipJust },
    ]
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the process's effective uid.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn sudo_prefix() -> &'static str {
    if is_root() {
        ""
    } else {
        "sudo "
    }
}

/// Print a report; returns true if every required tool is present.
pub fn report(checks: &[Check]) -> bool {
    let mut all_ok = true;
    for c in checks {
        let state = match (c.ok, c.optional) {
            (true, _) => "ok      ",
            (false, true) => "optional",
            (false, false) => "MISSING ",
        };
        println!("{state} {:<32} {}", c.name, c.purpose);
        if !c.ok {
            println!("         install: {}", c.fix.describe());
            all_ok &= c.optional;
        }
    }
    all_ok
}

fn run(argv: &[&str]) -> Result<()> {
    let mut full: Vec<&str> = Vec::new();
    if (argv[0] == "apt-get" || argv[0] == "install") && !is_root() {
        full.push("sudo");
    }
    full.extend_from_slice(argv);
    println!("+ {}", full.join(" "));
    let status = Command::new(full[0]).args(&full[1..]).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("`{}` failed with {s}", full.join(" ")),
        Err(e) => bail!("cannot run `{}`: {e}", full.join(" ")),
    }
}

/// Install everything missing (Debian/Ubuntu; apt-get via sudo when not
/// root). Optional tools are installed too.
pub fn install_missing(checks: &[Check]) -> Result<()> {
    let mut pkgs: Vec<&str> = Vec::new();
    for c in checks.iter().filter(|c| !c.ok) {
        if let Fix::Apt(p) = c.fix {
            if !pkgs.contains(&p) {
                pkgs.push(p);
            }
        }
    }
    if !pkgs.is_empty() {
        if !on_path("apt-get") {
            bail!("apt-get not found: install these packages with your package manager: {}", pkgs.join(" "));
        }
        run(&["apt-get", "update"])?;
        let mut argv = vec!["apt-get", "install", "-y", "--no-install-recommends"];
        argv.extend(pkgs.iter().copied());
        run(&argv)?;
    }
    if checks.iter().any(|c| !c.ok && c.fix == Fix::Qemu10) {
        crate::emulators::install_qemu10(&|argv| run(argv))?;
    }
    if checks.iter().any(|c| !c.ok && c.fix == Fix::RustTarget) {
        run(&["rustup", "target", "add", KERNEL_TARGET])?;
    }
    if checks.iter().any(|c| !c.ok && c.fix == Fix::PipJust) && run(&["pip", "install", "rust-just"]).is_err() {
        run(&["cargo", "install", "--locked", "just"])?;
    }
    Ok(())
}
