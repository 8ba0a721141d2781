//! The kernel side of Fluke's memory model: regions, mappings and
//! demand-zero anonymous memory on top of the pure composition engine in
//! [`super::vm`].
//!
//! One lock guards the engine and every user page-table edit it drives, so
//! a page fault's resolve-and-install and a revocation's unmap never
//! interleave. Anonymous memory belongs to the space that was granted it:
//! its frames live in that space's store and are freed with the space.
//! Other spaces' page tables only borrow them, so destroying those spaces
//! frees their page tables but never the frames.

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;

use super::space::Space;
use super::vm::{Invalidation, RegionId, Resolution, Rights as VmRights, SpaceId, VmError, VmGraph};
use crate::arch::x86_64_exports::*;
use crate::mm::frame::{self, FRAME_SIZE};

struct Vm {
    graph: VmGraph,
    spaces: BTreeMap<SpaceId, Weak<Space>>,
}

static VM: spin::Mutex<Option<Vm>> = spin::Mutex::new(None);

fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> R {
    cpu::without_interrupts(|| {
        let mut guard = VM.lock();
        let vm = guard.get_or_insert_with(|| Vm { graph: VmGraph::new(), spaces: BTreeMap::new() });
        f(vm)
    })
}

/// The kernel space object behind an engine id, if it still exists.
pub fn space_of(id: SpaceId) -> Option<Arc<Space>> {
    with_vm(|vm| vm.spaces.get(&id).and_then(Weak::upgrade))
}

/// Registers a new space with the engine.
pub fn register(space: Weak<Space>) -> SpaceId {
    with_vm(|vm| {
        let id = vm.graph.add_space();
        vm.spaces.insert(id, space);
        id
    })
}

/// The memory right a page fault asked for.
pub fn rights_for(access: crate::arch::idt::FaultAccess) -> VmRights {
    use crate::arch::idt::FaultAccess;
    match access {
        FaultAccess::Read => VmRights::READ,
        FaultAccess::Write => VmRights::WRITE,
        FaultAccess::Execute => VmRights::EXECUTE,
    }
}

/// Resolves a user fault at `va` in `space` and installs the page. Returns
/// the engine's answer when nothing could be installed (for the keeper).
/// User page faults the kernel resolved itself (demand-zero or composed
/// memory), on all CPUs; faults that go to a keeper are IPC.
static RESOLVED_FAULTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub fn resolved_faults() -> u64 {
    RESOLVED_FAULTS.load(core::sync::atomic::Ordering::Relaxed)
}

pub fn fault(space: &Arc<Space>, va: u64, access: VmRights) -> Result<(), Resolution> {
    RESOLVED_FAULTS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let page = va & !(FRAME_SIZE - 1);
    with_vm(|vm| {
        let resolution = vm.graph.resolve(space.vm_id(), page, access);
        let Resolution::Anonymous { owner, page_va, rights } = resolution else { return Err(resolution) };
        let owner = vm.spaces.get(&owner).and_then(Weak::upgrade).ok_or(Resolution::Unmapped)?;
        let pa = owner.anonymous_frame(page_va).map_err(|_| Resolution::Unmapped)?;
        // W^X: a composition that allows both (the root's lendable memory,
        // which its children map either writable or executable) installs
        // the page writable only; it is never both at once.
        let writable = rights.contains(VmRights::WRITE);
        paging::set_user_page(space.page_table_root(), page, pa, writable, !writable && rights.contains(VmRights::EXECUTE))
            .map_err(|_| Resolution::Unmapped)
    })
}

/// Unmaps what the invalidations name (under the engine lock), then shoots
/// the TLBs down (interrupts must be on).
fn apply(vm: &mut Vm, invalidations: &[Invalidation]) {
    for inv in invalidations {
        if let Some(s) = vm.spaces.get(&inv.space).and_then(Weak::upgrade) {
            if !s.is_dead() {
                paging::unmap_user_range(s.page_table_root(), inv.start, inv.size);
            }
        }
    }
}

