//! Allocation fault injection: make the N-th allocation fail, or a seeded
//! random share of them, to prove every allocation failure becomes
//! `NoMemory` for the caller, with nothing panicking and nothing leaking.
//!
//! Allocation points are every frame allocation, every heap allocation made
//! inside a fallible scope (`try_reserve` and friends, see `mm::heap`), and
//! an explicit `allocation_point()` in front of each kernel object's
//! creation on a system-call path (the `Arc`s of threads, spaces, ports,
//! portsets, mutexes, conds and references, whose allocation Rust cannot
//! report as failed on a stable compiler: there the point stands for the
//! allocation, and the quota makes sure the real one succeeds).
//!
//! Armed from the command line (`failalloc=N`, `failalloc=random:SEED:PERMILLE`)
//! or by the root program (`fault_inject`, call 79), which is how the in-guest
//! sweep fails each allocation point of a scenario in turn.

use core::sync::atomic::{AtomicU64, Ordering};

/// What the injector does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Off,
    /// Fail the n-th allocation point (1-based) after arming, once.
    Nth(u64),
    /// Fail each point with probability `permille`/1000, from a seeded stream.
    Random {
        seed: u64,
        permille: u64,
    },
}

impl Plan {
    /// Parses `N` or `random:SEED:PERMILLE`.
    pub fn parse(s: &str) -> Option<Plan> {
        if let Some(rest) = s.strip_prefix("random:") {
            let (seed, permille) = rest.split_once(':')?;
            let permille: u64 = permille.parse().ok()?;
            return (permille <= 1000).then_some(Plan::Random { seed: seed.parse().ok()?, permille });
        }
        match s.parse().ok()? {
            0 => Some(Plan::Off),
            n => Some(Plan::Nth(n)),
        }
    }
}

const MODE_OFF: u64 = 0;
const MODE_NTH: u64 = 1;
const MODE_RANDOM: u64 = 2;

/// The injector's state: atomics only, so any CPU consults it without a lock.
pub struct Injector {
    mode: AtomicU64,
    /// Nth: the point to fail; Random: the seed.
    parameter: AtomicU64,
    permille: AtomicU64,
    /// Allocation points passed since arming.
    points: AtomicU64,
    /// Failures injected since arming.
    injected: AtomicU64,
}

impl Default for Injector {
    fn default() -> Self {
        Self::new()
    }
}

impl Injector {
    pub const fn new() -> Self {
        Injector {
            mode: AtomicU64::new(MODE_OFF),
            parameter: AtomicU64::new(0),
            permille: AtomicU64::new(0),
            points: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// Arms `plan`, counting points from zero again.
    pub fn arm(&self, plan: Plan) {
        self.mode.store(MODE_OFF, Ordering::SeqCst);
        self.points.store(0, Ordering::SeqCst);
        self.injected.store(0, Ordering::SeqCst);
        let (mode, parameter, permille) = match plan {
            Plan::Off => (MODE_OFF, 0, 0),
            Plan::Nth(n) => (MODE_NTH, n, 0),
            Plan::Random { seed, permille } => (MODE_RANDOM, seed, permille),
        };
        self.parameter.store(parameter, Ordering::SeqCst);
        self.permille.store(permille, Ordering::SeqCst);
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// (points passed, failures injected) since arming.
    pub fn counts(&self) -> (u64, u64) {
        (self.points.load(Ordering::SeqCst), self.injected.load(Ordering::SeqCst))
    }

    /// One allocation point: true if this allocation is to fail.
    #[inline]
    pub fn should_fail(&self) -> bool {
        let mode = self.mode.load(Ordering::Relaxed);
        if mode == MODE_OFF {
            return false;
        }
        let point = self.points.fetch_add(1, Ordering::AcqRel) + 1;
        let fail = match mode {
            MODE_NTH => point == self.parameter.load(Ordering::Relaxed),
            _ => {
                mix(self.parameter.load(Ordering::Relaxed) ^ point.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 1000
                    < self.permille.load(Ordering::Relaxed)
            }
        };
        if fail {
            self.injected.fetch_add(1, Ordering::AcqRel);
        }
        fail
    }
}

/// A 64-bit mixer (splitmix64's finaliser): point numbers to uniform bits.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The kernel's injector.
pub static INJECTOR: Injector = Injector::new();

/// An allocation point in front of an allocation the code cannot see fail
/// (an `Arc` of a kernel object): `Err` if the injector says it fails.
#[inline]
pub fn allocation_point() -> Result<(), OutOfMemory> {
    if INJECTOR.should_fail() {
        Err(OutOfMemory)
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plans() {
        assert_eq!(Plan::parse("0"), Some(Plan::Off));
        assert_eq!(Plan::parse("17"), Some(Plan::Nth(17)));
        assert_eq!(Plan::parse("random:5:250"), Some(Plan::Random { seed: 5, permille: 250 }));
        assert_eq!(Plan::parse("random:5:1001"), None);
        assert_eq!(Plan::parse("random:5"), None);
        assert_eq!(Plan::parse("x"), None);
    }

    #[test]
    fn the_nth_point_fails_once() {
        let i = Injector::new();
        assert!(!i.should_fail(), "off by default");
        i.arm(Plan::Nth(3));
        let outcomes: Vec<bool> = (0..6).map(|_| i.should_fail()).collect();
        assert_eq!(outcomes, [false, false, true, false, false, false]);
        assert_eq!(i.counts(), (6, 1));
        i.arm(Plan::Off);
        assert!(!i.should_fail());
        assert_eq!(i.counts(), (0, 0));
    }

    #[test]
    fn a_random_share_is_seeded_and_about_right() {
        let run = |seed| {
            let i = Injector::new();
            i.arm(Plan::Random { seed, permille: 100 });
            (0..10_000).map(|_| i.should_fail()).collect::<Vec<bool>>()
        };
        assert_eq!(run(1), run(1), "the same seed fails the same points");
        assert_ne!(run(1), run(2));
        let failed = run(3).iter().filter(|&&f| f).count();
        assert!((800..1200).contains(&failed), "{failed} of 10000 at 10%");
    }
}
