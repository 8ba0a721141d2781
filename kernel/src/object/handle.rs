//! Per-space handle tables: the only way user code names a kernel object.
//!
//! A handle is an opaque 64-bit value meaningful only in the space whose
//! table issued it (reference relativity): the low 32 bits index the table,
//! the high 32 bits are the slot's generation, so a handle to a closed slot
//! stays dead even after the slot is reused. Handle 0 is never issued.
//! Every entry carries rights; an operation names the rights it needs.

extern crate alloc;

use alloc::vec::Vec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(u64);

impl Handle {
    pub const NULL: Handle = Handle(0);

    pub fn from_raw(raw: u64) -> Handle {
        Handle(raw)
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    fn new(index: u32, generation: u32) -> Handle {
        Handle(((generation as u64) << 32) | (index as u64 + 1))
    }

    fn index(self) -> Option<usize> {
        (self.0 as u32).checked_sub(1).map(|i| i as usize)
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// What a handle's holder may do with the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rights(u32);

impl Rights {
    pub const NONE: Rights = Rights(0);
    /// Read the object's exported state.
    pub const GET_STATE: Rights = Rights(matryoshka_abi::rights::GET_STATE);
    /// Overwrite the object's state.
    pub const SET_STATE: Rights = Rights(matryoshka_abi::rights::SET_STATE);
    pub const DESTROY: Rights = Rights(matryoshka_abi::rights::DESTROY);
    /// Pass the handle to another space.
    pub const TRANSFER: Rights = Rights(matryoshka_abi::rights::TRANSFER);
    /// Derive a copy (with the same or fewer rights).
    pub const DUPLICATE: Rights = Rights(matryoshka_abi::rights::DUPLICATE);
    pub const SEND: Rights = Rights(matryoshka_abi::rights::SEND);
    pub const RECEIVE: Rights = Rights(matryoshka_abi::rights::RECEIVE);
    pub const MAP_READ: Rights = Rights(matryoshka_abi::rights::MAP_READ);
    pub const MAP_WRITE: Rights = Rights(matryoshka_abi::rights::MAP_WRITE);
    pub const MAP_EXECUTE: Rights = Rights(matryoshka_abi::rights::MAP_EXECUTE);
    /// Create objects inside (for spaces).
    pub const CREATE: Rights = Rights(matryoshka_abi::rights::CREATE);
    pub const ALL: Rights = Rights(matryoshka_abi::rights::ALL);

    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Rights from user-supplied bits; unknown bits are an error, not ignored.
    pub fn from_bits(bits: u32) -> Option<Rights> {
        (bits & !Self::ALL.0 == 0).then_some(Rights(bits))
    }

    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// Never issued by this table, or already closed.
    Invalid,
    /// Valid, but without the rights the operation needs.
    MissingRights,
    /// The table is at its quota.
    TableFull,
}

struct Slot<T> {
    generation: u32,
    entry: Option<(T, Rights)>,
}

pub struct HandleTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
    quota: usize,
}

impl<T> HandleTable<T> {
    pub const fn new(quota: usize) -> Self {
        HandleTable { slots: Vec::new(), free: Vec::new(), live: 0, quota }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn insert(&mut self, object: T, rights: Rights) -> Result<Handle, HandleError> {
        if self.live >= self.quota || self.slots.len() >= u32::MAX as usize - 1 {
            return Err(HandleError::TableFull);
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.try_reserve(1).map_err(|_| HandleError::TableFull)?;
                self.free.try_reserve(1).map_err(|_| HandleError::TableFull)?;
                self.slots.push(Slot { generation: 1, entry: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.entry = Some((object, rights));
        self.live += 1;
        Ok(Handle::new(index, slot.generation))
    }

    /// Inserts at exactly the handle value `h` (to rebuild a table from its
    /// exported state). Fails with `Invalid` if `h` is null or its slot holds
    /// a live handle.
    pub fn insert_at(&mut self, h: Handle, object: T, rights: Rights) -> Result<(), HandleError> {
        let index = h.index().ok_or(HandleError::Invalid)?;
        if self.live >= self.quota || index >= self.quota.max(1) * 16 {
            return Err(HandleError::TableFull);
        }
        while self.slots.len() <= index {
            self.slots.try_reserve(1).map_err(|_| HandleError::TableFull)?;
            self.free.try_reserve(1).map_err(|_| HandleError::TableFull)?;
            self.slots.push(Slot { generation: 1, entry: None });
            self.free.push((self.slots.len() - 1) as u32);
        }
        if self.slots[index].entry.is_some() {
            return Err(HandleError::Invalid);
        }
        self.free.retain(|&i| i as usize != index);
        let slot = &mut self.slots[index];
        slot.generation = h.generation();
        slot.entry = Some((object, rights));
        self.live += 1;
        Ok(())
    }

    #[inline]
    fn slot(&self, h: Handle) -> Result<&(T, Rights), HandleError> {
        let slot = self.slots.get(h.index().ok_or(HandleError::Invalid)?).ok_or(HandleError::Invalid)?;
        if slot.generation != h.generation() {
            return Err(HandleError::Invalid);
        }
        slot.entry.as_ref().ok_or(HandleError::Invalid)
    }

    /// The object behind `h`, if `h` carries at least `needed`.
    #[inline]
    pub fn get(&self, h: Handle, needed: Rights) -> Result<&T, HandleError> {
        let (object, rights) = self.slot(h)?;
        if !rights.contains(needed) {
            return Err(HandleError::MissingRights);
        }
        Ok(object)
    }

    /// `get` for the IPC fast path: the part `pick` chooses of the object
    /// behind `h`, if `h` carries `needed`; `None` for every failure. One
    /// bounds check covers the null handle too (its index wraps past any
    /// table: `insert` keeps tables below `u32::MAX` slots), and the entry's
    /// presence and the kind `pick` wants are tested together.
    #[inline(always)]
    pub fn pick<U>(&self, h: Handle, needed: Rights, pick: impl FnOnce(&T) -> Option<&U>) -> Option<&U> {
        let slot = self.slots.get((h.0 as u32).wrapping_sub(1) as usize)?;
        if slot.generation != h.generation() {
            return None;
        }
        let (object, rights) = slot.entry.as_ref()?;
        let part = pick(object)?;
        rights.contains(needed).then_some(part)
    }

    pub fn rights(&self, h: Handle) -> Result<Rights, HandleError> {
        self.slot(h).map(|(_, r)| *r)
    }

    /// Closes `h` and returns its object; the handle value is dead forever after.
    pub fn remove(&mut self, h: Handle) -> Result<(T, Rights), HandleError> {
        self.slot(h)?;
        let index = h.index().ok_or(HandleError::Invalid)?;
        let slot = &mut self.slots[index];
        let entry = slot.entry.take().ok_or(HandleError::Invalid)?;
        // A slot whose generation would wrap is retired rather than reused.
        if slot.generation < u32::MAX {
            slot.generation += 1;
            self.free.push(index as u32);
        }
        self.live -= 1;
        Ok(entry)
    }

    /// Every live entry, in handle order: what a parent enumerates in a child.
    pub fn iter(&self) -> impl Iterator<Item = (Handle, &T, Rights)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.entry.as_ref().map(|(o, r)| (Handle::new(i as u32, s.generation), o, *r)))
    }
}

impl<T: Clone> HandleTable<T> {
    /// A second handle to the same object with `rights` (a subset of the
    /// original's, which must include DUPLICATE).
    pub fn duplicate(&mut self, h: Handle, rights: Rights) -> Result<Handle, HandleError> {
        let (object, have) = self.slot(h)?;
        if !have.contains(Rights::DUPLICATE) || !have.contains(rights) {
            return Err(HandleError::MissingRights);
        }
        let object = object.clone();
        self.insert(object, rights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn closed_handles_stay_dead_after_reuse() {
        let mut t = HandleTable::new(8);
        let a = t.insert("a", Rights::ALL).unwrap();
        assert_eq!(t.remove(a).unwrap().0, "a");
        let b = t.insert("b", Rights::ALL).unwrap();
        assert_ne!(a, b, "reused slot gets a new generation");
        assert_eq!(t.get(a, Rights::NONE), Err(HandleError::Invalid));
        assert_eq!(t.get(b, Rights::NONE), Ok(&"b"));
        assert_eq!(t.get(Handle::NULL, Rights::NONE), Err(HandleError::Invalid));
        assert_eq!(t.get(Handle::from_raw(u64::MAX), Rights::NONE), Err(HandleError::Invalid));
    }

    #[test]
    fn rights_are_enforced_and_only_narrowed() {
        let mut t = HandleTable::new(8);
        let h = t.insert(7, Rights::SEND.union(Rights::DUPLICATE)).unwrap();
        assert_eq!(t.get(h, Rights::RECEIVE), Err(HandleError::MissingRights));
        assert_eq!(t.get(h, Rights::SEND), Ok(&7));
        let d = t.duplicate(h, Rights::SEND).unwrap();
        assert_eq!(t.rights(d), Ok(Rights::SEND));
        assert_eq!(t.duplicate(d, Rights::SEND), Err(HandleError::MissingRights), "no DUPLICATE right");
        assert_eq!(t.duplicate(h, Rights::ALL), Err(HandleError::MissingRights), "cannot widen");
        assert_eq!(Rights::from_bits(1 << 30), None);
    }

    #[test]
    fn insert_at_recreates_exact_values() {
        let mut t = HandleTable::new(8);
        let a = t.insert("a", Rights::ALL).unwrap();
        let b = t.insert("b", Rights::SEND).unwrap();
        let mut rebuilt = HandleTable::new(8);
        rebuilt.insert_at(b, "b", Rights::SEND).unwrap();
        rebuilt.insert_at(a, "a", Rights::ALL).unwrap();
        assert_eq!(rebuilt.get(a, Rights::NONE), Ok(&"a"));
        assert_eq!(rebuilt.get(b, Rights::SEND), Ok(&"b"));
        assert_eq!(rebuilt.insert_at(a, "x", Rights::ALL), Err(HandleError::Invalid), "slot taken");
        assert_eq!(rebuilt.insert_at(Handle::NULL, "x", Rights::ALL), Err(HandleError::Invalid));
        let c = rebuilt.insert("c", Rights::ALL).unwrap();
        assert!(c != a && c != b, "fresh inserts avoid rebuilt slots");
        assert_eq!(rebuilt.len(), 3);
    }

    #[test]
    fn pick_agrees_with_get() {
        let mut t = HandleTable::new(8);
        let port = t.insert(5u32, Rights::SEND).unwrap();
        let other = t.insert(6u32, Rights::ALL).unwrap();
        fn odd(v: &u32) -> Option<&u32> {
            (v % 2 == 1).then_some(v)
        }
        assert_eq!(t.pick(port, Rights::SEND, odd), Some(&5));
        assert_eq!(t.pick(port, Rights::RECEIVE, odd), None, "missing right");
        assert_eq!(t.pick(other, Rights::SEND, odd), None, "wrong kind");
        assert_eq!(t.pick(Handle::NULL, Rights::NONE, |v| Some(v)), None);
        assert_eq!(t.pick(Handle::from_raw(u64::MAX), Rights::NONE, |v| Some(v)), None);
        assert_eq!(t.pick(Handle::from_raw(0xffff_ffff), Rights::NONE, |v| Some(v)), None, "index past the table");
        t.remove(port).unwrap();
        assert_eq!(t.pick(port, Rights::NONE, |v| Some(v)), None, "closed");
        let reused = t.insert(7u32, Rights::ALL).unwrap();
        assert_eq!(t.pick(port, Rights::NONE, |v| Some(v)), None, "stale generation");
        assert_eq!(t.pick(reused, Rights::NONE, |v| Some(v)), Some(&7));
    }

    #[test]
    fn quota_is_an_error() {
        let mut t = HandleTable::new(2);
        t.insert(1, Rights::NONE).unwrap();
        t.insert(2, Rights::NONE).unwrap();
        assert_eq!(t.insert(3, Rights::NONE), Err(HandleError::TableFull));
        assert_eq!(t.len(), 2);
    }

    proptest! {
        #[test]
        fn matches_a_map(ops in proptest::collection::vec((0u8..3, 0usize..64), 0..300)) {
            let mut t = HandleTable::new(32);
            let mut model: BTreeMap<Handle, u32> = BTreeMap::new();
            let mut issued: Vec<Handle> = Vec::new();
            let mut next = 0u32;
            for (op, pick) in ops {
                match op {
                    0 => match t.insert(next, Rights::ALL) {
                        Ok(h) => {
                            prop_assert!(!issued.contains(&h), "handle value reused");
                            issued.push(h);
                            model.insert(h, next);
                            next += 1;
                        }
                        Err(e) => {
                            prop_assert_eq!(e, HandleError::TableFull);
                            prop_assert_eq!(model.len(), 32);
                        }
                    },
                    1 if !issued.is_empty() => {
                        let h = issued[pick % issued.len()];
                        prop_assert_eq!(t.remove(h).ok().map(|(v, _)| v), model.remove(&h));
                    }
                    _ if !issued.is_empty() => {
                        let h = issued[pick % issued.len()];
                        prop_assert_eq!(t.get(h, Rights::NONE).ok().copied(), model.get(&h).copied());
                        prop_assert_eq!(t.pick(h, Rights::NONE, |v| Some(v)).copied(), model.get(&h).copied());
                    }
                    _ => {}
                }
                prop_assert_eq!(t.len(), model.len());
                let listed: Vec<(Handle, u32)> = t.iter().map(|(h, v, _)| (h, *v)).collect();
                let expected: Vec<(Handle, u32)> = model.iter().map(|(h, v)| (*h, *v)).collect();
                let mut listed_sorted = listed.clone();
                listed_sorted.sort();
                prop_assert_eq!(listed_sorted, expected);
            }
        }
    }
}
