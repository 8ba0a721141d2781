//! The in-kernel test runner. `test=all` (or `test=a,b`) on the command line
//! runs these cases after boot and reports each as one machine-readable line:
//!
//! ```text
//! KTEST {"event":"plan","cases":["frame_alloc",...]}
//! KTEST {"event":"case","name":"frame_alloc","status":"pass","cpu":0,"micros":812,"detail":""}
//! KTEST {"event":"done","passed":12,"failed":0}
//! ```
//!
//! hw-tests/ boots the kernel in QEMU and fails on any failed, missing or
//! panicking case. A case returns `Err(detail)` to fail.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::x86_64::syscall::{self, UserExit};
use crate::arch::x86_64_exports::*;
use crate::cmdline::KernelArgs;
use crate::console::print_line;
use crate::mm::frame::{self, FrameError, FRAME_SIZE};

type CaseResult = Result<(), String>;

/// Cases that run only when named (`test=ipc_stress`), not with `test=all`.
/// A named in-kernel test case.
type Case = (&'static str, fn() -> CaseResult);

const EXPLICIT_CASES: &[Case] = &[("ipc_stress", ipc_stress), ("fuzz", fuzz), ("system", system), ("console", console)];

const CASES: &[Case] = &[
    ("frame_alloc", frame_alloc),
    ("frame_errors", frame_errors),
    ("page_map", page_map),
    ("wx_mappings", wx_mappings),
    ("guard_pages", guard_pages),
    ("heap", heap),
    ("percpu", percpu_data),
    ("ipi_all_cpus", ipi_all_cpus),
    ("remote_call", remote_call),
    ("caches_on_every_cpu", caches_on_every_cpu),
    ("tlb_shootdown", tlb_shootdown),
    ("timer_ticks", timer_ticks),
    ("symbols", symbols),
    ("user_mode", user_mode),
    ("root_program", root_program),
];

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Runs the selected cases; returns how many failed.
pub fn run(args: &KernelArgs) -> usize {
    let all = || CASES.iter().chain(crate::tlbtests::CASES).chain(crate::sched::ktests::CASES).chain(EXPLICIT_CASES);
    let selected: Vec<_> = CASES
        .iter()
        .chain(crate::tlbtests::CASES)
        .chain(crate::sched::ktests::CASES)
        .filter(|(name, _)| args.selects(name))
        .chain(EXPLICIT_CASES.iter().filter(|(name, _)| matches!(args.test, crate::cmdline::TestSelection::Only(_)) && args.selects(name)))
        .collect();
    let names: Vec<String> = selected.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    print_line(format_args!("KTEST {{\"event\":\"plan\",\"cases\":[{}]}}", names.join(",")));
    if let crate::cmdline::TestSelection::Only(list) = args.test {
        for wanted in list.split(',').filter(|w| !all().any(|(n, _)| n == w)) {
            log::error!("ktest: no test case named '{wanted}'");
        }
    }
    crate::tlbtests::expect_tags_kept(args.tlb_tags_kept);
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in selected {
        let start = time::now_us();
        let result = case();
        let micros = time::now_us() - start;
        let (status, detail) = match &result {
            Ok(()) => ("pass", String::new()),
            Err(d) => ("fail", json_escape(d)),
        };
        if result.is_ok() {
            passed += 1
        } else {
            failed += 1
        }
        print_line(format_args!(
            "KTEST {{\"event\":\"case\",\"name\":\"{name}\",\"status\":\"{status}\",\"cpu\":{},\"micros\":{micros},\"detail\":\"{detail}\"}}",
            percpu::this_cpu_index()
        ));
    }
    print_line(format_args!("KTEST {{\"event\":\"done\",\"passed\":{passed},\"failed\":{failed}}}"));
    frame::log_stats(smp::online_count());
    failed
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn usable() -> crate::mm::rangeset::RangeSet<256> {
    crate::boot_usable_memory()
}

fn frame_alloc() -> CaseResult {
    let before = frame::stats().free;
    let memory = usable();
    let mut frames = Vec::new();
    for i in 0..4096 {
        let pa = frame::alloc().map_err(|e| format!("allocation {i} failed: {e:?}"))?;
        frames.push(pa);
    }
    for &pa in &frames {
        check!(pa % FRAME_SIZE == 0, "frame {pa:#x} not aligned");
        check!(memory.contains(pa), "frame {pa:#x} is not usable RAM");
        // SAFETY: the frame is ours until freed below; the physmap maps it.
        unsafe { core::ptr::write_volatile(paging::phys_to_virt(pa) as *mut u64, pa ^ 0x5a5a) };
    }
    for &pa in &frames {
        // SAFETY: as above.
        let v = unsafe { core::ptr::read_volatile(paging::phys_to_virt(pa) as *const u64) };
        check!(v == pa ^ 0x5a5a, "frame {pa:#x} shares memory with another frame");
    }
    let mut sorted = frames.clone();
    sorted.sort_unstable();
    sorted.dedup();
    check!(sorted.len() == frames.len(), "a frame was handed out twice");
    check!(frame::stats().free == before - 4096, "free count did not drop by 4096");
    for pa in frames {
        frame::free(pa).map_err(|e| format!("free {pa:#x}: {e:?}"))?;
    }
    let run = frame::alloc_contiguous(16, 16).map_err(|e| format!("contiguous: {e:?}"))?;
    check!(run % (16 * FRAME_SIZE) == 0, "contiguous run {run:#x} not 64 KiB aligned");
    frame::free_contiguous(run, 16).map_err(|e| format!("free contiguous: {e:?}"))?;
    let after = frame::stats().free;
    check!(after == before, "frames leaked: {before} free before, {after} after");
    Ok(())
}

fn frame_errors() -> CaseResult {
    let pa = frame::alloc().map_err(|e| format!("{e:?}"))?;
    check!(frame::free(pa + 1) == Err(FrameError::BadAddress), "unaligned free accepted");
    frame::free(pa).map_err(|e| format!("{e:?}"))?;
    check!(frame::free(pa) == Err(FrameError::NotAllocated), "double free accepted");
    check!(frame::free(1 << 52) == Err(FrameError::BadAddress), "free beyond RAM accepted");
    check!(frame::alloc_contiguous(1 << 40, 1) == Err(FrameError::OutOfMemory), "impossible allocation succeeded");
    check!(frame::free_contiguous(pa, 1) == Err(FrameError::NotAllocated), "double contiguous free accepted");
    Ok(())
}

static TEST_VA_NEXT: AtomicU64 = AtomicU64::new(paging::TEST_AREA_BASE);

fn test_va() -> u64 {
    TEST_VA_NEXT.fetch_add(2 * FRAME_SIZE, Ordering::Relaxed)
}

fn page_map() -> CaseResult {
    let va = test_va();
    let pa = frame::alloc_zeroed().map_err(|e| format!("{e:?}"))?;
    check!(!paging::is_mapped(va), "test address already mapped");
    paging::map_kernel_page(va, pa, paging::kernel_data_flags()).map_err(|e| format!("map: {e:?}"))?;
    check!(paging::translate(va + 0x123) == Some(pa + 0x123), "translate disagrees with the mapping");
    // SAFETY: `va` was just mapped writable to a frame this test owns.
    unsafe { core::ptr::write_volatile(va as *mut u64, 0xfeed_f00d) };
    // SAFETY: the physmap alias of the same frame.
    let via_physmap = unsafe { core::ptr::read_volatile(paging::phys_to_virt(pa) as *const u64) };
    check!(via_physmap == 0xfeed_f00d, "write through the mapping not visible in the physmap");
    check!(paging::map_kernel_page(va, pa, paging::kernel_data_flags()) == Err(paging::MapError::AlreadyMapped), "double map accepted");
    check!(paging::unmap_kernel_page(va) == Ok(pa), "unmap returned the wrong frame");
    tlb::shootdown(va, 1);
    check!(!paging::is_mapped(va), "still mapped after unmap");
    check!(paging::unmap_kernel_page(va) == Err(paging::MapError::NotMapped), "unmapping twice accepted");
    frame::free(pa).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn wx_mappings() -> CaseResult {
    let s = paging::kernel_sections();
    let nx = if cpu::nx_supported() { paging::NO_EXECUTE } else { 0 };
    let check_range = |(start, end): (u64, u64), want_write: bool, want_nx: bool, what: &str| -> CaseResult {
        let mut va = start;
        while va < end {
            let e = paging::lookup(va).ok_or_else(|| format!("{what} page {va:#x} unmapped"))?;
            check!((e & paging::WRITABLE != 0) == want_write, "{what} page {va:#x} writable={}", !want_write);
            if nx != 0 {
                check!((e & nx != 0) == want_nx, "{what} page {va:#x} executable={}", want_nx);
            }
            va += FRAME_SIZE;
        }
        Ok(())
    };
    check_range(s.text, false, false, "text")?;
    check_range(s.rodata, false, true, "rodata")?;
    check!(paging::lookup(s.data.0).is_some_and(|e| e & paging::WRITABLE != 0 && e & nx == nx), "data not RW+NX");
    let physmap = paging::lookup(paging::PHYSMAP_BASE + (16 << 20)).ok_or("physmap hole")?;
    check!(physmap & nx == nx, "physmap is executable");
    check!(!paging::is_mapped(0x20_0000), "low identity map still present after boot");
    check!(!paging::is_mapped(0), "page zero is mapped");
    Ok(())
}

fn guard_pages() -> CaseResult {
    let st = stack::alloc(4).map_err(|e| format!("{e:?}"))?;
    check!(!paging::is_mapped(st.guard), "new stack has no guard page");
    check!(stack::is_guard_page(st.guard), "guard page not recognised");
    check!(paging::is_mapped(st.bottom) && paging::is_mapped(st.top - 8), "stack pages unmapped");
    for index in 0..smp::online_count() {
        let top = percpu::cpu(index).stack_top.load(Ordering::Relaxed);
        let here = cpu::read_rsp();
        let pages = if index == 0 { 32 } else { 16 };
        let guard = top - (pages + 1) * FRAME_SIZE;
        check!(!paging::is_mapped(guard), "cpu{index} stack guard at {guard:#x} is mapped");
        if index == percpu::this_cpu_index() {
            check!(here < top && here > guard, "cpu{index} runs outside its guarded stack ({here:#x})");
        }
    }
    Ok(())
}

fn heap() -> CaseResult {
    let mapped_before = crate::mm::heap::mapped_bytes();
    let mut big: Vec<u64> = Vec::new();
    big.try_reserve_exact(1 << 20).map_err(|e| format!("8 MiB reservation failed: {e:?}"))?;
    for i in 0..(1u64 << 20) {
        big.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    check!(crate::mm::heap::mapped_bytes() > mapped_before, "heap did not grow for an 8 MiB vector");
    check!(big.iter().enumerate().all(|(i, &v)| v == (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)), "heap data corrupted");
    drop(big);
    let mut map = alloc::collections::BTreeMap::new();
    for i in 0..10_000u32 {
        map.insert(i, format!("v{i}"));
    }
    check!(map.get(&7777).map(String::as_str) == Some("v7777"), "BTreeMap lookup wrong");
    Ok(())
}

const NONE: u64 = u64::MAX;
static REPORTED_INDEX: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(NONE) }; percpu::MAX_CPUS];
static REPORTED_APIC: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(NONE) }; percpu::MAX_CPUS];
static REPORTED_GS: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(NONE) }; percpu::MAX_CPUS];

