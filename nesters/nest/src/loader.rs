//! The user-level loader: builds a child process from an ELF file, the way
//! a nester or process manager starts its children.
//!
//! The image is checked with the same contract the kernel uses for the root
//! program ([`matryoshka_abi::image::parse`]: W^X, user addresses, sizes,
//! entry point), so a malformed file is an error, never a crash. Memory
//! comes from a [`MemoryPool`]: a region the loader's program can also
//! write at `local_base`. Each segment gets fresh pages of the pool mapped
//! into the child with exactly the segment's rights; bss is zero because
//! pool memory is demand-zero. The stack is [`STACK_PAGES`] pages under
//! [`STACK_TOP`] with an unmapped guard page below, and holds the System V
//! start block (`argc`, `argv`, `envp`, auxiliary vector, strings; read by
//! `matryoshka_rt::env`). The heap is the rest of the child's slot, mapped
//! read-write at [`HEAP_BASE`].

use alloc::vec::Vec;

use matryoshka_abi::image::{self, LoadError, PAGE_SIZE};
use matryoshka_abi::memory_rights as mr;
use matryoshka_abi::rights;
use matryoshka_rt::env::{AT_ENTRY, AT_HEAP_BASE, AT_HEAP_SIZE, AT_NULL, AT_PAGESZ, AT_PARENT_PORT, AT_PID};
use matryoshka_rt::memory as m;
use matryoshka_rt::object::{self as obj, Handle};

use crate::proto::Error;

/// The child's stack ends here (exclusive), as for the root program.
pub const STACK_TOP: u64 = image::USER_STACK_TOP;
/// Pages of stack (256 KiB).
pub const STACK_PAGES: u64 = 64;
/// Where the child's heap starts.
pub const HEAP_BASE: u64 = 0x10_0000_0000;
/// Most bytes of arguments, environment and strings on the start stack.
pub const MAX_START_BLOCK: usize = 64 * 1024;

/// Matryoshka auxiliary entry: a handle to the program's own space.
pub const AT_SELF_SPACE: u64 = matryoshka_rt::env::AT_MATRYOSHKA_BASE + 4;
/// Matryoshka auxiliary entry: the portset a server program receives on.
pub const AT_SERVICE: u64 = matryoshka_rt::env::AT_MATRYOSHKA_BASE + 5;
/// First Matryoshka auxiliary entry for initial references (slot `i` at `AT_REF + i`).
pub const AT_REF: u64 = matryoshka_rt::env::AT_MATRYOSHKA_BASE + 16;

/// Memory a loader hands out to children: a region (with MAP_READ,
/// MAP_WRITE and MAP_EXECUTE) that this program also sees, read-write, at
/// `local_base`.
#[derive(Clone, Copy)]
pub struct MemoryPool {
    pub region: Handle,
    pub local_base: u64,
    pub size: u64,
}

/// The part of a pool one child uses: `[offset, offset + size)` of the pool.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub offset: u64,
    pub size: u64,
}

/// What to start.
pub struct Program<'a> {
    pub elf: &'a [u8],
    pub argv: &'a [&'a str],
    pub env: &'a [&'a str],
    /// Extra auxiliary entries (type, value), e.g. handle values in the child's table.
    pub aux: &'a [(u64, u64)],
    /// rdi of the first thread (the parent's port in the child's table, or 0).
    pub first_arg: u64,
    /// The process id the child sees (AT_PID).
    pub pid: u64,
}

/// A child built and running (or stopped, ready to start).
pub struct Loaded {
    pub thread: Handle,
    pub entry: u64,
    pub mappings: Vec<Handle>,
}

/// Why a load failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderError {
    /// The file is not a program this system runs.
    Image(LoadError),
    /// The slot is too small for the image, stack and a minimal heap.
    SlotTooSmall,
    /// Arguments and environment do not fit the start block.
    ArgumentsTooLong,
    /// A kernel call failed.
    Kernel(matryoshka_rt::SysError),
}

impl From<matryoshka_rt::SysError> for LoaderError {
    fn from(e: matryoshka_rt::SysError) -> Self {
        LoaderError::Kernel(e)
    }
}

impl From<LoaderError> for Error {
    fn from(e: LoaderError) -> Error {
        match e {
            LoaderError::Image(_) => Error::Invalid,
            LoaderError::SlotTooSmall => Error::NoMemory,
            LoaderError::ArgumentsTooLong => Error::TooLong,
            LoaderError::Kernel(k) => k.into(),
        }
    }
}

struct Bump {
    next: u64,
    end: u64,
}

impl Bump {
    fn take(&mut self, bytes: u64) -> Result<u64, LoaderError> {
        let at = self.next;
        let end = at.checked_add(bytes).ok_or(LoaderError::SlotTooSmall)?;
        if end > self.end {
            return Err(LoaderError::SlotTooSmall);
        }
        self.next = end;
        Ok(at)
    }
}

/// The smallest heap a child gets.
const MIN_HEAP: u64 = 256 * 1024;

