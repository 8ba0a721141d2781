//! The first instructions: boot headers and the 32-bit stub that enters long mode.
//!
//! Two loaders reach `_start32`, both in 32-bit protected mode with paging off:
//! * GRUB through the Multiboot2 header: `eax` = 0x36d76289, `ebx` = boot information.
//! * QEMU `-kernel` (and other PVH loaders) through the Xen PVH ELF note:
//!   `ebx` = `hvm_start_info`, whose first word is 0x336ec578.
//!
//! The stub builds temporary page tables that map the low 4 GiB three times
//! (identity, the physmap at `PHYSMAP_BASE`, and the kernel image window at
//! -2 GiB), turns on PAE, long mode and NX, and calls
//! [`crate::kernel_entry_bsp`] on the boot stack with `(eax, ebx)`. The
//! kernel replaces these tables with its own W^X tables early in boot.

core::arch::global_asm!(
    r#"
    .section .multiboot2_header, "a"
    .balign 8
mb2_header_start:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header_start))
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad _start32
    .balign 4

    .section .boot.bss, "aw", @nobits
    .balign 4096
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pdpt_high: .skip 4096
boot_pd:        .skip 4096 * 4
boot32_stack:   .skip 4096
boot32_stack_top:

    .section .boot.data, "aw"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .balign 8
boot_stack_top_slot:
    .quad boot_stack_top
boot_entry_slot:
    .quad kernel_entry_bsp
no_long_mode_msg:
    .asciz "matryoshka: this CPU has no 64-bit long mode; halting\r\n"

    .section .boot.text, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    mov edi, eax
    mov esi, ebx
    mov esp, offset boot32_stack_top

    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb no_long_mode
    mov eax, 0x80000001
    cpuid
    test edx, 0x20000000
    jz no_long_mode
    mov ebp, edx

    mov eax, offset boot_pml4
    mov ecx, (4096 * 7) / 4
    push edi
    mov edi, eax
    xor eax, eax
    rep stosd
    pop edi

    mov eax, offset boot_pdpt_low
    or eax, 3
    mov dword ptr [boot_pml4], eax
    mov dword ptr [boot_pml4 + 256 * 8], eax
    mov eax, offset boot_pdpt_high
    or eax, 3
    mov dword ptr [boot_pml4 + 511 * 8], eax

    mov eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt_low], eax
    mov dword ptr [boot_pdpt_high + 510 * 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt_low + 8], eax
    mov dword ptr [boot_pdpt_high + 511 * 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt_low + 16], eax
    add eax, 4096
    mov dword ptr [boot_pdpt_low + 24], eax

    xor ecx, ecx
1:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jb 1b

    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax

    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    test ebp, 0x100000
    jz 2f
    or eax, 0x800
2:
    wrmsr

    mov eax, cr0
    // Caching on (CD and NW clear), whatever the loader left.
    and eax, 0x9fffffff
    or eax, 0x80010001
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    mov eax, offset long_mode_entry
    push 0x08
    push eax
    retf

no_long_mode:
    mov esi, offset no_long_mode_msg
3:
    lodsb
    test al, al
    jz 4f
    mov dx, 0x3f8
    out dx, al
    jmp 3b
4:
    hlt
    jmp 4b

    .code64
long_mode_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, qword ptr [boot_stack_top_slot]
    mov edi, edi
    mov esi, esi
    xor ebp, ebp
    mov rax, qword ptr [boot_entry_slot]
    call rax
5:
    cli
    hlt
    jmp 5b

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global boot_stack_guard
boot_stack_guard:
    .skip 4096
boot_stack_bottom:
    .skip 65536
    .global boot_stack_top
boot_stack_top:
    .text
"#
);