fn report_identity(slot: usize) {
    REPORTED_INDEX[slot].store(percpu::this_cpu_index() as u64, Ordering::Relaxed);
    REPORTED_APIC[slot].store(apic::id() as u64, Ordering::Relaxed);
    REPORTED_GS[slot].store(cpu::read_msr(cpu::MSR_GS_BASE), Ordering::Relaxed);
}

fn percpu_data() -> CaseResult {
    let n = smp::online_count();
    for i in 0..n {
        REPORTED_INDEX[i].store(NONE, Ordering::Relaxed);
        smp::run_on(i, report_identity, i);
    }
    for i in 0..n {
        let c = percpu::cpu(i);
        check!(REPORTED_INDEX[i].load(Ordering::Relaxed) == i as u64, "cpu{i} reports index {}", REPORTED_INDEX[i].load(Ordering::Relaxed));
        check!(REPORTED_APIC[i].load(Ordering::Relaxed) == c.apic_id.load(Ordering::Relaxed) as u64, "cpu{i} APIC ID mismatch");
        check!(REPORTED_GS[i].load(Ordering::Relaxed) == c as *const _ as u64, "cpu{i} GS base does not point at its PerCpu");
    }
    Ok(())
}

fn wait_until(mut cond: impl FnMut() -> bool, ms: u64) -> bool {
    let deadline = time::now_us() + ms * 1000;
    while time::now_us() < deadline {
        if cond() {
            return true;
        }
        cpu::pause();
    }
    cond()
}

