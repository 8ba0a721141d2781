//! systest: the nester stack's in-guest tests, run as an ordinary process
//! (`just run systest`, and the `system-*` hw-tests scenarios). Each check
//! prints `systest: ok NAME` or `systest: FAIL NAME: why`; the exit status
//! is the number of failures, and the last line is `systest: N passed, M failed`.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

extern crate alloc;

#[cfg(target_os = "none")]
matryoshka_rt::entry!(run);

#[cfg(target_os = "none")]
mod checks {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    use matryoshka_nest::client::{self, Fs, Pm, SpawnRefs, Stream};
    use matryoshka_nest::io;
    use matryoshka_nest::proto::{kind, op, open, signal, slot, Error};
    use matryoshka_rt::ipc;
    use matryoshka_rt::object as obj;

    pub type Check = fn(&Fs, &Pm) -> Result<(), String>;

    fn expect<T: core::fmt::Debug + PartialEq>(what: &str, got: T, want: T) -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}: got {got:?}, want {want:?}"))
        }
    }

    fn e(what: &str) -> impl Fn(Error) -> String + '_ {
        move |err| format!("{what}: {err}")
    }

    /// Spawns `argv` with stdout into file `out` (and stdin from `input`); returns (status, output).
    fn run_to_file(fs: &Fs, pm: &Pm, argv: &[&str], out: &str, input: Option<Stream>) -> Result<(u64, Vec<u8>), String> {
        let file = fs.open(out, open::WRITE | open::CREATE | open::TRUNCATE).map_err(e("open output"))?;
        let mut refs = SpawnRefs::default();
        refs.refs[slot::STDOUT as usize] = Some(file.0);
        refs.refs[slot::STDIN as usize] = input.map(|s| s.0);
        let path = format!("/bin/{}", argv[0]);
        let r = pm.spawn(&path, argv, &["PWD=/", "PATH=/bin"], &refs, 0);
        let _ = obj::close(file.0);
        if let Some(i) = input {
            let _ = obj::close(i.0);
        }
        let sp = r.map_err(e("spawn"))?;
        let (_, status) = pm.wait(sp.pid, true).map_err(e("wait"))?;
        Ok((status, fs.read_file(out).map_err(e("read output"))?))
    }

    pub fn spawn_and_status(_fs: &Fs, pm: &Pm) -> Result<(), String> {
        let refs = SpawnRefs::default();
        let t = pm.spawn("/bin/true", &["true"], &[], &refs, 0).map_err(e("spawn true"))?;
        expect("true's status", pm.wait(t.pid, true).map(|w| w.1), Ok(0))?;
        let f = pm.spawn("/bin/false", &["false"], &[], &refs, 0).map_err(e("spawn false"))?;
        expect("false's status", pm.wait(f.pid, true).map(|w| w.1), Ok(1))?;
        expect("missing program", pm.spawn("/bin/nope", &["nope"], &[], &refs, 0).map(|s| s.pid), Err(Error::NotFound))?;
        expect("a folder as a program", pm.spawn("/bin", &["bin"], &[], &refs, 0).map(|s| s.pid), Err(Error::IsDir))?;
        expect("a text file as a program", pm.spawn("/etc/motd", &["motd"], &[], &refs, 0).map(|s| s.pid), Err(Error::Invalid))?;
        expect("wait with no children", pm.wait(0, true), Err(Error::NoChild))?;
        let (me, parent) = pm.getpid().map_err(e("getpid"))?;
        if me < 2 || parent == 0 {
            return Err(format!("getpid gave {me}, {parent}"));
        }
        Ok(())
    }

    pub fn arguments_and_output(fs: &Fs, pm: &Pm) -> Result<(), String> {
        let (status, out) = run_to_file(fs, pm, &["echo", "a", "b  c", "d"], "/tmp/echo", None)?;
        expect("echo status", status, 0)?;
        expect("echo output", String::from_utf8_lossy(&out).into_owned(), String::from("a b  c d\n"))
    }

    pub fn pipeline(fs: &Fs, pm: &Pm) -> Result<(), String> {
        let motd = fs.read_file("/etc/motd").map_err(e("read motd"))?;
        let (r, w) = pm.pipe().map_err(e("pipe"))?;
        let mut refs = SpawnRefs::default();
        refs.refs[slot::STDOUT as usize] = Some(w.0);
        let cat = pm.spawn("/bin/cat", &["cat", "/etc/motd"], &["PWD=/"], &refs, 0).map_err(e("spawn cat"))?;
        let _ = obj::close(w.0);
        let (status, out) = run_to_file(fs, pm, &["wc", "-c"], "/tmp/wc", Some(r))?;
        expect("wc status", status, 0)?;
        expect("cat status", pm.wait(cat.pid, true).map(|w| w.1), Ok(0))?;
        expect("wc -c of the pipe", String::from_utf8_lossy(&out).trim().parse::<usize>().ok(), Some(motd.len()))
    }

    pub fn pipe_semantics(_fs: &Fs, pm: &Pm) -> Result<(), String> {
        let (r, w) = pm.pipe().map_err(e("pipe"))?;
        expect("write", w.write(b"hello"), Ok(5))?;
        let mut buf = [0u8; 16];
        expect("read", r.read(&mut buf), Ok(5))?;
        expect("bytes", &buf[..5], b"hello")?;
        expect("read on the writer", w.read(&mut buf), Err(Error::Denied))?;
        w.close().map_err(e("close writer"))?;
        expect("end of file once the writer closed", r.read(&mut buf), Ok(0))?;
        r.close().map_err(e("close reader"))?;
        let (r, w) = pm.pipe().map_err(e("pipe 2"))?;
        r.close().map_err(e("close reader 2"))?;
        expect("broken pipe", w.write(b"x"), Err(Error::BrokenPipe))?;
        let _ = w.close();
        // 64 KiB through a pipe in one write while a child reads it.
        let (r, w) = pm.pipe().map_err(e("pipe 3"))?;
        let mut refs = SpawnRefs::default();
        refs.refs[slot::STDIN as usize] = Some(r.0);
        let fs = io::fs().ok_or("no fs")?;
        let file = fs.open("/tmp/big", open::WRITE | open::CREATE | open::TRUNCATE).map_err(e("open"))?;
        refs.refs[slot::STDOUT as usize] = Some(file.0);
        let wc = pm.spawn("/bin/wc", &["wc", "-c"], &[], &refs, 0).map_err(e("spawn wc"))?;
        let _ = obj::close(r.0);
        let _ = obj::close(file.0);
        let big = vec![b'x'; 64 * 1024];
        w.write_all(&big).map_err(e("write 64 KiB"))?;
        w.write_all(&big).map_err(e("write 64 KiB again"))?;
        w.close().map_err(e("close"))?;
        expect("wc status", pm.wait(wc.pid, true).map(|w| w.1), Ok(0))?;
        expect(
            "bytes counted",
            String::from_utf8_lossy(&fs.read_file("/tmp/big").map_err(e("read"))?).trim().parse::<usize>().ok(),
            Some(128 * 1024),
        )
    }

    pub fn files(fs: &Fs, _pm: &Pm) -> Result<(), String> {
        let _ = fs.mkdir("/tmp");
        fs.mkdir("/tmp/d").map_err(e("mkdir"))?;
        expect("mkdir again", fs.mkdir("/tmp/d"), Err(Error::Exists))?;
        let f = fs.open("/tmp/d/f", open::READ | open::WRITE | open::CREATE | open::EXCLUSIVE).map_err(e("create"))?;
        expect(
            "exclusive create of an existing file",
            fs.open("/tmp/d/f", open::WRITE | open::CREATE | open::EXCLUSIVE).map(|s| s.0),
            Err(Error::Exists),
        )?;
        expect("write", f.write(b"0123456789"), Ok(10))?;
        expect("seek", f.seek(2, 0), Ok(2))?;
        let mut buf = [0u8; 4];
        expect("read", f.read(&mut buf), Ok(4))?;
        expect("bytes", &buf, b"2345")?;
        expect("pread", f.pread(8, &mut buf), Ok(2))?;
        expect("pwrite past the end", f.pwrite(12, b"ab"), Ok(2))?;
        expect("size", f.stat().map(|s| (s.size, s.kind)), Ok((14, kind::FILE)))?;
        // Across pages, unaligned: the server reads a write's bytes straight
        // into the file's pages and replies to a read within one page with
        // the page itself; a read across pages is copied.
        let big: Vec<u8> = (0..3 * 4096 + 700).map(|i| (i * 7 % 251) as u8).collect();
        expect("a write across four pages", f.pwrite(4000, &big), Ok(big.len()))?;
        let mut back = alloc::vec![0u8; big.len()];
        expect("a read across four pages", f.pread(4000, &mut back), Ok(big.len()))?;
        expect("the bytes across four pages", back == big, true)?;
        let mut page = alloc::vec![0u8; 4096];
        expect("a read within one page", f.pread(8192, &mut page), Ok(4096))?;
        expect("its bytes", &page[..], &big[8192 - 4000..8192 - 4000 + 4096])?;
        f.truncate(14).map_err(e("truncate"))?;
        expect("negative seek", f.seek(-100, 1), Err(Error::Invalid))?;
        expect("bad whence", f.seek(0, 7), Err(Error::Invalid))?;
        f.close().map_err(e("close"))?;
        expect("use after close", Stream(f.0).stat().map(|s| s.size), Err(Error::BadObject))?;
        let ro = fs.open("/tmp/d/f", open::READ).map_err(e("open read-only"))?;
        expect("write to a read-only stream", ro.write(b"x"), Err(Error::Denied))?;
        let _ = ro.close();
        expect("stat", fs.stat("/tmp/d").map(|s| (s.kind, s.entries)), Ok((kind::DIR, 1)))?;
        let d = fs.open("/tmp/d", open::DIRECTORY).map_err(e("open folder"))?;
        expect("readdir", d.readdir(0), Ok(Some((String::from("f"), kind::FILE, 14))))?;
        expect("readdir past the end", d.readdir(1).map(|x| x.is_none()), Ok(true))?;
        let _ = d.close();
        expect("open a folder for writing", fs.open("/tmp/d", open::WRITE).map(|s| s.0), Err(Error::IsDir))?;
        expect("unlink a full folder", fs.unlink("/tmp/d"), Err(Error::NotEmpty))?;
        fs.rename("/tmp/d/f", "/tmp/g").map_err(e("rename"))?;
        expect("old name", fs.stat("/tmp/d/f").map(|s| s.size), Err(Error::NotFound))?;
        expect("new name", fs.stat("/tmp/g").map(|s| s.size), Ok(14))?;
        expect("move a folder into itself", fs.rename("/tmp", "/tmp/d/x"), Err(Error::Invalid))?;
        fs.unlink("/tmp/g").map_err(e("unlink file"))?;
        fs.unlink("/tmp/d").map_err(e("unlink folder"))?;
        expect("missing", fs.open("/nope", open::READ).map(|s| s.0), Err(Error::NotFound))?;
        expect("through a file", fs.stat("/etc/motd/x").map(|s| s.size), Err(Error::NotDir))?;
        expect("relative path", fs.stat("etc").map(|s| s.size), Err(Error::Invalid))?;
        expect("no access mode", fs.open("/etc/motd", 0).map(|s| s.0), Err(Error::Invalid))?;
        expect("unknown flags", fs.open("/etc/motd", open::READ | 1 << 20).map(|s| s.0), Err(Error::Invalid))?;
        let huge = "/x".repeat(512 * 1024);
        expect("a 1 MiB path (refused by the client)", fs.stat(&huge).map(|s| s.size), Err(Error::TooLong))?;
        let long = "/x".repeat(2000);
        expect(
            "a 4 KB path (refused by the server)",
            client::call(fs.0, [op::FS_STAT, 0, 0, 0, 0, 0], long.as_bytes(), None, &mut []).map(|_| ()),
            Err(Error::TooLong),
        )?;
        expect(
            "a path that is not UTF-8",
            client::call(fs.0, [op::FS_STAT, 0, 0, 0, 0, 0], &[b'/', 0xff, 0xfe], None, &mut []).map(|_| ()),
            Err(Error::Invalid),
        )?;
        Ok(())
    }

    pub fn hostile_requests(fs: &Fs, pm: &Pm) -> Result<(), String> {
        // Unknown operations, garbage words and an unexpected capability:
        // errors, and both servers keep serving.
        for server in [fs.0, pm.0] {
            expect("unknown op", ipc::call(server, [9999, 0, 0, 0, 0, 0]).map(|w| w[0] as i64), Ok(-(Error::Unsupported.code() as i64)))?;
            expect("garbage", ipc::call(server, [u64::MAX, u64::MAX, u64::MAX, 1, 2, 3]).map(|w| (w[0] as i64) < 0), Ok(true))?;
            let extra = ipc::portset_create().map_err(|e| format!("{e:?}"))?;
            let r = client::call(server, [op::FS_STAT, 0, 0, 0, 0, 0], b"/", Some(extra), &mut []);
            if server == fs.0 {
                expect("a capability where none belongs", r.map(|_| ()), Err(Error::Invalid))?;
            }
            let _ = obj::close(extra);
        }
        expect(
            "spawn with a forged ticket",
            client::call(pm.0, [op::PM_SPAWN_START, 1, 12345, 0, 0, 0], b"/bin/true\0true\0\0\0", None, &mut []).map(|_| ()),
            Err(Error::Invalid),
        )?;
        expect(
            "spawn with a malformed blob",
            client::call(pm.0, [op::PM_SPAWN_START, 2, 1, 0, 0, 0], b"/bin/true", None, &mut []).map(|_| ()),
            Err(Error::Invalid),
        )?;
        expect("kill of no process", pm.kill(999_999, signal::TERM), Err(Error::NotFound))?;
        expect("unknown signal", pm.kill(2, 99), Err(Error::Invalid))?;
        expect("fs still serves", fs.stat("/etc/motd").map(|s| s.kind), Ok(kind::FILE))?;
        expect("pm still serves", pm.getpid().is_ok(), true)
    }

    pub fn kill(_fs: &Fs, pm: &Pm) -> Result<(), String> {
        // Children that block reading a pipe nobody writes.
        for (sig, want) in [(signal::TERM, 143), (signal::INT, 130), (signal::KILL, 137)] {
            let (r, w) = pm.pipe().map_err(e("pipe"))?;
            let mut refs = SpawnRefs::default();
            refs.refs[slot::STDIN as usize] = Some(r.0);
            let c = pm.spawn("/bin/cat", &["cat"], &[], &refs, 0).map_err(e("spawn"))?;
            let _ = obj::close(r.0);
            expect("wait without blocking on a live child", pm.wait(c.pid, false).map(|w| w.1), Err(Error::WouldBlock))?;
            pm.kill(c.pid, sig).map_err(e("kill"))?;
            expect("killed status", pm.wait(c.pid, true).map(|w| w.1), Ok(want))?;
            let _ = w.close();
        }
        Ok(())
    }

    pub fn many_processes(_fs: &Fs, pm: &Pm) -> Result<(), String> {
        const N: usize = 100;
        let (r, w) = pm.pipe().map_err(e("pipe"))?;
        let out = _fs.open("/tmp/many", open::WRITE | open::CREATE | open::TRUNCATE | open::APPEND).map_err(e("open"))?;
        let mut pids = Vec::new();
        for i in 0..N {
            let (rr, oo) = (r.dup().map_err(e("dup"))?, out.dup().map_err(e("dup"))?);
            let mut refs = SpawnRefs::default();
            refs.refs[slot::STDIN as usize] = Some(rr.0);
            refs.refs[slot::STDOUT as usize] = Some(oo.0);
            let c = pm.spawn("/bin/wc", &["wc", "-l"], &[], &refs, 0).map_err(|err| format!("spawn {i}: {err}"))?;
            let _ = obj::close(rr.0);
            let _ = obj::close(oo.0);
            pids.push(c.pid);
        }
        let alive = pm.info().map_err(e("info"))?.0;
        if alive < N as u64 {
            return Err(format!("{alive} processes alive, want at least {N}"));
        }
        let _ = r.close();
        w.close().map_err(e("close"))?;
        for p in pids {
            expect("status", pm.wait(p, true).map(|w| w.1), Ok(0))?;
        }
        let _ = out.close();
        expect("their output", _fs.read_file("/tmp/many").map(|o| o.len()), Ok(2 * N))
    }

    pub fn stacked_passthru(fs: &Fs, pm: &Pm) -> Result<(), String> {
        let (s0, bare) = run_to_file(fs, pm, &["ls", "-l", "/bin"], "/tmp/bare", None)?;
        let mut argv: Vec<&str> = Vec::new();
        for _ in 0..8 {
            argv.extend_from_slice(&["passthru", "--"]);
        }
        argv.extend_from_slice(&["ls", "-l", "/bin"]);
        let (s8, deep) = run_to_file(fs, pm, &argv, "/tmp/deep", None)?;
        expect("statuses", (s0, s8), (0, 0))?;
        if bare.is_empty() || bare != deep {
            return Err(format!("outputs differ: {} bytes bare, {} bytes under 8 passthru", bare.len(), deep.len()));
        }
        let (s, _) = run_to_file(fs, pm, &["passthru", "--", "false"], "/tmp/st", None)?;
        expect("a child's status through passthru", s, 1)
    }

    /// Stops and resumes child `pid`'s thread until it ends; returns how
    /// many stops landed and its status. Between two stops the child runs
    /// for a while (20–80 µs): a stop restarts the request it is in, so
    /// stopping it without a pause would only ever restart it.
    fn keep_stopping(pm: &Pm, pid: u64) -> Result<(u64, u64), String> {
        let t = match pm.child_thread(pid) {
            Ok(t) => t,
            // It already ended: nothing to stop.
            Err(matryoshka_nest::proto::Error::NotFound) => {
                let (_, status) = pm.wait(pid, true).map_err(e("wait"))?;
                return Ok((0, status));
            }
            Err(why) => return Err(format!("the child's thread: {why}")),
        };
        let mut stops = 0u64;
        let pause = obj::system_info().map(|i| i.tsc_hz / 50_000).unwrap_or(20_000).max(1000);
        loop {
            // SAFETY: rdtsc is allowed in ring 3.
            let until = unsafe { core::arch::x86_64::_rdtsc() } + pause * (1 + stops % 4);
            // SAFETY: as above.
            while unsafe { core::arch::x86_64::_rdtsc() } < until {
                obj::yield_now();
            }
            match obj::thread_stop(t) {
                Ok(()) => {
                    stops += 1;
                    let _ = obj::thread_resume(t);
                }
                // It exited.
                Err(matryoshka_rt::SysError::Dead) => break,
                Err(why) => {
                    let _ = obj::close(t);
                    return Err(format!("thread_stop after {stops} stops: {why:?}"));
                }
            }
        }
        let _ = obj::close(t);
        let (_, status) = pm.wait(pid, true).map_err(e("wait"))?;
        Ok((stops, status))
    }

    /// Runs `seqwriter` into a file, then into a pipe read by `wc -c`,
    /// stopping and resuming it all the time, until at least `MIN_STOPS`
    /// stops landed in each (a writer that ran too fast to be stopped is run
    /// again, up to twelve times): every line arrives exactly once.
    pub fn stop_resume_mid_request(fs: &Fs, pm: &Pm) -> Result<(), String> {
        const N: usize = 1000;
        const MIN_STOPS: u64 = 10;
        let count = alloc::format!("{N}");
        let want: String = (0..N).map(|i| alloc::format!("{i}\n")).collect();
        let (mut stops, mut stops2) = (0, 0);
        for _ in 0..12 {
            if stops >= MIN_STOPS {
                break;
            }
            // Into a file: every line once, in order.
            let file = fs.open("/tmp/seq", open::WRITE | open::CREATE | open::TRUNCATE).map_err(e("open"))?;
            let mut refs = SpawnRefs::default();
            refs.refs[slot::STDOUT as usize] = Some(file.0);
            let c = pm.spawn("/bin/seqwriter", &["seqwriter", &count], &[], &refs, 0).map_err(e("spawn"))?;
            let _ = obj::close(file.0);
            let (n, status) = keep_stopping(pm, c.pid)?;
            stops += n;
            expect("writer status", status, 0)?;
            let out = fs.read_file("/tmp/seq").map_err(e("read"))?;
            if out != want.as_bytes() {
                let got = String::from_utf8_lossy(&out);
                let lines = got.lines().count();
                let first = got.lines().zip(want.lines()).position(|(a, b)| a != b).unwrap_or(lines.min(N));
                let around = |text: &str| text.lines().skip(first.saturating_sub(2)).take(5).collect::<Vec<_>>().join(",");
                return Err(format!(
                    "after {n} stops the file has {lines} lines, {} bytes; want {N} lines, {} bytes; from line {first}: got {} want {}",
                    out.len(),
                    want.len(),
                    around(&got),
                    around(&want)
                ));
            }
        }
        for _ in 0..12 {
            if stops2 >= MIN_STOPS {
                break;
            }
            // Into a pipe: every byte once.
            let (r, w) = pm.pipe().map_err(e("pipe"))?;
            let mut refs = SpawnRefs::default();
            refs.refs[slot::STDOUT as usize] = Some(w.0);
            let c = pm.spawn("/bin/seqwriter", &["seqwriter", &count], &[], &refs, 0).map_err(e("spawn 2"))?;
            let _ = obj::close(w.0);
            let mut refs = SpawnRefs::default();
            refs.refs[slot::STDIN as usize] = Some(r.0);
            let out = fs.open("/tmp/seqwc", open::WRITE | open::CREATE | open::TRUNCATE).map_err(e("open"))?;
            refs.refs[slot::STDOUT as usize] = Some(out.0);
            let wc = pm.spawn("/bin/wc", &["wc", "-c"], &[], &refs, 0).map_err(e("spawn wc"))?;
            let _ = obj::close(r.0);
            let _ = obj::close(out.0);
            let (n, status) = keep_stopping(pm, c.pid)?;
            stops2 += n;
            expect("writer status", status, 0)?;
            expect("wc status", pm.wait(wc.pid, true).map(|w| w.1), Ok(0))?;
            let counted = String::from_utf8_lossy(&fs.read_file("/tmp/seqwc").map_err(e("read"))?).trim().parse::<usize>().ok();
            expect(&format!("bytes through the pipe after {n} stops"), counted, Some(want.len()))?;
        }
        if stops < MIN_STOPS || stops2 < MIN_STOPS {
            return Err(format!("only {stops} and {stops2} stops landed in twelve runs each: the test did not test"));
        }
        matryoshka_nest::outln!("systest: ({stops} stops during the file writes, {stops2} during the pipe writes)");
        Ok(())
    }

    /// Forty processes one after another (after forty to warm up): the process manager gives each
    /// dead one's memory back (region_discard) and reuses its slot, so the
    /// free frame count does not fall with every process (it did by each
    /// one's loaded image, stack and heap until the whole system ended).
    pub fn memory_comes_back(_fs: &Fs, pm: &Pm) -> Result<(), String> {
        let run = |n: usize| -> Result<(), String> {
            for _ in 0..n {
                let c = pm.spawn("/bin/true", &["true"], &[], &SpawnRefs::default(), 0).map_err(e("spawn"))?;
                expect("status", pm.wait(c.pid, true).map(|w| w.1), Ok(0))?;
            }
            Ok(())
        };
        let free = || obj::system_info().map(|i| i.free_frames).map_err(|e| format!("system_info: {e:?}"));
        // Warm up first: servers grow their heaps and thread pools to what
        // the load needs, then stay there.
        run(40)?;
        let before = free()?;
        run(40)?;
        let after = free()?;
        // A leak of one frame per process would take 40; what servers
        // still grow takes far less.
        if after + 32 < before {
            return Err(format!("free frames fell from {before} to {after} over 40 processes (after 40 to warm up)"));
        }
        Ok(())
    }

    /// A session's open streams leave with it: exported (offsets, flags,
    /// shared offsets of dups, paths) and imported into another session,
    /// where they go on where they were; an unlinked file comes back by
    /// its node; a bad record is refused.
    pub fn session_export_import(fs: &Fs, _pm: &Pm) -> Result<(), String> {
        let from = fs.new_session().map_err(e("new session"))?;
        let to = fs.new_session().map_err(e("new session"))?;
        let w = from.open("/tmp/exp-a", open::WRITE | open::READ | open::CREATE | open::TRUNCATE).map_err(e("open a"))?;
        w.write_all(b"0123456789").map_err(e("write"))?;
        w.seek(3, 0).map_err(e("seek"))?;
        let dup = w.dup().map_err(e("dup"))?;
        let r = from.open("/etc/motd", open::READ).map_err(e("open motd"))?;
        let mut three = [0u8; 3];
        r.read(&mut three).map_err(e("read"))?;
        let gone = from.open("/tmp/exp-gone", open::WRITE | open::READ | open::CREATE | open::TRUNCATE).map_err(e("open gone"))?;
        gone.write_all(b"still here").map_err(e("write gone"))?;
        fs.unlink("/tmp/exp-gone").map_err(e("unlink"))?;
        let records = from.export_session().map_err(e("export"))?;
        expect("exported streams", records.len(), 4)?;
        let keys: Vec<u64> = records.iter().map(|r| r.key).collect();
        let shared = keys.iter().filter(|k| keys.iter().filter(|o| o == k).count() == 2).count();
        expect("streams sharing an offset", shared, 2)?;
        let mut imported = Vec::new();
        for rec in &records {
            imported.push((rec.clone(), to.import_stream(rec).map_err(e("import"))?));
        }
        expect("streams in the new session", to.open_streams(), Ok(4))?;
        // The imported streams go on where the exported ones were.
        for (rec, s) in &imported {
            let mut buf = [0u8; 4];
            let n = s.pread(rec.offset, &mut buf).map_err(e("pread"))?;
            let want: &[u8] = match rec.path.as_str() {
                "/tmp/exp-a" => b"3456",
                "/etc/motd" => b"come", // "Welcome ..." from offset 3
                "" => b"",
                p => return Err(format!("unexpected path {p}")),
            };
            if rec.path.is_empty() {
                expect("the unlinked file's offset", rec.offset, 10)?;
                expect("the unlinked file by its node", s.pread(0, &mut buf).map(|n| buf[..n].to_vec()), Ok(b"stil".to_vec()))?;
            } else {
                expect(&format!("{} from offset {}", rec.path, rec.offset), &buf[..n], want)?;
            }
        }
        // Dups still share their offset after the import.
        let pair: Vec<&Stream> = imported.iter().filter(|(r, _)| r.path == "/tmp/exp-a").map(|(_, s)| s).collect();
        let mut two = [0u8; 2];
        pair[0].read(&mut two).map_err(e("read a"))?;
        expect("read after import", &two, b"34")?;
        pair[1].read(&mut two).map_err(e("read a dup"))?;
        expect("the dup reads on from the shared offset", &two, b"56")?;
        // Bad records are refused.
        let bad = matryoshka_nest::client::StreamRecord { key: 1, offset: 0, flags: 0, node: 0, path: String::from("/etc/motd") };
        expect("an import without read or write", to.import_stream(&bad).err(), Some(Error::Invalid))?;
        let missing = matryoshka_nest::client::StreamRecord { key: 2, offset: 0, flags: open::READ, node: 999_999, path: String::new() };
        expect("an import of nothing", to.import_stream(&missing).err(), Some(Error::NotFound))?;
        for s in [w, dup, r, gone] {
            let _ = obj::close(s.0);
        }
        for (_, s) in imported {
            let _ = obj::close(s.0);
        }
        for session in [from, to] {
            session.end_session().map_err(e("end session"))?;
            let _ = obj::close(session.0);
        }
        Ok(())
    }

    pub fn process_export_import(_fs: &Fs, pm: &Pm) -> Result<(), String> {
        use matryoshka_nest::client::PipeEndRecord;
        use matryoshka_nest::proto::pipe_end;
        const MARK: &[u8] = b"bytes buffered at the export";
        let (r, w) = pm.pipe().map_err(e("pipe"))?;
        w.write_all(MARK).map_err(e("write"))?;
        // This process's record and the two ends it made.
        let me = pm.export_process(0).map_err(e("export self"))?;
        let (pid, ppid) = pm.getpid().map_err(e("getpid"))?;
        expect("exported pid and parent", (me.entry.pid, me.entry.ppid, me.entry.exited), (pid, ppid, false))?;
        expect("exported command line", me.entry.command.starts_with("systest"), true)?;
        let mine: Vec<&PipeEndRecord> = me.ends.iter().filter(|x| x.bytes == MARK).collect();
        expect("exported ends of the pipe", mine.len(), 2)?;
        expect("one pipe key for both ends", mine[0].pipe, mine[1].pipe)?;
        expect("one reader and one writer", mine.iter().filter(|x| x.writer()).count(), 1)?;
        expect("ends made by this process", mine.iter().all(|x| x.held == pipe_end::HELD_CREATED), true)?;
        // Importing both ends re-creates one pipe with the bytes in it.
        let (p1, ir) = pm.import_end(mine.iter().find(|x| !x.writer()).unwrap()).map_err(e("import reader"))?;
        let (p2, iw) = pm.import_end(mine.iter().find(|x| x.writer()).unwrap()).map_err(e("import writer"))?;
        expect("both imports on one pipe", p1, p2)?;
        let mut buf = [0u8; 64];
        let n = ir.read(&mut buf).map_err(e("read the imported reader"))?;
        expect("the buffered bytes from the imported reader", &buf[..n], MARK)?;
        iw.write_all(b"more").map_err(e("write the imported writer"))?;
        let n = ir.read(&mut buf).map_err(e("read again"))?;
        expect("the imported writer feeds the imported reader", &buf[..n], b"more")?;
        iw.close().map_err(e("close the imported writer"))?;
        expect("end of file once the imported writer is closed", ir.read(&mut buf), Ok(0))?;
        ir.close().map_err(e("close the imported reader"))?;
        // The export took nothing: the original pipe still has its bytes.
        let n = r.read(&mut buf).map_err(e("read the original"))?;
        expect("the original reader after the export", &buf[..n], MARK)?;
        // A reader whose writer is gone comes back reading end of file
        // after its bytes.
        w.write_all(b"last").map_err(e("write last"))?;
        w.close().map_err(e("close writer"))?;
        let alone = pm.export_process(0).map_err(e("export again"))?;
        let rec = alone.ends.iter().find(|x| x.bytes == b"last").ok_or("the reader's record after the writer closed")?.clone();
        expect("flags of a reader without writer", rec.flags, pipe_end::END_OF_FILE)?;
        let (_, lone) = pm.import_end(&rec).map_err(e("import lone reader"))?;
        let n = lone.read(&mut buf).map_err(e("read lone"))?;
        expect("the lone reader's bytes", &buf[..n], b"last")?;
        expect("then end of file", lone.read(&mut buf), Ok(0))?;
        // Bad records: key 0, unknown flags, a writer on a pipe without
        // writers, a writer joining a pipe whose writers are gone, and a
        // capability where none belongs.
        let bad = |pipe, flags| PipeEndRecord { pipe, end: 0, flags, held: 0, bytes: Vec::new() };
        expect("an import with key 0", pm.import_end(&bad(0, 0)).err(), Some(Error::Invalid))?;
        expect("an import with unknown flags", pm.import_end(&bad(7, 4)).err(), Some(Error::Invalid))?;
        expect("a writer at end of file", pm.import_end(&bad(7, pipe_end::WRITER | pipe_end::END_OF_FILE)).err(), Some(Error::Invalid))?;
        expect("a writer joining a closed write side", pm.import_end(&bad(rec.pipe, pipe_end::WRITER)).err(), Some(Error::Invalid))?;
        let extra = ipc::portset_create().map_err(|e| format!("{e:?}"))?;
        let sent = client::call(pm.0, [op::PM_IMPORT_END, 0, 9, 0, 0, 0], b"", Some(extra), &mut []);
        expect("an import with a capability", sent.map(|_| ()), Err(Error::Invalid))?;
        lone.close().map_err(e("close lone"))?;
        r.close().map_err(e("close reader"))?;
        // A child's record and its standard input, a pipe end of this
        // manager; nobody else's process is exported.
        let (cr, cw) = pm.pipe().map_err(e("pipe for cat"))?;
        let mut refs = SpawnRefs::default();
        refs.refs[slot::STDIN as usize] = Some(cr.0);
        let c = pm.spawn("/bin/cat", &["cat"], &[], &refs, 0).map_err(e("spawn cat"))?;
        let _ = obj::close(cr.0);
        let child = pm.export_process(c.pid).map_err(e("export child"))?;
        expect("the child's record", (child.entry.ppid, child.entry.command.as_str(), child.ends.len()), (pid, "cat", 1))?;
        expect("its standard input", (child.ends[0].held, child.ends[0].writer()), (1 << slot::STDIN, false))?;
        pm.kill(c.pid, signal::KILL).map_err(e("kill cat"))?;
        pm.wait(c.pid, true).map_err(e("wait cat"))?;
        cw.close().map_err(e("close cat's writer"))?;
        expect("export of a waited-for child", pm.export_process(c.pid).err(), Some(Error::NotFound))?;
        // Some process that is neither this one nor a child of it (the
        // parent may be init, which has no entry).
        let mut other = None;
        for i in 0.. {
            match pm.list(i).map_err(e("list"))? {
                Some(p) if p.pid != pid && p.ppid != pid => {
                    other = Some(p.pid);
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        let other = other.ok_or("no other process to be refused")?;
        expect("export of another's process", pm.export_process(other).err(), Some(Error::Denied))?;
        expect("export of no process", pm.export_process(999_999).err(), Some(Error::NotFound))?;
        expect("an end past the last", pm.export_end(0, 1_000_000).map(|r| r.is_none()), Ok(true))?;
        // An exited record comes back as an exited child to wait for.
        let ghost = pm.import_exited("ghost run", 7).map_err(e("import exited"))?;
        let back = pm.export_process(ghost).map_err(e("export ghost"))?;
        expect(
            "the imported record",
            (back.entry.ppid, back.entry.exited, back.entry.status, back.entry.command.as_str()),
            (pid, true, 7, "ghost run"),
        )?;
        expect("its wait", pm.wait(ghost, false), Ok((ghost, 7)))?;
        expect("an exited record with a status over 255", pm.import_exited("x", 256).err(), Some(Error::Invalid))?;
        Ok(())
    }

    pub fn nothing_left_open(fs: &Fs, pm: &Pm) -> Result<(), String> {
        expect("streams open in this session", fs.open_streams(), Ok(0))?;
        let (_, pipes, _) = pm.info().map_err(e("info"))?;
        expect("pipes open", pipes, 0)
    }
}

#[cfg(target_os = "none")]
fn run() -> i32 {
    use checks::*;
    let (Some(fs), Some(pm)) = (matryoshka_nest::io::fs(), matryoshka_nest::io::pm()) else {
        matryoshka_nest::outln!("systest: FAIL setup: no file system or process manager");
        return 1;
    };
    let _ = fs.mkdir("/tmp");
    let all: [(&str, Check); 14] = [
        ("spawn, exit status, wait, getpid", spawn_and_status),
        ("arguments and output", arguments_and_output),
        ("pipeline cat | wc", pipeline),
        ("pipes: end of file, broken pipe, 128 KiB stream", pipe_semantics),
        ("files and every error", files),
        ("hostile requests to fs and pm", hostile_requests),
        ("kill with TERM, INT and KILL", kill),
        ("100 processes at once", many_processes),
        ("same output bare and under 8 passthru", stacked_passthru),
        ("stopped and resumed mid-request: nothing lost or doubled", stop_resume_mid_request),
        ("a dead process's memory comes back", memory_comes_back),
        ("a session's streams export and import", session_export_import),
        ("a process's record and pipe ends export and import", process_export_import),
        ("nothing left open", nothing_left_open),
    ];
    // Checks that expose a bug that is still open: they run and print their
    // result, but do not count, so the rest stays a gate. None now.
    const KNOWN_OPEN: &[&str] = &[];
    let (mut passed, mut failed, mut known) = (0, 0, 0);
    for (name, check) in all {
        match check(&fs, &pm) {
            Ok(()) if KNOWN_OPEN.contains(&name) => {
                known += 1;
                matryoshka_nest::outln!("systest: ok {name} (a known open bug; passed this time)");
            }
            Ok(()) => {
                passed += 1;
                matryoshka_nest::outln!("systest: ok {name}");
            }
            Err(why) if KNOWN_OPEN.contains(&name) => {
                known += 1;
                matryoshka_nest::outln!("systest: KNOWN-OPEN {name}: {why}");
            }
            Err(why) => {
                failed += 1;
                matryoshka_nest::outln!("systest: FAIL {name}: {why}");
            }
        }
    }
    matryoshka_nest::outln!("systest: {passed} passed, {failed} failed, {known} known open");
    failed
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("systest: runs under the Matryoshka kernel (just run systest)");
    std::process::exit(2);
}
