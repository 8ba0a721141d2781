//! Cells: nested spaces (one to three levels below the root) that a worker
//! or a race runs in, equipped with the root's text and one slot of its
//! memory, either mapped straight from the root's region or through a chain
//! of regions and mappings, one per level, plus the slot's discard area.

use core::sync::atomic::Ordering::Relaxed;

use fuzzlib::gen::{Gen, PAGE};
use fuzzlib::pool::{Entry, SELF};
use fuzzlib::rng::Rng;
use matryoshka_rt::memory as m;
use matryoshka_rt::object::{self as obj, rights, Handle};
use matryoshka_rt::SysError;

use crate::layout::{
    self, cell_env, control_at, slot_base, state, Helper, CELL_VA, DISCARD_BYTES, DISCARD_OFFSET, DISCARD_VA, IDLE, RO_OFFSET, RO_TEXT,
    RO_VA, RW_BYTES,
};
use crate::run::{close_quietly, must, setup, Failure};

/// The root's regions every cell maps: its text, and one per slot.
pub struct Resources {
    pub text: Handle,
    /// The root's data and bss, lent read-only.
    pub data: Handle,
    pub slots: [u64; layout::MAX_SLOTS],
}

impl Resources {
    /// Creates the regions (and writes each slot's read-only page).
    pub fn create(slots: usize) -> Result<Resources, Failure> {
        let me = obj::self_space();
        let (start, end) = setup().text;
        let text = must("the text region", m::region_create(me, start, end - start, m::READ | m::EXECUTE))?;
        let data = must("the data region", m::region_create(me, end, setup().image_end - end, m::READ))?;
        let mut r = Resources { text, data, slots: [0; layout::MAX_SLOTS] };
        for i in 0..slots {
            let base = slot_base(i);
            // SAFETY: the slot's read-only page is root memory used for nothing else.
            unsafe { core::ptr::copy_nonoverlapping(RO_TEXT.as_ptr(), (base + RO_OFFSET) as *mut u8, RO_TEXT.len()) };
            r.slots[i] = must("a slot region", m::region_create(me, base, layout::SLOT_BYTES, m::READ | m::WRITE))?.0;
        }
        Ok(r)
    }

    pub fn destroy(&mut self) -> Result<(), Failure> {
        for s in self.slots.iter_mut().filter(|s| **s != 0) {
            must("destroying a slot region", m::region_destroy(Handle(*s)))?;
            *s = 0;
        }
        must("destroying the data region", m::region_destroy(self.data))?;
        must("destroying the text region", m::region_destroy(self.text))
    }
}

/// Root handles of one cell.
#[derive(Clone, Copy, Default)]
pub struct Cell {
    pub slot: usize,
    pub live: bool,
    /// Level 1 (a child of the root) .. the leaf, where the threads run.
    pub spaces: [u64; 3],
    pub depth: usize,
    /// Regions of intermediate levels (the chain's links) and every mapping.
    pub regions: [u64; 3],
    pub mappings: [u64; 7],
    /// The worker thread (0: none).
    pub worker: u64,
    pub incarnation: u64,
    /// 0 for the first worker in this space, 1 for its replacement.
    pub generation: u64,
    /// Handles in the leaf's table: the pool's self handle and the worker's private one.
    pub self_in_cell: [u64; 2],
}

impl Cell {
    pub fn leaf(&self) -> Handle {
        Handle(self.spaces[self.depth - 1])
    }

    /// Creates the spaces and maps the slot and the text into the leaf.
    pub fn build(slot: usize, res: &Resources, rng: &mut Rng) -> Result<Cell, Failure> {
        Cell::try_build(slot, res, rng).map_err(|(what, e)| {
            matryoshka_rt::println!("fuzz: FAIL: {what} failed with {e:?}");
            Failure
        })
    }

    /// A cell one level below the root (quick to build and destroy).
    pub fn build_shallow(slot: usize, res: &Resources, rng: &mut Rng) -> Result<Cell, Failure> {
        Cell::try_build_at(slot, 1, res, rng).map_err(|(what, e)| {
            matryoshka_rt::println!("fuzz: FAIL: {what} failed with {e:?}");
            Failure
        })
    }

