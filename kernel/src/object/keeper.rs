//! Keepers: every hardware-like event of a user thread becomes IPC.
//!
//! A page fault that no composition resolves goes to the *region's keeper*
//! port (Fluke's region keeper: a user-level pager), other exceptions — and
//! faults with no region keeper — to the faulting space's *keeper* port
//! (its parent, a debugger, a tracer: whoever set it). The faulting thread
//! itself makes the call, from the exception, so it waits in an ordinary
//! IPC call until the keeper replies: reply word 0 = 0 resumes the thread
//! (the instruction runs again), anything else ends it. With no keeper, or
//! a keeper that is gone, the thread ends and its waiter sees `Dead`.
//!
//! Messages (six words):
//! * page fault to a region keeper: `[1, offset in region, access (1 r, 2 w, 4 x), address, 0, 0]`
//! * protection fault to a region keeper: `[3, 0, access, address, 0, 0]`
//! * exception to a space keeper: `[2, vector, error code, rip, fault address, rsp]`

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};

use super::memory;
use super::vm::Resolution;
use crate::arch::cpu;
use crate::ipc::{self, Port};
use crate::sched;

pub const KIND_PAGE_FAULT: u64 = matryoshka_abi::keeper::KIND_PAGE_FAULT;
pub const KIND_EXCEPTION: u64 = matryoshka_abi::keeper::KIND_EXCEPTION;
pub const KIND_PROTECTION: u64 = matryoshka_abi::keeper::KIND_PROTECTION;
/// A thread used up a time slice (one-way, to its scheduler port): `[4, cpu, tick, 0, 0, 0]`.
pub const KIND_CPU_TIME: u64 = matryoshka_abi::keeper::KIND_CPU_TIME;
/// A donation-only thread became runnable (`thread_set_donation_only`).
pub const KIND_RUNNABLE: u64 = matryoshka_abi::keeper::KIND_RUNNABLE;

struct Registry {
    next: u64,
    ports: BTreeMap<u64, Weak<Port>>,
}

static KEEPERS: spin::Mutex<Registry> = spin::Mutex::new(Registry { next: 1, ports: BTreeMap::new() });

/// A token naming `port` inside the composition engine (which stores keepers as numbers).
pub fn token_for(port: &Arc<Port>) -> u64 {
    cpu::without_interrupts(|| {
        let mut r = KEEPERS.lock();
        r.ports.retain(|_, p| p.strong_count() > 0);
        let token = r.next;
        r.next += 1;
        r.ports.insert(token, Arc::downgrade(port));
        token
    })
}

fn port_of(token: u64) -> Option<Arc<Port>> {
    cpu::without_interrupts(|| KEEPERS.lock().ports.get(&token).and_then(Weak::upgrade))
}

/// What the exception frame says about an exception from ring 3.
pub struct UserException {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub rsp: u64,
    /// CR2 for page faults.
    pub address: u64,
    /// For a page fault: what the access tried to do.
    pub page_fault: Option<crate::arch::idt::FaultAccess>,
}

pub enum Outcome {
    /// Return to the thread (the instruction runs again).
    Resume,
    /// The thread was asked to stop while its keeper worked: stop it at the
    /// faulting instruction; resuming it raises the exception again.
    Restart,
    /// End the thread (no keeper, the keeper said so, or it was killed).
    End,
}

/// Handles an exception of the current user thread.
pub fn handle_user_exception(e: &UserException) -> Outcome {
    let Some(space) = sched::current().space() else { return Outcome::End };
    let mut target = None;
    if let Some(access) = e.page_fault {
        let access = memory::rights_for(access);
        match memory::fault(&space, e.address, access) {
            Ok(()) => return Outcome::Resume,
            Err(Resolution::KeeperFault { keeper: Some(token), offset, .. }) => {
                target = port_of(token).map(|p| (p, [KIND_PAGE_FAULT, offset & !0xfff, access.bits() as u64, e.address, 0, 0]));
            }
            Err(Resolution::ProtectionViolation { keeper: Some(token), .. }) => {
                target = port_of(token).map(|p| (p, [KIND_PROTECTION, 0, access.bits() as u64, e.address, 0, 0]));
            }
            Err(_) => {}
        }
    }
    let target = target.or_else(|| space.keeper().map(|p| (p, [KIND_EXCEPTION, e.vector, e.error_code, e.rip, e.address, e.rsp])));
    let Some((port, message)) = target else { return Outcome::End };
    drop(space);
    // The thread waits in an ordinary IPC call (interrupts are off here, on
    // its own kernel stack), so its keeper can take all the time it needs.
    match ipc::call(&port, message, None, ipc::CallBuffers::default()).map(|(reply, _, _)| reply) {
        Ok(reply) if reply[0] == 0 => Outcome::Resume,
        // The keeper thread exited without replying: the fault stands.
        Err(ipc::IpcError::ServerGone) => Outcome::End,
        Err(_) if !sched::current().kill_requested() => Outcome::Restart,
        _ => Outcome::End,
    }
}