fn ipi_all_cpus() -> CaseResult {
    let me = percpu::this_cpu_index();
    for i in (0..smp::online_count()).filter(|&i| i != me) {
        let c = percpu::cpu(i);
        let before = c.ipis_received.load(Ordering::Acquire);
        smp::send_reschedule(i);
        check!(wait_until(|| c.ipis_received.load(Ordering::Acquire) > before, 500), "cpu{i} did not take the IPI");
    }
    Ok(())
}

static CALL_SUM: AtomicU64 = AtomicU64::new(0);

fn add_to_sum(v: usize) {
    CALL_SUM.fetch_add(v as u64, Ordering::Relaxed);
}

fn remote_call() -> CaseResult {
    CALL_SUM.store(0, Ordering::Relaxed);
    let n = smp::online_count();
    for round in 0..50 {
        for i in 0..n {
            smp::run_on(i, add_to_sum, round * 100 + i);
        }
    }
    let expected: u64 = (0..50u64).flat_map(|r| (0..n as u64).map(move |i| r * 100 + i)).sum();
    check!(CALL_SUM.load(Ordering::Relaxed) == expected, "remote calls lost or repeated");
    Ok(())
}

static CACHE_OFF_CPUS: AtomicU64 = AtomicU64::new(0);

fn note_cache_state(cpu: usize) {
    // CR0.CD (bit 30) or CR0.NW (bit 29): this CPU runs with caching off.
    if cpu::read_cr0() & (3 << 29) != 0 {
        CACHE_OFF_CPUS.fetch_or(1 << cpu, Ordering::Relaxed);
    }
}

