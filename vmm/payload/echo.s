# The echo payload: copies what arrives on the serial port back to it (polling the line
# status register) until it reads 'q', then resets. Checks the console input path.

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
    mov $'>', %al
    out %al, %dx
1:  mov $0x3fd, %dx         # line status: bit 0, data ready
    in %dx, %al
    test $1, %al
    jz 1b
    mov $0x3f8, %dx
    in %dx, %al
    out %al, %dx
    cmp $'q', %al
    jne 1b
    mov $0xfe, %al
    out %al, $0x64
2:  hlt
    jmp 2b