fn shootdown(invalidations: &[Invalidation]) {
    let pages: u64 = invalidations.iter().map(|i| i.size / FRAME_SIZE).sum();
    if pages == 0 {
        return;
    }
    let was = cpu::interrupts_enabled();
    cpu::enable_interrupts();
    if invalidations.len() == 1 {
        tlb::shootdown(invalidations[0].start, pages);
    } else {
        tlb::shootdown(0, u64::MAX / FRAME_SIZE); // many ranges: one full flush everywhere
    }
    if !was {
        cpu::disable_interrupts();
    }
}

/// Runs an engine operation that may revoke mappings, applying the result.
pub fn change(op: impl FnOnce(&mut VmGraph) -> Result<Vec<Invalidation>, VmError>) -> Result<(), VmError> {
    let invalidations = with_vm(|vm| {
        let invs = op(&mut vm.graph)?;
        apply(vm, &invs);
        Ok::<_, VmError>(invs)
    })?;
    shootdown(&invalidations);
    Ok(())
}

/// Runs an engine operation that only adds (grants, regions, mappings).
pub fn add<R>(op: impl FnOnce(&mut VmGraph) -> Result<R, VmError>) -> Result<R, VmError> {
    with_vm(|vm| op(&mut vm.graph))
}

/// Removes a dying space from the engine: mappings of its regions in other
/// spaces are revoked; its own memory is then the caller's to free.
pub fn unregister(id: SpaceId) {
    let _ = change(|g| g.destroy_space(id));
    with_vm(|vm| vm.spaces.remove(&id));
}

/// Installs a pre-filled frame as anonymous memory of `space` (the loader).
pub fn install_anonymous(space: &Arc<Space>, va: u64, pa: u64, writable: bool, executable: bool) -> Result<(), paging::MapError> {
    with_vm(|_| {
        space.adopt_anonymous_frame(va, pa);
        paging::set_user_page(space.page_table_root(), va, pa, writable, executable)
    })
}

/// Most pages one step of a discard handles under the engine lock (which
/// is held with interrupts off): a big discard is done in steps. A step's
/// work is proportional to the frames and page tables present in it, not
/// to its size, while each step pays a fixed plan: 64 MiB steps (a process
/// manager's whole slot in one) cost a fraction of 2 MiB ones.
const DISCARD_STEP_PAGES: u64 = 16384;

/// Discards `[offset, offset+size)` of region `r` (see
/// `VmGraph::discard_plan`): unmaps every hardware mapping of the memory
/// behind it, takes its frames out of their owners' stores, shoots the
/// TLBs down and only then frees the frames (a CPU may write through a
/// stale entry until the shootdown). Returns how many frames were freed.
pub fn discard(r: RegionId, offset: u64, size: u64) -> Result<u64, VmError> {
    // Check the whole request first, so an error changes nothing.
    with_vm(|vm| vm.graph.discard_plan(r, offset, size).map(|_| ()))?;
    let step = DISCARD_STEP_PAGES * FRAME_SIZE;
    let (mut invalidations, mut frames) = (Vec::new(), Vec::new());
    let mut at = offset;
    while at < offset + size {
        let len = step.min(offset + size - at);
        with_vm(|vm| {
            let plan = vm.graph.discard_plan(r, at, len)?;
            apply(vm, &plan.invalidations);
            for &(owner, start, end) in &plan.anonymous {
                if let Some(space) = vm.spaces.get(&owner).and_then(Weak::upgrade) {
                    frames.extend(space.take_anonymous_frames(start, end));
                }
            }
            invalidations.extend(plan.invalidations);
            Ok::<_, VmError>(())
        })?;
        at += len;
    }
    // One shootdown for the whole range (each is an IPI round to every CPU),
    // and only then are the frames free for reuse.
    let invalidations = super::vm::coalesce_invalidations(invalidations);
    shootdown(&invalidations);
    let freed = frames.len() as u64;
    free_frames(frames);
    Ok(freed)
}

/// Frames of all anonymous memory, freed by their space's destruction.
pub fn free_frames(frames: Vec<u64>) {
    for pa in frames {
        let _ = frame::free(pa);
    }
}
