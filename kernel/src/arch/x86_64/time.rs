//! Time: TSC calibration against the PIT, and the per-CPU tick timer
//! (TSC-deadline where the CPU has it, else the APIC timer in periodic mode,
//! calibrated against the TSC).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::apic;
use super::cpu::{inb, outb, read_tsc, write_msr, MSR_TSC_DEADLINE};
use super::idt::VECTOR_TIMER;

pub const TICK_HZ: u64 = 100;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static APIC_TICKS_PER_PERIOD: AtomicU32 = AtomicU32::new(0);
static USE_TSC_DEADLINE: AtomicBool = AtomicBool::new(false);

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Counts TSC cycles across `ms` milliseconds of PIT channel 2. Returns None
/// when the PIT gate does not respond (machines without port 0x61).
fn pit_measure_tsc(ms: u64) -> Option<u64> {
    let count = (1_193_182 * ms / 1000) as u16;
    let gate = inb(0x61);
    outb(0x61, (gate & !0x02) | 0x01);
    outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    // Restart the count by pulsing the gate.
    let g = inb(0x61) & !0x01;
    outb(0x61, g);
    outb(0x61, g | 0x01);
    let start = read_tsc();
    let mut spins: u64 = 0;
    while inb(0x61) & 0x20 == 0 {
        spins += 1;
        if spins > 50_000_000 {
            return None;
        }
    }
    Some(read_tsc() - start)
}

/// Calibrates the TSC. CPUID leaf 0x15 wins when it reports a frequency.
pub fn calibrate_tsc(cpuid_hz: Option<u64>) -> u64 {
    let hz = match cpuid_hz {
        Some(hz) => hz,
        None => {
            let mut best = u64::MAX;
            for _ in 0..3 {
                match pit_measure_tsc(10) {
                    Some(c) => best = best.min(c),
                    None => break,
                }
            }
            if best == u64::MAX {
                log::warn!("time: PIT does not respond, assuming a 1 GHz TSC");
                1_000_000_000
            } else {
                best * 100
            }
        }
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

pub fn delay_us(us: u64) {
    let hz = tsc_hz().max(1_000_000);
    let end = read_tsc() + hz / 1_000_000 * us;
    while read_tsc() < end {
        core::hint::spin_loop();
    }
}

/// Microseconds since boot-time TSC zero (monotonic per CPU).
pub fn now_us() -> u64 {
    read_tsc() / (tsc_hz().max(1_000_000) / 1_000_000)
}

/// The TSC now (for deadlines outside `arch`).
pub fn read_tsc_now() -> u64 {
    read_tsc()
}

/// Nanoseconds since TSC zero (boot): the clock of `time_now` and every
/// deadline user programs give.
pub fn now_ns() -> u64 {
    tsc_to_ns(read_tsc())
}

/// `tsc` cycles as nanoseconds at the calibrated rate (saturating).
pub fn tsc_to_ns(tsc: u64) -> u64 {
    (tsc as u128 * 1_000_000_000 / tsc_hz().max(1) as u128).min(u64::MAX as u128) as u64
}

/// `ns` nanoseconds as TSC cycles (saturating).
pub fn ns_to_tsc(ns: u64) -> u64 {
    (ns as u128 * tsc_hz().max(1) as u128 / 1_000_000_000).min(u64::MAX as u128) as u64
}

/// TSC cycles per timer tick (deadlines are checked at each tick).
pub fn tsc_per_tick() -> u64 {
    (tsc_hz() / TICK_HZ).max(1)
}

/// Measures the APIC timer against the TSC (boot CPU, once).
pub fn calibrate_apic_timer(tsc_deadline: bool) {
    USE_TSC_DEADLINE.store(tsc_deadline, Ordering::Relaxed);
    if tsc_deadline {
        return;
    }
    apic::timer_setup(VECTOR_TIMER, 0, true, u32::MAX);
    // Mask by writing the LVT without the vector being reachable: interrupts are off here.
    delay_us(10_000);
    let elapsed = u32::MAX - apic::timer_current();
    apic::timer_stop();
    let per_period = (elapsed as u64 * 100 / TICK_HZ).max(1000);
    APIC_TICKS_PER_PERIOD.store(per_period.min(u32::MAX as u64) as u32, Ordering::Relaxed);
}

pub fn timer_mode_name() -> &'static str {
    if USE_TSC_DEADLINE.load(Ordering::Relaxed) {
        "TSC-deadline"
    } else {
        "APIC periodic"
    }
}

fn arm_deadline() {
    let next = read_tsc() + tsc_hz() / TICK_HZ;
    // SAFETY: IA32_TSC_DEADLINE exists (CPUID.1:ECX.24 was checked) and only arms the timer.
    unsafe { write_msr(MSR_TSC_DEADLINE, next) };
}

/// Starts this CPU's tick timer.
pub fn start_this_cpu_timer() {
    if USE_TSC_DEADLINE.load(Ordering::Relaxed) {
        apic::timer_setup(VECTOR_TIMER, apic::TIMER_TSC_DEADLINE, true, 0);
        arm_deadline();
    } else {
        apic::timer_setup(VECTOR_TIMER, apic::TIMER_PERIODIC, true, APIC_TICKS_PER_PERIOD.load(Ordering::Relaxed));
    }
}

pub fn on_timer_interrupt() {
    if USE_TSC_DEADLINE.load(Ordering::Relaxed) {
        arm_deadline();
    }
}
