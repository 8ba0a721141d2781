//! Space calls: create, destroy, enumerate, keeper, quota, and every
//! object's exported state record.

use super::*;

/// `space_create(parent)`: a new child of the space `parent` names (CREATE
/// right needed); the caller receives a handle with every right.
pub(super) fn space_create(parent: u64) -> SysResult {
    let me = caller()?;
    let parent = me.lookup_space(Handle::from_raw(parent), Rights::CREATE)?;
    let child = Space::new(Some(&parent))?;
    match me.insert(Object::Space(child.clone()), Rights::ALL) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            child.destroy();
            Err(e.into())
        }
    }
}

/// `space_destroy(space)`: destroys the space and its subtree and closes
/// the handle. A space cannot destroy itself or an ancestor. A space that
/// is already dead (destroyed with an ancestor, or by another handle)
/// gives `Dead`; its handle is closed all the same.
pub(super) fn space_destroy(h: u64) -> SysResult {
    let me = caller()?;
    let handle = Handle::from_raw(h);
    let target = me.lookup_space(handle, Rights::DESTROY)?;
    if target.is_ancestor_of(&me) {
        return Err(SpaceError::WouldDestroyCaller.into());
    }
    me.remove(handle)?;
    if target.destroy() {
        Ok(0)
    } else {
        Err(SysError::Dead.into())
    }
}

/// `space_set_quota(space, bytes)` (SET_STATE): limits the kernel memory
/// the space's whole subtree may take (threads, spaces, handles, regions,
/// mappings; costs in ABI.md). A space may not change its own limit or an
/// ancestor's: a parent bounds its children, never itself. A limit below
/// what is in use takes nothing back; new objects fail until enough is freed.
pub(super) fn space_set_quota(h: u64, bytes: u64) -> SysResult {
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(h), Rights::SET_STATE)?;
    if target.is_ancestor_of(&me) {
        return Err(SysError::InvalidArgument.into());
    }
    target.quota.set_limit(bytes);
    Ok(0)
}

/// `space_enumerate(space, buf, max)`: writes up to `max` records
/// {u64 handle, u32 type, u32 rights} describing the space's handle table
/// (what a parent exports to checkpoint a child); returns how many handles
/// the space holds (which may exceed `max`).
pub(super) fn space_enumerate(h: u64, buf: u64, max: u64) -> SysResult {
    if max > crate::object::space::HANDLE_QUOTA as u64 {
        return Err(SysError::BadSize.into());
    }
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(h), Rights::GET_STATE)?;
    let (records, total) = crate::arch::cpu::without_interrupts(|| {
        let table = target.handles.lock();
        let mut records: Vec<u8> = Vec::new();
        if crate::mm::heap::fallible(|| records.try_reserve((max.min(table.len() as u64) * ENUMERATE_RECORD) as usize)).is_err() {
            return Err(SysError::NoMemory);
        }
        for (handle, object, rights) in table.iter().take(max as usize) {
            records.extend_from_slice(&handle.raw().to_le_bytes());
            records.extend_from_slice(&(object.object_type() as u32).to_le_bytes());
            records.extend_from_slice(&rights.bits().to_le_bytes());
        }
        Ok((records, table.len()))
    })?;
    copy_to_user(buf, &records).map_err(|()| SysError::BadPointer)?;
    Ok(total as i64)
}

/// `space_set_keeper(space, port)`: the port (SEND right; 0 clears) that
/// receives the space's threads' exceptions as IPC (SET_STATE on the space).
pub(super) fn space_set_keeper(space: u64, port: u64) -> SysResult {
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::SET_STATE)?;
    let port = optional_port(&me, port)?;
    target.set_keeper(port);
    Ok(0)
}

