//! QEMU command lines for every boot mode, plus a runner that captures the
//! serial console to a log with a timeout (used by hw-tests).

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::image;

/// QEMU exit status when the kernel writes 0x10 to isa-debug-exit (pass).
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU exit status when the kernel writes 0x11 to isa-debug-exit (fail/panic).
pub const EXIT_FAILURE: i32 = 35;
/// The isa-debug-exit device the kernel's `exit=qemu` writes to.
pub const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
/// GDB stub port opened by `-s`.
pub const GDB_PORT: u16 = 1234;

/// How the kernel gets loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mode {
    /// QEMU loads the ELF itself through its PVH note (`-kernel`).
    Direct,
    /// SeaBIOS boots the GRUB ISO from CD-ROM.
    BiosIso,
    /// OVMF (UEFI, q35) boots the GRUB ISO from CD-ROM.
    UefiIso,
    /// SeaBIOS + iPXE fetch GRUB and the kernel over TFTP.
    PxeBios,
    /// OVMF (q35) fetches GRUB and the kernel over TFTP.
    PxeUefi,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::BiosIso => "bios-iso",
            Mode::UefiIso => "uefi-iso",
            Mode::PxeBios => "pxe-bios",
            Mode::PxeUefi => "pxe-uefi",
        }
    }
    pub fn is_uefi(self) -> bool {
        matches!(self, Mode::UefiIso | Mode::PxeUefi)
    }
    pub fn needs_iso(self) -> bool {
        matches!(self, Mode::BiosIso | Mode::UefiIso)
    }
    pub fn needs_pxe(self) -> bool {
        matches!(self, Mode::PxeBios | Mode::PxeUefi)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CPU emulation backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation (`-accel tcg -cpu max`); works everywhere.
    Tcg,
    /// Hardware virtualization (`-accel kvm -cpu host`); needs /dev/kvm.
    Kvm,
}

/// Firmware used for the BIOS-side modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Firmware {
    /// QEMU's default SeaBIOS.
    Seabios,
    /// qboot (`-bios /usr/share/qemu/qboot.rom`), a minimal fast firmware;
    /// only used for `direct` mode.
    Qboot,
}

/// Where the guest's first serial port goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serial {
    /// `-serial mon:stdio`: interactive, Ctrl-A X quits, Ctrl-A C monitor.
    MonStdio,
    /// `-serial stdio` with the monitor disabled: for capturing via a pipe.
    Stdio,
    /// `-serial file:PATH` with the monitor disabled.
    File(PathBuf),
}

/// A QEMU invocation for one boot of the kernel. Build it with the
/// setters, call [`QemuRun::prepare`] to create the images the mode needs,
/// then [`QemuRun::command`] for a ready-to-spawn [`Command`].
#[derive(Clone, Debug)]
pub struct QemuRun {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    /// The root user program, passed as the boot module `init` (direct:
    /// `-initrd`, which PVH lists as module 0; GRUB: `module2 ... init`).
    pub init: Option<PathBuf>,
    pub mode: Mode,
    pub cpus: u32,
    pub accel: Accel,
    pub memory_mb: u32,
    pub gdb: bool,
    pub icount: bool,
    pub cmdline: String,
    /// Folder for generated images (ISO, PXE tree, OVMF vars copy).
    pub work_dir: PathBuf,
    pub serial: Serial,
    pub firmware: Firmware,
    /// Appended verbatim to QEMU's arguments.
    pub extra_args: Vec<OsString>,
}

