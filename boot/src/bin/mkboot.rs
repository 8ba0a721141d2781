//! `mkboot`: build, package and boot the Matryoshka kernel.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use matryoshka_boot::qemu::{self, Accel, Firmware, Mode, QemuRun, Serial};
use matryoshka_boot::{doctor, image, ksyms, workspace};

#[derive(Parser)]
#[command(name = "mkboot", version, about = "Build, package and boot the Matryoshka kernel")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// What goes into a boot image (ISO or PXE tree).
#[derive(clap::Args)]
struct ImageArgs {
    #[arg(long, default_value = "build/kernel.elf")]
    kernel: PathBuf,
    /// Root user program, loaded as the boot module `init`
    #[arg(long, default_value = "build/boot.cpio")]
    init: PathBuf,
    /// Kernel command line
    #[arg(long, default_value = "log=info")]
    cmdline: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel (cargo, release, x86_64-unknown-none) and embed its symbols into build/kernel.elf; build every user program into the boot archive build/boot.cpio (root program bin/init) and the fuzzer into build/fuzz.elf
    Build {
        /// Only print errors
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write the demangled function symbol table into the .ksyms section of a kernel ELF
    EmbedSymbols {
        /// Linked kernel ELF (with a zero-filled .ksyms section)
        input: PathBuf,
        /// Where to write the image (may equal INPUT)
        output: PathBuf,
    },
    /// Print the symbol table embedded in a kernel ELF, or look up addresses in it
    Symbols {
        /// Kernel ELF with embedded symbols
        elf: PathBuf,
        /// Addresses (hex, 0x optional) to symbolize instead of dumping the table
        addrs: Vec<String>,
    },
    /// Build a hybrid BIOS+UEFI GRUB ISO (bootable from CD or, written with dd, from USB)
    Iso {
        #[command(flatten)]
        image: ImageArgs,
        #[arg(long, default_value = "build/matryoshka.iso")]
        out: PathBuf,
    },
    /// Build a TFTP root for PXE boot (GRUB for BIOS and UEFI, grub.cfg, kernel)
    Pxe {
        #[command(flatten)]
        image: ImageArgs,
        #[arg(long, default_value = "build/pxe")]
        out: PathBuf,
    },
    /// Boot the kernel under QEMU (serial on this terminal; Ctrl-A X quits)
    Qemu(QemuArgs),
    /// Check for the host tools the build and tests need; --install installs missing ones
    Doctor {
        /// Install what is missing (apt-get via sudo when not root, rustup, pip)
        #[arg(long)]
        install: bool,
    },
}

#[derive(clap::Args)]
struct QemuArgs {
    /// How the kernel is loaded
    #[arg(long, value_enum, default_value_t = Mode::Direct)]
    mode: Mode,
    /// Number of CPUs
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=255))]
    cpus: u32,
    /// tcg (-cpu max) or kvm (-cpu host)
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// Guest memory in MB
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..))]
    memory: u32,
    /// Wait for gdb on :1234 (-s -S) and print the gdb command to use
    #[arg(long)]
    gdb: bool,
    /// Deterministic instruction counting (-icount shift=0,align=off,sleep=off)
    #[arg(long)]
    icount: bool,
    /// Kernel command line; with exit=qemu the run's exit status is the kernel's verdict
    #[arg(long, default_value = "log=info")]
    cmdline: String,
    #[arg(long, default_value = "build/kernel.elf")]
    kernel: PathBuf,
    /// Root user program, passed as the boot module `init`
    #[arg(long, default_value = "build/boot.cpio")]
    init: PathBuf,
    /// Boot without the root program
    #[arg(long, conflicts_with = "init")]
    no_init: bool,
    /// Firmware for direct mode
    #[arg(long, value_enum, default_value_t = Firmware::Seabios)]
    firmware: Firmware,
    /// Build build/kernel.elf, build/boot.cpio and build/fuzz.elf first
    #[arg(long)]
    build: bool,
    /// Kill QEMU after this many seconds (0 = never)
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Print the QEMU command line and exit (builds and runs nothing)
    #[arg(long)]
    print_only: bool,
    /// Extra arguments passed to QEMU as they are (after --)
    #[arg(last = true)]
    qemu_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match matryoshka_boot::cli::parse::<Cli>("mkboot") {
        Ok(c) => c,
        Err(code) => return code,
    };
    run(cli).unwrap_or_else(|e| matryoshka_boot::cli::fail("mkboot", &e))
}

