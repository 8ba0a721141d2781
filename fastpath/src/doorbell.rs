//! The receiver sleep/wake handshake ("doorbell") of a port queue.
//!
//! A receiver that finds its queue empty spins a little, then *announces*
//! that it is going to sleep, *re-checks* the queue, and only then sleeps. A
//! sender, after publishing a message, asks the doorbell whether the receiver
//! announced sleep; exactly one sender per announcement is told to ring
//! (send the doorbell IPI). Nothing here is architecture-specific: the kernel
//! sends the IPI and halts; host tests use threads, loom uses park/unpark.
//!
//! ```text
//! receiver                                   sender
//! --------                                   ------
//! poll queue: empty (spin a few times)       push message (Release on slot seq)
//! t = prepare_to_sleep()                     notify():
//!     state = SLEEPING                           fence(SeqCst)            (F_s)
//!     fence(SeqCst)               (F_r)          if state == SLEEPING and
//! re-check queue                                    CAS SLEEPING -> AWAKE wins:
//! t.commit_or_cancel(nonempty)                      NeedsIpi(true)  -> send IPI
//!   nonempty: state = AWAKE, don't sleep         else NeedsIpi(false)
//!   empty, still SLEEPING: Sleep -> halt
//!   empty, already AWAKE: WakeupPending
//! after halt: woken()  (state = AWAKE)
//! ```
//!
//! # Why no wakeup is lost
//! **Invariant:** whenever the receiver commits to sleep, every message
//! published before it committed was either seen by its re-check, or the
//! sender that published it will see `SLEEPING` from this announcement (or a
//! later state change made by someone who takes care of the wakeup) and so
//! one sender gets `NeedsIpi(true)`.
//!
//! It is the store-buffering (Dekker) pattern. The receiver does
//! `W(state = SLEEPING); F_r; R(queue)` and the sender does
//! `W(queue); F_s; R(state)`, where `F_r` and `F_s` are `SeqCst` fences. All
//! `SeqCst` fences are in one total order S. If `F_s` precedes `F_r` in S, the
//! receiver's re-check reads the published slot (C++ \[atomics.order\]: a
//! load after a SeqCst fence sees every store that precedes an earlier SeqCst
//! fence, or a later one), so it cancels and takes the message. Otherwise `F_r`
//! precedes `F_s` and the sender's load reads `SLEEPING` or a later value of
//! `state`; the later values are `AWAKE` written by another sender's winning
//! CAS (that sender rings), by the receiver's cancel or `woken` (the receiver
//! is awake and polls again), or `SLEEPING` of a later announcement (whose own
//! re-check follows the same argument). The CAS makes the ring exactly-once
//! per announcement: the sender whose CAS moves `SLEEPING` to `AWAKE` rings.
//!
//! Both fences are needed: without `F_r` the receiver's re-check may be
//! satisfied from before its own announcement became visible, and without
//! `F_s` the sender's read of `state` may pass its own publication; either
//! way both sides can miss each other. The queue's own `Acquire`/`Release`
//! orderings do not forbid that (`Release`/`Acquire` never orders a store
//! before a later load). On x86 the fences are one `mfence` per side
//! (per `notify` and per `prepare_to_sleep`), which is why `notify` then only
//! *loads* `state` and does the locked CAS only when the receiver sleeps.
//!
//! # What the halting side must provide
//! Between [`SleepTicket::commit_or_cancel`] returning
//! [`SleepDecision::Sleep`] and the actual halt, a sender may already have
//! rung. The halt must not lose that ring: in the kernel, keep interrupts
//! disabled from before `commit_or_cancel` until `sti; hlt` (the one-
//! instruction `sti` shadow makes the pair atomic and a pending IPI stays
//! pending in the local APIC). With threads, park/unpark has the same token
//! semantics. After any wake (the doorbell or another interrupt), call
//! [`Doorbell::woken`] and poll the queue again.
//!
//! A doorbell has one waiter at a time and any number of notifiers. The
//! kernel lets several threads receive on one portset by letting one sleep
//! here while the others stand by: a waiter hands the doorbell on only after
//! its own `woken`, so announcements never overlap.
//! Spurious doorbell IPIs can happen (a ring that races a cancel) and must be
//! harmless to the receiver.

use crate::sync::{fence, AtomicU32, Ordering};

/// The receiver is running (or will poll before it sleeps).
const AWAKE: u32 = 0;
/// The receiver announced sleep and no sender has rung since.
const SLEEPING: u32 = 1;

/// Per-receiver sleep/wake state.
pub struct Doorbell {
    state: AtomicU32,
}