/// Every CPU runs with caching on (an AP leaves INIT with it off).
fn caches_on_every_cpu() -> CaseResult {
    CACHE_OFF_CPUS.store(0, Ordering::Relaxed);
    for i in 0..smp::online_count() {
        smp::run_on(i, note_cache_state, i);
    }
    let off = CACHE_OFF_CPUS.load(Ordering::Relaxed);
    check!(off == 0, "CPUs {off:#x} run with CR0.CD/NW set (caching off)");
    Ok(())
}

static TLB_VA: AtomicU64 = AtomicU64::new(0);
static SEEN: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];

fn read_test_page(slot: usize) {
    // SAFETY: TLB_VA is mapped by the tlb_shootdown case for the duration of the calls.
    let v = unsafe { core::ptr::read_volatile(TLB_VA.load(Ordering::Relaxed) as *const u64) };
    SEEN[slot].store(v, Ordering::Relaxed);
}

fn tlb_shootdown() -> CaseResult {
    const OLD: u64 = 0x01d0_01d0;
    const NEW: u64 = 0x0e30_0e30;
    let va = test_va();
    let a = frame::alloc_zeroed().map_err(|e| format!("{e:?}"))?;
    let b = frame::alloc_zeroed().map_err(|e| format!("{e:?}"))?;
    // SAFETY: both frames belong to this test; the physmap maps them.
    unsafe {
        core::ptr::write_volatile(paging::phys_to_virt(a) as *mut u64, OLD);
        core::ptr::write_volatile(paging::phys_to_virt(b) as *mut u64, NEW);
    }
    paging::map_kernel_page(va, a, paging::kernel_data_flags()).map_err(|e| format!("{e:?}"))?;
    TLB_VA.store(va, Ordering::Relaxed);
    let n = smp::online_count();
    let handled_before: Vec<u64> = (0..n).map(|i| percpu::cpu(i).tlb_shootdowns_handled.load(Ordering::Relaxed)).collect();
    for round in 0..3 {
        for i in 0..n {
            smp::run_on(i, read_test_page, i);
            check!(SEEN[i].load(Ordering::Relaxed) == OLD, "round {round}: cpu{i} read the wrong value before remap");
        }
        paging::remap_kernel_page(va, b, paging::kernel_data_flags()).map_err(|e| format!("{e:?}"))?;
        tlb::shootdown(va, 1);
        for i in 0..n {
            smp::run_on(i, read_test_page, i);
            let seen = SEEN[i].load(Ordering::Relaxed);
            check!(seen == NEW, "round {round}: cpu{i} still sees the old page ({seen:#x}) after shootdown");
        }
        paging::remap_kernel_page(va, a, paging::kernel_data_flags()).map_err(|e| format!("{e:?}"))?;
        tlb::shootdown(va, 1);
    }
    let me = percpu::this_cpu_index();
    for i in (0..n).filter(|&i| i != me) {
        let handled = percpu::cpu(i).tlb_shootdowns_handled.load(Ordering::Relaxed);
        check!(handled >= handled_before[i] + 6, "cpu{i} handled {} of 6 shootdowns", handled - handled_before[i]);
    }
    paging::unmap_kernel_page(va).map_err(|e| format!("{e:?}"))?;
    tlb::shootdown(va, 1);
    frame::free(a).map_err(|e| format!("{e:?}"))?;
    frame::free(b).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn timer_ticks() -> CaseResult {
    let n = smp::online_count();
    let before: Vec<u64> = (0..n).map(|i| percpu::cpu(i).ticks.load(Ordering::Relaxed)).collect();
    let want = 5;
    let ok = wait_until(|| (0..n).all(|i| percpu::cpu(i).ticks.load(Ordering::Relaxed) >= before[i] + want), 2000);
    if !ok {
        let got: Vec<u64> = (0..n).map(|i| percpu::cpu(i).ticks.load(Ordering::Relaxed) - before[i]).collect();
        return Err(format!("ticks per CPU in 2 s: {got:?}, wanted at least {want} each"));
    }
    Ok(())
}

#[inline(never)]
fn symbols() -> CaseResult {
    let table = crate::panic::symbol_table().ok_or("no symbol table embedded in .ksyms")?;
    check!(table.len() > 100, "only {} symbols", table.len());
    let here = symbols as fn() -> CaseResult as usize as u64;
    let (name, off) = table.lookup(here + 4).ok_or("own address not found")?;
    check!(name.ends_with("ktest::symbols") && off == 4, "own address resolves to {name}+{off:#x}");
    check!(table.address_of("kernel_entry_bsp").is_some(), "entry point symbol missing");
    Ok(())
}

/// The `test=panic` scenario: panic on the last CPU; the report must name this function.
#[inline(never)]
pub fn deliberate_panic(_: usize) {
    panic!("deliberate panic requested by test=panic");
}

pub fn deliberate_panic_on_last_cpu() -> ! {
    let last = smp::online_count() - 1;
    log::info!("ktest: panicking on cpu{last} on purpose");
    smp::run_on(last, deliberate_panic, 0);
    // Only reached if the panic did not stop this CPU.
    panic!("deliberate panic on cpu{last} returned");
}

/// Recurses with a large frame until the stack runs into its guard page.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse_forever(depth: u64) -> u64 {
    let pad = core::hint::black_box([depth; 64]);
    core::hint::black_box(recurse_forever(depth + 1)) + pad[depth as usize % 64]
}