/// Relative paths given on the command line are relative to the current
/// directory; defaults (build/...) are relative to the workspace root.
fn resolve(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() || p.exists() || !p.starts_with("build") {
        return Ok(p.to_path_buf());
    }
    Ok(workspace::root()?.join(p))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Build { quiet } => {
            let root = workspace::root()?;
            let (kernel, init) = workspace::build_all(&root, &workspace::BuildOptions { verbose: !quiet })?;
            if !quiet {
                println!("{}", kernel.display());
                println!("{}", init.display());
                println!("{}", workspace::fuzz_image(&root).display());
            }
        }
        Cmd::EmbedSymbols { input, output } => {
            let s = ksyms::embed_symbols(&input, &output)?;
            println!("embedded {} symbols ({} of {} bytes in .ksyms) into {}", s.symbols, s.table_bytes, s.section_size, output.display());
        }
        Cmd::Symbols { elf, addrs } => {
            let data = std::fs::read(&elf).with_context(|| format!("cannot read {}", elf.display()))?;
            let syms = ksyms::read_embedded(&data)?;
            if addrs.is_empty() {
                use std::io::Write;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for s in &syms {
                    // Stop quietly when the reader goes away (`| head`).
                    if writeln!(out, "{:#018x} {:>8} {}", s.addr, s.size, s.name).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                let _ = out.flush();
            } else {
                for a in &addrs {
                    let v = u64::from_str_radix(a.trim_start_matches("0x"), 16).with_context(|| format!("not a hex address: {a}"))?;
                    match ksyms::lookup(&syms, v) {
                        Some((s, off)) => println!("{v:#018x} {}+{off:#x}", s.name),
                        None => println!("{v:#018x} ?"),
                    }
                }
            }
        }
        Cmd::Iso { image: i, out } => {
            let (kernel, init, out) = (resolve(&i.kernel)?, resolve(&i.init)?, resolve(&out)?);
            image::build_iso(&kernel, Some(&init), &i.cmdline, &out)?;
            println!("{}", out.display());
        }
        Cmd::Pxe { image: i, out } => {
            let (kernel, init, out) = (resolve(&i.kernel)?, resolve(&i.init)?, resolve(&out)?);
            let t = image::build_pxe(&kernel, Some(&init), &i.cmdline, &out)?;
            println!("{}", t.root.display());
            println!("BIOS boot file: {}", t.bios_bootfile);
            println!("UEFI boot file: {}", t.efi_bootfile);
        }
        Cmd::Qemu(args) => return run_qemu(args),
        Cmd::Doctor { install } => {
            let checks = doctor::checks();
            let ok = doctor::report(&checks);
            if install && checks.iter().any(|c| !c.ok) {
                doctor::install_missing(&checks)?;
                println!("--- after install ---");
                if !doctor::report(&doctor::checks()) {
                    bail!("some required tools are still missing");
                }
            } else if !ok {
                bail!("required tools are missing (run `mkboot doctor --install` or `just setup`)");
            } else {
                println!("all required tools are present");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_qemu(a: QemuArgs) -> Result<ExitCode> {
    let root = workspace::root()?;
    let kernel = resolve(&a.kernel)?;
    let init = if a.no_init { None } else { Some(resolve(&a.init)?) };
    let mut r = QemuRun::new(&kernel, workspace::build_dir(&root))
        .init(init)
        .mode(a.mode)
        .cpus(a.cpus)
        .accel(a.accel)
        .memory_mb(a.memory)
        .gdb(a.gdb)
        .icount(a.icount)
        .cmdline(a.cmdline.clone())
        .firmware(a.firmware)
        .serial(Serial::MonStdio);
    for x in &a.qemu_args {
        r = r.extra_arg(x);
    }
    if a.print_only {
        println!("{}", r.shell_line()?);
        if a.gdb {
            println!("{}", r.gdb_hint());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.build {
        workspace::build_all(&root, &workspace::BuildOptions { verbose: true })?;
    }
    r.prepare()?;
    eprintln!("+ {}", r.shell_line()?);
    if a.gdb {
        eprintln!("QEMU is waiting for gdb on :{}; in another terminal run:", qemu::GDB_PORT);
        eprintln!("    {}", r.gdb_hint());
    }
    eprintln!("(serial console below; Ctrl-A X quits QEMU, Ctrl-A C toggles the monitor)");
    let mut cmd = r.command()?;
    cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("cannot start qemu-system-x86_64 (run `mkboot doctor`)")?;
    let status = if a.timeout > 0 {
        let deadline = std::time::Instant::now() + Duration::from_secs(a.timeout);
        loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        Some(child.wait()?)
    };
    let Some(status) = status else {
        bail!("QEMU killed after the {} s timeout", a.timeout);
    };
    let code = status.code();
    let test_run = a.cmdline.split_whitespace().any(|w| w == "exit=qemu");
    if !test_run {
        // Interactive: pass QEMU's own status through.
        return Ok(ExitCode::from(code.unwrap_or(1).clamp(0, 255) as u8));
    }
    if code == Some(qemu::EXIT_SUCCESS) {
        eprintln!("mkboot: {}", qemu::describe_exit(code));
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("{}", qemu::describe_exit(code))
    }
}
