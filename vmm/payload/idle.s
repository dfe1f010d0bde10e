# The idle payload: like hello (PVH entry, one serial byte first), then halts for ever
# with interrupts off, so the VM stays up and its monitor's memory can be measured.

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
    mov $'\n', %al
    out %al, %dx
    cli
1:  hlt
    jmp 1b
