//! The emulators besides the system's QEMU that the boot matrix uses for
//! what QEMU 7.2's TCG lacks:
//!
//! - **QEMU 10** (Debian bookworm-backports), unpacked beside 7.2 with
//!   `apt-get download` + `dpkg -x` (not installed over it): x2APIC under TCG;
//! - **Bochs 2.7** (Debian `bochs bochsbios vgabios`): PCID, INVPCID,
//!   x2APIC and TSC-deadline. It has no isa-debug-exit device and its debugger
//!   waits for `c` on stdin, so a run is judged on the serial log alone and
//!   ended once the kernel's verdict is printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::qemu::shell_quote;

/// The Debian packages unpacked for QEMU 10 (the binary, its firmware and
/// data, a SeaBIOS new enough for it), from bookworm-backports.
pub const QEMU10_PACKAGES: [&str; 3] = ["qemu-system-x86", "qemu-system-data", "seabios"];
pub const QEMU10_SUITE: &str = "bookworm-backports";

/// Where QEMU 10 is unpacked: `$MATRYOSHKA_QEMU10`, else
/// `~/.cache/matryoshka/qemu-10` (outside the worktree: `just clean` keeps it).
pub fn qemu10_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MATRYOSHKA_QEMU10") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/matryoshka/qemu-10")
}

pub fn qemu10_binary(dir: &Path) -> PathBuf {
    dir.join("usr/bin/qemu-system-x86_64")
}

pub fn qemu10_present() -> bool {
    qemu10_binary(&qemu10_dir()).is_file()
}

/// QEMU arguments that make the unpacked QEMU 10 find its own firmware and
/// not probe audio back ends (the system's 7.2 modules do not load into it).
pub fn qemu10_args(dir: &Path) -> Vec<String> {
    vec![
        "-L".into(),
        dir.join("usr/share/qemu").display().to_string(),
        "-L".into(),
        dir.join("usr/share/seabios").display().to_string(),
        "-audio".into(),
        "none".into(),
    ]
}

/// Environment for the unpacked QEMU 10: its own module directory first.
pub fn qemu10_env(dir: &Path) -> (&'static str, PathBuf) {
    ("QEMU_MODULE_DIR", dir.join("usr/lib/x86_64-linux-gnu/qemu"))
}

/// Downloads QEMU 10's packages from bookworm-backports (adding the suite
/// to apt's sources if it is missing) and unpacks them into `qemu10_dir()`.
/// `run` runs one command (apt-get through sudo when not root).
pub fn install_qemu10(run: &dyn Fn(&[&str]) -> Result<()>) -> Result<()> {
    let sources = Path::new("/etc/apt/sources.list.d/matryoshka-bookworm-backports.sources");
    let listed = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.flatten().any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(QEMU10_SUITE))))
        .unwrap_or(false)
        || std::fs::read_to_string("/etc/apt/sources.list").is_ok_and(|t| t.contains(QEMU10_SUITE));
    if !listed {
        let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        if !release.contains("VERSION_CODENAME=bookworm") {
            bail!("QEMU 10 comes from Debian {QEMU10_SUITE}; on this system install QEMU 10 yourself and point MATRYOSHKA_QEMU10 at a folder with usr/bin/qemu-system-x86_64");
        }
        let text = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        let tmp = std::env::temp_dir().join("matryoshka-bookworm-backports.sources");
        std::fs::write(&tmp, text)?;
        run(&["install", "-m", "644", &tmp.display().to_string(), &sources.display().to_string()])?;
        run(&["apt-get", "update"])?;
    }
    let download = std::env::temp_dir().join(format!("matryoshka-qemu10-{}", std::process::id()));
    std::fs::create_dir_all(&download)?;
    let wanted: Vec<String> = QEMU10_PACKAGES.iter().map(|p| format!("{p}/{QEMU10_SUITE}")).collect();
    let status =
        Command::new("apt-get").arg("download").args(&wanted).current_dir(&download).status().context("cannot run apt-get download")?;
    if !status.success() {
        bail!("apt-get download {} failed ({status}); is {QEMU10_SUITE} in apt's sources and `apt-get update` done?", wanted.join(" "));
    }
    let dir = qemu10_dir();
    std::fs::create_dir_all(&dir)?;
    for deb in std::fs::read_dir(&download)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "deb")) {
        let ok = Command::new("dpkg").arg("-x").arg(&deb).arg(&dir).status().is_ok_and(|s| s.success());
        if !ok {
            bail!("dpkg -x {} {} failed", deb.display(), dir.display());
        }
    }
    let _ = std::fs::remove_dir_all(&download);
    if !qemu10_binary(&dir).is_file() {
        bail!("unpacked QEMU 10 but {} is missing", qemu10_binary(&dir).display());
    }
    println!("QEMU 10 unpacked in {}", dir.display());
    Ok(())
}