/// Builds `program` in `child` (a fresh space; this program needs CREATE on
/// it) from `slot` of `pool` and starts its first thread stopped. Call
/// [`start`] to run it. On error the caller destroys the child (mappings
/// made so far go with it).
pub fn load(child: Handle, pool: &MemoryPool, slot: Slot, program: &Program) -> Result<Loaded, LoaderError> {
    let img = image::parse(program.elf).map_err(LoaderError::Image)?;
    if slot.offset.checked_add(slot.size).is_none_or(|end| end > pool.size) || !slot.offset.is_multiple_of(PAGE_SIZE) {
        return Err(LoaderError::SlotTooSmall);
    }
    let mut bump = Bump { next: slot.offset, end: slot.offset + (slot.size & !(PAGE_SIZE - 1)) };
    let mut mappings = Vec::new();
    for s in img.segments() {
        let (start, end) = s.pages();
        let at = bump.take(end - start)?;
        let local = pool.local_base + at;
        let file = &program.elf[s.offset as usize..(s.offset + s.filesz) as usize];
        // SAFETY: [local, local + (end - start)) is this child's fresh part
        // of the pool, mapped read-write in this program and used by nothing
        // else until the child starts.
        unsafe {
            let dst = core::slice::from_raw_parts_mut((local + (s.vaddr - start)) as *mut u8, file.len());
            dst.copy_from_slice(file);
        }
        let r = mr::READ | if s.writable { mr::WRITE } else { 0 } | if s.executable { mr::EXECUTE } else { 0 };
        mappings.push(m::mapping_create(pool.region, child, start, at, end - start, r)?);
    }
    // Stack: the guard page below it is simply never mapped.
    let stack_bytes = STACK_PAGES * PAGE_SIZE;
    let stack_at = bump.take(stack_bytes)?;
    let stack_base = STACK_TOP - stack_bytes;
    mappings.push(m::mapping_create(pool.region, child, stack_base, stack_at, stack_bytes, mr::READ | mr::WRITE)?);
    // Heap: what is left of the slot.
    let heap_bytes = (bump.end - bump.next) & !(PAGE_SIZE - 1);
    if heap_bytes < MIN_HEAP {
        return Err(LoaderError::SlotTooSmall);
    }
    let heap_at = bump.take(heap_bytes)?;
    mappings.push(m::mapping_create(pool.region, child, HEAP_BASE, heap_at, heap_bytes, mr::READ | mr::WRITE)?);

    let mut aux: Vec<(u64, u64)> = Vec::new();
    aux.extend_from_slice(&[(AT_PAGESZ, PAGE_SIZE), (AT_ENTRY, img.entry), (AT_HEAP_BASE, HEAP_BASE), (AT_HEAP_SIZE, heap_bytes)]);
    aux.extend_from_slice(&[(AT_PARENT_PORT, program.first_arg), (AT_PID, program.pid)]);
    aux.extend_from_slice(program.aux);
    let stack_local = pool.local_base + stack_at;
    let sp = write_start_block(stack_local, stack_base, stack_bytes, program.argv, program.env, &aux)?;

    let thread = obj::thread_create_stopped(child)?;
    let mut state = obj::thread_get_state(thread)?;
    state.rip = img.entry;
    state.gpr[obj::ThreadState::RSP] = sp;
    state.gpr[obj::ThreadState::RDI] = program.first_arg;
    state.gpr[obj::ThreadState::RSI] = 0;
    state.gpr[3] = sp; // rdx: the start block, so `_start` needs no assembly
    obj::thread_set_state(thread, &state)?;
    Ok(Loaded { thread, entry: img.entry, mappings })
}

/// Runs a loaded child's first thread.
pub fn start(loaded: &Loaded) -> Result<(), LoaderError> {
    obj::thread_resume(loaded.thread).map_err(LoaderError::Kernel)
}

/// Writes the System V start block at the top of the stack (seen here at
/// `local`, in the child at `base`); returns the child's initial rsp.
fn write_start_block(local: u64, base: u64, bytes: u64, argv: &[&str], env: &[&str], aux: &[(u64, u64)]) -> Result<u64, LoaderError> {
    let strings: usize = argv.iter().chain(env.iter()).map(|s| s.len() + 1).sum();
    let words = 1 + argv.len() + 1 + env.len() + 1 + 2 * (aux.len() + 1);
    let total = strings + 8 * words + 32;
    if total > MAX_START_BLOCK || total as u64 > bytes / 2 {
        return Err(LoaderError::ArgumentsTooLong);
    }
    let top = base + bytes;
    let to_local = |child_va: u64| local + (child_va - base);
    // Strings at the very top.
    let mut str_at = top - strings as u64;
    let mut pointers = Vec::with_capacity(argv.len() + env.len());
    for s in argv.iter().chain(env.iter()) {
        // SAFETY: [str_at, str_at + len + 1) is inside the child's stack,
        // which this program sees read-write at `local` (checked above).
        unsafe {
            let dst = core::slice::from_raw_parts_mut(to_local(str_at) as *mut u8, s.len() + 1);
            dst[..s.len()].copy_from_slice(s.as_bytes());
            dst[s.len()] = 0;
        }
        pointers.push(str_at);
        str_at += s.len() as u64 + 1;
    }
    let sp = (top - strings as u64 - 8 * words as u64) & !15;
    let mut w = sp;
    let mut put = |v: u64| {
        // SAFETY: [sp, sp + 8 * words) lies below the strings, inside the stack.
        unsafe { core::ptr::write(to_local(w) as *mut u64, v) };
        w += 8;
    };
    put(argv.len() as u64);
    for p in &pointers[..argv.len()] {
        put(*p);
    }
    put(0);
    for p in &pointers[argv.len()..] {
        put(*p);
    }
    put(0);
    for &(k, v) in aux {
        put(k);
        put(v);
    }
    put(AT_NULL);
    put(0);
    Ok(sp)
}

/// Puts a handle into `child`'s table with `rights`; returns its value there.
pub fn give(child: Handle, h: Handle, rights_mask: u32) -> Result<u64, LoaderError> {
    Ok(obj::transfer(child, h, rights_mask)?.0)
}

/// Rights a client gets on a service port.
pub const CLIENT_PORT_RIGHTS: u32 = rights::SEND | rights::TRANSFER | rights::DUPLICATE;
