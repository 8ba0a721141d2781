//! The memory composition engine: Fluke's Region/Mapping model as pure logic.
//!
//! A **Region** exports a page-aligned range `[start, start+size)` of a space
//! with maximum rights and an optional keeper (an opaque `u64` token; the
//! kernel glue turns it into a port). A **Mapping** imports a region, from an
//! offset, into a target space at `va` with rights of its own. Mappings
//! compose to any depth: the range a region exports may itself be backed by a
//! mapping of some other region, and so on. A chain ends in **anonymous**
//! memory (a range the kernel granted to a space, demand-zero, with a frame
//! allocated on first touch) or in a hole (nothing at that address in the
//! exporting space: the innermost region's keeper must supply it).
//!
//! This module has no arch code and no globals. The kernel asks it what backs
//! a faulting page ([`VmGraph::resolve`]) and installs the answer; every call
//! that weakens or removes a link returns the [`Invalidation`]s (hardware PTEs
//! to drop plus TLB shootdown) of every page whose resolution may depend on it.
//!
//! # API
//!
//! * [`VmGraph::add_space`], [`VmGraph::grant_anonymous`] (root memory),
//!   [`VmGraph::create_region`], [`VmGraph::create_mapping`].
//! * [`VmGraph::resolve`]`(space, va, access)` → [`Resolution`].
//! * Changes, each returning `Vec<Invalidation>`: [`VmGraph::protect_region`],
//!   [`VmGraph::protect_mapping`], [`VmGraph::destroy_mapping`],
//!   [`VmGraph::destroy_region`], [`VmGraph::destroy_space`].
//!   [`VmGraph::set_region_keeper`] needs no invalidation (PTEs never depend
//!   on keepers).
//! * State export: [`VmGraph::spaces`], [`VmGraph::anonymous_of`],
//!   [`VmGraph::regions_of`], [`VmGraph::mappings_into`],
//!   [`VmGraph::mappings_of`], [`VmGraph::region_info`],
//!   [`VmGraph::mapping_info`].
//!
//! Ids ([`SpaceId`], [`RegionId`], [`MappingId`]) are kernel-internal, never
//! shown to user code (which names objects through its handle table). Ids of a
//! kind are handed out in increasing order and are not reused while live.
//!
//! # Rules
//!
//! * Pages are 4 KiB. Every start, size, `va` and offset must be page-aligned
//!   ([`VmError::Unaligned`]), sizes non-zero ([`VmError::ZeroSize`]) and
//!   ranges below [`USER_TOP`] ([`VmError::OutOfBounds`]). A mapping's
//!   `offset + size` must lie within its region ([`VmError::OutOfBounds`]).
//!   [`VmGraph::resolve`] takes any address (a fault address) and works on its
//!   page.
//! * **Backing overlap**: in one space, anonymous grants and mappings (the
//!   things that *back* addresses) never overlap each other
//!   ([`VmError::Overlap`]), so every address has at most one backing.
//! * **Regions may overlap** each other, and may cover any range of their
//!   space, backed or not: as in Fluke, a space may export the same memory
//!   several times (say read-only to one client and read-write to another).
//!   Region max rights cap every mapping derived from the region, directly or
//!   through further regions.
//! * **Rights**: a mapping's rights must lie within its region's max at
//!   creation (and at [`VmGraph::protect_mapping`]); the region's max may
//!   later shrink or grow again, and the effective rights of a link are always
//!   `mapping.rights ∩ region.max`. The rights of a resolution are the
//!   intersection along the whole chain, ending with the anonymous grant's.
//! * **Protection violations** stop the walk at the first link that removes a
//!   right `access` needs. They are blamed on the nearest region the walk had
//!   passed through *before* that point (its keeper handles it), or on no
//!   region (`region: None`: the faulting space's own keeper) when the
//!   faulting space's own mapping or anonymous grant forbids the access. A
//!   region whose max is [`Rights::NONE`] therefore turns every derived access
//!   into a fault for its keeper (Fluke's revocation hook).
//! * **Cycles** are rejected when they would be created:
//!   [`VmGraph::create_mapping`] fails with [`VmError::Cycle`] if the range
//!   the region exports reaches, through existing mappings, any page of the
//!   new mapping's own target range. (This is slightly conservative: a mapping
//!   of a region that overlaps its own target range by a shift would
//!   terminate, but is rejected too.) So the composition graph is always
//!   acyclic.
//! * **Depth** is bounded: no chain may pass through more than `max_depth`
//!   mappings (64 by default, [`VmGraph::with_max_depth`] to change).
//!   [`VmGraph::create_mapping`] fails with [`VmError::TooDeep`] when the
//!   longest chain ending in its target range, plus one, plus the longest
//!   chain starting at the exported range, would exceed it (conservative
//!   too: the two maxima may come from different pages of the range). So
//!   [`VmGraph::resolve`] does at most `max_depth + 1` lookups, iteratively.
//! * **Destroying a region** destroys the mappings of it (its importers'
//!   ranges become holes). What was derived further from those ranges (other
//!   regions over them, and their mappings) stays as objects but now resolves
//!   to a keeper fault for those regions: the revocation is transitive in
//!   effect, and the returned invalidations cover every space along the way.
//! * **Destroying a space** destroys its anonymous grants, the mappings in it,
//!   its regions and every mapping of them (in other spaces).
//! * Invalidations come from a walk backwards from the changed ranges: a
//!   range of space T → every region of T overlapping it → every mapping of
//!   that region overlapping it → the corresponding range of the importer,
//!   and so on. Unrelated spaces are never named. They are sorted by
//!   (space, start) and coalesced.
//! * Additions (grants, regions, mappings, keeper changes) return no
//!   invalidations: a grant or mapping only fills a hole, and no hardware
//!   mapping can exist for a page that resolved to a hole.
//!
//! Costs: `resolve` is O(depth · log n). Backward walks scan the regions of
//! each space they visit and the mappings of each region they cross (linear
//! in those counts; an interval index can come later if needed).

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;
use core::ops::{BitAnd, BitOr};

pub const PAGE_SIZE: u64 = 4096;
const PAGE_MASK: u64 = PAGE_SIZE - 1;
/// First address above the user half.
pub const USER_TOP: u64 = 0x0000_8000_0000_0000;
/// Default bound on the number of mappings in one composition chain.
pub const DEFAULT_MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpaceId(u32);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(u32);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingId(u32);

impl SpaceId {
    pub fn raw(self) -> u32 {
        self.0
    }
}
impl RegionId {
    pub fn raw(self) -> u32 {
        self.0
    }
}
impl MappingId {
    pub fn raw(self) -> u32 {
        self.0
    }
}

