//! The boot archive: one cpio (newc) file holding every program and data
//! file of the system, built by `mkboot` and passed as the single boot
//! module on every boot path (PVH `-initrd`, GRUB `module2`). The kernel
//! only needs the root program out of it; the root program gets the whole
//! archive as its boot module and serves the rest (the file server fills
//! its RAM file system from it).

/// Where the root program lives in the archive.
pub const ROOT_PROGRAM_PATH: &str = "bin/init";

/// The root program's image: `bytes` itself if it is not an archive (an ELF
/// file passed directly, as the fuzzer is), else the archive's
/// [`ROOT_PROGRAM_PATH`].
pub fn root_program(bytes: &'static [u8]) -> Result<&'static [u8], &'static str> {
    if !bytes.starts_with(b"070701") && !bytes.starts_with(b"070702") {
        return Ok(bytes);
    }
    cpio_reader::iter_files(bytes)
        .find(|e| e.name().trim_start_matches("./").trim_start_matches('/') == ROOT_PROGRAM_PATH)
        .map(|e| e.file())
        .ok_or("the boot archive has no bin/init")
}