impl QemuRun {
    pub fn new(kernel: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        QemuRun {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: kernel.into(),
            init: None,
            mode: Mode::Direct,
            cpus: 1,
            accel: Accel::Tcg,
            memory_mb: 512,
            gdb: false,
            icount: false,
            cmdline: String::new(),
            work_dir: work_dir.into(),
            serial: Serial::MonStdio,
            firmware: Firmware::Seabios,
            extra_args: Vec::new(),
        }
    }
    pub fn init(mut self, init: Option<impl Into<PathBuf>>) -> Self {
        self.init = init.map(Into::into);
        self
    }
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }
    pub fn accel(mut self, a: Accel) -> Self {
        self.accel = a;
        self
    }
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }
    pub fn gdb(mut self, on: bool) -> Self {
        self.gdb = on;
        self
    }
    pub fn icount(mut self, on: bool) -> Self {
        self.icount = on;
        self
    }
    pub fn cmdline(mut self, c: impl Into<String>) -> Self {
        self.cmdline = c.into();
        self
    }
    pub fn serial(mut self, s: Serial) -> Self {
        self.serial = s;
        self
    }
    pub fn firmware(mut self, f: Firmware) -> Self {
        self.firmware = f;
        self
    }
    pub fn extra_arg(mut self, a: impl Into<OsString>) -> Self {
        self.extra_args.push(a.into());
        self
    }

    pub fn iso_path(&self) -> PathBuf {
        self.work_dir.join("matryoshka.iso")
    }
    pub fn pxe_dir(&self) -> PathBuf {
        self.work_dir.join("pxe")
    }
    pub fn ovmf_vars_path(&self) -> PathBuf {
        self.work_dir.join("ovmf-vars.fd")
    }

    fn validate(&self) -> Result<()> {
        if self.cpus == 0 || self.cpus > 255 {
            bail!("--cpus must be between 1 and 255, got {}", self.cpus);
        }
        if self.memory_mb < 64 {
            bail!("--memory must be at least 64 MB, got {}", self.memory_mb);
        }
        if self.icount && self.accel == Accel::Kvm {
            bail!("--icount needs TCG; it cannot be combined with --accel kvm");
        }
        Ok(())
    }

    /// Create the images this mode boots from: the ISO, the PXE tree and/or a
    /// fresh writable copy of the OVMF variable store.
    pub fn prepare(&self) -> Result<()> {
        self.validate()?;
        if !self.kernel.is_file() {
            bail!("kernel image {} does not exist (run `just build`)", self.kernel.display());
        }
        if let Some(init) = self.init.as_ref().filter(|i| !i.is_file()) {
            bail!("root program {} does not exist (run `just build`)", init.display());
        }
        fs::create_dir_all(&self.work_dir).with_context(|| format!("cannot create {}", self.work_dir.display()))?;
        let init = self.init.as_deref();
        if self.mode.needs_iso() {
            image::build_iso(&self.kernel, init, &self.cmdline, &self.iso_path())?;
        }
        if self.mode.needs_pxe() {
            image::build_pxe(&self.kernel, init, &self.cmdline, &self.pxe_dir())?;
        }
        if self.mode.is_uefi() {
            let ovmf = Ovmf::find()?;
            fs::copy(&ovmf.vars, self.ovmf_vars_path())
                .with_context(|| format!("cannot copy {} to {}", ovmf.vars.display(), self.ovmf_vars_path().display()))?;
        }
        Ok(())
    }

    /// QEMU's arguments (without the program). Touches no files except to
    /// look up where OVMF is installed.
    pub fn args(&self) -> Result<Vec<OsString>> {
        self.validate()?;
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        let machine = if self.mode.is_uefi() { "q35" } else { "pc" };
        push("-machine");
        push(machine);
        match self.accel {
            Accel::Tcg => {
                push("-accel");
                push("tcg");
                push("-cpu");
                push("max");
            }
            Accel::Kvm => {
                push("-accel");
                push("kvm");
                push("-cpu");
                push("host");
            }
        }
        push("-smp");
        push(&self.cpus.to_string());
        push("-m");
        push(&format!("{}M", self.memory_mb));
        push("-display");
        push("none");
        push("-no-reboot");
        push("-device");
        push(DEBUG_EXIT_DEVICE);
        match &self.serial {
            Serial::MonStdio => {
                push("-serial");
                push("mon:stdio");
            }
            Serial::Stdio => {
                push("-serial");
                push("stdio");
                push("-monitor");
                push("none");
            }
            Serial::File(p) => {
                push("-serial");
                push(&format!("file:{}", p.display()));
                push("-monitor");
                push("none");
            }
        }
        if self.icount {
            push("-icount");
            push("shift=0,align=off,sleep=off");
        }
        if self.gdb {
            push("-s");
            push("-S");
        }
        if self.mode.is_uefi() {
            let ovmf = Ovmf::find()?;
            push("-drive");
            push(&format!("if=pflash,format=raw,unit=0,readonly=on,file={}", ovmf.code.display()));
            push("-drive");
            push(&format!("if=pflash,format=raw,unit=1,file={}", self.ovmf_vars_path().display()));
        }
        match self.mode {
            Mode::Direct => {
                if self.firmware == Firmware::Qboot {
                    push("-bios");
                    push(QBOOT_ROM);
                }
                push("-net");
                push("none");
                push("-kernel");
                push(&self.kernel.display().to_string());
                if let Some(init) = &self.init {
                    push("-initrd");
                    push(&init.display().to_string());
                }
                if !self.cmdline.is_empty() {
                    push("-append");
                    push(&self.cmdline);
                }
            }
            Mode::BiosIso | Mode::UefiIso => {
                push("-net");
                push("none");
                push("-cdrom");
                push(&self.iso_path().display().to_string());
                push("-boot");
                push("d");
            }
            Mode::PxeBios | Mode::PxeUefi => {
                let bootfile = if self.mode == Mode::PxeBios { image::PXE_BIOS_BOOTFILE } else { image::PXE_EFI_BOOTFILE };
                push("-netdev");
                push(&format!("user,id=n0,tftp={},bootfile={bootfile}", self.pxe_dir().display()));
                push("-device");
                // bootindex: OVMF would otherwise try the empty CD drive first.
                push("e1000,netdev=n0,bootindex=0");
                push("-boot");
                push("n");
            }
        }
        a.extend(self.extra_args.iter().cloned());
        Ok(a)
    }

    /// A [`Command`] for this run (call [`QemuRun::prepare`] first). Stdin is
    /// inherited for [`Serial::MonStdio`] and null otherwise; stdout and
    /// stderr are left for the caller to set.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args()?);
        if self.serial != Serial::MonStdio {
            cmd.stdin(Stdio::null());
        }
        Ok(cmd)
    }

    /// The full command line, shell-quoted, for printing.
    pub fn shell_line(&self) -> Result<String> {
        let mut words = vec![shell_quote(&self.qemu.to_string_lossy())];
        for a in self.args()? {
            words.push(shell_quote(&a.to_string_lossy()));
        }
        Ok(words.join(" "))
    }

    /// The gdb invocation that attaches to a `--gdb` run.
    pub fn gdb_hint(&self) -> String {
        gdb_command(&self.kernel)
    }
}

