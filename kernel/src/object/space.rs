//! Spaces: an address space, a handle table, and a place in the space tree.
//!
//! Every space but the root has a parent; destroying a space destroys its
//! whole subtree — threads killed and joined, handles closed, page tables
//! and the memory they map returned — so a parent always gets back
//! everything a child held (hierarchical resource management).

extern crate alloc;

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::handle::{Handle, HandleError, HandleTable, Rights};
use super::quota::{Charge, Quota};
use crate::arch::x86_64_exports::*;
use crate::sched::{self, Thread};

/// Most handles one space may hold.
pub const HANDLE_QUOTA: usize = 4096;
/// How deep the space tree may grow.
pub const MAX_DEPTH: u32 = 64;

/// Type codes, as `handle_info` and `space_enumerate` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ObjectType {
    Space = matryoshka_abi::object_type::SPACE,
    Thread = matryoshka_abi::object_type::THREAD,
    Port = matryoshka_abi::object_type::PORT,
    Portset = matryoshka_abi::object_type::PORTSET,
    Region = matryoshka_abi::object_type::REGION,
    Mapping = matryoshka_abi::object_type::MAPPING,
    Mutex = matryoshka_abi::object_type::MUTEX,
    Cond = matryoshka_abi::object_type::COND,
    Reference = matryoshka_abi::object_type::REFERENCE,
}

#[derive(Clone)]
pub enum Object {
    Space(Arc<Space>),
    Thread(Arc<Thread>),
    /// The kernel half of a user-level mutex: where contended lockers wait.
    Mutex(Arc<sched::WaitQueue>),
    /// The kernel half of a user-level condition variable.
    Cond(Arc<sched::WaitQueue>),
    Port(Arc<crate::ipc::Port>),
    Portset(Arc<crate::ipc::Portset>),
    /// A range of a space exported for others to map (lives until destroyed
    /// or its space dies; closing handles does not destroy it).
    Region(super::vm::RegionId),
    /// A region imported into a space.
    Mapping(super::vm::MappingId),
    /// Names another object without giving access to it: it can only be
    /// compared, inspected for its type, and passed on (Fluke's Reference).
    Reference(Arc<Object>),
}

impl Object {
    pub fn object_type(&self) -> ObjectType {
        match self {
            Object::Space(_) => ObjectType::Space,
            Object::Thread(_) => ObjectType::Thread,
            Object::Mutex(_) => ObjectType::Mutex,
            Object::Cond(_) => ObjectType::Cond,
            Object::Port(_) => ObjectType::Port,
            Object::Portset(_) => ObjectType::Portset,
            Object::Region(_) => ObjectType::Region,
            Object::Mapping(_) => ObjectType::Mapping,
            Object::Reference(_) => ObjectType::Reference,
        }
    }

    /// The object itself, looking through references.
    pub fn target(&self) -> &Object {
        match self {
            Object::Reference(inner) => inner.target(),
            other => other,
        }
    }

