# Matryoshka task runner. `just --list` shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Host tools run from the workspace (debug profile, shared with `cargo test`).
mkboot := "cargo run -q -p matryoshka-boot --bin mkboot --"
hwtests := "cargo run -q -p hw-tests --"

# Show the recipes.
default:
    @just --list

# Build the kernel and embed its symbol table -> build/kernel.elf; every program -> the boot archive build/boot.cpio (root program bin/init); the fuzzer -> build/fuzz.elf
build:
    {{mkboot}} build

# Boot in QEMU with N CPUs, serial on this terminal, Ctrl-A X quits (env CPUS, ACCEL=kvm, CMDLINE, MODE honoured)
qemu-smp CPUS=env_var_or_default("CPUS", "4") ACCEL=env_var_or_default("ACCEL", "tcg"): build
    {{mkboot}} qemu --mode "${MODE:-direct}" --cpus {{CPUS}} --accel {{ACCEL}} --cmdline "${CMDLINE:-log=info}"

# Boot, run one shell command line, print only its output (the boot log goes to build/run.log, shown on failure) and exit with its status: just run 'run passthru,passthru -- ls /' (env CPUS, TIMEOUT)
run COMMAND CPUS=env_var_or_default("CPUS", "2"):
    #!/usr/bin/env bash
    set -uo pipefail
    mkdir -p build
    log=build/run.log
    {{mkboot}} build >build/build.log 2>&1 || { cat build/build.log >&2; echo "just run: the build failed" >&2; exit 125; }
    {{mkboot}} qemu --cpus {{CPUS}} --timeout "${TIMEOUT:-300}" --cmdline "exit=qemu log=warn -- "{{quote(COMMAND)}} >"$log" 2>&1
    rc=$?
    python3 - "$log" "$rc" <<'PY'
    import re, sys
    log, rc = open(sys.argv[1], errors="replace").read(), int(sys.argv[2])
    begin, end = log.find("@@MATRYOSHKA-RUN-BEGIN@@\n"), re.search(r"\n?@@MATRYOSHKA-RUN-END status=(\d+)@@", log)
    if begin < 0 or end is None:
        sys.stderr.write(log[-6000:])
        sys.stderr.write(f"\njust run: the system did not run the command to its end (QEMU/mkboot status {rc}); full log in {sys.argv[1]}\n")
        sys.exit(125)
    sys.stdout.write(log[begin + len("@@MATRYOSHKA-RUN-BEGIN@@\n"):end.start()])
    sys.exit(int(end.group(1)))
    PY

# Boot halted, waiting for gdb on :1234 (prints the gdb command to run)
qemu-gdb CPUS=env_var_or_default("CPUS", "1") ACCEL=env_var_or_default("ACCEL", "tcg"): build
    {{mkboot}} qemu --gdb --cpus {{CPUS}} --accel {{ACCEL}} --cmdline "${CMDLINE:-log=debug}"

# Boot the ISO under BIOS or UEFI (MODE=bios-iso|uefi-iso), serial on this terminal
qemu-iso MODE="bios-iso" CPUS=env_var_or_default("CPUS", "2"): build
    {{mkboot}} qemu --mode {{MODE}} --cpus {{CPUS}} --cmdline "${CMDLINE:-log=info}"

# Build the hybrid BIOS+UEFI ISO -> build/matryoshka.iso (dd it to a USB stick, see boot/README.md)
iso: build
    {{mkboot}} iso --kernel build/kernel.elf --init build/boot.cpio --cmdline "${CMDLINE:-log=info}" --out build/matryoshka.iso

# Build the TFTP tree (build/pxe) and PXE-boot it in QEMU (FIRMWARE=bios|uefi)
pxe FIRMWARE="bios" CPUS=env_var_or_default("CPUS", "2"): build
    {{mkboot}} qemu --mode pxe-{{FIRMWARE}} --cpus {{CPUS}} --cmdline "${CMDLINE:-log=info}"

# Everything CI runs: format and lint checks, host unit tests, kernel host tests, loom models, the QEMU boot matrix (fuzz scenarios included), then the quick reproduction (every workload must run to its end bare and under stacks)
test: lint test-host test-kernel-host test-loom test-hw test-reproduce

# The quick reproduction as a test: `just reproduce --quick` fails unless every workload runs to the end with status 0 in both boots
test-reproduce:
    mkdir -p build && cargo run -q -p perf --release --bin reproduce -- --quick --db build/reproduce/ci.sqlite > build/reproduce-quick.jsonl

