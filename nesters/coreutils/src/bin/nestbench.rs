//! nestbench: the nester stack's benchmarks, one JSON line each on standard
//! output (`perf/src/bin/bench-nest.rs` boots the system and runs it bare
//! and under stacked `passthru`). Every operation is timed with `rdtsc`:
//! under QEMU's `-icount` the guest TSC counts retired instructions, so the
//! medians are instruction counts. `--layers N` only labels the lines with
//! how many nesters the program runs under.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

extern crate alloc;

#[cfg(target_os = "none")]
matryoshka_rt::entry!(run);

#[cfg(target_os = "none")]
mod bench {
    use alloc::vec;
    use alloc::vec::Vec;

    use matryoshka_nest::client::{Fs, Pm, SpawnRefs};
    use matryoshka_nest::outln;
    use matryoshka_nest::proto::{open, slot, Error};
    use matryoshka_rt::object as obj;

    fn tsc() -> u64 {
        // SAFETY: rdtsc is allowed in ring 3 (and fenced by the call around it).
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    fn report(name: &str, layers: u64, mut samples: Vec<u64>) {
        samples.sort_unstable();
        let n = samples.len();
        let median = samples[n / 2];
        let p99 = samples[(n * 99 / 100).min(n - 1)];
        outln!("{{\"bench\":\"{name}\",\"layers\":{layers},\"iterations\":{n},\"median_cycles\":{median},\"p99_cycles\":{p99}}}");
    }

    fn time(n: usize, mut op: impl FnMut() -> Result<(), Error>) -> Result<Vec<u64>, Error> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = tsc();
            op()?;
            v.push(tsc() - t0);
        }
        Ok(v)
    }

    pub fn all(fs: &Fs, pm: &Pm, layers: u64) -> Result<(), Error> {
        let none = SpawnRefs::default();
        // Warm the file server's and the manager's paths first.
        let _ = pm.spawn("/bin/true", &["true"], &[], &none, 0).and_then(|s| pm.wait(s.pid, true));
        report(
            "spawn_wait",
            layers,
            time(40, || {
                let s = pm.spawn("/bin/true", &["true"], &[], &none, 0)?;
                pm.wait(s.pid, true).map(|_| ())
            })?,
        );

        // Pipe round trip of one byte: we write to A, `cat` copies A to B, we read B.
        let (a_read, a_write) = pm.pipe()?;
        let (b_read, b_write) = pm.pipe()?;
        let mut refs = SpawnRefs::default();
        refs.refs[slot::STDIN as usize] = Some(a_read.0);
        refs.refs[slot::STDOUT as usize] = Some(b_write.0);
        let cat = pm.spawn("/bin/cat", &["cat"], &[], &refs, 0)?;
        let _ = obj::close(a_read.0);
        let _ = obj::close(b_write.0);
        let mut byte = [0u8; 1];
        report(
            "pipe_round_trip_1b",
            layers,
            time(300, || {
                a_write.write(b"x")?;
                match b_read.read(&mut byte)? {
                    1 => Ok(()),
                    _ => Err(Error::BrokenPipe),
                }
            })?,
        );
        a_write.close()?;
        pm.wait(cat.pid, true)?;
        let _ = b_read.close();

        // A 64 KiB stream into a pipe that `wc -c` drains.
        let (r, w) = pm.pipe()?;
        let out = fs.open("/tmp/nestbench.wc", open::WRITE | open::CREATE | open::TRUNCATE)?;
        let mut refs = SpawnRefs::default();
        refs.refs[slot::STDIN as usize] = Some(r.0);
        refs.refs[slot::STDOUT as usize] = Some(out.0);
        let wc = pm.spawn("/bin/wc", &["wc", "-c"], &[], &refs, 0)?;
        let _ = obj::close(r.0);
        let _ = obj::close(out.0);
        let chunk = vec![b'y'; 64 * 1024];
        report("pipe_stream_64k", layers, time(32, || w.write_all(&chunk))?);
        w.close()?;
        pm.wait(wc.pid, true)?;

        report(
            "fs_open_close",
            layers,
            time(300, || {
                let s = fs.open("/etc/motd", open::READ)?;
                s.close()
            })?,
        );
        report("fs_stat", layers, time(500, || fs.stat("/etc/motd").map(|_| ()))?);
        let f = fs.open("/tmp/nestbench.dat", open::READ | open::WRITE | open::CREATE | open::TRUNCATE)?;
        let block = vec![b'z'; 4096];
        report("fs_pwrite_4k", layers, time(500, || f.pwrite(0, &block).map(|_| ()))?);
        let mut buf = vec![0u8; 4096];
        report(
            "fs_pread_4k",
            layers,
            time(500, || match f.pread(0, &mut buf)? {
                4096 => Ok(()),
                _ => Err(Error::Invalid),
            })?,
        );
        f.close()?;

        // Memory per process: ten `cat`s blocked on one pipe.
        let (r, w) = pm.pipe()?;
        let before = obj::system_info().map_err(Error::from)?;
        let mut pids = Vec::new();
        for _ in 0..10 {
            let rr = r.dup()?;
            let mut refs = SpawnRefs::default();
            refs.refs[slot::STDIN as usize] = Some(rr.0);
            pids.push(pm.spawn("/bin/cat", &["cat"], &[], &refs, 0)?.pid);
            let _ = obj::close(rr.0);
        }
        // Let them all reach their first read.
        for _ in 0..200 {
            obj::yield_now();
        }
        let after = obj::system_info().map_err(Error::from)?;
        let frames = before.free_frames.saturating_sub(after.free_frames) / 10;
        let heap = after.kernel_heap_used.saturating_sub(before.kernel_heap_used) / 10;
        outln!(
            "{{\"bench\":\"memory_per_process\",\"layers\":{layers},\"frames\":{frames},\"bytes\":{},\"kernel_heap_bytes\":{heap}}}",
            frames * 4096
        );
        let _ = r.close();
        w.close()?;
        for p in pids {
            pm.wait(p, true)?;
        }
        Ok(())
    }
}

#[cfg(target_os = "none")]
fn run() -> i32 {
    let args: alloc::vec::Vec<&str> = matryoshka_rt::env::args().collect();
    let layers = args.iter().position(|a| *a == "--layers").and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (Some(fs), Some(pm)) = (matryoshka_nest::io::fs(), matryoshka_nest::io::pm()) else {
        matryoshka_nest::errln!("nestbench: no file system or process manager");
        return 1;
    };
    let _ = fs.mkdir("/tmp");
    match bench::all(&fs, &pm, layers) {
        Ok(()) => 0,
        Err(e) => {
            matryoshka_nest::errln!("nestbench: {e}");
            1
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("nestbench: runs under the Matryoshka kernel (just bench-nest)");
    std::process::exit(2);
}