    /// Whether two objects are the same one (references compare as their targets).
    pub fn same(&self, other: &Object) -> bool {
        match (self.target(), other.target()) {
            (Object::Space(a), Object::Space(b)) => Arc::ptr_eq(a, b),
            (Object::Thread(a), Object::Thread(b)) => Arc::ptr_eq(a, b),
            (Object::Port(a), Object::Port(b)) => Arc::ptr_eq(a, b),
            (Object::Portset(a), Object::Portset(b)) => Arc::ptr_eq(a, b),
            (Object::Mutex(a), Object::Mutex(b)) | (Object::Cond(a), Object::Cond(b)) => Arc::ptr_eq(a, b),
            (Object::Region(a), Object::Region(b)) => a == b,
            (Object::Mapping(a), Object::Mapping(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceError {
    Handle(HandleError),
    WrongType,
    OutOfMemory,
    /// The space was destroyed.
    Dead,
    /// The tree would be deeper than MAX_DEPTH.
    TooDeep,
    /// The operation would destroy the caller's own space or an ancestor.
    WouldDestroyCaller,
}

impl From<HandleError> for SpaceError {
    fn from(e: HandleError) -> Self {
        SpaceError::Handle(e)
    }
}

/// Kernel memory charged to a space's quota per object (what each pins, by
/// estimate; see `quota`): a thread's kernel stack (4 pages and a guard
/// page), control block and run-queue share; a space's top-level page table
/// and bookkeeping; a handle-table entry with a small object behind it
/// (port, portset, mutex, cond, reference); a region or mapping node.
pub const THREAD_COST: u64 = 5 * 4096 + 4096;
pub const SPACE_COST: u64 = 2 * 4096;
pub const HANDLE_COST: u64 = 256;
pub const VM_NODE_COST: u64 = 256;

pub struct Space {
    root: u64,
    vm_id: super::vm::SpaceId,
    /// Anonymous memory this space owns: page address -> frame.
    anonymous: spin::Mutex<alloc::collections::BTreeMap<u64, u64>>,
    pub handles: spin::Mutex<HandleTable<Object>>,
    parent: Weak<Space>,
    children: spin::Mutex<Vec<Arc<Space>>>,
    threads: spin::Mutex<Vec<Arc<Thread>>>,
    depth: u32,
    dead: AtomicBool,
    /// Where this space's exceptions go (see `keeper`).
    keeper: spin::Mutex<Option<Arc<crate::ipc::Port>>>,
    /// What this space's subtree may take of kernel memory, and has taken.
    pub quota: Arc<Quota>,
    /// The space's own cost, charged to its parent's quota; returned when
    /// it is destroyed.
    own_charge: spin::Mutex<Option<Charge>>,
    /// Regions and mappings of this space charged to its quota (settled
    /// against the memory engine's count, see `settle_vm_nodes`).
    vm_nodes_charged: AtomicU64,
    /// Set once the destroy that claimed it has freed everything.
    torn_down: AtomicBool,
}

impl Space {
    /// A new space with an empty user half; `parent` None makes a root.
    pub fn new(parent: Option<&Arc<Space>>) -> Result<Arc<Space>, SpaceError> {
        let depth = parent.map_or(0, |p| p.depth + 1);
        if depth > MAX_DEPTH {
            return Err(SpaceError::TooDeep);
        }
        if parent.is_some_and(|p| p.is_dead()) {
            return Err(SpaceError::Dead);
        }
        // The Space's and its Quota's allocations (Arc::try_new is not stable).
        crate::mm::inject::allocation_point().map_err(|_| SpaceError::OutOfMemory)?;
        let (quota, own_charge) = match parent {
            Some(p) => (Quota::child(&p.quota), Some(Charge::new(&p.quota, SPACE_COST).map_err(|_| SpaceError::OutOfMemory)?)),
            None => (Quota::root(crate::mm::frame::user_object_budget()), None),
        };
        let root = paging::new_user_root().map_err(|_| SpaceError::OutOfMemory)?;
        let space = Arc::new_cyclic(|weak| Space {
            root,
            vm_id: super::memory::register(weak.clone()),
            anonymous: spin::Mutex::new(alloc::collections::BTreeMap::new()),
            handles: spin::Mutex::new(HandleTable::new(HANDLE_QUOTA)),
            parent: parent.map(Arc::downgrade).unwrap_or_default(),
            children: spin::Mutex::new(Vec::new()),
            threads: spin::Mutex::new(Vec::new()),
            depth,
            dead: AtomicBool::new(false),
            keeper: spin::Mutex::new(None),
            quota,
            own_charge: spin::Mutex::new(own_charge),
            vm_nodes_charged: AtomicU64::new(0),
            torn_down: AtomicBool::new(false),
        });
        if let Some(p) = parent {
            cpu::without_interrupts(|| p.children.lock().push(space.clone()));
            if p.is_dead() {
                // The parent's destroy may have collected its children before
                // this one joined them: whichever claims it tears it down.
                space.destroy();
                return Err(SpaceError::Dead);
            }
        }
        Ok(space)
    }

    pub fn page_table_root(&self) -> u64 {
        self.root
    }

    pub fn vm_id(&self) -> super::vm::SpaceId {
        self.vm_id
    }

    /// The frame behind anonymous page `page_va`, allocated zeroed on first use.
    pub fn anonymous_frame(&self, page_va: u64) -> Result<u64, crate::mm::frame::FrameError> {
        cpu::without_interrupts(|| {
            let mut store = self.anonymous.lock();
            if let Some(&pa) = store.get(&page_va) {
                return Ok(pa);
            }
            let pa = crate::mm::frame::alloc_user_zeroed()?;
            store.insert(page_va, pa);
            Ok(pa)
        })
    }

    /// Takes the frames of anonymous pages in `[start, end)` out of the
    /// store (a discard: the caller unmaps them everywhere, then frees them).
    pub fn take_anonymous_frames(&self, start: u64, end: u64) -> Vec<u64> {
        cpu::without_interrupts(|| {
            let mut store = self.anonymous.lock();
            let pages: Vec<u64> = store.range(start..end).map(|(&va, _)| va).collect();
            pages.into_iter().filter_map(|va| store.remove(&va)).collect()
        })
    }

    /// Records a frame the loader filled as anonymous page `page_va`.
    pub fn adopt_anonymous_frame(&self, page_va: u64, pa: u64) {
        cpu::without_interrupts(|| self.anonymous.lock().insert(page_va, pa));
    }

    pub fn keeper(&self) -> Option<Arc<crate::ipc::Port>> {
        cpu::without_interrupts(|| self.keeper.lock().clone())
    }

    pub fn set_keeper(&self, port: Option<Arc<crate::ipc::Port>>) {
        cpu::without_interrupts(|| *self.keeper.lock() = port);
    }

    /// True for a space without a parent (the root program's).
    pub fn is_root(&self) -> bool {
        self.depth == 0
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// True if `self` is `other` or one of its ancestors.
    pub fn is_ancestor_of(self: &Arc<Space>, other: &Arc<Space>) -> bool {
        let mut cur = Some(other.clone());
        while let Some(s) = cur {
            if Arc::ptr_eq(&s, self) {
                return true;
            }
            cur = s.parent.upgrade();
        }
        false
    }

    /// Adds a handle (charged to the quota; NoMemory when it is used up).
    pub fn insert(&self, object: Object, rights: Rights) -> Result<Handle, SpaceError> {
        self.with_handle_charge(|| cpu::without_interrupts(|| self.handles.lock().insert(object, rights)))
    }

    /// Adds a handle with the given value (rebuilding a table).
    pub fn insert_at(&self, h: Handle, object: Object, rights: Rights) -> Result<(), SpaceError> {
        self.with_handle_charge(|| cpu::without_interrupts(|| self.handles.lock().insert_at(h, object, rights)))
    }

    /// A second handle to the same object with `rights` (a subset).
    pub fn duplicate(&self, h: Handle, rights: Rights) -> Result<Handle, SpaceError> {
        self.with_handle_charge(|| cpu::without_interrupts(|| self.handles.lock().duplicate(h, rights)))
    }

    /// Closes a handle, returning its object (dropped by the caller, with
    /// interrupts as it likes) and its charge.
    pub fn remove(&self, h: Handle) -> Result<Object, SpaceError> {
        let (object, _rights) = cpu::without_interrupts(|| self.handles.lock().remove(h))?;
        self.quota.uncharge(HANDLE_COST);
        Ok(object)
    }

    fn with_handle_charge<R>(&self, add: impl FnOnce() -> Result<R, HandleError>) -> Result<R, SpaceError> {
        if self.is_dead() {
            return Err(SpaceError::Dead);
        }
        self.quota.charge(HANDLE_COST).map_err(|_| SpaceError::OutOfMemory)?;
        crate::mm::heap::fallible(add).map_err(|e| {
            self.quota.uncharge(HANDLE_COST);
            SpaceError::from(e)
        })
    }

    /// Brings the charge for this space's regions and mappings down to what
    /// the memory engine holds (`count`): nodes go away by other spaces'
    /// actions too (a region's destruction takes its mappings along), so
    /// the charge is settled whenever the space creates one, and fully at
    /// its destruction. Over-charging in between errs on the safe side.
    pub fn settle_vm_nodes(&self, count: u64) {
        let mut charged = self.vm_nodes_charged.load(Ordering::Acquire);
        while charged > count {
            match self.vm_nodes_charged.compare_exchange(charged, count, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.quota.uncharge((charged - count) * VM_NODE_COST);
                    return;
                }
                Err(now) => charged = now,
            }
        }
    }

    /// Charges one more region or mapping of this space.
    pub fn charge_vm_node(&self) -> Result<(), SpaceError> {
        self.quota.charge(VM_NODE_COST).map_err(|_| SpaceError::OutOfMemory)?;
        self.vm_nodes_charged.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Returns one region or mapping charge (its creation failed).
    pub fn uncharge_vm_node(&self) {
        self.settle_vm_nodes(self.vm_nodes_charged.load(Ordering::Acquire).saturating_sub(1));
    }

    pub fn lookup(&self, h: Handle, needed: Rights) -> Result<Object, SpaceError> {
        Ok(cpu::without_interrupts(|| self.handles.lock().get(h, needed).cloned())?)
    }

    pub fn lookup_space(&self, h: Handle, needed: Rights) -> Result<Arc<Space>, SpaceError> {
        match self.lookup(h, needed)? {
            Object::Space(s) => Ok(s),
            _ => Err(SpaceError::WrongType),
        }
    }

    /// The wait queue behind a Mutex (`want_cond` false) or Cond handle.
    pub fn lookup_waitqueue(&self, h: Handle, want_cond: bool) -> Result<Arc<sched::WaitQueue>, SpaceError> {
        match (self.lookup(h, Rights::NONE)?, want_cond) {
            (Object::Mutex(q), false) | (Object::Cond(q), true) => Ok(q),
            _ => Err(SpaceError::WrongType),
        }
    }

    pub fn lookup_port(&self, h: Handle, needed: Rights) -> Result<Arc<crate::ipc::Port>, SpaceError> {
        match self.lookup(h, needed)? {
            Object::Port(p) => Ok(p),
            _ => Err(SpaceError::WrongType),
        }
    }

    pub fn lookup_portset(&self, h: Handle, needed: Rights) -> Result<Arc<crate::ipc::Portset>, SpaceError> {
        match self.lookup(h, needed)? {
            Object::Portset(p) => Ok(p),
            _ => Err(SpaceError::WrongType),
        }
    }

    pub fn lookup_thread(&self, h: Handle, needed: Rights) -> Result<Arc<Thread>, SpaceError> {
        match self.lookup(h, needed)? {
            Object::Thread(t) => Ok(t),
            _ => Err(SpaceError::WrongType),
        }
    }

    /// Starts a user thread in this space.
    /// Starts a user thread in this space with `args` in rdi and rsi.
    pub fn spawn_thread(self: &Arc<Space>, rip: u64, rsp: u64, args: (u64, u64)) -> Result<Arc<Thread>, sched::SchedError> {
        if self.is_dead() {
            return Err(sched::SchedError::NoAllowedCpu);
        }
        let charge = self.thread_charge()?;
        let t = sched::spawn_user_in("user", self.clone(), (rip, rsp, args), sched::USER_PRIORITY, 0, charge)?;
        // Listed before it can run: a destroy that misses it in the list
        // would leave it running on page tables it frees.
        self.add_thread(t.clone())?;
        sched::start(&t);
        Ok(t)
    }

    /// A stopped thread of this space, starting from `regs` once resumed.
    pub fn spawn_stopped_thread(self: &Arc<Space>, regs: sched::UserRegisters) -> Result<Arc<Thread>, sched::SchedError> {
        if self.is_dead() {
            return Err(sched::SchedError::NoAllowedCpu);
        }
        let charge = self.thread_charge()?;
        let t = sched::spawn_user_stopped("user", self.clone(), regs, charge)?;
        self.add_thread(t.clone())?;
        Ok(t)
    }

    fn thread_charge(&self) -> Result<Charge, sched::SchedError> {
        Charge::new(&self.quota, THREAD_COST).map_err(|_| sched::SchedError::OutOfMemory)
    }

    /// Lists a new thread (for kills and joins at destruction), unless the
    /// space is dying: a destroy marks it dead before it takes the list
    /// under the same lock, so a thread is either in the list it takes or
    /// refused here.
    fn add_thread(&self, t: Arc<Thread>) -> Result<(), sched::SchedError> {
        cpu::without_interrupts(|| {
            let mut threads = self.threads.lock();
            if self.is_dead() {
                return Err(sched::SchedError::NoAllowedCpu);
            }
            threads.push(t);
            Ok(())
        })
    }

    /// Takes an exiting thread off the list, so a space that runs many
    /// short-lived threads keeps none of them (each pins a kernel stack
    /// until its last reference goes).
    pub fn forget_thread(&self, t: &Thread) {
        cpu::without_interrupts(|| {
            let mut threads = self.threads.lock();
            if let Some(i) = threads.iter().position(|x| core::ptr::eq(Arc::as_ptr(x), t)) {
                threads.swap_remove(i);
            }
        });
    }

    pub fn children(&self) -> Vec<Arc<Space>> {
        cpu::without_interrupts(|| self.children.lock().clone())
    }

    /// Destroys this space and its subtree: marks every space dead, kills
    /// every thread, waits for them, then frees handles, page tables and the
    /// memory they map. The caller must not run in the subtree. Returns
    /// false (doing nothing) if the space is already dead: destroyed, or
    /// being destroyed, with an ancestor or by another caller.
    ///
    /// Each space is claimed by the one destroy that marks it dead, and only
    /// that destroy tears it (and what it claimed below it) down, so two
    /// destroys of overlapping subtrees, at once or one after the other,
    /// never free a space's tables twice.
    pub fn destroy(self: &Arc<Space>) -> bool {
        if self.dead.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Joining the subtree's threads blocks and freeing memory shoots
        // TLBs down: both need interrupts on (a caller inside a system call
        // has them off).
        let interrupts_were_on = cpu::interrupts_enabled();
        cpu::enable_interrupts();
        let (mut subtree, mut foreign) = (Vec::new(), Vec::new());
        self.collect_claimed_subtree(&mut subtree, &mut foreign);
        // Kill everything first, so the joins below overlap; nothing here
        // allocates (the lists are taken whole, the run queues are intrusive).
        for s in &subtree {
            cpu::without_interrupts(|| s.threads.lock().iter().for_each(sched::kill));
        }
        for s in &subtree {
            let threads = cpu::without_interrupts(|| core::mem::take(&mut *s.threads.lock()));
            for t in &threads {
                // Again: a thread created while the space was being marked
                // dead missed the first round.
                sched::kill(t);
                sched::join_killed(t);
            }
        }
        // Waits (a tick at most) until no CPU can still run on their stacks.
        sched::reap_all(3);
        // A child another destroy claimed may still run threads that map
        // this subtree's memory: let that destroy finish before any of it is
        // freed. (It never waits for this one: it tears down a subtree
        // strictly below.)
        for c in &foreign {
            while !c.torn_down.load(Ordering::Acquire) {
                sched::yield_now();
            }
        }
        drop(foreign);
        // Revoke everything other spaces map from the subtree first, then
        // free: children first, so no handle table keeps a parent alive.
        for s in &subtree {
            super::memory::unregister(s.vm_id);
        }
        for s in subtree.iter().rev() {
            let table = cpu::without_interrupts(|| core::mem::replace(&mut *s.handles.lock(), HandleTable::new(0)));
            s.quota.uncharge(table.len() as u64 * HANDLE_COST);
            drop(table);
            s.settle_vm_nodes(0);
            drop(cpu::without_interrupts(|| s.own_charge.lock().take()));
            cpu::without_interrupts(|| s.children.lock().clear());
            s.set_keeper(None);
            paging::destroy_user_root_with(s.root, false);
            let frames: Vec<u64> = cpu::without_interrupts(|| core::mem::take(&mut *s.anonymous.lock())).into_values().collect();
            super::memory::free_frames(frames);
            s.torn_down.store(true, Ordering::Release);
        }
        if let Some(p) = self.parent.upgrade() {
            cpu::without_interrupts(|| p.children.lock().retain(|c| !Arc::ptr_eq(c, self)));
        }
        if !interrupts_were_on {
            cpu::disable_interrupts();
        }
        true
    }

    /// `self` (already claimed) and every descendant this call claims; a
    /// child another destroy claimed first is left to it, with its subtree.
    /// Children that another destroy claimed go to `foreign`.
    fn collect_claimed_subtree(self: &Arc<Space>, out: &mut Vec<Arc<Space>>, foreign: &mut Vec<Arc<Space>>) {
        out.push(self.clone());
        for c in self.children() {
            if !c.dead.swap(true, Ordering::AcqRel) {
                c.collect_claimed_subtree(out, foreign);
            } else {
                foreign.push(c);
            }
        }
    }
}
