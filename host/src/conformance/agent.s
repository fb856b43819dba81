# Built into agent.bin (x86-64 Linux, static, no libc) by:
#   as --64 -o agent.o agent.s && ld -static -nostdlib -N -s --build-id=none -o agent.bin agent.o
#
# The conformance kit's agent: prints two lines on stdout and one on stderr, then
# waits for a signal; SIGTERM or SIGINT ends it with status 0. Given any argument it
# exits at once with status 3 (an agent that dies).
.globl _start
_start:
    mov $1, %eax                # write(1, out, out_len)
    mov $1, %edi
    lea out(%rip), %rsi
    mov $out_len, %edx
    syscall
    mov $1, %eax                # write(2, err, err_len)
    mov $2, %edi
    lea err(%rip), %rsi
    mov $err_len, %edx
    syscall
    cmpq $1, (%rsp)             # argc > 1: die
    jne die
    mov $13, %eax               # rt_sigaction(SIGTERM, &act, 0, 8)
    mov $15, %edi
    lea act(%rip), %rsi
    xor %edx, %edx
    mov $8, %r10d
    syscall
    mov $13, %eax               # rt_sigaction(SIGINT, &act, 0, 8)
    mov $2, %edi
    lea act(%rip), %rsi
    xor %edx, %edx
    mov $8, %r10d
    syscall
wait:
    mov $34, %eax               # pause()
    syscall
    jmp wait
stop:
    mov $60, %eax               # exit(0)
    xor %edi, %edi
    syscall
die:
    mov $60, %eax               # exit(3)
    mov $3, %edi
    syscall
act:
    .quad stop, 0x04000000, stop, 0   # handler, SA_RESTORER (x86-64 needs one), restorer, mask
out:
    .ascii "conformance-agent: line 1\nconformance-agent: line 2\n"
    out_len = . - out
err:
    .ascii "conformance-agent: line 3 on stderr\n"
    err_len = . - err
