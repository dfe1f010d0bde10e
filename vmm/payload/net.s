# The virtio-net payload: a tiny guest that drives a virtio-mmio network device.
#
# A plain ELF entered in 64-bit mode (paging on, the first 4 GiB identity-mapped), the way
# Firecracker enters a vmlinux. It finds the first virtio-mmio net device in the slots the
# `kvm` backend uses (0xd0000000 + n * 0x1000), negotiates VIRTIO_F_VERSION_1 (and
# VIRTIO_NET_F_MAC when offered), sets up an 8-entry receive and transmit queue, posts the
# receive buffers, sends one broadcast frame (EtherType 0x88b5, text "hello from the
# payload") and waits for one frame back, whose text it prints. Every step is reported on
# the serial port; it ends with an i8042 reset. It polls: no interrupts are used.
#
# Kept small on purpose: where KVM is emulated, every instruction here costs a microsecond.

    .set QSIZE, 8
    .set RXQ, 0x200000          # desc at +0, avail at +0x100, used at +0x200
    .set TXQ, 0x201000
    .set RXBUF, 0x210000        # QSIZE buffers of 2048 bytes
    .set TXBUF, 0x220000
    .set HDR, 12                # struct virtio_net_hdr with VERSION_1

    .text
    .code64
    .globl start
start:
    lea msg_hello(%rip), %rsi
    call puts
    mov $0xd0000000, %ebx
    mov $8, %ecx
scan:
    cmpl $0x74726976, (%rbx)    # "virt"
    jne 1f
    cmpl $2, 4(%rbx)            # version 2 (modern)
    jne 1f
    cmpl $1, 8(%rbx)            # device id 1: network
    je found
1:  add $0x1000, %ebx
    dec %ecx
    jnz scan
    lea msg_nodev(%rip), %rsi
    call puts
    jmp finish

found:
    lea msg_found(%rip), %rsi
    call puts
    movl $0, 0x70(%rbx)         # reset
    movl $1, 0x70(%rbx)         # ACKNOWLEDGE
    movl $3, 0x70(%rbx)         # | DRIVER
    movl $1, 0x14(%rbx)         # device features, bits 32..63
    mov 0x10(%rbx), %eax
    test $1, %eax               # VIRTIO_F_VERSION_1
    jz fail_features
    movl $0, 0x14(%rbx)
    mov 0x10(%rbx), %eax
    and $0x20, %eax             # VIRTIO_NET_F_MAC, nothing else
    mov %eax, %r12d
    movl $0, 0x24(%rbx)
    mov %eax, 0x20(%rbx)
    movl $1, 0x24(%rbx)
    movl $1, 0x20(%rbx)
    movl $11, 0x70(%rbx)        # | FEATURES_OK
    mov 0x70(%rbx), %eax
    test $8, %eax
    jz fail_features
    test %r12d, %r12d
    jz 2f
    lea mac(%rip), %rdi
    xor %ecx, %ecx
3:  movb 0x100(%rbx,%rcx), %al  # config space: mac[6]
    movb %al, (%rdi,%rcx)
    inc %ecx
    cmp $6, %ecx
    jne 3b
2:  lea msg_mac(%rip), %rsi
    call puts
    call put_mac

    xor %edi, %edi
    mov $RXQ, %esi
    call setup_queue
    mov $1, %edi
    mov $TXQ, %esi
    call setup_queue
    movl $15, 0x70(%rbx)        # | DRIVER_OK
    mov 0x70(%rbx), %eax
    test $0x40, %eax            # DEVICE_NEEDS_RESET
    jnz fail_device

    # Post every receive buffer.
    mov $RXQ, %edi
    xor %ecx, %ecx
4:  mov %ecx, %eax
    shl $11, %eax
    add $RXBUF, %eax
    mov %ecx, %edx
    shl $4, %edx
    mov %rax, (%rdi,%rdx)       # addr
    movl $2048, 8(%rdi,%rdx)    # len
    movw $2, 12(%rdi,%rdx)      # VIRTQ_DESC_F_WRITE
    movw $0, 14(%rdi,%rdx)
    movw %cx, 0x104(%rdi,%rcx,2)
    inc %ecx
    cmp $QSIZE, %ecx
    jne 4b
    movw $QSIZE, 0x102(%rdi)    # avail idx
    movl $0, 0x50(%rbx)         # notify queue 0

    # One broadcast frame from our MAC.
    mov $TXBUF, %edi
    movl $0xffffffff, HDR(%rdi)
    movw $0xffff, HDR+4(%rdi)
    mov mac(%rip), %eax
    mov %eax, HDR+6(%rdi)
    movw mac+4(%rip), %ax
    movw %ax, HDR+10(%rdi)
    movw $0xb588, HDR+12(%rdi)
    lea tx_text(%rip), %rsi
    lea HDR+14(%rdi), %rdi
