//! The same-CPU IPC fast path: `call` and `reply_wait` when the partner is
//! already waiting on this CPU, done with registers only and a direct
//! switch to the partner's user frame.
//!
//! The kernel supplies the mechanisms through [`Kernel`]; this module fixes
//! the order, which is the whole correctness argument:
//!
//! 1. **Checks that change nothing.** The fast path is on and the caller has
//!    no kill or stop pending and runs on its own time (not donated); the
//!    handle names a port (SEND right) or a portset (RECEIVE right) in the
//!    caller's space.
//! 2. **One claim, which either changes nothing or commits.** The partner
//!    must be *parked*: blocked by an earlier fast path at its user frame, so
//!    its kernel stack holds nothing but its user registers and the switch
//!    to it is a `sysret` from them. It must have last run on this CPU and be
//!    allowed to run here. `call` claims the oldest server waiting on the
//!    port's portset; `reply_wait` parks the caller on the portset, which it
//!    may do only when no client is queued there and the portset has room
//!    without allocating, and in the same step claims the caller's client.
//! 3. **Work that cannot fail.** Park the caller (call), make the partner
//!    the running thread and complete its system call: the result goes in
//!    its user frame, and the message never touches memory on the way, since
//!    the switch carries the caller's message registers straight into the
//!    partner's.
//!
//! `reply_wait` parks the caller even when its client is not parked (it
//! blocked the general way, or it is the first request) as long as the
//! client, or some other thread, will run on this CPU next: the reply then
//! goes into the client's IPC slot and the scheduler switches to it. That is
//! how a pair that started on the general path moves to the fast one after
//! one round trip.
//!
//! Any check or claim that fails returns `None` before anything changed, and
//! the kernel runs the general path, which gives the same result. A thread
//! parked here and later woken by the general path (a client on another
//! CPU, a kill, a stop) resumes in a kernel continuation that finishes the
//! call exactly as the general path would have.

/// Words of a message carried in registers.
pub const MESSAGE_WORDS: usize = 6;
pub type Message = [u64; MESSAGE_WORDS];

/// The result register of a received request holds the port's alias with
/// the top bit clear (negative results are error codes).
pub const ALIAS_RESULT_MASK: u64 = i64::MAX as u64;

/// What parking a server did with its client.
#[derive(Debug, PartialEq, Eq)]
pub enum Client<T> {
    /// It was parked here and is now claimed: switch to it directly.
    Claimed(T),
    /// It blocked the general way (or there is none): it takes the reply
    /// from its IPC slot when the scheduler runs it.
    Blocked(Option<T>),
}

/// The kernel mechanisms the fast path sequences.
pub trait Kernel {
    /// A claimed thread: owned, off every wait list, ready to be switched to.
    type Thread;
    type Portset;
    /// What the syscall entry stub needs to leave through the new thread.
    type Switch;

    /// The fast path is on, the caller has no kill or stop pending and does
    /// not run on donated CPU time.
    fn caller_ready(&self) -> bool;
    /// The portset and alias behind a port handle with the SEND right.
    fn send_port(&self, handle: u64) -> Option<(Self::Portset, u64)>;
    /// The portset behind a portset handle with the RECEIVE right.
    fn receive_portset(&self, handle: u64) -> Option<Self::Portset>;
    /// Claims the oldest server waiting on `portset` if it is parked and may
    /// run on this CPU now; otherwise changes nothing.
    fn claim_waiting_server(&self, portset: &Self::Portset) -> Option<Self::Thread>;
    /// Parks the caller as a server waiting on `portset` and takes its
    /// client: claimed if it is parked and may run on this CPU now. Only if
    /// no client is queued on `portset`, the portset has room for the caller
    /// without allocating, and the client (if not claimed) or another
    /// thread will run on this CPU; otherwise changes nothing.
    fn park_caller_as_server(&self, portset: &Self::Portset) -> Option<Client<Self::Thread>>;
    /// Parks the caller as the client `server` will reply to.
    fn park_caller_as_client_of(&self, server: &Self::Thread);
    /// Puts `message` in the IPC slot of a thread that blocked the general
    /// way and marks it delivered.
    fn deliver_to_slot(&self, to: &Self::Thread, message: &Message);
    /// Makes the claimed `next` this CPU's running thread (its address
    /// space, kernel entry stack and time slice) and completes its system
    /// call: `result` in its result register and the caller's message
    /// registers in its own. The caller is already parked.
    fn switch_to(&self, next: Self::Thread, result: u64) -> Self::Switch;
    /// The caller is parked: wakes `next`, if any, and lets the scheduler
    /// give the CPU to it (directly, when it may run here) or to another.
    fn schedule(&self, next: Option<Self::Thread>) -> Self::Switch;
}

/// `call(port)`: hands the caller's request (its message registers) to a
/// server parked on the port's portset and switches to it; the caller waits
/// parked for the reply.
#[inline(always)]
pub fn call<K: Kernel>(k: &K, port_handle: u64) -> Option<K::Switch> {
    if !k.caller_ready() {
        return None;
    }
    let (portset, alias) = k.send_port(port_handle)?;
    let server = k.claim_waiting_server(&portset)?;
    // Committed: nothing below can fail.
    k.park_caller_as_client_of(&server);
    Some(k.switch_to(server, alias & ALIAS_RESULT_MASK))
}