/// The gdb command line for debugging `kernel` in a QEMU started with `-s -S`.
pub fn gdb_command(kernel: &Path) -> String {
    format!(
        "gdb {} -ex 'set architecture i386:x86-64' -ex 'target remote localhost:{GDB_PORT}'",
        shell_quote(&kernel.display().to_string())
    )
}

/// Firmware path for qboot.
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

/// Where OVMF (UEFI firmware for QEMU) is installed.
#[derive(Clone, Debug)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Candidate (code, vars) pairs, most preferred first.
pub const OVMF_CANDIDATES: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
];

impl Ovmf {
    /// `$OVMF_CODE`/`$OVMF_VARS` if both are set, else the first installed
    /// candidate.
    pub fn find() -> Result<Ovmf> {
        if let (Some(c), Some(v)) = (std::env::var_os("OVMF_CODE"), std::env::var_os("OVMF_VARS")) {
            let o = Ovmf { code: c.into(), vars: v.into() };
            for f in [&o.code, &o.vars] {
                if !f.is_file() {
                    bail!("OVMF file {} (from OVMF_CODE/OVMF_VARS) does not exist", f.display());
                }
            }
            return Ok(o);
        }
        for (c, v) in OVMF_CANDIDATES {
            if Path::new(c).is_file() && Path::new(v).is_file() {
                return Ok(Ovmf { code: c.into(), vars: v.into() });
            }
        }
        bail!("OVMF firmware not found: apt-get install ovmf (or set OVMF_CODE and OVMF_VARS)")
    }
}

/// Quote a word for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "=,._/:+-@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a QEMU exit status means for a run with `exit=qemu`.
pub fn describe_exit(code: Option<i32>) -> String {
    match code {
        Some(EXIT_SUCCESS) => "kernel reported success (isa-debug-exit 0x10, QEMU status 33)".into(),
        Some(EXIT_FAILURE) => "kernel reported failure or panic (isa-debug-exit 0x11, QEMU status 35)".into(),
        Some(0) => "QEMU exited with status 0: the guest reset or triple-faulted (with -no-reboot), or QEMU was quit".into(),
        Some(c) => format!("QEMU exited with status {c} (not a kernel verdict: QEMU error or unexpected exit code)"),
        None => "QEMU was killed by a signal".into(),
    }
}