    /// `build` that says which call failed; what it had built is gone again.
    pub fn try_build(slot: usize, res: &Resources, rng: &mut Rng) -> Result<Cell, (&'static str, SysError)> {
        let depth = 1 + rng.below(3) as usize;
        Cell::try_build_at(slot, depth, res, rng)
    }

    fn try_build_at(slot: usize, depth: usize, res: &Resources, rng: &mut Rng) -> Result<Cell, (&'static str, SysError)> {
        let mut c = Cell { slot, live: true, depth, ..Cell::default() };
        if let Err(e) = c.equip(res, rng) {
            c.discard();
            return Err(e);
        }
        Ok(c)
    }

    fn equip(&mut self, res: &Resources, rng: &mut Rng) -> Result<(), (&'static str, SysError)> {
        let mut parent = obj::self_space();
        for level in 0..self.depth {
            let s = obj::space_create(parent).map_err(|e| ("space_create for a cell", e))?;
            self.spaces[level] = s.0;
            parent = s;
        }
        let leaf = self.leaf();
        let mut n = 0;
        let mut map = |c: &mut Cell, r: Result<Handle, SysError>| -> Result<(), (&'static str, SysError)> {
            c.mappings[n] = r.map_err(|e| ("mapping_create for a cell", e))?.0;
            n += 1;
            Ok(())
        };
        let slot_region = Handle(res.slots[self.slot]);
        if self.depth > 1 && rng.chance(512) {
            // Through every level: root region -> level 1 mapping -> level 1 region -> ...
            let mut region = slot_region;
            for level in 0..self.depth {
                let space = Handle(self.spaces[level]);
                map(self, m::mapping_create(region, space, CELL_VA, 0, RW_BYTES, m::READ | m::WRITE))?;
                if level + 1 < self.depth {
                    region =
                        m::region_create(space, CELL_VA, RW_BYTES, m::READ | m::WRITE).map_err(|e| ("region_create in a cell level", e))?;
                    self.regions[level] = region.0;
                }
            }
        } else {
            map(self, m::mapping_create(slot_region, leaf, CELL_VA, 0, RW_BYTES, m::READ | m::WRITE))?;
        }
        map(self, m::mapping_create(slot_region, leaf, RO_VA, RO_OFFSET, PAGE, m::READ))?;
        map(self, m::mapping_create(slot_region, leaf, DISCARD_VA, DISCARD_OFFSET, DISCARD_BYTES, m::READ | m::WRITE))?;
        let (start, end) = setup().text;
        map(self, m::mapping_create(res.text, leaf, start, 0, end - start, m::READ | m::EXECUTE))?;
        map(self, m::mapping_create(res.data, leaf, end, 0, setup().image_end - end, m::READ))?;
        let cell_rights = rights::ALL & !rights::DESTROY;
        for h in self.self_in_cell.iter_mut() {
            *h = obj::transfer(leaf, leaf, cell_rights).map_err(|e| ("handle_transfer of a cell's own space", e))?.0;
        }
        Ok(())
    }

    /// Drops a cell that could not be built or started: its spaces (if
    /// any) and every root handle of it.
    pub fn discard(&mut self) {
        if self.spaces[0] != 0 {
            let _ = obj::space_destroy(Handle(self.spaces[0]));
        }
        for &h in self.spaces[1..].iter().chain(&self.regions).chain(&self.mappings) {
            close_quietly(h);
        }
        close_quietly(self.worker);
        let slot = self.slot;
        *self = Cell { slot, ..Cell::default() };
    }

    /// Starts a worker (a fresh incarnation) on `cpu` with `budget` calls.
    pub fn start_worker(&mut self, cpu: u64, budget: u64) -> Result<(), Failure> {
        self.try_start_worker(cpu, budget).map_err(|(what, e)| {
            matryoshka_rt::println!("fuzz: FAIL: {what} failed with {e:?}");
            Failure
        })
    }