fn overflow_stack(_: usize) {
    core::hint::black_box(recurse_forever(0));
}

/// The `test=stack_overflow` scenario: overflow a kernel stack on the last
/// CPU; the double-fault handler (on its own IST stack) must report it.
pub fn overflow_stack_on_last_cpu() -> ! {
    let last = smp::online_count() - 1;
    log::info!("ktest: overflowing the kernel stack of cpu{last} on purpose");
    smp::run_on(last, overflow_stack, 0);
    panic!("stack overflow on cpu{last} was not caught");
}

// Ring-3 programs for the `user_mode` case. Each is position independent and
// fits in one page; the kernel copies it to USER_CODE_VA.
core::arch::global_asm!(
    r#"
    .section .rodata.user_programs, "a"
    .global user_selftest_start
    .global user_selftest_end
user_selftest_start:
    xor eax, eax
    syscall
    test rax, rax
    jnz 91f
    mov eax, 1
    lea rdi, [rip + 80f]
    mov esi, 17
    syscall
    cmp rax, 17
    jne 92f
    mov eax, 1
    movabs rdi, 0xffffffff80200000
    mov esi, 8
    syscall
    cmp rax, -2
    jne 93f
    mov eax, 1
    mov edi, 0x10000000
    mov esi, 8
    syscall
    cmp rax, -2
    jne 94f
    mov eax, 1
    lea rdi, [rip + 80f]
    mov esi, 4096
    syscall
    cmp rax, -3
    jne 95f
    mov eax, 1
    mov rdi, -8
    mov esi, 16
    syscall
    cmp rax, -2
    jne 96f
    mov eax, 999
    syscall
    cmp rax, -1
    jne 97f
    mov ebx, 0x1111
    mov ebp, 0x2222
    mov r12d, 0x3333
    mov r15d, 0x4444
    mov rdi, 0x5555
    xor eax, eax
    syscall
    cmp ebx, 0x1111
    jne 98f
    cmp ebp, 0x2222
    jne 98f
    cmp r12d, 0x3333
    jne 98f
    cmp r15d, 0x4444
    jne 98f
    cmp rdi, 0x5555
    jne 98f
    mov eax, 2
    mov edi, 0
    syscall
    ud2
91: mov edi, 1
    jmp 99f
92: mov edi, 2
    jmp 99f
93: mov edi, 3
    jmp 99f
94: mov edi, 4
    jmp 99f
95: mov edi, 5
    jmp 99f
96: mov edi, 6
    jmp 99f
97: mov edi, 7
    jmp 99f
98: mov edi, 8
99: mov eax, 2
    syscall
    ud2
80: .ascii "hello from ring 3"  // 17 bytes: the length the program passes
81:
user_selftest_end:

    .global user_kernel_read_start
    .global user_kernel_read_end
user_kernel_read_start:
    movabs rax, 0xffffffff80200000
    mov rax, [rax]
    ud2
user_kernel_read_end:

    .global user_privileged_start
    .global user_privileged_end
user_privileged_start:
    cli
    hlt
user_privileged_end:
    .text
"#
);

