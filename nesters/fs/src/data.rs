//! A file's bytes as shareable 4 KiB pages, so the server replies to a read
//! with the page itself (the kernel copies it once, straight into the
//! client's buffer) and a write lands in the page directly. A page that a
//! reply or the deduplication window still holds is copied before it is
//! written (copy on write), so a reply in flight never changes under it.
//! Pages never written are holes and read as zeros. Pure: host-tested.

use alloc::sync::Arc;
use alloc::vec::Vec;

pub use matryoshka_nest::server::{Page, PAGE};

#[derive(Default)]
pub struct FileData {
    pages: Vec<Option<Page>>,
    len: u64,
}

/// A new page of zeros (allocated zeroed: no copy through the stack).
fn zero_page() -> Option<Page> {
    let page = Arc::<[u8; PAGE]>::new_zeroed();
    // SAFETY: all zeros is a valid [u8; PAGE].
    Some(unsafe { page.assume_init() })
}

impl FileData {
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The bytes `[offset, offset + max)` (clipped at the end of the file)
    /// as a range of one page, if they lie within one page that holds
    /// data: a reply shares the page instead of copying it.
    pub fn read_shared(&self, offset: u64, max: usize) -> Option<(Page, usize, usize)> {
        let (start, end) = self.clip(offset, max);
        if start == end {
            return None;
        }
        let index = (start / PAGE as u64) as usize;
        if (end - 1) / PAGE as u64 != index as u64 {
            return None;
        }
        let page = self.pages.get(index)?.as_ref()?;
        let base = index as u64 * PAGE as u64;
        Some((page.clone(), (start - base) as usize, (end - base) as usize))
    }

    /// Appends the bytes `[offset, offset + max)` (clipped at the end of
    /// the file) to `out`.
    pub fn read_into(&self, offset: u64, max: usize, out: &mut Vec<u8>) -> Result<(), ()> {
        let (start, end) = self.clip(offset, max);
        out.try_reserve((end - start) as usize).map_err(|_| ())?;
        let mut at = start;
        while at < end {
            let index = (at / PAGE as u64) as usize;
            let within = (at % PAGE as u64) as usize;
            let n = (PAGE - within).min((end - at) as usize);
            match self.pages.get(index).and_then(Option::as_ref) {
                Some(page) => out.extend_from_slice(&page[within..within + n]),
                None => out.resize(out.len() + n, 0),
            }
            at += n as u64;
        }
        Ok(())
    }

    fn clip(&self, offset: u64, max: usize) -> (u64, u64) {
        let start = offset.min(self.len);
        (start, start.saturating_add(max as u64).min(self.len))
    }

    /// Writes `len` bytes at `offset`, growing the file if needed: `fill`
    /// is given each piece of the file to write in order, with the offset
    /// of the piece within the bytes written. Pages are made private first
    /// (copied if shared, allocated if holes). On an error from `fill` or
    /// a full memory, what was written so far stays and the length grows
    /// only over it.
    pub fn write_with<E>(
        &mut self,
        offset: u64,
        len: usize,
        no_memory: E,
        mut fill: impl FnMut(&mut [u8], usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = offset + len as u64;
        let pages_needed = end.div_ceil(PAGE as u64) as usize;
        if self.pages.len() < pages_needed {
            if self.pages.try_reserve(pages_needed - self.pages.len()).is_err() {
                return Err(no_memory);
            }
            self.pages.resize(pages_needed, None);
        }
        let mut at = offset;
        while at < end {
            let index = (at / PAGE as u64) as usize;
            let within = (at % PAGE as u64) as usize;
            let n = (PAGE - within).min((end - at) as usize);
            let slot = &mut self.pages[index];
            if slot.is_none() {
                match zero_page() {
                    Some(p) => *slot = Some(p),
                    None => return Err(no_memory),
                }
            }
            let page = Arc::make_mut(slot.as_mut().expect("just filled"));
            let result = fill(&mut page[within..within + n], (at - offset) as usize);
            if result.is_ok() {
                at += n as u64;
            }
            self.len = self.len.max(at);
            result?;
        }
        Ok(())
    }

    /// Cuts or extends the file to `len` bytes (new bytes read as zeros).
    pub fn truncate(&mut self, len: u64) {
        if len < self.len {
            let keep = len.div_ceil(PAGE as u64) as usize;
            self.pages.truncate(keep);
            let tail = (len % PAGE as u64) as usize;
            if tail != 0 {
                if let Some(Some(page)) = self.pages.get_mut((len / PAGE as u64) as usize) {
                    Arc::make_mut(page)[tail..].fill(0);
                }
            }
        }
        self.len = len;
    }
}

/// At most `max` bytes of `bytes` from `from` on (none past its end): the
/// part of a write's data that came with the request, for a piece of the
/// file that starts `from` bytes into the write.
pub fn part(bytes: &[u8], from: usize, max: usize) -> &[u8] {
    bytes.get(from..).map_or(&[], |rest| &rest[..rest.len().min(max)])
}

#[cfg(test)]
mod tests {
    #[test]
    fn part_of_what_came_with_a_request() {
        let came = [1u8; 256];
        assert_eq!(super::part(&came, 0, 4096).len(), 256);
        assert_eq!(super::part(&came, 100, 10).len(), 10);
        assert_eq!(super::part(&came, 256, 4096).len(), 0);
        assert_eq!(super::part(&came, 4096, 4096).len(), 0, "a later page of a long write");
    }