    /// `start_worker` that says which call failed.
    pub fn try_start_worker(&mut self, cpu: u64, budget: u64) -> Result<(), (&'static str, SysError)> {
        let s = setup();
        let base = slot_base(self.slot);
        // SAFETY: the slot belongs to this cell; its previous worker is gone
        // (or never was), so nothing else writes the control block but old
        // helpers, which only touch their mailboxes.
        let ctl = unsafe { control_at(base) };
        let sh = &ctl.shared;
        for a in [&sh.stop, &sh.calls, &sh.support_calls, &sh.progress, &sh.inflight_class, &sh.inflight_tsc, &sh.recent_next] {
            a.store(0, Relaxed);
        }
        sh.inflight_nr.store(IDLE, Relaxed);
        sh.state.store(state::STARTING, Relaxed);
        let victims = crate::victims::entry_points();
        let env = cell_env(victims, (s.text.0, s.image_end), s.cpus, s.system_info_max, s.config.avoid, s.config.only);
        let mut gen = Gen::new(layout::worker_rng(s.config.seed, self.slot as u64, self.incarnation));
        gen.pool.add(Entry {
            value: self.self_in_cell[0],
            object: self.self_in_cell[0],
            parent: 0,
            kind: fuzzlib::gen::kind::SPACE,
            flags: SELF,
        });
        // SAFETY: as above, no worker runs in this slot now.
        let p = unsafe { &mut *ctl.private.get() };
        p.env = env;
        p.gen = gen;
        p.cell = self.slot as u64;
        p.incarnation = self.incarnation;
        p.budget = budget;
        p.trace = s.config.trace as u64;
        p.helper_set = self.generation;
        p.self_space = self.self_in_cell[1];
        p.tsc_per_us = s.tsc_per_us();
        p.watchdog_ticks = s.watchdog_ticks();
        p.helpers = [Helper::default(); layout::HELPERS_PER_WORKER];
        let entry = crate::worker::worker_main as extern "C" fn(u64) -> ! as usize as u64;
        let w = obj::thread_create_raw(self.leaf(), entry, layout::IN_CELL.stack_top(), layout::IN_CELL.control())
            .map_err(|e| ("thread_create of a worker", e))?;
        self.worker = w.0;
        obj::thread_set_affinity(w, 1 << cpu).map_err(|e| ("thread_set_affinity of a worker", e))
    }

    /// Ends the worker thread (kill and wait); the space stays.
    pub fn stop_worker(&mut self) -> Result<(), Failure> {
        if self.worker != 0 {
            let w = Handle(self.worker);
            let _ = obj::thread_kill(w);
            let _ = obj::thread_wait(w, true);
            close_quietly(self.worker);
            self.worker = 0;
        }
        Ok(())
    }

    /// Destroys the whole cell (its threads die mid-call) and closes every root handle of it.
    pub fn destroy(&mut self) -> Result<(), Failure> {
        if !self.live {
            return Ok(());
        }
        // The worker's handle goes first, so its thread is freed with the
        // space (the kernel frees dead threads' stacks when it destroys one).
        close_quietly(self.worker);
        if setup().config.trace {
            matryoshka_rt::println!("fuzz: trace root destroys cell {} (space {:#x}, depth {})", self.slot, self.spaces[0], self.depth);
        }
        must("space_destroy of a cell", obj::space_destroy(Handle(self.spaces[0])))?;
        for &h in self.spaces[1..self.depth].iter().chain(&self.regions).chain(&self.mappings) {
            close_quietly(h);
        }
        let slot = self.slot;
        *self = Cell { slot, ..Cell::default() };
        Ok(())
    }

    /// The slot's control block, as the root sees it.
    pub fn control(&self) -> &'static layout::Control {
        // SAFETY: slot addresses are root memory set aside for the cells.
        unsafe { control_at(slot_base(self.slot)) }
    }
}

/// Calls `thread_wait(h, 0)`: `None` while the thread runs.
pub fn exit_status(h: u64) -> Option<Result<u64, SysError>> {
    match obj::thread_wait(Handle(h), false) {
        Err(SysError::WouldBlock) => None,
        r => Some(r),
    }
}