/// `memory_object_state(handle, buf, len ≥ 40)` (GET_STATE): the state of a
/// Region {kind 5, start, size, max rights, 0} or a Mapping {kind 6, va,
/// offset, size, rights} as five u64 words.
pub(super) fn memory_object_state(h: u64, buf: u64, len: u64) -> SysResult {
    if len < 40 {
        return Err(SysError::BadSize.into());
    }
    let me = caller()?;
    let words: [u64; 5] = match me.lookup(Handle::from_raw(h), Rights::GET_STATE)? {
        Object::Region(r) => {
            let i = crate::object::memory::add(|g| g.region_info(r))?;
            [5, i.start, i.size, i.max.bits() as u64, 0]
        }
        Object::Mapping(m) => {
            let i = crate::object::memory::add(|g| g.mapping_info(m))?;
            [6, i.va, i.offset, i.size, i.rights.bits() as u64]
        }
        _ => return Err(SysError::WrongType.into()),
    };
    let mut bytes = [0u8; 40];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    copy_to_user(buf, &bytes).map_err(|()| SysError::BadPointer)?;
    Ok(40)
}

/// The handle value under which `me` holds `object` (by identity), or 0:
/// how exported state names links to other objects (reference relativity).
pub(super) fn handle_in(me: &Space, object: &Object) -> u64 {
    crate::arch::cpu::without_interrupts(|| {
        let table = me.handles.lock();
        // A direct handle, not a reference, names the link.
        let found = table.iter().find(|(_, o, _)| !matches!(o, Object::Reference(_)) && o.same(object));
        found.map_or(0, |(h, _, _)| h.raw())
    })
}

/// `object_get_state(handle, buf, len ≥ 48)` (GET_STATE): a version-1
/// record of six u64 words, `[type, ...]`, for any object type; links to
/// other objects are given as the caller's handles to them (0 when the
/// caller holds none). Threads have their own register record
/// (`thread_get_state`); here a thread reports `[2, stopped, exited, cpu, 0, 0]`.
///
/// * Space `[1, keeper port, live handles, children, quota limit, quota used]`
/// * Port `[3, alias, portset, 0, 0, 0]`
/// * Portset `[4, queued one-way messages, 0, 0, 0, 0]`
/// * Region `[5, start, size, max rights, space, 0]`
/// * Mapping `[6, va, offset, size, rights, region]`
/// * Mutex / Cond `[7 / 8, 0, 0, 0, 0, 0]` (waiters are threads, exported with them)
pub(super) fn object_get_state(h: u64, buf: u64, len: u64) -> SysResult {
    if len < 48 {
        return Err(SysError::BadSize.into());
    }
    let me = caller()?;
    let object = me.lookup(Handle::from_raw(h), Rights::GET_STATE)?;
    let words: [u64; 6] = match &object {
        Object::Space(s) => {
            let keeper = s.keeper().map_or(0, |p| handle_in(&me, &Object::Port(p)));
            let live = crate::arch::cpu::without_interrupts(|| s.handles.lock().len()) as u64;
            [1, keeper, live, s.children().len() as u64, s.quota.limit(), s.quota.used()]
        }
        Object::Thread(t) => [2, t.is_stopped() as u64, t.has_exited() as u64, t.cpu() as u64, 0, 0],
        Object::Port(p) => [3, p.alias, handle_in(&me, &Object::Portset(p.portset.clone())), 0, 0, 0],
        Object::Portset(ps) => [4, ps.queued_oneway() as u64, 0, 0, 0, 0],
        Object::Region(r) => {
            let i = crate::object::memory::add(|g| g.region_info(*r))?;
            let owner = crate::object::memory::space_of(i.space).map_or(0, |s| handle_in(&me, &Object::Space(s)));
            [5, i.start, i.size, i.max.bits() as u64, owner, 0]
        }
        Object::Mapping(m) => {
            let i = crate::object::memory::add(|g| g.mapping_info(*m))?;
            [6, i.va, i.offset, i.size, i.rights.bits() as u64, handle_in(&me, &Object::Region(i.region))]
        }
        Object::Mutex(_) => [7, 0, 0, 0, 0, 0],
        Object::Cond(_) => [8, 0, 0, 0, 0, 0],
        Object::Reference(r) => [9, r.target().object_type() as u64, 0, 0, 0, 0],
    };
    let mut bytes = [0u8; 48];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    copy_to_user(buf, &bytes).map_err(|()| SysError::BadPointer)?;
    Ok(48)
}