    extern crate std;
    use super::*;

    fn write(d: &mut FileData, offset: u64, bytes: &[u8]) {
        d.write_with(offset, bytes.len(), (), |dst, at| {
            dst.copy_from_slice(&bytes[at..at + dst.len()]);
            Ok(())
        })
        .unwrap();
    }

    fn read(d: &FileData, offset: u64, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        d.read_into(offset, max, &mut out).unwrap();
        out
    }

    #[test]
    fn holes_read_as_zeros_and_pages_are_shared_only_within_one() {
        let mut d = FileData::default();
        write(&mut d, 3 * PAGE as u64 + 10, b"abc");
        assert_eq!(d.len(), 3 * PAGE as u64 + 13);
        assert_eq!(read(&d, 0, 5), [0; 5]);
        assert!(d.read_shared(0, 5).is_none(), "a hole has no page to share");
        let (page, start, end) = d.read_shared(3 * PAGE as u64 + 9, 100).unwrap();
        assert_eq!(&page[start..end], b"\0abc");
        assert!(d.read_shared(3 * PAGE as u64 - 1, 4).is_none(), "spans two pages");
    }

    #[test]
    fn a_shared_page_is_copied_before_it_is_written() {
        let mut d = FileData::default();
        write(&mut d, 0, &[1; PAGE]);
        let (held, _, _) = d.read_shared(0, PAGE).unwrap();
        write(&mut d, 0, &[2; 8]);
        assert_eq!(held[0], 1, "a reply in flight keeps what it read");
        assert_eq!(read(&d, 0, 9), [2, 2, 2, 2, 2, 2, 2, 2, 1]);
    }

    #[test]
    fn a_failed_fill_keeps_what_was_written() {
        let mut d = FileData::default();
        let r = d.write_with(0, 2 * PAGE, "no", |dst, at| {
            if at != 0 {
                return Err("no");
            }
            dst.fill(7);
            Ok(())
        });
        assert_eq!(r, Err("no"));
        assert_eq!(d.len(), PAGE as u64);
    }

    #[test]
    fn truncate_zeroes_what_it_cuts() {
        let mut d = FileData::default();
        write(&mut d, 0, &[9; PAGE + 100]);
        d.truncate(10);
        d.truncate(PAGE as u64 + 100);
        assert_eq!(read(&d, 0, 11), [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0]);
        assert_eq!(read(&d, PAGE as u64, 100), [0; 100]);
    }

    proptest::proptest! {
        /// Against a plain vector: any sequence of writes, truncations and
        /// reads gives the same bytes, shared or copied.
        #[test]
        fn behaves_like_a_vector(ops in proptest::collection::vec((0u8..3, 0u64..20_000, 0usize..9_000, proptest::num::u8::ANY), 1..40)) {
            let mut d = FileData::default();
            let mut model: Vec<u8> = Vec::new();
            let mut held = Vec::new();
            for (kind, offset, len, byte) in ops {
                match kind {
                    0 => {
                        let bytes: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                        write(&mut d, offset, &bytes);
                        let end = offset as usize + len;
                        if model.len() < end { model.resize(end, 0); }
                        model[offset as usize..end].copy_from_slice(&bytes);
                    }
                    1 => {
                        d.truncate(offset);
                        model.resize(offset as usize, 0);
                    }
                    _ => {
                        let start = (offset as usize).min(model.len());
                        let end = (start + len).min(model.len());
                        proptest::prop_assert_eq!(&read(&d, offset, len)[..], &model[start..end]);
                        if let Some((page, s, e)) = d.read_shared(offset, len) {
                            proptest::prop_assert_eq!(&page[s..e], &model[start..end]);
                            held.push((page, s, e, model[start..end].to_vec()));
                        }
                    }
                }
                proptest::prop_assert_eq!(d.len(), model.len() as u64);
            }
            for (page, s, e, then) in held {
                proptest::prop_assert_eq!(&page[s..e], &then[..], "a shared page never changes");
            }
        }
    }
}
