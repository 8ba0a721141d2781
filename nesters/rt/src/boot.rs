//! The boot modules, as the kernel hands them to the root program: copied
//! read-only into its own memory at [`MODULES_BASE`] (so it can lend them to
//! children as regions, e.g. to run a program from a module), described by a
//! table page: count, then per module {va, size, name[56]}.

/// Where the module table page is (then the modules, page-aligned).
pub const MODULES_BASE: u64 = 0x8_0000_0000;

/// One boot module in this program's memory.
#[derive(Clone, Copy)]
pub struct Module {
    pub va: u64,
    pub size: u64,
    name: [u8; 56],
}

impl Module {
    /// The module's name (its GRUB command line; empty under QEMU's PVH boot).
    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..end]).unwrap_or("")
    }

    pub fn bytes(&self) -> &'static [u8] {
        // SAFETY: the kernel mapped `size` readable bytes at `va` for the
        // program's whole life (root program only).
        unsafe { core::slice::from_raw_parts(self.va as *const u8, self.size as usize) }
    }
}

/// The boot modules (root program only: other programs have no table).
pub fn modules() -> impl Iterator<Item = Module> {
    // SAFETY: the root program's module table page is mapped read-only at
    // MODULES_BASE; its count bounds the entries read.
    let count = unsafe { core::ptr::read_volatile(MODULES_BASE as *const u64) }.min(56) as usize;
    (0..count).map(|i| {
        let at = MODULES_BASE + 8 + i as u64 * 72;
        // SAFETY: entry `i` lies inside the table page (8 + 56 * 72 < 4096).
        unsafe {
            Module {
                va: core::ptr::read_volatile(at as *const u64),
                size: core::ptr::read_volatile((at + 8) as *const u64),
                name: core::ptr::read_volatile((at + 16) as *const [u8; 56]),
            }
        }
    })
}