extern "C" {
    static user_selftest_start: u8;
    static user_selftest_end: u8;
    static user_kernel_read_start: u8;
    static user_kernel_read_end: u8;
    static user_privileged_start: u8;
    static user_privileged_end: u8;
}

const USER_CODE_VA: u64 = 0x40_0000;
const USER_STACK_VA: u64 = 0x7fff_0000;

/// Builds a one-page program plus a one-page stack in a new address space,
/// runs it in ring 3, and tears the space down again.
/// A new address space with the one-page program `[start, end)` (one of the
/// kernel's test blobs) mapped executable at `code_va`, and a zeroed
/// writable page at `data_va`. Returns the root and the data frame.
pub(crate) fn user_test_space(start: *const u8, end: *const u8, code_va: u64, data_va: u64) -> Result<(u64, u64), String> {
    let len = end as usize - start as usize;
    check!(len <= FRAME_SIZE as usize, "user program of {len} bytes does not fit a page");
    let root = paging::new_user_root().map_err(|e| format!("address space: {e:?}"))?;
    let code = frame::alloc_zeroed().map_err(|e| format!("{e:?}"))?;
    let data = frame::alloc_zeroed().map_err(|e| format!("{e:?}"))?;
    // SAFETY: `code` is a fresh frame owned here; the source is the kernel's
    // read-only copy of the program, `len` bytes long.
    unsafe { core::ptr::copy_nonoverlapping(start, paging::phys_to_virt(code) as *mut u8, len) };
    paging::map_user_page(root, code_va, code, false, true).map_err(|e| format!("{e:?}"))?;
    paging::map_user_page(root, data_va, data, true, false).map_err(|e| format!("{e:?}"))?;
    Ok((root, data))
}

fn run_user_program(start: *const u8, end: *const u8) -> Result<UserExit, String> {
    let (root, _stack) = user_test_space(start, end, USER_CODE_VA, USER_STACK_VA)?;
    let exit = syscall::run_user(root, USER_CODE_VA, USER_STACK_VA + FRAME_SIZE);
    paging::destroy_user_root(root);
    Ok(exit)
}

fn user_mode() -> CaseResult {
    let free_before = frame::stats().free;
    let writes_before = crate::syscall::CONSOLE_WRITES.load(Ordering::Relaxed);
    let exit = run_user_program(core::ptr::addr_of!(user_selftest_start), core::ptr::addr_of!(user_selftest_end))?;
    check!(exit == UserExit::Exited(0), "self-test program ended with {exit:?} (exit code n = check n failed)");
    check!(crate::syscall::CONSOLE_WRITES.load(Ordering::Relaxed) == writes_before + 1, "console write not seen");

    let exit = run_user_program(core::ptr::addr_of!(user_kernel_read_start), core::ptr::addr_of!(user_kernel_read_end))?;
    match exit {
        UserExit::Fault { vector: 14, address: 0xffff_ffff_8020_0000, error_code, .. } => {
            check!(error_code & 0b100 != 0, "page fault not flagged as a user access ({error_code:#x})")
        }
        other => return Err(format!("reading kernel memory from ring 3 gave {other:?}")),
    }
    let exit = run_user_program(core::ptr::addr_of!(user_privileged_start), core::ptr::addr_of!(user_privileged_end))?;
    check!(
        matches!(exit, UserExit::Fault { vector: 13, rip: USER_CODE_VA, .. }),
        "cli in ring 3 gave {exit:?}, wanted a #GP at the program's first instruction"
    );
    let free_after = frame::stats().free;
    check!(free_after == free_before, "address spaces leaked {} frames", free_before as i64 - free_after as i64);
    Ok(())
}