/// Result of [`run_captured`].
#[derive(Debug)]
pub struct Captured {
    /// `None` if QEMU had to be killed after the timeout (or was stopped).
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    /// The line callback asked for [`Control::Stop`] and the process was killed.
    pub stopped: bool,
    pub elapsed: Duration,
}

impl Captured {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// What [`run_captured`]'s line callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep going until the process exits or the timeout.
    Continue,
    /// The run is over as far as the caller is concerned: the process must
    /// exit within this much more time or it is killed as timed out.
    ExitWithin(Duration),
    /// The run is over and the process cannot end itself (Bochs has no
    /// isa-debug-exit): it is killed now, which is not a timeout.
    Stop,
}

/// One step of a scripted console session (`run_captured_with_input`):
/// once a line containing `after` appears (at once if `None`), `send` is
/// written to the guest's serial input; with `until`, it is written again
/// every `every` until a line containing `until` appears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    pub after: Option<String>,
    pub send: Vec<u8>,
    pub until: Option<String>,
    pub every: Duration,
}

impl Feed {
    /// Types `text` once a line containing `after` appears.
    pub fn after(after: &str, text: &str) -> Feed {
        Feed { after: Some(after.into()), send: text.as_bytes().to_vec(), until: None, every: Duration::from_secs(1) }
    }

    /// Repeats the input every `every` until a line containing `until` appears.
    pub fn repeat_until(mut self, until: &str, every: Duration) -> Feed {
        self.until = Some(until.into());
        self.every = every;
        self
    }
}

/// Where a script is: waiting for a step's trigger, or repeating its input.
struct Script {
    steps: Vec<Feed>,
    at: usize,
    repeating_since: Option<Instant>,
}

impl Script {
    /// What to write after `line` (or after a quiet poll when `line` is None).
    fn advance(&mut self, line: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let Some(step) = self.steps.get(self.at) else { return out };
            if let Some(since) = self.repeating_since {
                let until = step.until.as_deref().unwrap_or_default();
                if line.is_some_and(|l| l.contains(until)) {
                    self.repeating_since = None;
                    self.at += 1;
                    continue;
                }
                if since.elapsed() >= step.every {
                    out.extend_from_slice(&step.send);
                    self.repeating_since = Some(Instant::now());
                }
                return out;
            }
            let triggered = match &step.after {
                None => true,
                Some(t) => line.is_some_and(|l| l.contains(t.as_str())),
            };
            if !triggered {
                return out;
            }
            out.extend_from_slice(&step.send);
            if step.until.is_some() {
                self.repeating_since = Some(Instant::now());
                return out;
            }
            self.at += 1;
            // The next step waits for a later line.
            if self.steps.get(self.at).is_some_and(|s| s.after.is_some()) {
                return out;
            }
        }
    }
}

/// Spawn `cmd` with stdout and stderr piped, append every line (stdout
/// verbatim, stderr prefixed with `[qemu stderr] `) to `log`, hand each
/// stdout line to `on_line`, and kill the process if it runs past
/// `timeout` (or past a shorter deadline `on_line` asked for). Carriage
/// returns are stripped; invalid UTF-8 is replaced.
pub fn run_captured(cmd: Command, log: &Path, timeout: Duration, on_line: impl FnMut(&str) -> Control) -> Result<Captured> {
    run_captured_with_input(cmd, log, timeout, Vec::new(), on_line)
}

