# The fault payload: prints "F" and then faults with no usable IDT, so the CPU
# triple-faults. The VMM must stop the VM with a clear message, not hang or crash.

    .text
    .code64
    .globl start
start:
    mov $0x3f8, %dx
    mov $'F', %al
    out %al, %dx
    lidt null_idt
    ud2
1:  hlt
    jmp 1b

    .data
    .balign 8
null_idt:
    .word 0
    .quad 0
