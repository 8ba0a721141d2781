//! Handle calls: close, duplicate, info, transfer between spaces,
//! references.

use super::*;

pub(super) fn handle_close(h: u64) -> SysResult {
    let me = caller()?;
    drop(me.remove(Handle::from_raw(h))?);
    Ok(0)
}

pub(super) fn handle_duplicate(h: u64, rights: u64) -> SysResult {
    let rights = u32::try_from(rights).ok().and_then(Rights::from_bits).ok_or(SysError::InvalidArgument)?;
    let me = caller()?;
    let dup = me.duplicate(Handle::from_raw(h), rights)?;
    Ok(dup.raw() as i64)
}

/// `handle_info(h)`: `type | rights << 8`.
pub(super) fn handle_info(h: u64) -> SysResult {
    let me = caller()?;
    let (ty, rights) = crate::arch::cpu::without_interrupts(|| {
        let table = me.handles.lock();
        let h = Handle::from_raw(h);
        let rights = table.rights(h)?;
        let ty = table.get(h, Rights::NONE)?.object_type();
        Ok::<_, HandleError>((ty as u32, rights.bits()))
    })?;
    Ok(ty as i64 | ((rights as i64) << 8))
}

/// `handle_transfer(space, handle, rights)`: puts a handle to the same object
/// into the table of `space` (CREATE right on it) with `rights` — a subset of
/// the original's, which must include TRANSFER — and returns its value *in
/// that space* (meaningless in the caller's). This is how a parent hands a
/// child its capabilities: the child reaches nothing else.
pub(super) fn handle_transfer(space: u64, h: u64, rights: u64) -> SysResult {
    let rights = u32::try_from(rights).ok().and_then(Rights::from_bits).ok_or(SysError::InvalidArgument)?;
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    let handle = Handle::from_raw(h);
    let have = crate::arch::cpu::without_interrupts(|| me.handles.lock().rights(handle))?;
    if !have.contains(Rights::TRANSFER) || !have.contains(rights) {
        return Err(SysError::MissingRights.into());
    }
    let object = me.lookup(handle, Rights::NONE)?;
    Ok(target.insert(object, rights)?.raw() as i64)
}

/// `handle_import(space, handle, rights)`: a handle in the caller's table to
/// the object behind `handle` *in `space`'s table* (GET_STATE on the space;
/// `rights` a subset of that handle's, plus TRANSFER so the importer can put
/// it back into a rebuilt space). How a parent reaches the objects its child
/// holds, to export or rebuild them: it controls the child completely, so it
/// gains nothing it could not already use through the child.
pub(super) fn handle_import(space: u64, h: u64, rights: u64) -> SysResult {
    let rights = u32::try_from(rights).ok().and_then(Rights::from_bits).ok_or(SysError::InvalidArgument)?;
    let me = caller()?;
    let source = me.lookup_space(Handle::from_raw(space), Rights::GET_STATE)?;
    let handle = Handle::from_raw(h);
    let have = crate::arch::cpu::without_interrupts(|| source.handles.lock().rights(handle))?;
    if !have.contains(rights) {
        return Err(SysError::MissingRights.into());
    }
    let object = source.lookup(handle, Rights::NONE)?;
    Ok(me.insert(object, rights.union(Rights::TRANSFER))?.raw() as i64)
}

/// `handle_transfer_at(space, handle, rights, value)`: like handle_transfer
/// but at exactly the handle value `value` in `space`'s table (SET_STATE on
/// the space), so a rebuilt space's handle table matches the exported one.
pub(super) fn handle_transfer_at(space: u64, h: u64, rights: u64, value: u64) -> SysResult {
    let rights = u32::try_from(rights).ok().and_then(Rights::from_bits).ok_or(SysError::InvalidArgument)?;
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::SET_STATE.union(Rights::CREATE))?;
    let handle = Handle::from_raw(h);
    let have = crate::arch::cpu::without_interrupts(|| me.handles.lock().rights(handle))?;
    if !have.contains(Rights::TRANSFER) || !have.contains(rights) {
        return Err(SysError::MissingRights.into());
    }
    let object = me.lookup(handle, Rights::NONE)?;
    if target.is_dead() {
        return Err(SysError::Dead.into());
    }
    target.insert_at(Handle::from_raw(value), object, rights).map_err(|e| match e {
        SpaceError::Handle(HandleError::Invalid) => SysError::InvalidArgument,
        e => e.into(),
    })?;
    Ok(0)
}

/// `reference_create(handle)`: a Reference naming the handle's object (no
/// right needed: a reference grants nothing); the new handle has GET_STATE,
/// DUPLICATE and TRANSFER only.
pub(super) fn reference_create(h: u64) -> SysResult {
    let me = caller()?;
    let object = me.lookup(Handle::from_raw(h), Rights::NONE)?;
    let target = object.target().clone();
    let rights = Rights::GET_STATE.union(Rights::DUPLICATE).union(Rights::TRANSFER);
    crate::mm::inject::allocation_point().map_err(|_| SysError::NoMemory)?;
    Ok(me.insert(Object::Reference(alloc::sync::Arc::new(target)), rights)?.raw() as i64)
}

/// `reference_compare(a, b)`: 1 if the two handles (references or not) name
/// the same object, else 0.
pub(super) fn reference_compare(a: u64, b: u64) -> SysResult {
    let me = caller()?;
    let x = me.lookup(Handle::from_raw(a), Rights::NONE)?;
    let y = me.lookup(Handle::from_raw(b), Rights::NONE)?;
    Ok(x.same(&y) as i64)
}