/// `run_captured` that also types `script` into the guest's serial input
/// (QEMU's stdin, for `Serial::Stdio`), each step when its trigger line
/// appears. The script's writes go to the log as `[hw-tests] typed ...`.
pub fn run_captured_with_input(
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
    script: Vec<Feed>,
    mut on_line: impl FnMut(&str) -> Control,
) -> Result<Captured> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let file = Arc::new(Mutex::new(file));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if !script.is_empty() {
        cmd.stdin(Stdio::piped());
    }
    let start = Instant::now();
    let mut child: Child = cmd.spawn().with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
    let mut stdin = child.stdin.take();
    let mut script = Script { steps: script, at: 0, repeating_since: None };
    let mut type_in = |line: Option<&str>, file: &Arc<Mutex<fs::File>>| {
        let bytes = script.advance(line);
        if bytes.is_empty() {
            return;
        }
        if let Some(input) = stdin.as_mut() {
            let _ = input.write_all(&bytes).and_then(|()| input.flush());
        }
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "[hw-tests] typed {:?}", String::from_utf8_lossy(&bytes));
        }
    };
    type_in(None, &file);
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("stdout piped");
    let err = child.stderr.take().expect("stderr piped");
    let out_file = Arc::clone(&file);
    let out_thread = std::thread::spawn(move || pump_lines(out, &out_file, "", Some(tx)));
    let err_file = Arc::clone(&file);
    let err_thread = std::thread::spawn(move || pump_lines(err, &err_file, "[qemu stderr] ", None));

    let mut deadline = start + timeout;
    let mut timed_out = false;
    let mut stopped = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(line) => {
                match on_line(&line) {
                    Control::Continue => {}
                    Control::ExitWithin(grace) => deadline = deadline.min(Instant::now() + grace),
                    Control::Stop => {
                        stopped = true;
                        break;
                    }
                }
                type_in(Some(&line), &file);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => type_in(None, &file),
            Err(mpsc::RecvTimeoutError::Disconnected) => break, // stdout closed
        }
    }
    let status = if timed_out || stopped {
        let _ = child.kill();
        let _ = child.wait();
        None
    } else {
        // stdout closed: QEMU is exiting; give it until the deadline.
        loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let _ = out_thread.join();
    let _ = err_thread.join();
    // Lines that arrived between the last poll and the pipe closing.
    while let Ok(line) = rx.try_recv() {
        on_line(&line);
    }
    if timed_out {
        if let Ok(mut f) = file.lock() {
            let _ =
                writeln!(f, "[hw-tests] killed the process after {:.1} s (timeout {} s)", start.elapsed().as_secs_f64(), timeout.as_secs());
        }
    }
    if stopped {
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "[hw-tests] stopped the process after {:.1} s: its run is over", start.elapsed().as_secs_f64());
        }
    }
    Ok(Captured { status, timed_out, stopped, elapsed: start.elapsed() })
}