/// `reply_wait(portset)`: hands `reply` (the caller's message registers) to
/// the caller's client and switches to it; the caller waits parked on the portset for the next request.
#[inline(always)]
pub fn reply_wait<K: Kernel>(k: &K, portset_handle: u64, reply: &Message) -> Option<K::Switch> {
    if !k.caller_ready() {
        return None;
    }
    let portset = k.receive_portset(portset_handle)?;
    // Committed once this returns: nothing below can fail.
    match k.park_caller_as_server(&portset)? {
        Client::Claimed(client) => Some(k.switch_to(client, 0)),
        Client::Blocked(client) => {
            if let Some(c) = &client {
                k.deliver_to_slot(c, reply);
            }
            Some(k.schedule(client))
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::cell::RefCell;
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// Which preconditions hold, and a log of every state change.
    #[derive(Default)]
    struct Mock {
        ready: bool,
        port_ok: bool,
        portset_ok: bool,
        server_parked: bool,
        client_parked: bool,
        /// Whether the caller can park when its client is not parked.
        may_park_anyway: bool,
        log: RefCell<Vec<String>>,
    }

    impl Kernel for Mock {
        type Thread = &'static str;
        type Portset = u64;
        type Switch = &'static str;

        fn caller_ready(&self) -> bool {
            self.ready
        }
        fn send_port(&self, handle: u64) -> Option<(u64, u64)> {
            self.port_ok.then_some((handle + 100, u64::MAX))
        }
        fn receive_portset(&self, handle: u64) -> Option<u64> {
            self.portset_ok.then_some(handle + 100)
        }
        fn claim_waiting_server(&self, portset: &u64) -> Option<&'static str> {
            if !self.server_parked {
                return None;
            }
            self.log.borrow_mut().push(format!("claim server on {portset}"));
            Some("server")
        }
        fn park_caller_as_server(&self, portset: &u64) -> Option<Client<&'static str>> {
            if self.client_parked {
                self.log.borrow_mut().push(format!("park caller on {portset}, claim client"));
                Some(Client::Claimed("client"))
            } else if self.may_park_anyway {
                self.log.borrow_mut().push(format!("park caller on {portset}"));
                Some(Client::Blocked(Some("blocked client")))
            } else {
                None
            }
        }
        fn park_caller_as_client_of(&self, server: &&'static str) {
            self.log.borrow_mut().push(format!("park caller as client of {server}"));
        }
        fn deliver_to_slot(&self, to: &&'static str, message: &Message) {
            self.log.borrow_mut().push(format!("deliver {message:?} to the slot of {to}"));
        }
        fn switch_to(&self, next: &'static str, result: u64) -> &'static str {
            self.log.borrow_mut().push(format!("switch to {next} with {result:#x} and the caller's message"));
            next
        }
        fn schedule(&self, next: Option<&'static str>) -> &'static str {
            self.log.borrow_mut().push(format!("schedule {next:?}"));
            "scheduler"
        }
    }

    fn all_ok() -> Mock {
        Mock { ready: true, port_ok: true, portset_ok: true, server_parked: true, client_parked: true, ..Mock::default() }
    }

    #[test]
    fn call_claims_then_parks_then_switches() {
        let k = all_ok();
        assert_eq!(call(&k, 7), Some("server"));
        let log = k.log.borrow();
        assert_eq!(
            *log,
            [
                "claim server on 107".to_string(),
                "park caller as client of server".to_string(),
                format!("switch to server with {:#x} and the caller's message", i64::MAX),
            ]
        );
    }

    #[test]
    fn reply_wait_claims_then_switches() {
        let k = all_ok();
        assert_eq!(reply_wait(&k, 3, &[9; 6]), Some("client"));
        assert_eq!(*k.log.borrow(), ["park caller on 103, claim client", "switch to client with 0x0 and the caller's message"]);
    }

    #[test]
    fn reply_wait_to_a_blocked_client_goes_through_its_slot() {
        let k = Mock { client_parked: false, may_park_anyway: true, ..all_ok() };
        assert_eq!(reply_wait(&k, 3, &[8; 6]), Some("scheduler"));
        assert_eq!(
            *k.log.borrow(),
            ["park caller on 103", "deliver [8, 8, 8, 8, 8, 8] to the slot of blocked client", "schedule Some(\"blocked client\")"]
        );
    }

    proptest::proptest! {
        /// The fast path is taken exactly when every precondition holds, and
        /// a path not taken changed nothing (the general path starts clean).
        #[test]
        fn fallback_changes_nothing(ready: bool, port_ok: bool, portset_ok: bool, server_parked: bool, client_parked: bool, may_park_anyway: bool, handle: u64, m: [u64; 6]) {
            let handle = handle >> 1;
            let k = Mock { ready, port_ok, portset_ok, server_parked, client_parked, may_park_anyway, ..Mock::default() };
            let taken = call(&k, handle).is_some();
            proptest::prop_assert_eq!(taken, ready && port_ok && server_parked);
            proptest::prop_assert_eq!(k.log.borrow().is_empty(), !taken);

            let k = Mock { ready, port_ok, portset_ok, server_parked, client_parked, may_park_anyway, ..Mock::default() };
            let taken = reply_wait(&k, handle, &m).is_some();
            proptest::prop_assert_eq!(taken, ready && portset_ok && (client_parked || may_park_anyway));
            proptest::prop_assert_eq!(k.log.borrow().is_empty(), !taken);
        }
    }
}
