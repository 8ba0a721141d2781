//! Code that fuzzed threads run: short loops that use no stack (a fuzzed
//! `rsp` may point anywhere) and no memory, so nothing a victim does can
//! corrupt its space. The busy ones yield often: dozens of them share the
//! CPUs with the workers. `thread_create` and `thread_set_state` start threads
//! at these addresses (or at bad ones, which must be refused or fault).

use fuzzlib::gen::victim;

core::arch::global_asm!(
    r#"
    .section .text.fuzz_victims, "ax"
    /* Spins in user mode (r14 counts; the kernel preserves it), yielding
       now and then: a victim should be interrupted mid-loop, not starve
       the workers on its CPU. */
    .global fuzz_victim_spin
fuzz_victim_spin:
3:  mov r14d, 4096
2:  pause
    dec r14
    jnz 2b
    mov eax, 3
    syscall
    jmp 3b

    .global fuzz_victim_yield
fuzz_victim_yield:
2:  mov eax, 3
    syscall
    jmp 2b

    /* Null calls, a yield after every 32. */
    .global fuzz_victim_null
fuzz_victim_null:
3:  mov r14d, 32
2:  xor eax, eax
    syscall
    dec r14
    jnz 2b
    mov eax, 3
    syscall
    jmp 3b

    .global fuzz_victim_exit
fuzz_victim_exit:
    mov eax, 2
    syscall
    ud2

    .global fuzz_victim_fault
fuzz_victim_fault:
    ud2

    /* rdi: a portset. Echoes every request; after an error it yields, so
       a bad handle makes a yielding loop, not a busy one. */
    .global fuzz_victim_serve
fuzz_victim_serve:
2:  mov eax, 34
    syscall
    test rax, rax
    jns 2b
    mov eax, 3
    syscall
    jmp 2b

    /* rdi: a portset. Takes one-way messages forever. */
    .global fuzz_victim_receive
fuzz_victim_receive:
2:  mov eax, 54
    syscall
    test rax, rax
    jns 2b
    mov eax, 3
    syscall
    jmp 2b

    /* Sixteen null calls (r14 counts: the kernel preserves it), then exit(0). */
    .global fuzz_victim_brief
fuzz_victim_brief:
    mov r14d, 16
2:  xor eax, eax
    syscall
    dec r14
    jnz 2b
    xor edi, edi
    mov eax, 2
    syscall
    ud2
    .text
"#
);

extern "C" {
    static fuzz_victim_spin: u8;
    static fuzz_victim_yield: u8;
    static fuzz_victim_null: u8;
    static fuzz_victim_exit: u8;
    static fuzz_victim_fault: u8;
    static fuzz_victim_serve: u8;
    static fuzz_victim_receive: u8;
    static fuzz_victim_brief: u8;
}

/// The victims' entry points, indexed by `fuzzlib::gen::victim` kind.
pub fn entry_points() -> [u64; victim::KINDS] {
    let mut v = [0u64; victim::KINDS];
    {
        v[victim::SPIN] = core::ptr::addr_of!(fuzz_victim_spin) as u64;
        v[victim::YIELD_LOOP] = core::ptr::addr_of!(fuzz_victim_yield) as u64;
        v[victim::NULL_LOOP] = core::ptr::addr_of!(fuzz_victim_null) as u64;
        v[victim::EXIT] = core::ptr::addr_of!(fuzz_victim_exit) as u64;
        v[victim::FAULT] = core::ptr::addr_of!(fuzz_victim_fault) as u64;
        v[victim::SERVE] = core::ptr::addr_of!(fuzz_victim_serve) as u64;
        v[victim::RECEIVE] = core::ptr::addr_of!(fuzz_victim_receive) as u64;
        v[victim::BRIEF] = core::ptr::addr_of!(fuzz_victim_brief) as u64;
    }
    v
}