5:  lodsb
    stosb
    test %al, %al
    jnz 5b
    mov $TXQ, %edi
    movq $TXBUF, (%rdi)
    movl $HDR+60, 8(%rdi)
    movw $0, 12(%rdi)
    movw $0, 0x104(%rdi)
    movw $1, 0x102(%rdi)
    movl $1, 0x50(%rbx)         # notify queue 1
    lea msg_sent(%rip), %rsi
    call puts

    # Wait for one received frame.
    mov $RXQ, %edi
    mov $20000000, %ecx
6:  cmpw $0, 0x202(%rdi)        # used idx
    jne 7f
    pause
    dec %ecx
    jnz 6b
    lea msg_timeout(%rip), %rsi
    call puts
    jmp finish
7:  mov 0x204(%rdi), %eax       # used.ring[0].id
    and $QSIZE-1, %eax
    shl $11, %eax
    add $RXBUF, %eax
    mov %eax, %r13d
    cmpw $0xb588, HDR+12(%r13)
    jne bad_frame
    lea msg_rx(%rip), %rsi
    call puts
    lea HDR+14(%r13), %rsi
    mov $64, %ecx               # at most 64 characters of the peer's text
    mov $0x3f8, %dx
8:  lodsb
    test %al, %al
    jz 9f
    out %al, %dx
    dec %ecx
    jnz 8b
9:  mov $'\n', %al
    out %al, %dx
finish:
    lea msg_done(%rip), %rsi
    call puts
    mov $0xfe, %al
    out %al, $0x64              # i8042 reset
10: hlt
    jmp 10b

fail_features:
    lea msg_features(%rip), %rsi
    call puts
    jmp finish
fail_queue:
    lea msg_queue(%rip), %rsi
    call puts
    jmp finish
fail_device:
    lea msg_needs_reset(%rip), %rsi
    call puts
    jmp finish
bad_frame:
    lea msg_bad_frame(%rip), %rsi
    call puts
    jmp finish

# setup_queue(edi = queue index, esi = ring base): desc, avail and used in one page.
setup_queue:
    mov %edi, 0x30(%rbx)        # QueueSel
    mov 0x34(%rbx), %eax        # QueueNumMax
    cmp $QSIZE, %eax
    jb 1f
    movl $QSIZE, 0x38(%rbx)
    mov %esi, 0x80(%rbx)
    movl $0, 0x84(%rbx)
    lea 0x100(%rsi), %eax
    mov %eax, 0x90(%rbx)
    movl $0, 0x94(%rbx)
    lea 0x200(%rsi), %eax
    mov %eax, 0xa0(%rbx)
    movl $0, 0xa4(%rbx)
    movl $1, 0x44(%rbx)         # QueueReady
    ret
1:  pop %rax
    jmp fail_queue

puts:
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

put_mac:
    lea mac(%rip), %r8
    lea hexdigits(%rip), %r10
    mov $0x3f8, %dx
    xor %ecx, %ecx
1:  movzbl (%r8,%rcx), %eax
    mov %eax, %r9d
    shr $4, %eax
    movb (%r10,%rax), %al
    out %al, %dx
    mov %r9d, %eax
    and $0xf, %eax
    movb (%r10,%rax), %al
    out %al, %dx
    inc %ecx
    cmp $6, %ecx
    je 2f
    mov $':', %al
    out %al, %dx
    jmp 1b
2:  mov $'\n', %al
    out %al, %dx
    ret

    .data
mac:
    .byte 0x02, 0, 0, 0, 0, 0x01, 0, 0
hexdigits:
    .ascii "0123456789abcdef"
tx_text:
    .asciz "hello from the payload"
msg_hello:
    .asciz "payload: 64-bit mode\n"
msg_nodev:
    .asciz "payload: no virtio-net device\n"
msg_found:
    .asciz "payload: virtio-net device found\n"
msg_mac:
    .asciz "payload: mac "
msg_features:
    .asciz "payload: device refused the features\n"
msg_queue:
    .asciz "payload: queue too small\n"
msg_needs_reset:
    .asciz "payload: device needs reset\n"
msg_sent:
    .asciz "payload: frame sent\n"
msg_timeout:
    .asciz "payload: no frame received\n"
msg_rx:
    .asciz "payload: received: "
msg_bad_frame:
    .asciz "payload: received an unexpected frame\n"
msg_done:
    .asciz "payload: done\n"