fn pump_lines(src: impl Read, file: &Arc<Mutex<fs::File>>, prefix: &str, tx: Option<mpsc::Sender<String>>) {
    let mut reader = BufReader::new(src);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let line: String = String::from_utf8_lossy(&buf).replace('\r', "");
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "{prefix}{line}");
        }
        if let Some(tx) = &tx {
            let _ = tx.send(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_types_each_step_after_its_trigger() {
        let mut s = Script {
            steps: vec![
                Feed::after("ready", "a\r"),
                Feed { after: None, send: b"b".to_vec(), until: None, every: Duration::ZERO },
                Feed::after("go", "!").repeat_until("stop", Duration::ZERO),
                Feed::after("end", "z"),
            ],
            at: 0,
            repeating_since: None,
        };
        assert_eq!(s.advance(None), b"");
        assert_eq!(s.advance(Some("not yet")), b"");
        // A step without a trigger follows its predecessor at once.
        assert_eq!(s.advance(Some("[cpu0] ready")), b"a\rb");
        assert_eq!(s.advance(Some("go")), b"!");
        // Repeated (every 0 s) until `stop` shows.
        assert_eq!(s.advance(None), b"!");
        assert_eq!(s.advance(Some("x")), b"!");
        assert_eq!(s.advance(Some("stop")), b"");
        assert_eq!(s.advance(Some("end")), b"z");
        assert_eq!(s.advance(Some("end")), b"");
    }

    fn args_of(r: &QemuRun) -> Vec<String> {
        r.args().unwrap().into_iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn direct_tcg_args() {
        let r = QemuRun::new("/k.elf", "/b").cpus(4).cmdline("exit=qemu test=all");
        let a = args_of(&r).join(" ");
        assert!(a.contains("-machine pc -accel tcg -cpu max -smp 4 -m 512M -display none -no-reboot"), "{a}");
        assert!(a.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(a.contains("-serial mon:stdio"));
        assert!(a.contains("-kernel /k.elf -append exit=qemu test=all"));
        assert!(!a.contains("-S"));
        assert!(!a.contains("-initrd"));
        let a = args_of(&r.clone().init(Some("/i.elf"))).join(" ");
        assert!(a.contains("-kernel /k.elf -initrd /i.elf -append exit=qemu test=all"), "{a}");
    }

    #[test]
    fn kvm_gdb_icount() {
        let r = QemuRun::new("/k.elf", "/b").accel(Accel::Kvm).gdb(true);
        let a = args_of(&r).join(" ");
        assert!(a.contains("-accel kvm -cpu host") && a.contains(" -s -S"), "{a}");
        assert!(QemuRun::new("/k", "/b").accel(Accel::Kvm).icount(true).args().is_err());
        let a = args_of(&QemuRun::new("/k", "/b").icount(true)).join(" ");
        assert!(a.contains("-icount shift=0,align=off,sleep=off"));
    }

    #[test]
    fn serial_variants() {
        let a = args_of(&QemuRun::new("/k", "/b").serial(Serial::Stdio)).join(" ");
        assert!(a.contains("-serial stdio -monitor none"), "{a}");
        let a = args_of(&QemuRun::new("/k", "/b").serial(Serial::File("/tmp/x.log".into()))).join(" ");
        assert!(a.contains("-serial file:/tmp/x.log -monitor none"), "{a}");
    }

    #[test]
    fn iso_and_pxe_args() {
        let a = args_of(&QemuRun::new("/k", "/b").mode(Mode::BiosIso).init(Some("/i"))).join(" ");
        assert!(a.contains("-cdrom /b/matryoshka.iso -boot d"), "{a}");
        assert!(!a.contains("-initrd"), "GRUB loads init from the ISO: {a}");
        let a = args_of(&QemuRun::new("/k", "/b").mode(Mode::PxeBios)).join(" ");
        assert!(
            a.contains("-netdev user,id=n0,tftp=/b/pxe,bootfile=boot/grub/i386-pc/core.0 -device e1000,netdev=n0,bootindex=0 -boot n"),
            "{a}"
        );
        if Ovmf::find().is_ok() {
            let a = args_of(&QemuRun::new("/k", "/b").mode(Mode::PxeUefi)).join(" ");
            assert!(a.contains("-machine q35"), "{a}");
            assert!(a.contains("bootfile=boot/grub/x86_64-efi/core.efi"), "{a}");
            assert!(a.contains("if=pflash,format=raw,unit=1,file=/b/ovmf-vars.fd"), "{a}");
        }
    }

    #[test]
    fn bad_values_rejected() {
        assert!(QemuRun::new("/k", "/b").cpus(0).args().is_err());
        assert!(QemuRun::new("/k", "/b").memory_mb(1).args().is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn captured_run_with_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf 'one\\r\\ntwo\\n'; echo err >&2; exit 3"]);
        let mut lines = Vec::new();
        let c = run_captured(cmd, &log, Duration::from_secs(20), |l| {
            lines.push(l.to_string());
            Control::Continue
        })
        .unwrap();
        assert_eq!(lines, vec!["one", "two"]);
        assert_eq!(c.code(), Some(3));
        assert!(!c.timed_out);
        let text = fs::read_to_string(&log).unwrap();
        // stdout and stderr are pumped by two threads: only per-stream order holds.
        let out_lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("[qemu stderr]")).collect();
        assert_eq!(out_lines, vec!["one", "two"], "{text}");
        assert!(text.lines().any(|l| l == "[qemu stderr] err"), "{text}");

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo start; exec sleep 30"]);
        let c = run_captured(cmd, &log, Duration::from_millis(500), |_| Control::Continue).unwrap();
        assert!(c.timed_out && c.status.is_none());
        assert!(c.elapsed < Duration::from_secs(10));

        // A callback can cut the deadline short.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo finished; exec sleep 30"]);
        let c = run_captured(cmd, &log, Duration::from_secs(60), |l| {
            if l == "finished" {
                Control::ExitWithin(Duration::from_millis(300))
            } else {
                Control::Continue
            }
        })
        .unwrap();
        assert!(c.timed_out && c.elapsed < Duration::from_secs(10), "{c:?}");
    }
}
