//! The handles a worker knows about: live ones with their object type, and
//! recently closed ones (which must stay dead: a handle's generation makes a
//! closed value invalid for good, kernel/ABI.md).

/// The handle names the caller's own space (or a copy of that handle).
pub const SELF: u32 = 1 << 0;
/// The object is a space that was destroyed, itself or with an ancestor
/// (the handle stays open).
pub const DEAD: u32 = 1 << 1;
/// A space whose ancestry the worker does not know (an ancestor could die
/// without the pool noticing).
pub const NO_ANCESTRY: u32 = 1 << 2;
/// A region over exactly the worker's discard area (`Env::discard`): the
/// only region a fuzzed `region_discard` may succeed on.
pub const DISCARD_AREA: u32 = 1 << 3;

/// Spaces whose parent the pool remembers, open handles or not.
pub const ANCESTRY_SLOTS: usize = 64;

/// Type code 0: a handle whose object type the worker does not know (an import).
pub const UNKNOWN_KIND: u32 = 0;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Entry {
    pub value: u64,
    /// Which object it names: the value of the first handle to it the
    /// worker saw (duplicates share it); 0 when unknown.
    pub object: u64,
    /// For a space: the object of its parent (0 when unknown).
    pub parent: u64,
    /// ABI object type code (1 Space .. 9 Reference), or [`UNKNOWN_KIND`].
    pub kind: u32,
    /// [`SELF`], [`DEAD`].
    pub flags: u32,
}

pub const LIVE_SLOTS: usize = 48;
pub const CLOSED_SLOTS: usize = 16;
/// Handle values a worker put into other spaces' tables (for `handle_import`).
pub const FOREIGN_SLOTS: usize = 8;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Pool {
    live: [Entry; LIVE_SLOTS],
    live_len: u32,
    closed_len: u32,
    closed: [u64; CLOSED_SLOTS],
    closed_next: u32,
    foreign_len: u32,
    foreign: [u64; FOREIGN_SLOTS],
    foreign_next: u32,
    ancestry_len: u32,
    /// (space object, parent object) for every space created, even after
    /// its handles are closed: a destroy must reach its whole subtree.
    ancestry: [(u64, u64); ANCESTRY_SLOTS],
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

/// Why a new handle value is impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reissue {
    /// It equals a handle that is still open.
    Live,
    /// It equals a handle that was closed (its generation should differ).
    Closed,
}

impl Pool {
    pub const fn new() -> Pool {
        Pool {
            live: [Entry { value: 0, object: 0, parent: 0, kind: 0, flags: 0 }; LIVE_SLOTS],
            live_len: 0,
            closed_len: 0,
            closed: [0; CLOSED_SLOTS],
            closed_next: 0,
            foreign_len: 0,
            foreign: [0; FOREIGN_SLOTS],
            foreign_next: 0,
            ancestry_len: 0,
            ancestry: [(0, 0); ANCESTRY_SLOTS],
        }
    }

    pub fn live(&self) -> &[Entry] {
        &self.live[..self.live_len as usize]
    }

    pub fn closed(&self) -> &[u64] {
        &self.closed[..self.closed_len as usize]
    }

    pub fn foreign(&self) -> &[u64] {
        &self.foreign[..self.foreign_len as usize]
    }

    pub fn is_full(&self) -> bool {
        self.live_len as usize == LIVE_SLOTS
    }

    pub fn len(&self) -> usize {
        self.live_len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.live_len == 0
    }

    /// Whether `value` could not be a fresh handle value: a kernel that
    /// hands it out again has mixed up its handle table.
    pub fn reissued(&self, value: u64) -> Option<Reissue> {
        if self.live().iter().any(|e| e.value == value) {
            Some(Reissue::Live)
        } else if self.closed().contains(&value) {
            Some(Reissue::Closed)
        } else {
            None
        }
    }

    /// Records a new live handle; false when the pool is full (the caller
    /// closes the handle).
    pub fn add(&mut self, e: Entry) -> bool {
        if self.is_full() {
            return false;
        }
        self.live[self.live_len as usize] = e;
        self.live_len += 1;
        true
    }

    pub fn find(&self, value: u64) -> Option<Entry> {
        self.live().iter().copied().find(|e| e.value == value)
    }

    /// `value` was closed (or its object destroyed with the handle): it moves
    /// to the closed list.
    pub fn close(&mut self, value: u64) {
        let len = self.live_len as usize;
        if let Some(i) = self.live[..len].iter().position(|e| e.value == value) {
            self.live[i] = self.live[len - 1];
            self.live_len -= 1;
        }
        if !self.closed().contains(&value) {
            self.closed[self.closed_next as usize] = value;
            self.closed_next = (self.closed_next + 1) % CLOSED_SLOTS as u32;
            self.closed_len = (self.closed_len + 1).min(CLOSED_SLOTS as u32);
        }
    }

    /// After a `handle_transfer_at` into a table that may be this one, a
    /// closed value may have been given a new object on purpose.
    pub fn forget_closed(&mut self) {
        self.closed_len = 0;
        self.closed_next = 0;
    }