/// Bochs's firmware, from the Debian packages `bochsbios` and `vgabios`.
pub const BOCHS_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
pub const BOCHS_VGABIOS: &str = "/usr/share/bochs/VGABIOS-lgpl-latest";

/// One Bochs boot of a GRUB ISO (`image::build_iso`), serial on stdout.
#[derive(Clone, Debug)]
pub struct BochsRun {
    pub iso: PathBuf,
    pub cpus: u32,
    pub memory_mb: u32,
    /// Emulated instructions per second: with `clock: sync=none` the guest's
    /// time (TSC, APIC timer) follows the instruction count, not the host.
    pub ips: u64,
    /// Folder for the bochsrc and Bochs's own log.
    pub work_dir: PathBuf,
}

impl BochsRun {
    /// The configuration: an Ice Lake CPU model (PCID, INVPCID, x2APIC,
    /// TSC-deadline, invariant TSC), COM1 on stdout, Bochs's log in a file,
    /// the RFB display that never waits for a viewer (Debian's build has no
    /// headless display), no sound (its ALSA probe aborts without a card).
    pub fn bochsrc(&self) -> String {
        format!(
            "megs: {mem}\n\
             cpu: model=corei7_icelake_u, count={cpus}, ips={ips}, quantum=16\n\
             romimage: file={BOCHS_BIOS}\n\
             vgaromimage: file={BOCHS_VGABIOS}\n\
             ata0-master: type=cdrom, path={iso}, status=inserted\n\
             boot: cdrom\n\
             com1: enabled=1, mode=file, dev=/dev/stdout\n\
             display_library: rfb, options=\"timeout=0\"\n\
             clock: sync=none, time0=946684800\n\
             speaker: enabled=0\n\
             sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
             log: {log}\n\
             panic: action=fatal\n",
            mem = self.memory_mb,
            cpus = self.cpus,
            ips = self.ips,
            iso = self.iso.display(),
            log = self.work_dir.join("bochs.log").display(),
        )
    }

    pub fn bochsrc_path(&self) -> PathBuf {
        self.work_dir.join("bochsrc")
    }

    /// Writes the bochsrc (the ISO must exist).
    pub fn prepare(&self) -> Result<()> {
        if !self.iso.is_file() {
            bail!("ISO {} does not exist", self.iso.display());
        }
        std::fs::create_dir_all(&self.work_dir).with_context(|| format!("cannot create {}", self.work_dir.display()))?;
        std::fs::write(self.bochsrc_path(), self.bochsrc()).with_context(|| format!("cannot write {}", self.bochsrc_path().display()))
    }

    /// `bochs -q -f BOCHSRC`; its stdin must get `c` (the debugger's continue).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("bochs");
        cmd.arg("-q").arg("-f").arg(self.bochsrc_path()).stdin(Stdio::piped());
        cmd
    }

    pub fn shell_line(&self) -> String {
        format!("(echo c; sleep 1000) | bochs -q -f {}", shell_quote(&self.bochsrc_path().display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bochsrc_has_what_the_runs_need() {
        let r = BochsRun { iso: "/x/t.iso".into(), cpus: 2, memory_mb: 512, ips: 200_000_000, work_dir: "/w".into() };
        let rc = r.bochsrc();
        assert!(rc.contains("count=2, ips=200000000"));
        assert!(rc.contains("path=/x/t.iso"));
        assert!(rc.contains("dev=/dev/stdout"));
        assert!(rc.contains("clock: sync=none"));
        assert!(rc.contains("log: /w/bochs.log"));
    }

    #[test]
    fn qemu10_finds_its_firmware() {
        let a = qemu10_args(Path::new("/q"));
        assert_eq!(a, ["-L", "/q/usr/share/qemu", "-L", "/q/usr/share/seabios", "-audio", "none"]);
    }
}