/// Free frames plus the page-table frames the kernel half has grown by: what
/// a run's leak check compares. A run may place kernel stacks in slots no
/// run used before (dead stacks wait out a grace period before their slots
/// are reused, and how many wait at once depends on timing), and the tables
/// for those slots stay; that is growth, not a leak.
fn free_or_kept_frames() -> u64 {
    frame::stats().free + paging::kernel_table_frames()
}

/// Loads the root program (the `init` boot module, a Rust program built on
/// matryoshka-rt) and runs it: it checks the system call ABI itself and
/// exits 0 when all its checks passed.
fn root_program() -> CaseResult {
    use crate::loader::{self, LoadError};
    let image = crate::root_program_image()?;

    let mut broken = image.to_vec();
    broken[18] = 3; // e_machine = EM_386
    let free_before = frame::stats().free;
    let refused = loader::run(&broken);
    check!(matches!(refused, Err(LoadError::WrongMachine(3))), "an i386 copy of init gave {refused:?}");
    check!(frame::stats().free == free_before, "refusing an image changed the free frame count");
    drop(broken);

    // Run it twice and count frames across the second run only: the first
    // lets the kernel grow what it keeps (page tables for the stacks of as
    // many threads as init runs at once, heap).
    let first = loader::run(image).map_err(|e| format!("the init module was refused: {e:?}"))?;
    if first != UserExit::Exited(0) {
        return Err(format!("init's first run ended with {first:?} (see its output above)"));
    }
    let free_before_run = free_or_kept_frames();
    let writes_before = crate::syscall::CONSOLE_WRITES.load(Ordering::Relaxed);
    let exit = loader::run(image).map_err(|e| format!("the init module was refused: {e:?}"))?;
    let writes = crate::syscall::CONSOLE_WRITES.load(Ordering::Relaxed) - writes_before;
    match exit {
        UserExit::Exited(0) => {}
        // matryoshka-rt's panic handler exits with 101.
        UserExit::Exited(101) => return Err("init panicked (exit code 101; its message is in the log above)".into()),
        UserExit::Exited(n) => return Err(format!("init exited with {n} (its check {n} failed; see its output above)")),
        other => return Err(format!("init ended with {other:?}")),
    }
    check!(writes >= 3, "init made {writes} console writes, expected at least 3");
    let free_after = free_or_kept_frames();
    check!(free_after == free_before_run, "loading and running init leaked {} frames", free_before_run as i64 - free_after as i64);
    Ok(())
}

/// `test=bench`: runs the root program in benchmark mode; it prints one JSON
/// object per benchmark (`{"bench": ...}`) and exits 0.
pub fn run_root_benchmarks(args: &KernelArgs) -> bool {
    let image = match crate::root_program_image() {
        Ok(image) => image,
        Err(why) => {
            log::error!("bench: {why}");
            return false;
        }
    };
    let flags = 1 | if args.fastpath { 0 } else { 2 } | if crate::ipc::spin_limit() == 0 { 8 } else { 0 };
    let counters = || (paging::cr3_loads() + crate::sched::fast_cr3_loads(), crate::syscall::tlb_flushes(), tlb::shootdowns());
    let before = counters();
    let result = crate::loader::run_with_flags(image, flags);
    let after = counters();
    // Not a JSON line: the benchmarks' schema stays as it is.
    print_line(format_args!(
        "TLB counters over the benchmarks: {} CR3 loads, {} TLB flushes, {} shootdowns (tagged address spaces: {})",
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        pcid::enabled()
    ));
    match result {
        Ok(UserExit::Exited(0)) => {
            print_line(format_args!("BENCH done"));
            true
        }
        other => {
            log::error!("bench: the root program ended with {other:?}");
            false
        }
    }
}

/// `test=system` (not part of `all`): the root program boots the nester
/// stack (file server, process manager, shell) and runs the command line
/// after `--` (e.g. `systest`); the case passes if the command's status is
/// 0 and every frame is back once the whole system is gone.
fn system() -> CaseResult {
    let image = crate::root_program_image()?;
    // Twice, counting frames across the second run only: the first lets the
    // kernel grow what it keeps (as for `root_program`).
    let run = || match crate::loader::run_with_flags(image, crate::loader::START_SYSTEM) {
        Ok(UserExit::Exited(0)) => Ok(()),
        other => Err(format!("the system ended with {other:?} (the command's status; see its output above)")),
    };
    // Two warm-up runs: with dead stacks waiting out their grace period, the
    // second run may still place stacks in new slots (page tables).
    run()?;
    run()?;
    let free_before = free_or_kept_frames();
    run()?;
    let free_after = free_or_kept_frames();
    check!(free_after == free_before, "the system's run leaked {} frames", free_before as i64 - free_after as i64);
    Ok(())
}