    /// Remembers that space `object` is a child of space `parent`; false
    /// when the table is full (the new space then has no known ancestry).
    pub fn note_space(&mut self, object: u64, parent: u64) -> bool {
        if self.ancestry_len as usize == ANCESTRY_SLOTS {
            return false;
        }
        self.ancestry[self.ancestry_len as usize] = (object, parent);
        self.ancestry_len += 1;
        true
    }

    /// Space `object` was destroyed: it and every space below it that the
    /// pool knows of are dead (their handles, open or not, name dead spaces).
    pub fn kill_subtree(&mut self, object: u64) {
        if object == 0 {
            return;
        }
        let mut dead = [0u64; ANCESTRY_SLOTS + 1];
        dead[0] = object;
        let mut n = 1;
        let known = self.ancestry_len as usize;
        loop {
            let mut grew = false;
            for &(child, parent) in &self.ancestry[..known] {
                if dead[..n].contains(&parent) && !dead[..n].contains(&child) && n < dead.len() {
                    dead[n] = child;
                    n += 1;
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        let len = self.live_len as usize;
        for e in self.live[..len].iter_mut() {
            if e.object != 0 && dead[..n].contains(&e.object) {
                e.flags |= DEAD;
            }
        }
    }

    pub fn add_foreign(&mut self, value: u64) {
        self.foreign[self.foreign_next as usize] = value;
        self.foreign_next = (self.foreign_next + 1) % FOREIGN_SLOTS as u32;
        self.foreign_len = (self.foreign_len + 1).min(FOREIGN_SLOTS as u32);
    }

    /// How many live handles name objects of `kind` (unknown ones count for every kind).
    pub fn count(&self, kind: u32) -> usize {
        self.live().iter().filter(|e| e.kind == kind || e.kind == UNKNOWN_KIND).count()
    }

    /// The `n`th live handle of `kind` (unknown ones included), in pool order.
    pub fn nth(&self, kind: u32, n: usize) -> Option<Entry> {
        self.live().iter().copied().filter(|e| e.kind == kind || e.kind == UNKNOWN_KIND).nth(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(value: u64, kind: u32) -> Entry {
        Entry { value, object: value, parent: 0, kind, flags: 0 }
    }

    #[test]
    fn destroying_a_space_kills_its_known_subtree() {
        let mut p = Pool::new();
        let space = |value, object, parent| Entry { value, object, parent, kind: 1, flags: 0 };
        for (object, parent) in [(2, 1), (3, 2), (5, 1), (7, 3), (8, 7)] {
            assert!(p.note_space(object, parent));
        }
        p.add(space(1, 1, 0));
        p.add(space(2, 2, 1));
        p.add(space(3, 3, 2));
        p.add(space(4, 2, 0)); // a duplicate of 2
        p.add(space(5, 5, 1));
        p.add(space(6, 6, 0));
        // 7's handle was closed, but its child 8 still dies with 2.
        p.add(space(9, 8, 0));
        p.kill_subtree(2);
        let dead: Vec<u64> = p.live().iter().filter(|e| e.flags & DEAD != 0).map(|e| e.value).collect();
        assert_eq!(dead, [2, 3, 4, 9]);
        p.kill_subtree(1);
        assert_eq!(p.live().iter().filter(|e| e.flags & DEAD != 0).count(), 6);
    }

    #[test]
    fn add_close_and_reissue() {
        let mut p = Pool::new();
        assert!(p.add(e(1, 3)));
        assert!(p.add(e(2, 4)));
        assert_eq!(p.reissued(1), Some(Reissue::Live));
        p.close(1);
        assert_eq!(p.live(), &[e(2, 4)]);
        assert_eq!(p.reissued(1), Some(Reissue::Closed));
        assert_eq!(p.reissued(9), None);
        p.forget_closed();
        assert_eq!(p.reissued(1), None);
    }

    #[test]
    fn full_pool_refuses_and_closed_ring_wraps() {
        let mut p = Pool::new();
        for v in 0..LIVE_SLOTS as u64 {
            assert!(p.add(e(v + 1, 1)));
        }
        assert!(p.is_full());
        assert!(!p.add(e(1000, 1)));
        for v in 0..(CLOSED_SLOTS as u64 + 5) {
            p.close(v + 1);
        }
        assert_eq!(p.closed().len(), CLOSED_SLOTS);
        assert!(p.closed().contains(&(CLOSED_SLOTS as u64 + 5)));
        assert!(!p.closed().contains(&1));
        assert_eq!(p.len(), LIVE_SLOTS - CLOSED_SLOTS - 5);
    }

    #[test]
    fn kinds_and_unknowns() {
        let mut p = Pool::new();
        p.add(e(1, 3));
        p.add(e(2, UNKNOWN_KIND));
        p.add(e(3, 4));
        assert_eq!(p.count(3), 2);
        assert_eq!(p.nth(4, 0), Some(e(2, UNKNOWN_KIND)));
        assert_eq!(p.nth(4, 1), Some(e(3, 4)));
        assert_eq!(p.nth(4, 2), None);
        for v in 10..20 {
            p.add_foreign(v);
        }
        assert_eq!(p.foreign().len(), FOREIGN_SLOTS);
    }
}
