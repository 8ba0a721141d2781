//! Memory calls: regions, mappings, their rights and keepers.

use super::*;

pub(super) fn vm_rights(bits: u64) -> Result<crate::object::vm::Rights, SysError> {
    u8::try_from(bits).ok().and_then(crate::object::vm::Rights::from_bits).ok_or(SysError::InvalidArgument)
}

/// Handle rights a region handle carries for memory rights `max`.
pub(super) fn region_handle_rights(max: crate::object::vm::Rights) -> Rights {
    use crate::object::vm::Rights as V;
    let mut r = Rights::GET_STATE.union(Rights::SET_STATE).union(Rights::DESTROY).union(Rights::DUPLICATE).union(Rights::TRANSFER);
    if max.contains(V::READ) {
        r = r.union(Rights::MAP_READ);
    }
    if max.contains(V::WRITE) {
        r = r.union(Rights::MAP_WRITE);
    }
    if max.contains(V::EXECUTE) {
        r = r.union(Rights::MAP_EXECUTE);
    }
    r
}

/// `region_create(space, start, size, max)`: exports `[start, start+size)`
/// of `space` (CREATE right) with maximum memory rights `max` (bits: 1 read,
/// 2 write, 4 execute). The handle's MAP_* rights follow `max`.
pub(super) fn region_create(space: u64, start: u64, size: u64, max: u64) -> SysResult {
    let max = vm_rights(max)?;
    let me = caller()?;
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    charge_vm_node(&target)?;
    let id = crate::object::memory::add(|g| g.create_region(target.vm_id(), start, size, max, None))
        .inspect_err(|_| target.uncharge_vm_node())?;
    match me.insert(Object::Region(id), region_handle_rights(max)) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            let _ = crate::object::memory::change(|g| g.destroy_region(id));
            Err(e.into())
        }
    }
}

/// `mapping_create(region, space, va, offset, size, rights)`: imports
/// `[offset, offset+size)` of `region` into `space` (CREATE right) at `va`
/// with memory `rights`, which the region handle's MAP_* rights must allow.
pub(super) fn mapping_create(region: u64, space: u64, va: u64, offset: u64, size: u64, rights: u64) -> SysResult {
    use crate::object::vm::Rights as V;
    let wanted = vm_rights(rights)?;
    let mut needed = Rights::NONE;
    if wanted.contains(V::READ) {
        needed = needed.union(Rights::MAP_READ);
    }
    if wanted.contains(V::WRITE) {
        needed = needed.union(Rights::MAP_WRITE);
    }
    if wanted.contains(V::EXECUTE) {
        needed = needed.union(Rights::MAP_EXECUTE);
    }
    let me = caller()?;
    let Object::Region(r) = me.lookup(Handle::from_raw(region), needed)? else { return Err(SysError::WrongType.into()) };
    let target = me.lookup_space(Handle::from_raw(space), Rights::CREATE)?;
    charge_vm_node(&target)?;
    let id = crate::object::memory::add(|g| g.create_mapping(r, target.vm_id(), va, offset, size, wanted))
        .inspect_err(|_| target.uncharge_vm_node())?;
    match me.insert(Object::Mapping(id), Rights::GET_STATE.union(Rights::DESTROY).union(Rights::DUPLICATE)) {
        Ok(h) => Ok(h.raw() as i64),
        Err(e) => {
            let _ = crate::object::memory::change(|g| g.destroy_mapping(id));
            Err(e.into())
        }
    }
}

/// Charges one more region or mapping to `space`'s quota, after settling
/// the charge for those that are gone.
pub(super) fn charge_vm_node(space: &Space) -> Result<(), SysError> {
    crate::object::memory::add(|g| {
        space.settle_vm_nodes(g.node_count(space.vm_id()));
        Ok(())
    })?;
    Ok(space.charge_vm_node()?)
}

/// `region_protect(region, max)`: changes the region's maximum rights
/// (SET_STATE right); every mapping derived from it, through any depth,
/// loses what `max` removes, on every CPU, before the call returns.
pub(super) fn region_protect(region: u64, max: u64) -> SysResult {
    let max = vm_rights(max)?;
    let me = caller()?;
    let Object::Region(r) = me.lookup(Handle::from_raw(region), Rights::SET_STATE)? else { return Err(SysError::WrongType.into()) };
    crate::object::memory::change(|g| g.protect_region(r, max))?;
    Ok(0)
}

/// `region_discard(region, offset, size)` (MAP_WRITE right): gives back the
/// frames of the anonymous memory behind `[offset, offset+size)` of the
/// region (page-aligned); the memory reads as zeros again afterwards. Every
/// mapping of those frames, through any region, is revoked first (with a
/// TLB shootdown), so no space keeps a stale translation. A process manager
/// reuses a dead child's memory this way.
pub(super) fn region_discard(region: u64, offset: u64, size: u64) -> SysResult {
    let me = caller()?;
    let Object::Region(r) = me.lookup(Handle::from_raw(region), Rights::MAP_WRITE)? else { return Err(SysError::WrongType.into()) };
    drop(me);
    Ok(crate::object::memory::discard(r, offset, size)? as i64)
}

/// `region_destroy(region)` / `mapping_destroy(mapping)` (DESTROY right):
/// revokes it and everything derived from it, and closes the handle.
pub(super) fn region_or_mapping_destroy(h: u64, region: bool) -> SysResult {
    let me = caller()?;
    let handle = Handle::from_raw(h);
    let object = me.lookup(handle, Rights::DESTROY)?;
    match (object, region) {
        (Object::Region(r), true) => crate::object::memory::change(|g| g.destroy_region(r))?,
        (Object::Mapping(m), false) => crate::object::memory::change(|g| g.destroy_mapping(m))?,
        _ => return Err(SysError::WrongType.into()),
    }
    me.remove(handle)?;
    Ok(0)
}

/// `region_set_keeper(region, port)`: the port (SEND right; 0 clears) that
/// receives faults in the region's unbacked pages (SET_STATE on the region).
pub(super) fn region_set_keeper(region: u64, port: u64) -> SysResult {
    let me = caller()?;
    let Object::Region(r) = me.lookup(Handle::from_raw(region), Rights::SET_STATE)? else { return Err(SysError::WrongType.into()) };
    let token = optional_port(&me, port)?.map(|p| crate::object::keeper::token_for(&p));
    crate::object::memory::add(|g| g.set_region_keeper(r, token))?;
    Ok(0)
}