# Format and lint: rustfmt (the house style, rustfmt.toml) and clippy with warnings as errors, for the host crates, the kernel (host tests and bare metal) and the user programs
lint:
    cargo fmt --all --check
    cargo clippy --all-targets -- -D warnings
    cargo clippy -p kernel --all-targets -- -D warnings
    cargo clippy -p kernel --release --target x86_64-unknown-none -- -D warnings
    cargo clippy -p matryoshka-rt -p matryoshka-nest -p init -p fuzz -p fs -p pm -p msh -p passthru -p coreutils --release --target x86_64-unknown-none -- -D warnings

# Loom model checks of the lock-free port queue and the sleep/wake doorbell (own target dir)
test-loom:
    RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p fastpath --release --test loom

# In-guest IPC and syscall benchmarks (TSC cycles + deterministic -icount instructions): JSON lines, then a table
bench-ipc CPUS=env_var_or_default("CPUS", "2"):
    cargo run -q -p perf --release --bin bench-ipc -- --cpus {{CPUS}}

# The root program's benchmarks under Bochs with PCID on and off (deterministic TSC, ~45 s a boot; needs `just build`): JSON lines, then the TLB counters
bench-bochs:
    perf/bochs-bench.sh

# The in-guest system-call fuzzer as the root program: `just fuzz --seed S --calls N --cpus C` (defaults 1, 100000, 4; --timeout SECONDS, default 600); other flags go to the fuzzer (nesters/fuzz/README.md). Prints its summary; fails on any kernel failure
fuzz *ARGS: build
    #!/usr/bin/env bash
    set -euo pipefail
    seed=1; calls=100000; cpus=4; timeout=600; rest=()
    set -- {{ARGS}}
    while [ $# -gt 0 ]; do
        case "$1" in
            --seed) seed="$2"; shift 2 ;;
            --calls) calls="$2"; shift 2 ;;
            --cpus) cpus="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            *) rest+=("$1"); shift ;;
        esac
    done
    {{mkboot}} qemu --cpus "$cpus" --init build/fuzz.elf --timeout "$timeout" \
        --cmdline "exit=qemu test=fuzz log=${LOG:-info} watchdog=60 -- --seed $seed --calls $calls ${rest[*]:-}"

# The nester stack's benchmarks (spawn, pipes, files, memory per process), bare and under 1 and 8 passthru layers: JSON lines, then a table
bench-nest CPUS=env_var_or_default("CPUS", "2"):
    cargo run -q -p perf --release --bin bench-nest -- --cpus {{CPUS}}

# Every in-guest benchmark (bench-ipc, bench-nest): all their JSON lines on stdout
bench CPUS=env_var_or_default("CPUS", "2"):
    cargo run -q -p perf --release --bin bench-ipc -- --cpus {{CPUS}}
    cargo run -q -p perf --release --bin bench-nest -- --cpus {{CPUS}} --no-build

# Fluke's evaluation reproduced: every workload bare and under passthru stacks 1..8, icount instructions and TCG ratios, crossings; JSON lines on stdout, table in build/reproduce/results.md, history in results/matryoshka.sqlite (--quick: the CI-sized subset)
reproduce *ARGS:
    cargo run -q -p perf --release --bin reproduce -- {{ARGS}}

# Host benchmarks of the port queues (criterion) and their software/hardware counters
bench-queues:
    cargo bench -p perf --bench queues
    cargo run -q -p perf --release --bin queue-counters

# Host unit tests of the default workspace members (abi, fastpath, boot, hw-tests, perf, fuzz)
test-host:
    cargo test

# The kernel's pure-logic unit tests, built for the host
test-kernel-host:
    cargo test -p kernel

# The QEMU boot matrix (extra args go to hw-tests, e.g. `just test-hw --scenario direct-4cpu`)
test-hw *ARGS:
    {{hwtests}} {{ARGS}}

# List the boot-matrix scenarios
test-hw-list:
    {{hwtests}} --list

# Check that every host tool is installed and say how to install what is missing
doctor:
    {{mkboot}} doctor

# Install the missing host tools (apt-get, rustup target, just)
setup:
    {{mkboot}} doctor --install

# Remove build outputs (build/ and cargo's target/)
clean:
    rm -rf build
    cargo clean