/// `test=console` (not part of `all`): the system once, interactive (no
/// command after `--`): the shell reads the serial console, which hw-tests
/// types into (scenario `console-direct-*`); passes when the shell exits
/// and init ends with 0.
fn console() -> CaseResult {
    let image = crate::root_program_image()?;
    match crate::loader::run_with_flags(image, crate::loader::START_SYSTEM) {
        Ok(UserExit::Exited(0)) => Ok(()),
        other => Err(format!("the interactive system ended with {other:?} (see its output above)")),
    }
}

/// `test=ipc_stress` (not part of `all`): the root program's IPC stress run,
/// a client on every CPU calling a server on every CPU, a million
/// sequence-checked round trips in all.
fn ipc_stress() -> CaseResult {
    let image = crate::root_program_image()?;
    match crate::loader::run_with_flags(image, 4) {
        Ok(UserExit::Exited(0)) => Ok(()),
        other => Err(format!("the stress run ended with {other:?} (see its output above)")),
    }
}

/// `test=fuzz` (not part of `all`): the boot module is the system-call
/// fuzzer (`nesters/fuzz`, build/fuzz.elf), whose arguments come after a
/// lone `--` on the command line. It checks its own invariants and leaks and
/// must exit 0; every frame must come back when its space is gone. A first,
/// warm-up-only run (start flag 16) lets the kernel grow what it keeps, as
/// for `root_program`; a run whose peaks went beyond the warm-up's is
/// followed by another warm-up run, which must then leave the count alone.
fn fuzz() -> CaseResult {
    use crate::loader;
    const WARMUP_ONLY: u64 = 16;
    let image = crate::root_program_image().map_err(|why| format!("{why} (the fuzzer: mkboot qemu --init build/fuzz.elf)"))?;
    let describe = |exit: UserExit| match exit {
        UserExit::Exited(0) => None,
        UserExit::Exited(1) => Some(String::from("an invariant broke")),
        UserExit::Exited(2) => Some(String::from("bad arguments")),
        UserExit::Exited(3) => Some(String::from("its watchdog fired (a hang)")),
        UserExit::Exited(4) => Some(String::from("a leak")),
        UserExit::Exited(101) => Some(String::from("it panicked")),
        other => Some(format!("{other:?}")),
    };
    let warmup = loader::run_with_flags(image, WARMUP_ONLY).map_err(|e| format!("the fuzzer was refused: {e:?}"))?;
    if let Some(why) = describe(warmup) {
        return Err(format!("the fuzzer's warm-up run ended with {warmup:?}: {why} (see its output above)"));
    }
    let free_before = free_or_kept_frames();
    let tables_before = paging::kernel_table_frames();
    let exit = loader::run(image).map_err(|e| format!("the fuzzer was refused: {e:?}"))?;
    if let Some(why) = describe(exit) {
        return Err(format!("the fuzzer ended with {exit:?}: {why} (see its output above)"));
    }
    let free_after = free_or_kept_frames();
    log::info!(
        "fuzz: free frames {} -> {}, kernel page tables {} -> {}",
        free_before - tables_before,
        frame::stats().free,
        tables_before,
        paging::kernel_table_frames()
    );
    if free_after != free_before {
        // A run that had more threads or objects at once than the warm-up
        // grew tables the kernel keeps (kernel-stack page tables, heap);
        // then a warm-up run again must leave the count where it is.
        let again = loader::run_with_flags(image, WARMUP_ONLY).map_err(|e| format!("the fuzzer was refused: {e:?}"))?;
        if let Some(why) = describe(again) {
            return Err(format!("the fuzzer's second warm-up run ended with {again:?}: {why} (see its output above)"));
        }
        let free_again = free_or_kept_frames();
        check!(
            free_again == free_after,
            "the fuzzer's runs leaked frames: {} in the run, {} more in a warm-up run after it",
            free_before as i64 - free_after as i64,
            free_after as i64 - free_again as i64
        );
    }
    Ok(())
}
