//! The serial console and the `log` backend. Every log line is
//! `[cpuN] LEVEL message`, written under one lock so lines from different
//! CPUs never interleave.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::{cpu, percpu, serial};
use crate::cmdline::LogLevel;

static CONSOLE_LOCK: spin::Mutex<()> = spin::Mutex::new(());
/// Set by the panic path: from then on only the panicking CPU prints, unlocked.
static PANIC_MODE: AtomicBool = AtomicBool::new(false);

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        serial::write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints `[cpuN] ` followed by `args` as one uninterrupted line.
pub fn print_line(args: fmt::Arguments) {
    let cpu = percpu::this_cpu_index();
    if PANIC_MODE.load(Ordering::Relaxed) {
        let _ = writeln!(Serial, "[cpu{cpu}] {args}");
        return;
    }
    cpu::without_interrupts(|| {
        let _guard = CONSOLE_LOCK.lock();
        let _ = writeln!(Serial, "[cpu{cpu}] {args}");
    });
}

/// Writes raw bytes (user console output through the root's console
/// server) under the console lock.
pub fn put_bytes(bytes: &[u8]) {
    if PANIC_MODE.load(Ordering::Relaxed) {
        serial::write_bytes(bytes);
        return;
    }
    cpu::without_interrupts(|| {
        let _guard = CONSOLE_LOCK.lock();
        serial::write_bytes(bytes);
    });
}

/// Console input: bytes the UART received, in a ring the root program's
/// console server drains with `console_read`. Polled at each timer tick
/// of CPU 0 (the 16550's FIFO holds 16 bytes: typing and short pastes;
/// at 115200 baud a longer burst between two ticks loses the excess,
/// counted in `INPUT_DROPPED`).
const INPUT_BYTES: usize = 4096;

struct InputRing {
    bytes: [u8; INPUT_BYTES],
    /// Index of the oldest byte, and how many are held.
    head: usize,
    len: usize,
}

static INPUT: spin::Mutex<InputRing> = spin::Mutex::new(InputRing { bytes: [0; INPUT_BYTES], head: 0, len: 0 });
/// Bytes lost because the ring was full.
pub static INPUT_DROPPED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Readers blocked in `console_read`.
pub static INPUT_WAITERS: crate::sched::WaitQueue = crate::sched::WaitQueue::new(crate::sched::WaitReason::ConsoleInput);

/// Moves what the UART received into the ring and wakes readers (timer
/// tick, CPU 0, interrupts off).
pub fn poll_input() {
    let mut got = false;
    {
        let mut ring = INPUT.lock();
        // Bounded: a broken UART that always reports data must not hold the tick.
        for _ in 0..64 {
            let Some(b) = serial::read_byte() else { break };
            got = true;
            if ring.len == INPUT_BYTES {
                INPUT_DROPPED.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let at = (ring.head + ring.len) % INPUT_BYTES;
            ring.bytes[at] = b;
            ring.len += 1;
        }
    }
    if got {
        INPUT_WAITERS.wake(usize::MAX);
    }
}

/// Whether input is waiting.
pub fn input_ready() -> bool {
    cpu::without_interrupts(|| INPUT.lock().len > 0)
}

/// Copies up to `out.len()` waiting bytes into `out` without taking them;
/// returns how many.
pub fn peek_input(out: &mut [u8]) -> usize {
    cpu::without_interrupts(|| {
        let ring = INPUT.lock();
        let n = out.len().min(ring.len);
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = ring.bytes[(ring.head + i) % INPUT_BYTES];
        }
        n
    })
}

/// Takes `n` bytes (after a successful `peek_input` of at least `n`).
pub fn consume_input(n: usize) {
    cpu::without_interrupts(|| {
        let mut ring = INPUT.lock();
        let n = n.min(ring.len);
        ring.head = (ring.head + n) % INPUT_BYTES;
        ring.len -= n;
    })
}

/// Called by the panicking CPU once every other CPU is stopped: a CPU may
/// have been stopped while holding the console lock, so printing stops
/// taking it.
pub fn enter_panic_mode() {
    PANIC_MODE.store(true, Ordering::SeqCst);
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            print_line(format_args!("{:<5} {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init(level: LogLevel) {
    serial::init();
    let _ = log::set_logger(&LOGGER);
    set_level(level);
}

pub fn set_level(level: LogLevel) {
    log::set_max_level(match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    });
}
