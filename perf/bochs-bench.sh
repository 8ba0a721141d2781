#!/usr/bin/env bash
# The root program's benchmarks (`test=bench`) under Bochs 2.7, with tagged
# address spaces (PCID) and without (`pcid=off`): `just bench-bochs`.
# Bochs's TSC follows its instruction count (`clock: sync=none`, fixed
# `ips`), so two runs give the same figures; it models no TLB cost and
# flushes on every CR3 load (it ignores the no-flush bit), so the two boots
# differ only in the kernel's TLB counters, printed after the benchmarks.
# Needs `just build` first; logs in build/bochs-bench/{pcid-on,pcid-off}.
set -uo pipefail
cd "$(dirname "$0")/.."
run() {
    local name=$1 cmdline=$2 dir=build/bochs-bench/$1
    mkdir -p "$dir"; rm -f "$dir/serial.log" "$dir/in"
    cargo run -q -p matryoshka-boot --bin mkboot -- iso --kernel build/kernel.elf --init build/boot.cpio \
        --cmdline "$cmdline" --out "$dir/t.iso" >/dev/null || exit 1
    # The settings of the bochs-pcid-2cpu scenario (boot/src/emulators.rs).
    cat >"$dir/bochsrc" <<RC
megs: 512
cpu: model=corei7_icelake_u, count=2, ips=200000000, quantum=16
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
ata0-master: type=cdrom, path=$dir/t.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=/dev/stdout
display_library: rfb, options="timeout=0"
clock: sync=none, time0=946684800
speaker: enabled=0
sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy
log: $dir/bochs.log
panic: action=fatal
RC
    mkfifo "$dir/in"
    bochs -q -f "$dir/bochsrc" <"$dir/in" >"$dir/serial.log" 2>&1 &
    local pid=$! start=$SECONDS
    exec 3>"$dir/in"; echo c >&3   # Bochs's debugger: continue
    until grep -q 'BENCH done\|bench: \|PANIC' "$dir/serial.log" 2>/dev/null; do
        sleep 2
        if (( SECONDS - start > 900 )) || ! kill -0 "$pid" 2>/dev/null; then echo "$name: no verdict" >&2; break; fi
    done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exec 3>&-
    grep -o '{"bench".*' "$dir/serial.log" | sed "s/^{/{\"boot\":\"$name\",/"
    grep -h 'TLB counters' "$dir/serial.log" | sed "s/^/$name: /" >&2
}
run pcid-on "exit=qemu test=bench log=warn"
run pcid-off "exit=qemu test=bench log=warn pcid=off"
