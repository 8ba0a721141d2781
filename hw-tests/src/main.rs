//! `hw-tests`: run the QEMU boot matrix.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use hw_tests::runner::{run_all, tail, RunConfig, ScenarioReport};
use hw_tests::scenario::{matrix, select};
use matryoshka_boot::qemu::{Accel, Firmware};
use matryoshka_boot::workspace;

#[derive(Parser)]
#[command(name = "hw-tests", version, about = "Boot the Matryoshka kernel under QEMU in a scenario matrix and check its test output")]
struct Cli {
    /// List the scenarios and exit
    #[arg(long)]
    list: bool,
    /// Run only these scenarios (exact name or glob with *; repeatable)
    #[arg(long = "scenario", short = 's', value_name = "NAME")]
    scenarios: Vec<String>,
    /// Scenarios run at the same time
    #[arg(long, short = 'j', default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,
    /// QEMU accelerator
    #[arg(long, value_enum, default_value_t = Accel::Tcg, env = "ACCEL")]
    accel: Accel,
    /// Firmware for the direct-boot scenarios
    #[arg(long, value_enum, default_value_t = Firmware::Seabios)]
    firmware: Firmware,
    /// Use this kernel image instead of building build/kernel.elf
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Use this root program (boot module `init`) instead of building build/boot.cpio
    #[arg(long)]
    init: Option<PathBuf>,
    /// Use this fuzzer (the fuzz scenarios' root program) instead of building build/fuzz.elf
    #[arg(long)]
    fuzz: Option<PathBuf>,
    /// Do not build; use the existing build/kernel.elf, build/boot.cpio and build/fuzz.elf
    #[arg(long)]
    no_build: bool,
    /// Multiply every scenario's timeout (slow machines)
    #[arg(long, default_value_t = 1.0, env = "HWTEST_TIMEOUT_SCALE")]
    timeout_scale: f64,
    /// Kernel log level for the runs
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
    /// Guest memory in MB
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..))]
    memory: u32,
}

fn main() -> ExitCode {
    let cli = match matryoshka_boot::cli::parse::<Cli>("hw-tests") {
        Ok(c) => c,
        Err(code) => return code,
    };
    run(cli).unwrap_or_else(|e| matryoshka_boot::cli::fail("hw-tests", &e))
}

fn run(cli: Cli) -> Result<ExitCode> {
    if !(cli.timeout_scale > 0.0 && cli.timeout_scale.is_finite()) {
        anyhow::bail!("--timeout-scale must be a positive number");
    }
    let scenarios = select(matrix(), &cli.scenarios).map_err(anyhow::Error::msg)?;
    if cli.list {
        for s in &scenarios {
            println!(
                "{:<28} mode={:<9} cpus={} test={:<6} expect-exit={} timeout={}s",
                s.name,
                s.mode.name(),
                s.cpus,
                s.test,
                s.expected_exit,
                s.timeout.as_secs()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let root = workspace::root()?;
    let opts = workspace::BuildOptions { verbose: false };
    let kernel = match (&cli.kernel, cli.no_build) {
        (Some(k), _) => k.clone(),
        (None, true) => workspace::kernel_image(&root),
        (None, false) => {
            eprintln!("hw-tests: building the kernel image");
            workspace::build_kernel(&root, &opts)?
        }
    };
    let init = match (&cli.init, cli.no_build) {
        (Some(i), _) => i.clone(),
        (None, true) => workspace::boot_archive(&root),
        (None, false) => {
            eprintln!("hw-tests: building the root program");
            workspace::build_init(&root, &opts)?
        }
    };
    let wants_fuzz = scenarios.iter().any(|s| s.root_program == hw_tests::scenario::RootProgram::Fuzz);
    let fuzz = match (&cli.fuzz, cli.no_build || !wants_fuzz) {
        (Some(f), _) => f.clone(),
        (None, true) => workspace::fuzz_image(&root),
        (None, false) => {
            eprintln!("hw-tests: building the fuzzer");
            workspace::build_fuzz(&root, &opts)?
        }
    };
    let mut needed = vec![("kernel image", &kernel), ("root program", &init)];
    if wants_fuzz {
        needed.push(("fuzzer", &fuzz));
    }
    for (what, path) in needed {
        if !path.is_file() {
            anyhow::bail!("{what} {} does not exist (run `just build`)", path.display());
        }
    }
    let out_dir = workspace::build_dir(&root).join("hw-tests");
    std::fs::create_dir_all(&out_dir)?;
    // Snapshot the images so every scenario boots the same kernel and init
    // even if build/ is rebuilt while the matrix runs.
    let snapshot = |path: &PathBuf, name: &str| -> Result<PathBuf> {
        let copy = out_dir.join(name);
        if *path != copy {
            std::fs::copy(path, &copy).map_err(|e| anyhow::anyhow!("cannot copy {} to {}: {e}", path.display(), copy.display()))?;
        }
        Ok(copy)
    };
    let kernel = snapshot(&kernel, "kernel.elf")?;
    let init = snapshot(&init, "init.elf")?;
    let fuzz = if wants_fuzz { snapshot(&fuzz, "fuzz.elf")? } else { fuzz };
    let cfg = RunConfig {
        kernel,
        init,
        fuzz,
        out_dir,
        accel: cli.accel,
        firmware: cli.firmware,
        timeout_scale: cli.timeout_scale,
        log_level: cli.log_level.clone(),
        memory_mb: cli.memory,
    };
    eprintln!("hw-tests: {} scenario(s), {} at a time, accel {:?}, kernel {}", scenarios.len(), cli.jobs, cli.accel, cfg.kernel.display());
    let reports = run_all(&scenarios, &cfg, cli.jobs as usize, print_report);
    println!();
    println!("scenario times:");
    for r in &reports {
        println!("  {:<28} {:>6.1} s  {}", r.scenario.name, r.elapsed.as_secs_f64(), if r.passed() { "pass" } else { "FAIL" });
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    let failed = reports.len() - passed;
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_report(r: &ScenarioReport) {
    for l in r.hwtest_lines() {
        println!("{l}");
    }
    let secs = r.elapsed.as_secs_f64();
    if r.passed() {
        let cases = r.verdict.cases.len();
        println!("[PASS] {} ({secs:.1} s, {cases} in-guest cases)", r.scenario.name);
    } else {
        println!("[FAIL] {} ({secs:.1} s)", r.scenario.name);
        if let Some(e) = &r.error {
            println!("    error: {e}");
        }
        for f in r.verdict.failures() {
            println!("    {f}");
        }
        println!("    serial log: {}", r.log.display());
        println!("    --- last lines of the log ---");
        for l in tail(&r.log, 40) {
            println!("    | {l}");
        }
    }
}