/// Memory rights: read (1), write (2), execute (4). Also used for the access
/// a fault asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const READ: Rights = Rights(matryoshka_abi::memory_rights::READ as u8);
    pub const WRITE: Rights = Rights(matryoshka_abi::memory_rights::WRITE as u8);
    pub const EXECUTE: Rights = Rights(matryoshka_abi::memory_rights::EXECUTE as u8);
    pub const RW: Rights = Rights(Rights::READ.0 | Rights::WRITE.0);
    pub const RX: Rights = Rights(Rights::READ.0 | Rights::EXECUTE.0);
    pub const ALL: Rights = Rights(Rights::RW.0 | Rights::EXECUTE.0);

    /// `None` if `bits` has anything but the three rights bits.
    pub const fn from_bits(bits: u8) -> Option<Rights> {
        if bits & !7 == 0 {
            Some(Rights(bits))
        } else {
            None
        }
    }

    pub const fn from_bits_truncate(bits: u8) -> Rights {
        Rights(bits & 7)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every right in `other` is in `self`.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn intersect(self, other: Rights) -> Rights {
        Rights(self.0 & other.0)
    }

    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitAnd for Rights {
    type Output = Rights;
    fn bitand(self, rhs: Rights) -> Rights {
        self.intersect(rhs)
    }
}

impl BitOr for Rights {
    type Output = Rights;
    fn bitor(self, rhs: Rights) -> Rights {
        self.union(rhs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmError {
    NoSuchSpace,
    NoSuchRegion,
    NoSuchMapping,
    ZeroSize,
    Unaligned,
    /// Beyond [`USER_TOP`], address overflow, or a mapping reaching past the
    /// end of its region.
    OutOfBounds,
    /// The new anonymous grant or mapping overlaps a backing (grant or
    /// mapping) already in the target space.
    Overlap,
    /// Mapping rights beyond the region's max rights.
    RightsExceedRegion,
    /// The mapping would make a composition chain loop.
    Cycle,
    /// The mapping would make a composition chain longer than the bound.
    TooDeep,
    /// A discard reached memory its path does not allow writing.
    NotWritable,
}

/// What the engine found behind one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Anonymous memory of `owner` at `page_va` (page-aligned; `owner` is the
    /// faulting space itself for its own grants). The kernel looks up or
    /// allocates the frame kept for (`owner`, `page_va`) and installs it at the
    /// faulting page with `rights`: the intersection of every link's rights
    /// (mapping rights and region max) and of the grant's rights.
    Anonymous { owner: SpaceId, page_va: u64, rights: Rights },
    /// A link forbids the access. `rights` is what the chain allowed up to
    /// and including the link that forbade it. `region` is the nearest region
    /// passed before that link (its `keeper` gets the fault); `None` when
    /// the faulting space's own mapping or grant forbade it.
    ProtectionViolation { rights: Rights, region: Option<RegionId>, keeper: Option<u64> },
    /// The chain ends in a hole: nothing backs `va` in `space`, the space of
    /// `region`, the innermost region passed (`offset` = `va` - region
    /// start; `va` keeps the fault's offset within the page). The fault goes
    /// to `keeper`, or with none to the faulting thread's space keeper.
    KeeperFault { region: RegionId, keeper: Option<u64>, space: SpaceId, va: u64, offset: u64 },
    /// Nothing at all backs the address in the faulting space (or the space
    /// does not exist, or the address is not a user address).
    Unmapped,
}

/// Hardware mappings of `[start, start+size)` in `space` may be stale: drop
/// them (and shoot down TLBs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Invalidation {
    pub space: SpaceId,
    pub start: u64,
    pub size: u64,
}

/// See [`VmGraph::discard_plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardPlan {
    /// (owner, start, end) of the anonymous memory to drop.
    pub anonymous: Vec<(SpaceId, u64, u64)>,
    pub invalidations: Vec<Invalidation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    pub space: SpaceId,
    pub start: u64,
    pub size: u64,
    pub max: Rights,
    pub keeper: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingInfo {
    pub region: RegionId,
    /// The importing (target) space.
    pub space: SpaceId,
    pub va: u64,
    pub offset: u64,
    pub size: u64,
    pub rights: Rights,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnonymousInfo {
    pub start: u64,
    pub size: u64,
    pub rights: Rights,
}

#[derive(Debug, Clone, Copy)]
enum Backing {
    Anonymous(Rights),
    Mapping(MappingId),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    backing: Backing,
}

#[derive(Debug, Default)]
struct Space {
    /// Non-overlapping backings keyed by start address.
    entries: BTreeMap<u64, Entry>,
    regions: BTreeSet<RegionId>,
}

#[derive(Debug)]
struct Region {
    space: SpaceId,
    start: u64,
    size: u64,
    max: Rights,
    keeper: Option<u64>,
    mappings: BTreeSet<MappingId>,
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    region: RegionId,
    space: SpaceId,
    va: u64,
    offset: u64,
    size: u64,
    rights: Rights,
}

/// The whole composition graph of the machine (or of whatever the kernel
/// decides to put under one lock).
#[derive(Debug)]
pub struct VmGraph {
    spaces: BTreeMap<SpaceId, Space>,
    regions: BTreeMap<RegionId, Region>,
    mappings: BTreeMap<MappingId, Mapping>,
    next_space: u32,
    next_region: u32,
    next_mapping: u32,
    max_depth: usize,
}

impl Default for VmGraph {
    fn default() -> Self {
        Self::new()
    }
}

/// Next free id at or after `*next`, skipping live ones after a wrap.
fn fresh<V>(next: &mut u32, live: &BTreeMap<impl Ord + From<u32>, V>) -> u32 {
    loop {
        let id = *next;
        *next = next.wrapping_add(1);
        if !live.contains_key(&id.into()) {
            return id;
        }
    }
}

impl From<u32> for SpaceId {
    fn from(v: u32) -> Self {
        SpaceId(v)
    }
}
impl From<u32> for RegionId {
    fn from(v: u32) -> Self {
        RegionId(v)
    }
}
impl From<u32> for MappingId {
    fn from(v: u32) -> Self {
        MappingId(v)
    }
}

fn check_range(start: u64, size: u64) -> Result<u64, VmError> {
    if size == 0 {
        return Err(VmError::ZeroSize);
    }
    if (start | size) & PAGE_MASK != 0 {
        return Err(VmError::Unaligned);
    }
    match start.checked_add(size) {
        Some(end) if end <= USER_TOP => Ok(end),
        _ => Err(VmError::OutOfBounds),
    }
}

/// The backings of `entries` overlapping `[start, end)`, in address order.
fn overlapping(entries: &BTreeMap<u64, Entry>, start: u64, end: u64) -> impl Iterator<Item = (u64, Entry)> + '_ {
    let before = entries.range(..start).next_back().filter(|(k, e)| **k + e.size > start).map(|(k, e)| (*k, *e));
    before.into_iter().chain(entries.range(start..end).map(|(k, e)| (*k, *e)))
}

fn entry_at(entries: &BTreeMap<u64, Entry>, addr: u64) -> Option<(u64, Entry)> {
    entries.range(..=addr).next_back().filter(|(k, e)| addr - **k < e.size).map(|(k, e)| (*k, *e))
}

/// Sorts and merges overlapping or adjacent ranges of the same space (for
/// callers that gather invalidations of several operations).
pub fn coalesce_invalidations(v: Vec<Invalidation>) -> Vec<Invalidation> {
    coalesce(v)
}

/// Sorts and merges overlapping or adjacent ranges of the same space.
fn coalesce(mut v: Vec<Invalidation>) -> Vec<Invalidation> {
    v.sort();
    let mut out: Vec<Invalidation> = Vec::with_capacity(v.len());
    for inv in v {
        if let Some(last) = out.last_mut() {
            if last.space == inv.space && inv.start <= last.start + last.size {
                let end = (last.start + last.size).max(inv.start + inv.size);
                last.size = end - last.start;
                continue;
            }
        }
        out.push(inv);
    }
    out
}

impl VmGraph {
    pub fn new() -> Self {
        Self::with_max_depth(DEFAULT_MAX_DEPTH)
    }

    /// A graph whose chains may pass through at most `max_depth` mappings.
    pub fn with_max_depth(max_depth: usize) -> Self {
        VmGraph {
            spaces: BTreeMap::new(),
            regions: BTreeMap::new(),
            mappings: BTreeMap::new(),
            next_space: 1,
            next_region: 1,
            next_mapping: 1,
            max_depth,
        }
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    pub fn add_space(&mut self) -> SpaceId {
        let id = SpaceId(fresh(&mut self.next_space, &self.spaces));
        self.spaces.insert(id, Space::default());
        id
    }

    /// Gives `s` demand-zero memory at `[start, start+size)` with `rights`.
    pub fn grant_anonymous(&mut self, s: SpaceId, start: u64, size: u64, rights: Rights) -> Result<(), VmError> {
        let space = self.spaces.get_mut(&s).ok_or(VmError::NoSuchSpace)?;
        let end = check_range(start, size)?;
        if overlapping(&space.entries, start, end).next().is_some() {
            return Err(VmError::Overlap);
        }
        space.entries.insert(start, Entry { size, backing: Backing::Anonymous(rights) });
        Ok(())
    }

    /// Exports `[start, start+size)` of `s`, whatever backs it (or not).
    pub fn create_region(&mut self, s: SpaceId, start: u64, size: u64, max: Rights, keeper: Option<u64>) -> Result<RegionId, VmError> {
        if !self.spaces.contains_key(&s) {
            return Err(VmError::NoSuchSpace);
        }
        check_range(start, size)?;
        let id = RegionId(fresh(&mut self.next_region, &self.regions));
        self.regions.insert(id, Region { space: s, start, size, max, keeper, mappings: BTreeSet::new() });
        self.spaces.get_mut(&s).expect("checked").regions.insert(id);
        Ok(id)
    }

    /// Imports `[offset, offset+size)` of region `r` into `t` at `va`.
    /// Errors are checked in this order: NoSuchRegion, NoSuchSpace, ZeroSize,
    /// Unaligned, OutOfBounds, RightsExceedRegion, Overlap, Cycle, TooDeep.
    pub fn create_mapping(
        &mut self,
        r: RegionId,
        t: SpaceId,
        va: u64,
        offset: u64,
        size: u64,
        rights: Rights,
    ) -> Result<MappingId, VmError> {
        let region = self.regions.get(&r).ok_or(VmError::NoSuchRegion)?;
        let target = self.spaces.get(&t).ok_or(VmError::NoSuchSpace)?;
        let end = check_range(va, size)?;
        if offset & PAGE_MASK != 0 {
            return Err(VmError::Unaligned);
        }
        match offset.checked_add(size) {
            Some(o) if o <= region.size => {}
            _ => return Err(VmError::OutOfBounds),
        }
        if !region.max.contains(rights) {
            return Err(VmError::RightsExceedRegion);
        }
        if overlapping(&target.entries, va, end).next().is_some() {
            return Err(VmError::Overlap);
        }
        let down = self.forward_depth(region.space, region.start + offset, size, (t, va, end))?;
        let mut up_walk = Vec::new();
        self.walk_upstream(&[(t, va, end)], &mut up_walk);
        let up = up_walk.iter().map(|w| w.3).max().unwrap_or(0);
        if up + 1 + down > self.max_depth {
            return Err(VmError::TooDeep);
        }
        let id = MappingId(fresh(&mut self.next_mapping, &self.mappings));
        self.mappings.insert(id, Mapping { region: r, space: t, va, offset, size, rights });
        self.regions.get_mut(&r).expect("checked").mappings.insert(id);
        self.spaces.get_mut(&t).expect("checked").entries.insert(va, Entry { size, backing: Backing::Mapping(id) });
        Ok(id)
    }

    /// What backs the page of `va` in `s`, for an `access`.
    pub fn resolve(&self, s: SpaceId, va: u64, access: Rights) -> Resolution {
        if va >= USER_TOP {
            return Resolution::Unmapped;
        }
        let mut space = s;
        let mut addr = va;
        let mut rights = Rights::ALL;
        let mut last: Option<RegionId> = None;
        let violation = |rights: Rights, last: Option<RegionId>| Resolution::ProtectionViolation {
            rights,
            region: last,
            keeper: last.and_then(|r| self.regions[&r].keeper),
        };
        // Acyclic and depth-bounded by construction: at most max_depth links.
        for _ in 0..=self.max_depth {
            let Some(sp) = self.spaces.get(&space) else {
                return Resolution::Unmapped;
            };
            match entry_at(&sp.entries, addr) {
                None => {
                    return match last {
                        None => Resolution::Unmapped,
                        Some(r) => {
                            let region = &self.regions[&r];
                            Resolution::KeeperFault { region: r, keeper: region.keeper, space, va: addr, offset: addr - region.start }
                        }
                    };
                }
                Some((_, Entry { backing: Backing::Anonymous(grant), .. })) => {
                    rights = rights & grant;
                    if !rights.contains(access) {
                        return violation(rights, last);
                    }
                    return Resolution::Anonymous { owner: space, page_va: addr & !PAGE_MASK, rights };
                }
                Some((_, Entry { backing: Backing::Mapping(m), .. })) => {
                    let m = &self.mappings[&m];
                    rights = rights & m.rights;
                    if !rights.contains(access) {
                        return violation(rights, last);
                    }
                    let region = &self.regions[&m.region];
                    rights = rights & region.max;
                    if !rights.contains(access) {
                        return violation(rights, Some(m.region));
                    }
                    last = Some(m.region);
                    space = region.space;
                    addr = region.start + m.offset + (addr - m.va);
                }
            }
        }
        debug_assert!(false, "vm: composition chain longer than max_depth");
        Resolution::Unmapped
    }

    /// Sets region `r`'s max rights. Mappings keep their own rights; their
    /// effective rights are capped by the new max.
    pub fn protect_region(&mut self, r: RegionId, max: Rights) -> Result<Vec<Invalidation>, VmError> {
        let region = self.regions.get(&r).ok_or(VmError::NoSuchRegion)?;
        if region.max == max {
            return Ok(Vec::new());
        }
        let inv = self.invalidations_for(&self.seeds_of_region(r));
        self.regions.get_mut(&r).expect("checked").max = max;
        Ok(inv)
    }

    /// Sets mapping `m`'s rights (within its region's current max).
    pub fn protect_mapping(&mut self, m: MappingId, rights: Rights) -> Result<Vec<Invalidation>, VmError> {
        let mapping = *self.mappings.get(&m).ok_or(VmError::NoSuchMapping)?;
        if !self.regions[&mapping.region].max.contains(rights) {
            return Err(VmError::RightsExceedRegion);
        }
        if mapping.rights == rights {
            return Ok(Vec::new());
        }
        let inv = self.invalidations_for(&[(mapping.space, mapping.va, mapping.va + mapping.size)]);
        self.mappings.get_mut(&m).expect("checked").rights = rights;
        Ok(inv)
    }

    /// Changes the token faults of region `r` go to.
    pub fn set_region_keeper(&mut self, r: RegionId, keeper: Option<u64>) -> Result<(), VmError> {
        self.regions.get_mut(&r).ok_or(VmError::NoSuchRegion)?.keeper = keeper;
        Ok(())
    }

    /// How many regions of `s` and mappings into `s` exist (what the space
    /// is charged for; anonymous grants are the kernel's and not counted).
    pub fn node_count(&self, s: SpaceId) -> u64 {
        self.spaces.get(&s).map_or(0, |space| {
            let mappings = space.entries.values().filter(|e| matches!(e.backing, Backing::Mapping(_))).count();
            (space.regions.len() + mappings) as u64
        })
    }

    pub fn destroy_mapping(&mut self, m: MappingId) -> Result<Vec<Invalidation>, VmError> {
        let mapping = *self.mappings.get(&m).ok_or(VmError::NoSuchMapping)?;
        let inv = self.invalidations_for(&[(mapping.space, mapping.va, mapping.va + mapping.size)]);
        self.remove_mapping(m);
        Ok(inv)
    }

    /// Destroys region `r` and every mapping of it.
    pub fn destroy_region(&mut self, r: RegionId) -> Result<Vec<Invalidation>, VmError> {
        if !self.regions.contains_key(&r) {
            return Err(VmError::NoSuchRegion);
        }
        let inv = self.invalidations_for(&self.seeds_of_region(r));
        self.remove_region(r);
        Ok(inv)
    }

    /// Destroys space `s`: its anonymous grants, the mappings into it, its
    /// regions and every mapping of them. The invalidations include `s`'s own
    /// backed ranges (the kernel also frees `s`'s anonymous frames).
    pub fn destroy_space(&mut self, s: SpaceId) -> Result<Vec<Invalidation>, VmError> {
        let space = self.spaces.get(&s).ok_or(VmError::NoSuchSpace)?;
        let mut seeds: Vec<(SpaceId, u64, u64)> = space.entries.iter().map(|(k, e)| (s, *k, *k + e.size)).collect();
        let regions: Vec<RegionId> = space.regions.iter().copied().collect();
        for r in &regions {
            seeds.extend(self.seeds_of_region(*r));
        }
        let inv = self.invalidations_for(&seeds);
        for r in regions {
            self.remove_region(r);
        }
        let space = self.spaces.remove(&s).expect("checked");
        for (_, e) in space.entries {
            if let Backing::Mapping(m) = e.backing {
                let mapping = self.mappings.remove(&m).expect("entry names a live mapping");
                if let Some(region) = self.regions.get_mut(&mapping.region) {
                    region.mappings.remove(&m);
                }
            }
        }
        Ok(inv)
    }

    // ---- enumeration (state export) ----

    pub fn spaces(&self) -> Vec<SpaceId> {
        self.spaces.keys().copied().collect()
    }

    pub fn space_exists(&self, s: SpaceId) -> bool {
        self.spaces.contains_key(&s)
    }

    /// `s`'s anonymous grants, by address.
    pub fn anonymous_of(&self, s: SpaceId) -> Result<Vec<AnonymousInfo>, VmError> {
        let space = self.spaces.get(&s).ok_or(VmError::NoSuchSpace)?;
        Ok(space
            .entries
            .iter()
            .filter_map(|(k, e)| match e.backing {
                Backing::Anonymous(rights) => Some(AnonymousInfo { start: *k, size: e.size, rights }),
                Backing::Mapping(_) => None,
            })
            .collect())
    }

    /// The regions `s` exports.
    pub fn regions_of(&self, s: SpaceId) -> Result<Vec<RegionId>, VmError> {
        let space = self.spaces.get(&s).ok_or(VmError::NoSuchSpace)?;
        Ok(space.regions.iter().copied().collect())
    }

    /// The mappings whose target is `s`, by address.
    pub fn mappings_into(&self, s: SpaceId) -> Result<Vec<MappingId>, VmError> {
        let space = self.spaces.get(&s).ok_or(VmError::NoSuchSpace)?;
        Ok(space
            .entries
            .values()
            .filter_map(|e| match e.backing {
                Backing::Mapping(m) => Some(m),
                Backing::Anonymous(_) => None,
            })
            .collect())
    }

    /// The mappings of region `r` (in any space).
    pub fn mappings_of(&self, r: RegionId) -> Result<Vec<MappingId>, VmError> {
        let region = self.regions.get(&r).ok_or(VmError::NoSuchRegion)?;
        Ok(region.mappings.iter().copied().collect())
    }

    pub fn region_info(&self, r: RegionId) -> Result<RegionInfo, VmError> {
        let region = self.regions.get(&r).ok_or(VmError::NoSuchRegion)?;
        Ok(RegionInfo { space: region.space, start: region.start, size: region.size, max: region.max, keeper: region.keeper })
    }

    pub fn mapping_info(&self, m: MappingId) -> Result<MappingInfo, VmError> {
        let mapping = self.mappings.get(&m).ok_or(VmError::NoSuchMapping)?;
        Ok(MappingInfo {
            region: mapping.region,
            space: mapping.space,
            va: mapping.va,
            offset: mapping.offset,
            size: mapping.size,
            rights: mapping.rights,
        })
    }

    // ---- internals ----

    /// The target ranges of every mapping of `r`: (space, start, end).
    fn seeds_of_region(&self, r: RegionId) -> Vec<(SpaceId, u64, u64)> {
        self.regions[&r]
            .mappings
            .iter()
            .map(|m| {
                let m = &self.mappings[m];
                (m.space, m.va, m.va + m.size)
            })
            .collect()
    }

    fn invalidations_for(&self, seeds: &[(SpaceId, u64, u64)]) -> Vec<Invalidation> {
        let mut walk = Vec::new();
        self.walk_upstream(seeds, &mut walk);
        coalesce(walk.into_iter().map(|(space, a, b, _)| Invalidation { space, start: a, size: b - a }).collect())
    }

    /// Every (space, start, end, links) whose resolution passes through one
    /// of `seeds`, `links` mappings before reaching it (seeds themselves at 0).
    fn walk_upstream(&self, seeds: &[(SpaceId, u64, u64)], out: &mut Vec<(SpaceId, u64, u64, usize)>) {
        let mut stack: Vec<(SpaceId, u64, u64, usize)> = seeds.iter().map(|&(s, a, b)| (s, a, b, 0)).collect();
        while let Some((s, a, b, d)) = stack.pop() {
            out.push((s, a, b, d));
            if d > self.max_depth {
                debug_assert!(false, "vm: upstream walk deeper than max_depth");
                continue;
            }
            let Some(space) = self.spaces.get(&s) else {
                continue;
            };
            for rid in &space.regions {
                let r = &self.regions[rid];
                let x = a.max(r.start);
                let y = b.min(r.start + r.size);
                if x >= y {
                    continue;
                }
                for mid in &r.mappings {
                    let m = &self.mappings[mid];
                    let lo = r.start + m.offset;
                    let u = x.max(lo);
                    let v = y.min(lo + m.size);
                    if u >= v {
                        continue;
                    }
                    let tva = m.va + (u - lo);
                    stack.push((m.space, tva, tva + (v - u), d + 1));
                }
            }
        }
    }

    /// What discarding `[offset, offset+size)` of region `r` touches: the
    /// anonymous memory behind it (owner, start, end), whose frames the
    /// kernel frees, and every hardware mapping that may hold those frames
    /// (every space whose resolution reaches them, through any region, not
    /// only `r`'s). Holes (keeper-backed) are skipped. `NotWritable` if the
    /// path to any of that memory does not allow writing (a discard zeroes
    /// it). Nothing changes in the graph.
    pub fn discard_plan(&self, r: RegionId, offset: u64, size: u64) -> Result<DiscardPlan, VmError> {
        let region = self.regions.get(&r).ok_or(VmError::NoSuchRegion)?;
        if size == 0 {
            return Err(VmError::ZeroSize);
        }
        if offset & PAGE_MASK != 0 || size & PAGE_MASK != 0 {
            return Err(VmError::Unaligned);
        }
        if offset.checked_add(size).is_none_or(|end| end > region.size) {
            return Err(VmError::OutOfBounds);
        }
        let start = region.start + offset;
        let mut anonymous = Vec::new();
        let mut stack = vec![(region.space, start, start + size, region.max, 0usize)];
        while let Some((s, a, b, rights, d)) = stack.pop() {
            if d > self.max_depth {
                debug_assert!(false, "vm: discard walk deeper than max_depth");
                return Err(VmError::TooDeep);
            }
            let Some(space) = self.spaces.get(&s) else { continue };
            for (k, e) in overlapping(&space.entries, a, b) {
                let (x, y) = (a.max(k), b.min(k + e.size));
                match e.backing {
                    Backing::Anonymous(grant) => {
                        if !(rights & grant).contains(Rights::WRITE) {
                            return Err(VmError::NotWritable);
                        }
                        anonymous.push((s, x, y));
                    }
                    Backing::Mapping(mid) => {
                        let m = &self.mappings[&mid];
                        let from = &self.regions[&m.region];
                        let src = from.start + m.offset + (x - m.va);
                        stack.push((from.space, src, src + (y - x), rights & m.rights & from.max, d + 1));
                    }
                }
            }
        }
        let invalidations = self.invalidations_for(&anonymous);
        Ok(DiscardPlan { anonymous, invalidations })
    }

    /// The most mappings any chain starting in `[start, start+size)` of `s`
    /// passes through; `Cycle` if one reaches `forbid` (space, start, end).
    fn forward_depth(&self, s: SpaceId, start: u64, size: u64, forbid: (SpaceId, u64, u64)) -> Result<usize, VmError> {
        let mut stack = vec![(s, start, start + size, 0usize)];
        let mut deepest = 0;
        while let Some((s, a, b, d)) = stack.pop() {
            if s == forbid.0 && a < forbid.2 && forbid.1 < b {
                return Err(VmError::Cycle);
            }
            deepest = deepest.max(d);
            if d > self.max_depth {
                debug_assert!(false, "vm: forward walk deeper than max_depth");
                return Err(VmError::TooDeep);
            }
            let Some(space) = self.spaces.get(&s) else {
                continue;
            };
            for (k, e) in overlapping(&space.entries, a, b) {
                if let Backing::Mapping(mid) = e.backing {
                    let x = a.max(k);
                    let y = b.min(k + e.size);
                    let m = &self.mappings[&mid];
                    let r = &self.regions[&m.region];
                    let src = r.start + m.offset + (x - m.va);
                    stack.push((r.space, src, src + (y - x), d + 1));
                }
            }
        }
        Ok(deepest)
    }

    fn remove_mapping(&mut self, m: MappingId) {
        let mapping = self.mappings.remove(&m).expect("live mapping");
        if let Some(region) = self.regions.get_mut(&mapping.region) {
            region.mappings.remove(&m);
        }
        if let Some(space) = self.spaces.get_mut(&mapping.space) {
            space.entries.remove(&mapping.va);
        }
    }

    fn remove_region(&mut self, r: RegionId) {
        let mappings: Vec<MappingId> = self.regions[&r].mappings.iter().copied().collect();
        for m in mappings {
            self.remove_mapping(m);
        }
        let region = self.regions.remove(&r).expect("live region");
        if let Some(space) = self.spaces.get_mut(&region.space) {
            space.regions.remove(&r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const P: u64 = PAGE_SIZE;

    fn rw() -> Rights {
        Rights::RW
    }

    #[test]
    fn discard_finds_the_memory_behind_a_region_and_every_mapping_of_it() {
        let mut g = VmGraph::new();
        let (owner, pm, child, other) = (g.add_space(), g.add_space(), g.add_space(), g.add_space());
        g.grant_anonymous(owner, 0, 16 * P, rw()).unwrap();
        let lent = g.create_region(owner, 0, 16 * P, rw(), None).unwrap();
        g.create_mapping(lent, pm, 100 * P, 0, 16 * P, rw()).unwrap();
        // Another path to some of the same frames, read-only.
        let side = g.create_region(owner, 4 * P, 4 * P, Rights::READ, None).unwrap();
        g.create_mapping(side, other, 0, 0, 4 * P, Rights::READ).unwrap();
        // pm carves a slot out of what it was lent and gives it to a child.
        let slot = g.create_region(pm, 102 * P, 4 * P, rw(), None).unwrap();
        g.create_mapping(slot, child, 0, 0, 4 * P, rw()).unwrap();

        let plan = g.discard_plan(slot, P, 2 * P).unwrap();
        assert_eq!(plan.anonymous, [(owner, 3 * P, 5 * P)]);
        let inv = |space, start, size| Invalidation { space, start, size };
        for want in [inv(owner, 3 * P, 2 * P), inv(pm, 103 * P, 2 * P), inv(child, P, 2 * P), inv(other, 0, P)] {
            assert!(plan.invalidations.contains(&want), "{want:?} missing from {:?}", plan.invalidations);
        }
        assert_eq!(plan.invalidations.len(), 4, "{:?}", plan.invalidations);

        // A hole (no backing) is skipped; a read-only path is refused.
        let hole = g.create_region(pm, 200 * P, 2 * P, rw(), None).unwrap();
        assert_eq!(g.discard_plan(hole, 0, 2 * P).unwrap().anonymous, []);
        let ro = g.create_region(owner, 0, 4 * P, Rights::READ, None).unwrap();
        assert_eq!(g.discard_plan(ro, 0, P), Err(VmError::NotWritable));
        assert_eq!(g.discard_plan(slot, 0, 0), Err(VmError::ZeroSize));
        assert_eq!(g.discard_plan(slot, 5, P), Err(VmError::Unaligned));
        assert_eq!(g.discard_plan(slot, 3 * P, 2 * P), Err(VmError::OutOfBounds));
        assert_eq!(g.discard_plan(slot, !PAGE_MASK, 2 * P), Err(VmError::OutOfBounds));
    }

    // ---------------------------------------------------------------- errors

    #[test]
    fn errors_no_such_objects() {
        let mut g = VmGraph::new();
        let s = g.add_space();
        let r = g.create_region(s, 0, P, Rights::ALL, None).unwrap();
        let m = g.create_mapping(r, s, 4 * P, 0, P, Rights::READ).unwrap();
        let gone = g.add_space();
        g.destroy_space(gone).unwrap();
        assert_eq!(g.grant_anonymous(gone, 0, P, rw()), Err(VmError::NoSuchSpace));
        assert_eq!(g.create_region(gone, 0, P, rw(), None), Err(VmError::NoSuchSpace));
        assert_eq!(g.create_mapping(r, gone, 0, 0, P, Rights::READ), Err(VmError::NoSuchSpace));
        assert_eq!(g.destroy_space(gone), Err(VmError::NoSuchSpace));
        assert_eq!(g.regions_of(gone), Err(VmError::NoSuchSpace));
        assert_eq!(g.mappings_into(gone), Err(VmError::NoSuchSpace));
        assert_eq!(g.anonymous_of(gone), Err(VmError::NoSuchSpace));
        assert_eq!(g.resolve(gone, 0, Rights::READ), Resolution::Unmapped);

        g.destroy_mapping(m).unwrap();
        assert_eq!(g.destroy_mapping(m), Err(VmError::NoSuchMapping));
        assert_eq!(g.protect_mapping(m, Rights::NONE), Err(VmError::NoSuchMapping));
        assert_eq!(g.mapping_info(m), Err(VmError::NoSuchMapping));

        g.destroy_region(r).unwrap();
        assert_eq!(g.destroy_region(r), Err(VmError::NoSuchRegion));
        assert_eq!(g.protect_region(r, rw()), Err(VmError::NoSuchRegion));
        assert_eq!(g.create_mapping(r, s, 0, 0, P, Rights::READ), Err(VmError::NoSuchRegion));
        assert_eq!(g.region_info(r), Err(VmError::NoSuchRegion));
        assert_eq!(g.mappings_of(r), Err(VmError::NoSuchRegion));
        assert_eq!(g.set_region_keeper(r, None), Err(VmError::NoSuchRegion));
    }

    #[test]
    fn errors_zero_size_unaligned_out_of_bounds() {
        let mut g = VmGraph::new();
        let s = g.add_space();
        assert_eq!(g.grant_anonymous(s, 0, 0, rw()), Err(VmError::ZeroSize));
        assert_eq!(g.create_region(s, 0, 0, rw(), None), Err(VmError::ZeroSize));
        assert_eq!(g.grant_anonymous(s, 1, P, rw()), Err(VmError::Unaligned));
        assert_eq!(g.grant_anonymous(s, 0, P + 8, rw()), Err(VmError::Unaligned));
        assert_eq!(g.create_region(s, 0x800, P, rw(), None), Err(VmError::Unaligned));
        assert_eq!(g.grant_anonymous(s, USER_TOP, P, rw()), Err(VmError::OutOfBounds));
        assert_eq!(g.grant_anonymous(s, USER_TOP - P, 2 * P, rw()), Err(VmError::OutOfBounds));
        assert_eq!(g.create_region(s, !PAGE_MASK, 2 * P, rw(), None), Err(VmError::OutOfBounds));
        g.grant_anonymous(s, USER_TOP - P, P, rw()).unwrap();

        let r = g.create_region(s, 0, 4 * P, rw(), None).unwrap();
        let t = g.add_space();
        assert_eq!(g.create_mapping(r, t, 0, 0, 0, rw()), Err(VmError::ZeroSize));
        assert_eq!(g.create_mapping(r, t, 5, 0, P, rw()), Err(VmError::Unaligned));
        assert_eq!(g.create_mapping(r, t, 0, 5, P, rw()), Err(VmError::Unaligned));
        assert_eq!(g.create_mapping(r, t, 0, 0, 5, rw()), Err(VmError::Unaligned));
        assert_eq!(g.create_mapping(r, t, USER_TOP - P, 0, 2 * P, rw()), Err(VmError::OutOfBounds));
        assert_eq!(g.create_mapping(r, t, 0, 3 * P, 2 * P, rw()), Err(VmError::OutOfBounds));
        assert_eq!(g.create_mapping(r, t, 0, 4 * P, P, rw()), Err(VmError::OutOfBounds));
        assert_eq!(g.create_mapping(r, t, 0, !PAGE_MASK, P, rw()), Err(VmError::OutOfBounds));
        g.create_mapping(r, t, 0, 3 * P, P, rw()).unwrap();
        assert_eq!(g.resolve(t, USER_TOP, Rights::READ), Resolution::Unmapped);
    }

    #[test]
    fn errors_overlap() {
        let mut g = VmGraph::new();
        let s = g.add_space();
        let t = g.add_space();
        g.grant_anonymous(s, 0, 4 * P, rw()).unwrap();
        assert_eq!(g.grant_anonymous(s, 3 * P, 2 * P, rw()), Err(VmError::Overlap));
        assert_eq!(g.grant_anonymous(s, 0, P, rw()), Err(VmError::Overlap));
        g.grant_anonymous(s, 4 * P, P, rw()).unwrap(); // adjacent is fine
                                                       // Regions may overlap each other and anything.
        let r1 = g.create_region(s, 0, 4 * P, rw(), None).unwrap();
        let _r2 = g.create_region(s, 2 * P, 8 * P, Rights::READ, None).unwrap();
        g.grant_anonymous(t, 8 * P, 2 * P, rw()).unwrap();
        g.create_mapping(r1, t, 0, 0, 2 * P, rw()).unwrap();
        assert_eq!(g.create_mapping(r1, t, P, 0, P, rw()), Err(VmError::Overlap)); // mapping vs mapping
        assert_eq!(g.create_mapping(r1, t, 7 * P, 0, 2 * P, rw()), Err(VmError::Overlap)); // vs grant
        assert_eq!(g.grant_anonymous(t, P, P, rw()), Err(VmError::Overlap)); // grant vs mapping
        g.create_mapping(r1, t, 2 * P, 0, 2 * P, rw()).unwrap(); // adjacent, same memory again
    }

    #[test]
    fn errors_rights_exceed_region() {
        let mut g = VmGraph::new();
        let s = g.add_space();
        let t = g.add_space();
        let r = g.create_region(s, 0, P, Rights::READ, None).unwrap();
        assert_eq!(g.create_mapping(r, t, 0, 0, P, rw()), Err(VmError::RightsExceedRegion));
        let m = g.create_mapping(r, t, 0, 0, P, Rights::READ).unwrap();
        assert_eq!(g.protect_mapping(m, Rights::RX), Err(VmError::RightsExceedRegion));
        g.protect_region(r, Rights::ALL).unwrap();
        g.protect_mapping(m, Rights::RX).unwrap();
        assert_eq!(g.mapping_info(m).unwrap().rights, Rights::RX);
    }

    #[test]
    fn errors_cycle() {
        let mut g = VmGraph::new();
        let a = g.add_space();
        let b = g.add_space();
        // A space mapping a region onto itself.
        let ra = g.create_region(a, 0, 2 * P, rw(), None).unwrap();
        assert_eq!(g.create_mapping(ra, a, 0, 0, 2 * P, rw()), Err(VmError::Cycle));
        // Conservative: a shifted self-overlap is rejected too (A[2P] -> A[P]
        // -> A[0], a hole, would terminate)...
        let ra4 = g.create_region(a, 0, 4 * P, rw(), None).unwrap();
        assert_eq!(g.create_mapping(ra4, a, P, 0, 2 * P, rw()), Err(VmError::Cycle));
        // ... but a shift without overlap is fine: A[P] -> A[0].
        let m = g.create_mapping(ra4, a, P, 0, P, rw()).unwrap();
        g.destroy_mapping(m).unwrap();
        // An alias elsewhere in the same space is fine.
        g.create_mapping(ra, a, 8 * P, 0, 2 * P, rw()).unwrap();
        // A -> B -> A.
        let rb = g.create_region(b, 0, 2 * P, rw(), None).unwrap();
        g.create_mapping(rb, a, 0, 0, 2 * P, rw()).unwrap();
        assert_eq!(g.create_mapping(ra, b, 0, 0, 2 * P, rw()), Err(VmError::Cycle));
        // ... but A and B may share memory in both directions at disjoint ranges.
        let ra_hi = g.create_region(a, 16 * P, P, rw(), None).unwrap();
        g.create_mapping(ra_hi, b, 16 * P, 0, P, rw()).unwrap();
        // A longer loop through the alias: B[0] -> A[8] -> A[0] -> B[0].
        let ra8 = g.create_region(a, 8 * P, P, rw(), None).unwrap();
        assert_eq!(g.create_mapping(ra8, b, 0, 0, P, rw()), Err(VmError::Cycle));
        // B[4] -> A[8] -> A[0] -> B[0] (a hole) is no loop.
        g.create_mapping(ra8, b, 4 * P, 0, P, rw()).unwrap();
        assert!(matches!(g.resolve(b, 4 * P, Rights::READ), Resolution::KeeperFault { space, va: 0, .. } if space == b));
    }

    /// Root grant, then `n` spaces each mapping a region of the previous one.
    fn chain(g: &mut VmGraph, n: usize) -> Result<Vec<SpaceId>, VmError> {
        let root = g.add_space();
        g.grant_anonymous(root, 0, P, rw()).unwrap();
        let mut spaces = vec![root];
        for _ in 0..n {
            let prev = *spaces.last().unwrap();
            let r = g.create_region(prev, 0, P, rw(), None)?;
            let next = g.add_space();
            g.create_mapping(r, next, 0, 0, P, rw())?;
            spaces.push(next);
        }
        Ok(spaces)
    }

    #[test]
    fn errors_too_deep() {
        let mut g = VmGraph::new();
        let spaces = chain(&mut g, DEFAULT_MAX_DEPTH).unwrap();
        let last = *spaces.last().unwrap();
        assert_eq!(g.resolve(last, 0, Rights::WRITE), Resolution::Anonymous { owner: spaces[0], page_va: 0, rights: rw() });
        let r = g.create_region(last, 0, P, rw(), None).unwrap();
        let t = g.add_space();
        assert_eq!(g.create_mapping(r, t, 0, 0, P, rw()), Err(VmError::TooDeep));

        // Depth counted on both sides of the new link: join two chains of 2.
        let mut g = VmGraph::with_max_depth(4);
        let lower = chain(&mut g, 2).unwrap();
        let top = g.add_space();
        let mid = g.add_space();
        let r_mid = g.create_region(mid, 0, P, rw(), None).unwrap();
        g.create_mapping(r_mid, top, 0, 0, P, rw()).unwrap(); // top -> mid (hole)
        let r_low = g.create_region(lower[2], 0, P, rw(), None).unwrap();
        // mid -> lower[2] gives top -> mid -> lower[2] -> lower[1] -> lower[0]: 4 links.
        let m = g.create_mapping(r_low, mid, 0, 0, P, rw()).unwrap();
        g.destroy_mapping(m).unwrap();
        let above = g.add_space();
        let r_top = g.create_region(top, 0, P, rw(), None).unwrap();
        g.create_mapping(r_top, above, 0, 0, P, rw()).unwrap();
        // Now it would be 5 links from `above`.
        assert_eq!(g.create_mapping(r_low, mid, 0, 0, P, rw()), Err(VmError::TooDeep));
    }

    // ------------------------------------------------------------- nesting

    struct Nest {
        g: VmGraph,
        root: SpaceId,
        spaces: [SpaceId; 4], // A, B, C, D
        e: SpaceId,
        regions: [RegionId; 4], // over root, A, B, C
    }

    /// root (anonymous RWX at 0x10000, 8 pages) -> R0 (RWX, keeper 100) ->
    /// A at 0x40000 (RW) -> R1 over A (RW, keeper 101) -> B at 0x80000 ->
    /// R2 over B (R, keeper 102) -> C at 0x100000 -> R3 over C (R) -> D at
    /// 0x200000. E imports the same root memory through another region.
    /// The ranges of A..D that depend on the root-level region of `nest()`.
    fn nest_ranges([a, b, c, d]: [SpaceId; 4]) -> Vec<Invalidation> {
        [(a, 0x40000, 8 * P), (b, 0x80000, 4 * P), (c, 0x100000, 3 * P), (d, 0x200000, 3 * P)]
            .map(|(space, start, size)| Invalidation { space, start, size })
            .to_vec()
    }

    fn nest() -> Nest {
        let mut g = VmGraph::new();
        let root = g.add_space();
        g.grant_anonymous(root, 0x10000, 8 * P, Rights::ALL).unwrap();
        let r0 = g.create_region(root, 0x10000, 8 * P, Rights::ALL, Some(100)).unwrap();
        let a = g.add_space();
        g.create_mapping(r0, a, 0x40000, 0, 8 * P, rw()).unwrap();
        let r1 = g.create_region(a, 0x40000 + 2 * P, 4 * P, rw(), Some(101)).unwrap();
        let b = g.add_space();
        g.create_mapping(r1, b, 0x80000, 0, 4 * P, rw()).unwrap();
        let r2 = g.create_region(b, 0x80000, 4 * P, Rights::READ, Some(102)).unwrap();
        let c = g.add_space();
        g.create_mapping(r2, c, 0x100000, P, 3 * P, Rights::READ).unwrap();
        let r3 = g.create_region(c, 0x100000, 8 * P, Rights::READ, None).unwrap();
        let d = g.add_space();
        g.create_mapping(r3, d, 0x200000, 0, 8 * P, Rights::READ).unwrap();
        let e = g.add_space();
        let r0e = g.create_region(root, 0x10000, 8 * P, Rights::ALL, None).unwrap();
        g.create_mapping(r0e, e, 0, 0, 8 * P, Rights::ALL).unwrap();
        Nest { g, root, spaces: [a, b, c, d], e, regions: [r0, r1, r2, r3] }
    }

    fn covered(inv: &[Invalidation], s: SpaceId, start: u64, size: u64) -> bool {
        (start..start + size).step_by(P as usize).all(|p| inv.iter().any(|i| i.space == s && i.start <= p && p < i.start + i.size))
    }

    #[test]
    fn four_level_nesting_resolves_with_narrowing_rights() {
        let n = nest();
        let [a, b, c, d] = n.spaces;
        let g = &n.g;
        // D page 0 -> C 0x100000 -> B 0x81000 -> A 0x43000 -> root 0x13000.
        let want = Resolution::Anonymous { owner: n.root, page_va: 0x13000, rights: Rights::READ };
        assert_eq!(g.resolve(d, 0x200123, Rights::READ), want);
        assert_eq!(g.resolve(c, 0x100000, Rights::READ), want);
        assert_eq!(g.resolve(b, 0x81000, Rights::WRITE), Resolution::Anonymous { owner: n.root, page_va: 0x13000, rights: rw() });
        assert_eq!(g.resolve(a, 0x43000, Rights::READ), Resolution::Anonymous { owner: n.root, page_va: 0x13000, rights: rw() });
        assert_eq!(
            g.resolve(n.root, 0x13000, Rights::EXECUTE),
            Resolution::Anonymous { owner: n.root, page_va: 0x13000, rights: Rights::ALL }
        );
        // Write from D: D's own mapping is read-only: no region to blame.
        assert_eq!(
            g.resolve(d, 0x200000, Rights::WRITE),
            Resolution::ProtectionViolation { rights: Rights::READ, region: None, keeper: None }
        );
        // Execute from B: its mapping allows RW only.
        assert_eq!(g.resolve(b, 0x80000, Rights::EXECUTE), Resolution::ProtectionViolation { rights: rw(), region: None, keeper: None });
        // Execute from A is forbidden by A's own mapping; from E it is allowed.
        assert!(matches!(g.resolve(a, 0x40000, Rights::EXECUTE), Resolution::ProtectionViolation { region: None, .. }));
        assert!(matches!(g.resolve(n.e, 0, Rights::EXECUTE), Resolution::Anonymous { rights: Rights::ALL, .. }));
        // D's page 3 -> C 0x103000, beyond C's mapping: hole in C, keeper of R3 (none).
        assert_eq!(
            g.resolve(d, 0x203010, Rights::READ),
            Resolution::KeeperFault { region: n.regions[3], keeper: None, space: c, va: 0x103010, offset: 0x3010 }
        );
        assert_eq!(g.resolve(d, 0x208000, Rights::READ), Resolution::Unmapped);
        assert_eq!(g.resolve(c, 0x103000, Rights::READ), Resolution::Unmapped);
    }

    #[test]
    fn protection_blames_the_nearest_region_and_none_rights_region_faults_everything() {
        let mut n = nest();
        let [a, b, _, d] = n.spaces;
        // R1 max shrinks to READ: writes from B are now R1's keeper's business.
        let inv = n.g.protect_region(n.regions[1], Rights::READ).unwrap();
        assert!(covered(&inv, b, 0x80000, 4 * P));
        assert_eq!(
            n.g.resolve(b, 0x80000, Rights::WRITE),
            Resolution::ProtectionViolation { rights: Rights::READ, region: Some(n.regions[1]), keeper: Some(101) }
        );
        // Revocation hook: R0 to NONE; every derived access faults to keeper 100.
        let inv = n.g.protect_region(n.regions[0], Rights::NONE).unwrap();
        for s in [a, b] {
            assert!(inv.iter().any(|i| i.space == s));
        }
        assert_eq!(
            n.g.resolve(d, 0x200000, Rights::READ),
            Resolution::ProtectionViolation { rights: Rights::NONE, region: Some(n.regions[0]), keeper: Some(100) }
        );
        // A's mapping rights are kept: restoring the max restores access.
        n.g.protect_region(n.regions[0], Rights::ALL).unwrap();
        n.g.protect_region(n.regions[1], rw()).unwrap();
        assert!(matches!(n.g.resolve(a, 0x40000, Rights::WRITE), Resolution::Anonymous { .. }));
        // A hole below a restrictive link: protection wins over the keeper fault.
        let r = n.g.create_region(n.root, 0x100000, P, Rights::READ, Some(7)).unwrap();
        n.g.create_mapping(r, n.e, 0x100000, 0, P, Rights::READ).unwrap();
        assert!(matches!(n.g.resolve(n.e, 0x100000, Rights::WRITE), Resolution::ProtectionViolation { region: None, .. }));
        assert!(matches!(n.g.resolve(n.e, 0x100000, Rights::READ), Resolution::KeeperFault { keeper: Some(7), .. }));
        n.g.set_region_keeper(r, Some(8)).unwrap();
        assert!(matches!(n.g.resolve(n.e, 0x100000, Rights::READ), Resolution::KeeperFault { keeper: Some(8), .. }));
    }

    #[test]
    fn revocation_at_level_one_invalidates_a_to_d_and_not_e() {
        for destroy in [false, true] {
            let mut n = nest();
            let [a, b, c, d] = n.spaces;
            let inv =
                if destroy { n.g.destroy_region(n.regions[0]).unwrap() } else { n.g.protect_region(n.regions[0], Rights::READ).unwrap() };
            assert!(covered(&inv, a, 0x40000, 8 * P));
            assert!(covered(&inv, b, 0x80000, 4 * P));
            assert!(covered(&inv, c, 0x100000, 3 * P));
            assert!(covered(&inv, d, 0x200000, 3 * P));
            // Exactly the dependent ranges, coalesced, nothing of root or E.
            assert_eq!(inv, nest_ranges([a, b, c, d]));
            assert!(matches!(n.g.resolve(n.e, 0, Rights::WRITE), Resolution::Anonymous { .. }));
            if destroy {
                assert_eq!(n.g.resolve(a, 0x40000, Rights::READ), Resolution::Unmapped);
                assert_eq!(
                    n.g.resolve(d, 0x200000, Rights::READ),
                    Resolution::KeeperFault { region: n.regions[1], keeper: Some(101), space: a, va: 0x43000, offset: P }
                );
                assert!(n.g.mappings_into(a).unwrap().is_empty());
                assert_eq!(n.g.regions_of(n.root).unwrap().len(), 1);
            } else {
                assert!(matches!(n.g.resolve(d, 0x200000, Rights::READ), Resolution::Anonymous { .. }));
                assert_eq!(
                    n.g.resolve(b, 0x80000, Rights::WRITE),
                    Resolution::ProtectionViolation { rights: Rights::READ, region: Some(n.regions[0]), keeper: Some(100) }
                );
            }
            // A change deep down touches only what is above it.
            let inv = n.g.protect_region(n.regions[3], Rights::NONE).unwrap();
            assert_eq!(inv, vec![Invalidation { space: d, start: 0x200000, size: 8 * P }]);
            assert_eq!(n.g.protect_region(n.regions[3], Rights::NONE).unwrap(), vec![]);
        }
    }

    #[test]
    fn destroy_space_cleans_up() {
        let mut n = nest();
        let [a, b, c, d] = n.spaces;
        let inv = n.g.destroy_space(a).unwrap();
        assert_eq!(inv, nest_ranges([a, b, c, d]));
        assert!(!n.g.space_exists(a));
        assert_eq!(n.g.region_info(n.regions[1]), Err(VmError::NoSuchRegion));
        assert!(n.g.mappings_into(b).unwrap().is_empty());
        assert!(n.g.mappings_of(n.regions[0]).unwrap().is_empty());
        assert_eq!(n.g.resolve(b, 0x80000, Rights::READ), Resolution::Unmapped);
        assert_eq!(
            n.g.resolve(c, 0x100000, Rights::READ),
            Resolution::KeeperFault { region: n.regions[2], keeper: Some(102), space: b, va: 0x81000, offset: P }
        );
        // Destroying the root: its grant, its regions and every import of them.
        let inv = n.g.destroy_space(n.root).unwrap();
        assert!(covered(&inv, n.root, 0x10000, 8 * P));
        assert!(covered(&inv, n.e, 0, 8 * P));
        assert!(n.g.mappings_into(n.e).unwrap().is_empty());
        assert_eq!(n.g.spaces(), vec![b, c, d, n.e]);
        for s in [b, c, d] {
            n.g.destroy_space(s).unwrap();
        }
        n.g.destroy_space(n.e).unwrap();
        assert!(n.g.spaces.is_empty() && n.g.regions.is_empty() && n.g.mappings.is_empty());
    }

    #[test]
    fn enumeration_exports_state() {
        let n = nest();
        let [a, b, ..] = n.spaces;
        let g = &n.g;
        assert_eq!(g.anonymous_of(n.root).unwrap(), vec![AnonymousInfo { start: 0x10000, size: 8 * P, rights: Rights::ALL }]);
        assert_eq!(g.regions_of(a).unwrap(), vec![n.regions[1]]);
        assert_eq!(g.regions_of(n.root).unwrap().len(), 2);
        let ms = g.mappings_into(b).unwrap();
        assert_eq!(ms.len(), 1);
        assert_eq!(
            g.mapping_info(ms[0]).unwrap(),
            MappingInfo { region: n.regions[1], space: b, va: 0x80000, offset: 0, size: 4 * P, rights: rw() }
        );
        assert_eq!(g.mappings_of(n.regions[1]).unwrap(), ms);
        assert_eq!(
            g.region_info(n.regions[2]).unwrap(),
            RegionInfo { space: b, start: 0x80000, size: 4 * P, max: Rights::READ, keeper: Some(102) }
        );
    }

    #[test]
    fn destroy_mapping_invalidates_upstream_only() {
        let mut n = nest();
        let [_, b, c, d] = n.spaces;
        let m = n.g.mappings_into(c).unwrap()[0];
        let inv = n.g.destroy_mapping(m).unwrap();
        assert_eq!(
            inv,
            vec![Invalidation { space: c, start: 0x100000, size: 3 * P }, Invalidation { space: d, start: 0x200000, size: 3 * P },]
        );
        assert!(matches!(n.g.resolve(b, 0x80000, Rights::READ), Resolution::Anonymous { .. }));
        assert!(matches!(n.g.resolve(d, 0x200000, Rights::READ), Resolution::KeeperFault { .. }));
    }

    #[test]
    fn rights_bits() {
        assert_eq!(Rights::from_bits(8), None);
        assert_eq!(Rights::from_bits(5), Some(Rights::RX));
        assert_eq!(Rights::from_bits_truncate(0xff), Rights::ALL);
        assert!(Rights::RW.contains(Rights::READ) && !Rights::READ.contains(Rights::RW));
        assert!(Rights::NONE.is_empty() && Rights::ALL.contains(Rights::NONE));
        assert_eq!(Rights::RW & Rights::RX, Rights::READ);
        assert_eq!(Rights::WRITE | Rights::EXECUTE, Rights(6));
    }

    // ------------------------------------------------ reference model

    /// Pages the property tests use in every space.
    const DOMAIN: u64 = 24;

    #[derive(Clone, Debug)]
    struct MRegion {
        space: usize,
        start: u64,
        size: u64,
        max: Rights,
        keeper: Option<u64>,
    }

    #[derive(Clone, Debug)]
    struct MMapping {
        region: usize,
        space: usize,
        va: u64,
        offset: u64,
        size: u64,
        rights: Rights,
    }

    #[derive(Clone, Debug, PartialEq)]
    enum MRes {
        Anon { owner: usize, page: u64, rights: Rights },
        Prot { rights: Rights, region: Option<usize> },
        Keeper { region: usize, space: usize, va: u64 },
        Unmapped,
    }

    /// Naive model: plain vectors, linear scans, page by page.
    struct Model {
        spaces: Vec<bool>,
        anon: Vec<(usize, u64, u64, Rights)>,
        regions: Vec<Option<MRegion>>,
        mappings: Vec<Option<MMapping>>,
        max_depth: usize,
    }

    enum Step {
        Anon(Rights),
        Map(usize),
        Hole,
    }

    impl Model {
        fn step(&self, s: usize, addr: u64) -> Step {
            for &(sp, start, size, rights) in &self.anon {
                if sp == s && start <= addr && addr < start + size {
                    return Step::Anon(rights);
                }
            }
            for (i, m) in self.mappings.iter().enumerate() {
                if let Some(m) = m {
                    if m.space == s && m.va <= addr && addr < m.va + m.size {
                        return Step::Map(i);
                    }
                }
            }
            Step::Hole
        }

        fn through(&self, m: usize, addr: u64) -> (usize, u64) {
            let m = self.mappings[m].as_ref().unwrap();
            let r = self.regions[m.region].as_ref().unwrap();
            (r.space, r.start + m.offset + addr - m.va)
        }

        /// Every (space, addr) a walk from (s, addr) visits, start included.
        fn chain(&self, s: usize, addr: u64) -> Vec<(usize, u64)> {
            let mut out = vec![(s, addr)];
            let (mut s, mut addr) = (s, addr);
            while let Step::Map(m) = self.step(s, addr) {
                (s, addr) = self.through(m, addr);
                out.push((s, addr));
                assert!(out.len() < 1000, "model: cycle");
            }
            out
        }

        fn resolve(&self, s: usize, va: u64, access: Rights) -> MRes {
            if !self.spaces[s] {
                return MRes::Unmapped;
            }
            let (mut s, mut addr, mut rights, mut last) = (s, va, Rights::ALL, None);
            loop {
                match self.step(s, addr) {
                    Step::Hole => {
                        return match last {
                            None => MRes::Unmapped,
                            Some(r) => MRes::Keeper { region: r, space: s, va: addr },
                        }
                    }
                    Step::Anon(g) => {
                        rights = rights & g;
                        if !rights.contains(access) {
                            return MRes::Prot { rights, region: last };
                        }
                        return MRes::Anon { owner: s, page: addr & !PAGE_MASK, rights };
                    }
                    Step::Map(mi) => {
                        let m = self.mappings[mi].as_ref().unwrap();
                        rights = rights & m.rights;
                        if !rights.contains(access) {
                            return MRes::Prot { rights, region: last };
                        }
                        rights = rights & self.regions[m.region].as_ref().unwrap().max;
                        if !rights.contains(access) {
                            return MRes::Prot { rights, region: Some(m.region) };
                        }
                        last = Some(m.region);
                        (s, addr) = self.through(mi, addr);
                    }
                }
            }
        }

        fn range_err(start: u64, size: u64) -> Option<VmError> {
            if size == 0 {
                Some(VmError::ZeroSize)
            } else if !(start | size).is_multiple_of(P) {
                Some(VmError::Unaligned)
            } else {
                None
            }
        }

        fn occupied(&self, s: usize, start: u64, size: u64) -> bool {
            (start..start + size).step_by(P as usize).any(|p| !matches!(self.step(s, p), Step::Hole))
        }

        fn grant(&mut self, s: usize, start: u64, size: u64, rights: Rights) -> Result<(), VmError> {
            if !self.spaces[s] {
                return Err(VmError::NoSuchSpace);
            }
            if let Some(e) = Self::range_err(start, size) {
                return Err(e);
            }
            if self.occupied(s, start, size) {
                return Err(VmError::Overlap);
            }
            self.anon.push((s, start, size, rights));
            Ok(())
        }

        fn region(&mut self, s: usize, start: u64, size: u64, max: Rights, keeper: Option<u64>) -> Result<usize, VmError> {
            if !self.spaces[s] {
                return Err(VmError::NoSuchSpace);
            }
            if let Some(e) = Self::range_err(start, size) {
                return Err(e);
            }
            self.regions.push(Some(MRegion { space: s, start, size, max, keeper }));
            Ok(self.regions.len() - 1)
        }

        fn map(&mut self, ri: usize, t: usize, va: u64, offset: u64, size: u64, rights: Rights) -> Result<usize, VmError> {
            let Some(r) = self.regions.get(ri).cloned().flatten() else {
                return Err(VmError::NoSuchRegion);
            };
            if !self.spaces[t] {
                return Err(VmError::NoSuchSpace);
            }
            if let Some(e) = Self::range_err(va, size) {
                return Err(e);
            }
            if offset + size > r.size {
                return Err(VmError::OutOfBounds);
            }
            if !r.max.contains(rights) {
                return Err(VmError::RightsExceedRegion);
            }
            if self.occupied(t, va, size) {
                return Err(VmError::Overlap);
            }
            let in_new = |&(s, a): &(usize, u64)| s == t && va <= a && a < va + size;
            let mut down = 0;
            for i in 0..size / P {
                let c = self.chain(r.space, r.start + offset + i * P);
                if c.iter().any(in_new) {
                    return Err(VmError::Cycle);
                }
                down = down.max(c.len() - 1);
            }
            let mut up = 0;
            for s in 0..self.spaces.len() {
                if !self.spaces[s] {
                    continue;
                }
                for p in 0..DOMAIN {
                    for (k, pos) in self.chain(s, p * P).iter().enumerate() {
                        if in_new(pos) {
                            up = up.max(k);
                        }
                    }
                }
            }
            if up + 1 + down > self.max_depth {
                return Err(VmError::TooDeep);
            }
            self.mappings.push(Some(MMapping { region: ri, space: t, va, offset, size, rights }));
            Ok(self.mappings.len() - 1)
        }

        fn destroy_region(&mut self, ri: usize) {
            for m in self.mappings.iter_mut() {
                if m.as_ref().is_some_and(|m| m.region == ri) {
                    *m = None;
                }
            }
            self.regions[ri] = None;
        }

        fn destroy_space(&mut self, s: usize) {
            self.spaces[s] = false;
            self.anon.retain(|a| a.0 != s);
            for m in self.mappings.iter_mut() {
                if m.as_ref().is_some_and(|m| m.space == s) {
                    *m = None;
                }
            }
            for ri in 0..self.regions.len() {
                if self.regions[ri].as_ref().is_some_and(|r| r.space == s) {
                    self.destroy_region(ri);
                }
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        AddSpace,
        Grant { s: u8, start: u8, size: u8, rights: u8 },
        Region { s: u8, start: u8, size: u8, max: u8, keeper: Option<u8> },
        Map { r: u8, t: u8, va: u8, offset: u8, size: u8, rights: u8 },
        Nest { m: u8, t: u8, va: u8, max: u8, rights: u8 },
        ProtectRegion { r: u8, max: u8 },
        ProtectMapping { m: u8, rights: u8 },
        DestroyMapping { m: u8 },
        DestroyRegion { r: u8 },
        DestroySpace { s: u8 },
        SetKeeper { r: u8, keeper: Option<u8> },
    }

    fn op() -> impl Strategy<Value = Op> {
        let n = any::<u8>();
        let pg = 0u8..16;
        let sz = prop_oneof![1 => Just(0u8), 12 => 1u8..6];
        let rt = prop_oneof![1 => 0u8..8, 2 => Just(7u8)];
        prop_oneof![
            2 => Just(Op::AddSpace),
            3 => (n, pg.clone(), sz.clone(), rt.clone())
                .prop_map(|(s, start, size, rights)| Op::Grant { s, start, size, rights }),
            5 => (n, pg.clone(), sz.clone(), rt.clone(), proptest::option::of(0u8..4))
                .prop_map(|(s, start, size, max, keeper)| Op::Region { s, start, size, max, keeper }),
            12 => (n, n, pg.clone(), 0u8..3, sz.clone(), rt.clone())
                .prop_map(|(r, t, va, offset, size, rights)| Op::Map { r, t, va, offset, size, rights }),
            6 => (n, n, pg.clone(), rt.clone(), rt.clone())
                .prop_map(|(m, t, va, max, rights)| Op::Nest { m, t, va, max, rights }),
            1 => (n, rt.clone()).prop_map(|(r, max)| Op::ProtectRegion { r, max }),
            1 => (n, rt.clone()).prop_map(|(m, rights)| Op::ProtectMapping { m, rights }),
            1 => n.prop_map(|m| Op::DestroyMapping { m }),
            1 => n.prop_map(|r| Op::DestroyRegion { r }),
            1 => n.prop_map(|s| Op::DestroySpace { s }),
            1 => (n, proptest::option::of(0u8..4)).prop_map(|(r, keeper)| Op::SetKeeper { r, keeper }),
        ]
    }

    /// An index below `len`, or sometimes (and always when `len` is 0) `len`
    /// itself: an object that never existed.
    fn pick(i: u8, len: usize) -> usize {
        if len == 0 || i % 16 == 15 {
            len
        } else {
            i as usize % len
        }
    }

    struct Harness {
        g: VmGraph,
        model: Model,
        sids: Vec<SpaceId>,
        rids: Vec<RegionId>,
        mids: Vec<MappingId>,
    }

    const ACCESSES: [Rights; 3] = [Rights::READ, Rights::WRITE, Rights::EXECUTE];

    impl Harness {
        fn new(max_depth: usize) -> Self {
            let mut h = Harness {
                g: VmGraph::with_max_depth(max_depth),
                model: Model { spaces: vec![], anon: vec![], regions: vec![], mappings: vec![], max_depth },
                sids: vec![],
                rids: vec![],
                mids: vec![],
            };
            for _ in 0..4 {
                h.add_space();
            }
            h
        }

        fn add_space(&mut self) {
            self.sids.push(self.g.add_space());
            self.model.spaces.push(true);
        }

        fn space(&self, i: u8) -> (usize, SpaceId) {
            // One past the end names a space that never existed.
            let k = pick(i, self.sids.len());
            (k.min(self.sids.len() - 1), if k == self.sids.len() { SpaceId(u32::MAX) } else { self.sids[k] })
        }

        fn translate(&self, r: MRes) -> Resolution {
            let region_keeper = |r: usize| self.model.regions[r].as_ref().unwrap().keeper;
            match r {
                MRes::Anon { owner, page, rights } => Resolution::Anonymous { owner: self.sids[owner], page_va: page, rights },
                MRes::Prot { rights, region } => {
                    Resolution::ProtectionViolation { rights, region: region.map(|r| self.rids[r]), keeper: region.and_then(region_keeper) }
                }
                MRes::Keeper { region, space, va } => Resolution::KeeperFault {
                    region: self.rids[region],
                    keeper: region_keeper(region),
                    space: self.sids[space],
                    va,
                    offset: va - self.model.regions[region].as_ref().unwrap().start,
                },
                MRes::Unmapped => Resolution::Unmapped,
            }
        }

        /// Every (space index, page, access) resolution, checked against the model.
        fn snapshot(&self) -> Vec<Resolution> {
            let mut out = Vec::new();
            for (si, &s) in self.sids.iter().enumerate() {
                for p in 0..DOMAIN {
                    let va = p * P + (p * 37) % P;
                    for a in ACCESSES {
                        let got = self.g.resolve(s, va, a);
                        let want = self.translate(self.model.resolve(si, va, a));
                        assert_eq!(got, want, "space {si} va {va:#x} access {a:?}");
                        out.push(got);
                    }
                }
            }
            out
        }

        fn region_op(&mut self, si: usize, sid: SpaceId, start: u64, size: u64, max: Rights, keeper: Option<u64>) -> bool {
            let got = self.g.create_region(sid, start, size, max, keeper);
            let want = if sid.0 == u32::MAX { Err(VmError::NoSuchSpace) } else { self.model.region(si, start, size, max, keeper) };
            assert_eq!(got.map(|_| ()), want.map(|_| ()));
            if let Ok(id) = got {
                self.rids.push(id);
            }
            got.is_ok()
        }

        #[allow(clippy::too_many_arguments)]
        fn map_op(&mut self, k: usize, ti: usize, tid: SpaceId, va: u64, offset: u64, size: u64, rights: Rights) {
            let rid = self.rids.get(k).copied().unwrap_or(RegionId(u32::MAX));
            let got = self.g.create_mapping(rid, tid, va, offset, size, rights);
            let want = if k == self.rids.len() {
                Err(VmError::NoSuchRegion)
            } else if tid.0 == u32::MAX && self.model.regions[k].is_some() {
                Err(VmError::NoSuchSpace)
            } else {
                self.model.map(k, ti, va, offset, size, rights)
            };
            assert_eq!(got.map(|_| ()), want.map(|_| ()));
            if let Ok(id) = got {
                self.mids.push(id);
            }
        }

        fn apply(&mut self, op: &Op) {
            let before = self.snapshot();
            let spaces_before = self.sids.len();
            let r = |x: u8| Rights::from_bits_truncate(x);
            let keeper = |k: Option<u8>| k.map(u64::from);
            let mut inv: Vec<Invalidation> = Vec::new();
            match *op {
                Op::AddSpace => self.add_space(),
                Op::Grant { s, start, size, rights } => {
                    let (si, sid) = self.space(s);
                    let got = self.g.grant_anonymous(sid, start as u64 * P, size as u64 * P, r(rights));
                    let want = if sid.0 == u32::MAX {
                        Err(VmError::NoSuchSpace)
                    } else {
                        self.model.grant(si, start as u64 * P, size as u64 * P, r(rights))
                    };
                    assert_eq!(got, want);
                }
                Op::Region { s, start, size, max, keeper: k } => {
                    let (si, sid) = self.space(s);
                    self.region_op(si, sid, start as u64 * P, size as u64 * P, r(max), keeper(k));
                }
                Op::Map { r: ri, t, va, offset, size, rights } => {
                    let k = pick(ri, self.rids.len());
                    let (ti, tid) = self.space(t);
                    self.map_op(k, ti, tid, va as u64 * P, offset as u64 * P, size as u64 * P, r(rights));
                }
                Op::Nest { m, t, va, max, rights } => {
                    // Export exactly what a live mapping imports, then map that.
                    let k = pick(m, self.mids.len());
                    if let Some(mm) = self.model.mappings.get(k).cloned().flatten() {
                        let sid = self.sids[mm.space];
                        if self.region_op(mm.space, sid, mm.va, mm.size, r(max), None) {
                            let (ti, tid) = self.space(t);
                            let ri = self.rids.len() - 1;
                            self.map_op(ri, ti, tid, va as u64 * P, 0, mm.size, r(rights) & r(max));
                        }
                    }
                }
                Op::ProtectRegion { r: ri, max } => {
                    let k = pick(ri, self.rids.len());
                    let rid = self.rids.get(k).copied().unwrap_or(RegionId(u32::MAX));
                    let live = self.model.regions.get(k).is_some_and(|r| r.is_some());
                    match self.g.protect_region(rid, r(max)) {
                        Ok(v) => {
                            assert!(live);
                            self.model.regions[k].as_mut().unwrap().max = r(max);
                            inv = v;
                        }
                        Err(e) => assert!(!live && e == VmError::NoSuchRegion),
                    }
                }
                Op::ProtectMapping { m, rights } => {
                    let k = pick(m, self.mids.len());
                    let mid = self.mids.get(k).copied().unwrap_or(MappingId(u32::MAX));
                    let want = match self.model.mappings.get(k).cloned().flatten() {
                        None => Err(VmError::NoSuchMapping),
                        Some(mm) if !self.model.regions[mm.region].as_ref().unwrap().max.contains(r(rights)) => {
                            Err(VmError::RightsExceedRegion)
                        }
                        Some(_) => Ok(()),
                    };
                    let got = self.g.protect_mapping(mid, r(rights));
                    assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want);
                    if let Ok(v) = got {
                        self.model.mappings[k].as_mut().unwrap().rights = r(rights);
                        inv = v;
                    }
                }
                Op::DestroyMapping { m } => {
                    let k = pick(m, self.mids.len());
                    let mid = self.mids.get(k).copied().unwrap_or(MappingId(u32::MAX));
                    let live = self.model.mappings.get(k).is_some_and(|m| m.is_some());
                    match self.g.destroy_mapping(mid) {
                        Ok(v) => {
                            assert!(live);
                            self.model.mappings[k] = None;
                            inv = v;
                        }
                        Err(e) => assert!(!live && e == VmError::NoSuchMapping),
                    }
                }
                Op::DestroyRegion { r: ri } => {
                    let k = pick(ri, self.rids.len());
                    let rid = self.rids.get(k).copied().unwrap_or(RegionId(u32::MAX));
                    let live = self.model.regions.get(k).is_some_and(|r| r.is_some());
                    match self.g.destroy_region(rid) {
                        Ok(v) => {
                            assert!(live);
                            self.model.destroy_region(k);
                            inv = v;
                        }
                        Err(e) => assert!(!live && e == VmError::NoSuchRegion),
                    }
                }
                Op::DestroySpace { s } => {
                    let (si, sid) = self.space(s);
                    let live = sid.0 != u32::MAX && self.model.spaces[si];
                    match self.g.destroy_space(sid) {
                        Ok(v) => {
                            assert!(live);
                            self.model.destroy_space(si);
                            inv = v;
                        }
                        Err(e) => assert!(!live && e == VmError::NoSuchSpace),
                    }
                }
                Op::SetKeeper { r: ri, keeper: k } => {
                    let k2 = pick(ri, self.rids.len());
                    let rid = self.rids.get(k2).copied().unwrap_or(RegionId(u32::MAX));
                    let live = self.model.regions.get(k2).is_some_and(|r| r.is_some());
                    assert_eq!(self.g.set_region_keeper(rid, keeper(k)).is_ok(), live);
                    if live {
                        self.model.regions[k2].as_mut().unwrap().keeper = keeper(k);
                    }
                }
            }
            let after = self.snapshot();
            let per_space = DOMAIN as usize * ACCESSES.len();
            // Only pages that resolved to anonymous memory can have a PTE.
            // Additions (grant, mapping) only fill holes: they must leave every
            // such page alone and invalidate nothing. Every other change must
            // invalidate every page whose resolution changed (other than
            // through a keeper token, which PTEs never hold).
            let addition =
                matches!(op, Op::AddSpace | Op::Grant { .. } | Op::Region { .. } | Op::Map { .. } | Op::Nest { .. } | Op::SetKeeper { .. });
            if addition {
                assert!(inv.is_empty());
            }
            let strip = |r: Resolution| match r {
                Resolution::ProtectionViolation { rights, region, .. } => Resolution::ProtectionViolation { rights, region, keeper: None },
                Resolution::KeeperFault { region, space, va, offset, .. } => {
                    Resolution::KeeperFault { region, keeper: None, space, va, offset }
                }
                r => r,
            };
            for si in 0..spaces_before {
                for p in 0..DOMAIN as usize {
                    let i = si * per_space + p * ACCESSES.len();
                    let range = i..i + ACCESSES.len();
                    let changed = range.clone().any(|j| strip(before[j]) != strip(after[j]));
                    let installed = range.clone().any(|j| matches!(before[j], Resolution::Anonymous { .. }));
                    if addition {
                        assert!(!(changed && installed), "{op:?}: space {si} page {p} changed");
                    } else if changed {
                        assert!(
                            covered(&inv, self.sids[si], p as u64 * P, P),
                            "{op:?}: space {si} page {p} changed but not invalidated: {inv:?}"
                        );
                    }
                }
            }
            // Invalidations are sorted, coalesced and name no dead-before spaces.
            for w in inv.windows(2) {
                assert!(w[0].space < w[1].space || w[0].start + w[0].size < w[1].start);
            }
            // Depth invariant.
            for (si, live) in self.model.spaces.iter().enumerate() {
                if *live {
                    for p in 0..DOMAIN {
                        assert!(self.model.chain(si, p * P).len() - 1 <= self.model.max_depth);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn engine_matches_model(max_depth in 1usize..6, ops in proptest::collection::vec(op(), 1..80)) {
            let mut h = Harness::new(max_depth);
            for op in &ops {
                h.apply(op);
            }
        }
    }
}
