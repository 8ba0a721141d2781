#!/bin/sh
# Records one benchmark operation instruction by instruction (see README).
# usage: profile.sh 'COMMAND LINE'  (with PROF_* set as trace.py says)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
port=${PROF_PORT:-1234}
qemu-system-x86_64 -machine pc -accel tcg -cpu max -smp 1 -m 512M -display none -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -serial file:"${PROF_SERIAL:-/tmp/profile-serial.log}" \
    -icount shift=0,align=off,sleep=off -gdb tcp::"$port" -S -net none \
    -kernel "$root/build/kernel.elf" -initrd "$root/build/boot.cpio" -append "exit=qemu log=warn -- $1" &
qemu=$!
trap 'kill $qemu 2>/dev/null || true' EXIT
PROF_PORT=$port gdb -q -batch -x "$here/trace.py" "$root/build/kernel.elf"