/// The answer of [`Doorbell::notify`]: `NeedsIpi(true)` means this sender
/// must send the doorbell IPI to the receiver (it alone is told so).
#[must_use = "when NeedsIpi(true) the caller must send the doorbell IPI"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedsIpi(pub bool);

/// What the receiver should do after [`SleepTicket::commit_or_cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleepDecision {
    /// Halt until an interrupt, then call [`Doorbell::woken`]. A message that
    /// arrives from now on makes a sender ring.
    Sleep,
    /// Don't sleep: the queue had a message and the announcement is withdrawn.
    Cancelled,
    /// Don't sleep: a sender already rang for this announcement, so a
    /// doorbell IPI is on its way (it will arrive as a harmless spurious one).
    WakeupPending,
}

/// Proof that the receiver announced sleep; resolve it with
/// [`commit_or_cancel`](SleepTicket::commit_or_cancel) after re-checking the
/// queue. Dropping it unresolved cancels the announcement.
#[must_use = "re-check the queue and call commit_or_cancel"]
pub struct SleepTicket<'a> {
    doorbell: &'a Doorbell,
}

impl Doorbell {
    /// A doorbell whose receiver is awake.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { state: AtomicU32::new(AWAKE) }
    }

    /// A doorbell whose receiver is awake (loom build: not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self { state: AtomicU32::new(AWAKE) }
    }

    /// Receiver: announce that it is about to sleep. Re-check the queue after
    /// this and pass the result to [`SleepTicket::commit_or_cancel`].
    pub fn prepare_to_sleep(&self) -> SleepTicket<'_> {
        self.state.store(SLEEPING, Ordering::Relaxed);
        // F_r: orders the announcement before the re-check's loads (see the
        // module docs); Release/Acquire cannot order a store before a load.
        fence(Ordering::SeqCst);
        SleepTicket { doorbell: self }
    }

    /// Sender: call after publishing a message. `NeedsIpi(true)` exactly when
    /// the receiver announced sleep and nobody has rung since; the caller
    /// must then send the doorbell IPI.
    pub fn notify(&self) -> NeedsIpi {
        // F_s: orders the publication before the load of `state`.
        fence(Ordering::SeqCst);
        if self.state.load(Ordering::Relaxed) != SLEEPING {
            // Common case when the receiver is busy: no locked instruction.
            return NeedsIpi(false);
        }
        NeedsIpi(self.state.compare_exchange(SLEEPING, AWAKE, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    }

    /// Receiver: call after waking from a halt, for any reason. Returns
    /// whether a sender rang (false: woken by something else, e.g. a timer).
    pub fn woken(&self) -> bool {
        self.state.swap(AWAKE, Ordering::AcqRel) == AWAKE
    }

    /// Whether the receiver is currently announced as sleeping (diagnostics).
    pub fn is_sleeping(&self) -> bool {
        self.state.load(Ordering::Relaxed) == SLEEPING
    }

    /// Receiver loop: poll up to `spins + 1` times, then run the handshake,
    /// halting with `halt` when it says [`SleepDecision::Sleep`]; returns the
    /// first message `poll` yields.
    ///
    /// `halt` must keep the token semantics described in the module docs (a
    /// ring after the decision and before the halt makes the halt return at
    /// once); it may also return spuriously. In the kernel: call `wait` with
    /// interrupts disabled and halt with `sti; hlt; cli`. The bounded spin
    /// (`spins`) keeps a receiver that is about to get a message from paying
    /// for the announcement's fence and a doorbell IPI.
    pub fn wait<R>(&self, spins: u32, mut poll: impl FnMut() -> Option<R>, mut halt: impl FnMut()) -> R {
        loop {
            for i in 0..=spins {
                if let Some(message) = poll() {
                    return message;
                }
                if i < spins {
                    core::hint::spin_loop();
                }
            }
            let ticket = self.prepare_to_sleep();
            if let Some(message) = poll() {
                let _ = ticket.commit_or_cancel(true);
                return message;
            }
            match ticket.commit_or_cancel(false) {
                SleepDecision::Sleep => {
                    halt();
                    self.woken();
                }
                SleepDecision::WakeupPending | SleepDecision::Cancelled => {}
            }
        }
    }
}

impl Default for Doorbell {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Doorbell").field("sleeping", &self.is_sleeping()).finish()
    }
}

impl SleepTicket<'_> {
    /// Resolve the announcement with the result of the re-check made after
    /// [`Doorbell::prepare_to_sleep`]: `queue_nonempty` true withdraws it.
    pub fn commit_or_cancel(self, queue_nonempty: bool) -> SleepDecision {
        let doorbell = self.doorbell;
        core::mem::forget(self);
        if queue_nonempty {
            doorbell.cancel()
        } else if doorbell.state.load(Ordering::Relaxed) == SLEEPING {
            // Even if a sender rings right after this load, its IPI wakes the
            // halt (token semantics), so sleeping is safe.
            SleepDecision::Sleep
        } else {
            SleepDecision::WakeupPending
        }
    }
}

