# The start-up payload: the smallest guest that proves the VM ran.
#
# Entered through the PVH boot protocol (32-bit protected mode, paging off), so that
# vnfhost's `kvm` backend and QEMU `-M microvm` boot the same ELF. Its first instruction
# writes to the serial port: the start-up benchmark times exec -> that byte. Then it asks
# for a reset through the i8042 controller (how Firecracker guests end); QEMU's microvm has
# no i8042, so it then writes to port 0xf4, where QEMU's `isa-debug-exit` device ends QEMU.
# (A triple fault would be the classic fallback, but the software KVM of some hosts reports
# it as an emulation failure and QEMU then hangs instead of exiting.)

    .section .note.Xen, "a"
    .balign 4
    .long 4                 # name size
    .long 4                 # descriptor size
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
    mov $0xfe, %al
    out %al, $0x64
    xor %al, %al
    out %al, $0xf4
1:  hlt
    jmp 1b
