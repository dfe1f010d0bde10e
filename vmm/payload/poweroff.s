# The power-off payload: prints "!" and powers the VM off the ACPI way, writing
# SLP_TYP=5 (S5) | SLP_EN to the FADT's sleep control register (I/O port 0x3c0).

    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 4
    .long 18                # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long start

    .text
    .code32
    .globl start
start:
    mov $0x3f8, %dx
    mov $'!', %al
    out %al, %dx
    mov $0x3c0, %dx
    mov $0x34, %al          # (5 << 2) | (1 << 5)
    out %al, %dx
1:  hlt
    jmp 1b