impl Drop for SleepTicket<'_> {
    fn drop(&mut self) {
        let _ = self.doorbell.cancel();
    }
}

impl Doorbell {
    fn cancel(&self) -> SleepDecision {
        if self.state.swap(AWAKE, Ordering::AcqRel) == SLEEPING {
            SleepDecision::Cancelled
        } else {
            SleepDecision::WakeupPending
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use super::*;
    use crate::queue::PortQueue;
    use std::sync::atomic::{AtomicUsize, Ordering as O};
    use std::thread;
    use std::time::Duration;

    #[test]
    fn notify_only_when_sleeping_and_only_once() {
        let db = Doorbell::new();
        assert_eq!(db.notify(), NeedsIpi(false));
        let t = db.prepare_to_sleep();
        assert!(db.is_sleeping());
        assert_eq!(t.commit_or_cancel(false), SleepDecision::Sleep);
        assert_eq!(db.notify(), NeedsIpi(true));
        assert_eq!(db.notify(), NeedsIpi(false), "only one sender rings");
        assert!(db.woken(), "woken by the doorbell");
        assert_eq!(db.notify(), NeedsIpi(false));
    }

    #[test]
    fn cancel_and_pending() {
        let db = Doorbell::new();
        let t = db.prepare_to_sleep();
        assert_eq!(t.commit_or_cancel(true), SleepDecision::Cancelled);
        assert_eq!(db.notify(), NeedsIpi(false));

        let t = db.prepare_to_sleep();
        assert_eq!(db.notify(), NeedsIpi(true));
        assert_eq!(t.commit_or_cancel(false), SleepDecision::WakeupPending);

        let t = db.prepare_to_sleep();
        assert_eq!(db.notify(), NeedsIpi(true));
        assert_eq!(t.commit_or_cancel(true), SleepDecision::WakeupPending);
        assert!(!db.is_sleeping());
    }

    #[test]
    fn dropped_ticket_cancels_and_spurious_wake() {
        let db = Doorbell::new();
        drop(db.prepare_to_sleep());
        assert!(!db.is_sleeping());
        assert_eq!(db.notify(), NeedsIpi(false));
        let t = db.prepare_to_sleep();
        assert_eq!(t.commit_or_cancel(false), SleepDecision::Sleep);
        assert!(!db.woken(), "nobody rang: spurious wake");
        assert_eq!(db.notify(), NeedsIpi(false));
    }

    /// Threads with park/unpark as halt/IPI: the receiver gets every message
    /// and never sleeps through one (a lost wakeup would hang the test; the
    /// park timeout turns a hang into a failed assertion).
    #[test]
    fn threads_deliver_everything() {
        const PER_SENDER: usize = 20_000;
        static Q: PortQueue<usize, 16> = PortQueue::new();
        static DB: Doorbell = Doorbell::new();
        static IPIS: AtomicUsize = AtomicUsize::new(0);
        static LONG_SLEEPS: AtomicUsize = AtomicUsize::new(0);

        let receiver = thread::current();
        let senders: std::vec::Vec<_> = (0..2)
            .map(|s| {
                let receiver = receiver.clone();
                thread::spawn(move || {
                    for i in 0..PER_SENDER {
                        let mut v = s * PER_SENDER + i;
                        while let Err(back) = Q.try_push(v) {
                            v = back;
                            thread::yield_now();
                        }
                        if DB.notify().0 {
                            IPIS.fetch_add(1, O::Relaxed);
                            receiver.unpark();
                        }
                    }
                })
            })
            .collect();
        let mut seen = std::vec![false; 2 * PER_SENDER];
        for _ in 0..2 * PER_SENDER {
            let v = DB.wait(
                50,
                || Q.try_pop(),
                || {
                    let start = std::time::Instant::now();
                    thread::park_timeout(Duration::from_secs(5));
                    if start.elapsed() >= Duration::from_secs(5) {
                        LONG_SLEEPS.fetch_add(1, O::Relaxed);
                    }
                },
            );
            assert!(!seen[v], "duplicate {v}");
            seen[v] = true;
        }
        for s in senders {
            s.join().unwrap();
        }
        assert!(seen.iter().all(|&b| b));
        assert_eq!(LONG_SLEEPS.load(O::Relaxed), 0, "receiver slept through a message");
    }
}
