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
