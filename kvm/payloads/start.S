/* Start-up stub and interrupt entry points of the device-test payloads.
 *
 * The loader (kvm/_boot.py) enters _start in 64-bit mode, ring 0, paging on (an identity
 * map whose pages are also user-accessible), interrupts off, .bss already zeroed (the ELF
 * loader zero-fills p_memsz past p_filesz). This stub:
 *
 * 1. loads the payload's own GDT (kernel code 0x08 and data 0x10, user code 0x1B and data
 *    0x23, the TSS at 0x28) and TSS, whose RSP0 is the kernel stack an interrupt taken in
 *    ring 3 switches to (SDM Vol. 3 §7.7, §6.14.5);
 * 2. loads the IDTR with the address of `idt` (rt.c fills the gates before it enables any
 *    interrupt);
 * 3. drops to ring 3 with interrupts off and an I/O permission bitmap allowing every port
 *    (SDM Vol. 1 §19.5.2: kvm_pvm consults it for ring 3 whatever IOPL says, and faults cli
 *    and sti there, which rt.c emulates: rt.h rule 4), and calls rt_start, which fills the
 *    IDT and calls main.
 *
 * Why ring 3: a software hypervisor such as PVM emulates a non-paravirtualized guest's
 * ring-0 code instruction by instruction but runs its ring-3 code natively (measured on
 * kvm_pvm: a loop iteration 15 us in ring 0, 1 ns in ring 3). Only the interrupt handlers
 * run in ring 0. Built with -DRING0, main runs in ring 0 instead.
 *
 * isr_table holds one 16-byte entry per vector. Each pushes a zero error code where the
 * CPU pushes none (SDM Vol. 3 §6.13: vectors 8, 10-14, 17, 21, 29, 30 have one), then the
 * vector, and jumps to the common path, which saves the registers the SysV ABI lets C
 * clobber and calls isr_dispatch(frame).
 */
#define USER_CODE 0x1B
#define USER_DATA 0x23
#define TSS_SELECTOR 0x28

    .section .text.start, "ax"
    .global _start
    .type _start, @function
_start:
    lea     kstack_top(%rip), %rsp
    lgdt    gdtr(%rip)
    /* The TSS descriptor (SDM Vol. 3 §7.2.3, Figure 7-4): base split across the fields. */
    lea     tss(%rip), %rax
    lea     gdt_tss(%rip), %rdi
    movw    $(tss_end - tss - 1), (%rdi)
    mov     %eax, %edx
    movw    %dx, 2(%rdi)
    shr     $16, %edx
    movb    %dl, 4(%rdi)
    movb    $0x89, 5(%rdi)
    movb    $0, 6(%rdi)
    shr     $8, %edx
    movb    %dl, 7(%rdi)
    shr     $32, %rax
    movl    %eax, 8(%rdi)
    movl    $0, 12(%rdi)
    mov     $TSS_SELECTOR, %ax
    ltr     %ax
    lidt    idtr(%rip)
#ifdef RING0
    call    rt_start                /* a RING0 build stays in ring 0 (bench/kvm.py compares) */
1:  jmp     1b
#endif
    /* iretq to ring 3: SS, RSP, RFLAGS (IOPL 3 for hypervisors that honour it, IF 0), CS, RIP. */
    pushq   $USER_DATA
    lea     ustack_top(%rip), %rax
    push    %rax
    pushq   $0x3002
    pushq   $USER_CODE
    lea     ring3_entry(%rip), %rax
    push    %rax
    iretq
ring3_entry:
    mov     $USER_DATA, %ax
    mov     %ax, %ds
    mov     %ax, %es
    call    rt_start
1:  jmp     1b
    .size _start, . - _start

    .text
    .balign 16
    .global isr_table
    .type isr_table, @function
isr_table:
    vector = 0
    .rept 256
    .balign 16
    .if (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    pushq   $0
    .endif
    pushq   $vector
    jmp     isr_common
    vector = vector + 1
    .endr
    .size isr_table, . - isr_table

    .type isr_common, @function
isr_common:
    push    %rax
    push    %rcx
    push    %rdx
    push    %rsi
    push    %rdi
    push    %r8
    push    %r9
    push    %r10
    push    %r11
    mov     %rsp, %rdi
    call    isr_dispatch
    pop     %r11
    pop     %r10
    pop     %r9
    pop     %r8
    pop     %rdi
    pop     %rsi
    pop     %rdx
    pop     %rcx
    pop     %rax
    add     $16, %rsp
    iretq
    .size isr_common, . - isr_common

    .data
    .balign 16
gdt:
    .quad   0
    .quad   0x00AF9B000000FFFF      /* 0x08 kernel code: 64-bit, DPL 0 */
    .quad   0x00CF93000000FFFF      /* 0x10 kernel data */
    .quad   0x00AFFB000000FFFF      /* 0x18 user code: 64-bit, DPL 3 */
    .quad   0x00CFF3000000FFFF      /* 0x20 user data, DPL 3 */
gdt_tss:
    .quad   0, 0                    /* 0x28 TSS, filled in by _start */
gdt_end:
    .balign 8
gdtr:
    .word   gdt_end - gdt - 1
    .quad   gdt
idtr:
    .word   256 * 16 - 1
    .quad   idt
    .balign 16
tss:
    .long   0
    .quad   kstack_top              /* RSP0 */
    .quad   0, 0, 0                 /* RSP1, RSP2, reserved */
    .quad   0, 0, 0, 0, 0, 0, 0     /* IST1-7 */
    .quad   0
    .word   0
    .word   104                     /* I/O permission bitmap right after (§19.5.2) */
    .fill   8192, 1, 0              /* every port allowed: PVM checks the bitmap in ring 3 */
    .byte   0xFF                    /* the bitmap's required terminator byte */
tss_end:

    .bss
    .balign 16
    .space  32768
kstack_top:
    .space  65536
ustack_top:

    .section .note.GNU-stack, "", @progbits
