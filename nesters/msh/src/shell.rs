//! Running what `parse` made of a line.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_nest::client::{Pm, SpawnRefs, Stream};
use matryoshka_nest::proto::{kind, open, signal, slot, Error};
use matryoshka_nest::{errln, io, out};
use matryoshka_rt::object as obj;

use crate::parse::{self, Pipeline};

/// The foreground job's processes (0: free slot): what Ctrl-C interrupts.
static FOREGROUND: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];
/// The process manager's port, for the interrupt watcher.
static PM_PORT: AtomicU64 = AtomicU64::new(0);

fn set_foreground(pids: &[u64]) {
    for (i, slot) in FOREGROUND.iter().enumerate() {
        slot.store(pids.get(i).copied().unwrap_or(0), Ordering::Release);
    }
}

/// Waits for Ctrl-C on the console for ever and sends INT to the
/// foreground job each time (a terminal's job, done by the shell: the
/// console knows no processes).
extern "C" fn interrupt_watcher(console: u64) -> ! {
    let console = Stream(obj::Handle(console));
    let pm = Pm(obj::Handle(PM_PORT.load(Ordering::Relaxed)));
    let mut seen = 0;
    loop {
        match console.wait_interrupt(seen) {
            Ok(n) => seen = n,
            Err(_) => matryoshka_rt::exit(0),
        }
        for slot in &FOREGROUND {
            let pid = slot.load(Ordering::Acquire);
            if pid != 0 {
                let _ = pm.kill(pid, signal::INT);
            }
        }
    }
}

/// Starts the interrupt watcher when standard input is the console.
fn watch_interrupts(input: Stream, pm: Pm) {
    if input.stat().map(|s| s.kind) != Ok(kind::CONSOLE) {
        return;
    }
    let Some(me) = matryoshka_rt::env::aux(matryoshka_nest::loader::AT_SELF_SPACE) else { return };
    PM_PORT.store(pm.0 .0, Ordering::Relaxed);
    let stack = alloc::vec![0u8; 32 * 1024].leak();
    let top = (stack.as_ptr() as u64 + stack.len() as u64) & !15;
    if let Ok(t) = obj::thread_create(obj::Handle(me), interrupt_watcher, top - 8, input.0 .0) {
        let _ = obj::close(t);
    }
}

struct Shell {
    pm: Pm,
    cwd: String,
    status: u64,
    jobs: Vec<(usize, Vec<u64>, String)>,
    next_job: usize,
}

/// Where a command name is found: a path as given, else `/bin/NAME`.
fn program_path(cwd: &str, name: &str) -> String {
    if name.contains('/') {
        absolute(cwd, name)
    } else {
        format!("/bin/{name}")
    }
}

fn absolute(cwd: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let base = if path.starts_with('/') { "" } else { cwd };
    for p in base.split('/').chain(path.split('/')) {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

impl Shell {
    fn env(&self) -> [String; 2] {
        [format!("PWD={}", self.cwd), String::from("PATH=/bin")]
    }

    fn builtin(&mut self, words: &[String]) -> Option<u64> {
        let w: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
        Some(match w[0] {
            "cd" => {
                let to = absolute(&self.cwd, w.get(1).copied().unwrap_or("/"));
                match io::fs().map(|f| f.stat(&to)) {
                    Some(Ok(st)) if st.kind == kind::DIR => {
                        self.cwd = to;
                        0
                    }
                    Some(Ok(_)) => {
                        errln!("cd: {to}: not a directory");
                        1
                    }
                    Some(Err(e)) => {
                        errln!("cd: {to}: {e}");
                        1
                    }
                    None => 1,
                }
            }
            "help" => {
                out!(
                    "msh: built-ins cd, exit [N], help, jobs, wait, run STACK -- PROGRAM [ARGS]\n\
                     programs in /bin: echo cat ls wc ps kill sleep true false mkdir rm stat hello, nesters: passthru\n\
                     a | b, a; b, a &, < file, > file, >> file, $?\n"
                );
                0
            }
            "jobs" => {
                for (n, pids, line) in &self.jobs {
                    out!("[{n}] {pids:?} {line}\n");
                }
                0
            }
            "wait" => {
                let jobs = core::mem::take(&mut self.jobs);
                for (_, pids, _) in jobs {
                    for p in pids {
                        let _ = self.pm.wait(p, true);
                    }
                }
                0
            }
            _ => return None,
        })
    }

    /// Runs one pipeline; returns its status (the last command's).
    fn pipeline(&mut self, p: &Pipeline, line: &str) -> u64 {
        if p.commands.len() == 1 && !p.background {
            if let Some(s) = self.builtin(&p.commands[0].words) {
                return s;
            }
        }
        let env = self.env();
        let env: Vec<&str> = env.iter().map(|s| s.as_str()).collect();
        let mut pids = Vec::new();
        let mut next_input: Option<Stream> = None;
        let mut failed = None;
        let n = p.commands.len();
        for (i, c) in p.commands.iter().enumerate() {
            let mut words: Vec<String> = c.words.clone();
            if words[0] == "run" {
                let Some(dash) = words.iter().position(|w| w == "--") else {
                    errln!("msh: usage: run NESTER[,NESTER...] -- PROGRAM [ARGS]");
                    failed = Some(2);
                    break;
                };
                match parse::stack_argv(words.get(1).map_or("", |s| s.as_str()), &words[dash + 1..]) {
                    Ok(w) if dash == 2 => words = w,
                    _ => {
                        errln!("msh: usage: run NESTER[,NESTER...] -- PROGRAM [ARGS]");
                        failed = Some(2);
                        break;
                    }
                }
            }
            let mut refs = SpawnRefs::default();
            let mut opened: Vec<Stream> = Vec::new();
            // Standard input: the previous command's pipe, a file, or ours.
            if let Some(r) = next_input.take() {
                refs.refs[slot::STDIN as usize] = Some(r.0);
                opened.push(r);
            } else if let Some(f) = &c.input {
                match io::fs().ok_or(Error::NotFound).and_then(|fs| fs.open(&absolute(&self.cwd, f), open::READ)) {
                    Ok(s) => {
                        refs.refs[slot::STDIN as usize] = Some(s.0);
                        opened.push(s);
                    }
                    Err(e) => {
                        errln!("msh: {f}: {e}");
                        failed = Some(1);
                        break;
                    }
                }
            }
            if i + 1 < n {
                match self.pm.pipe() {
                    Ok((r, w)) => {
                        refs.refs[slot::STDOUT as usize] = Some(w.0);
                        opened.push(w);
                        next_input = Some(r);
                    }
                    Err(e) => {
                        errln!("msh: pipe: {e}");
                        failed = Some(1);
                        break;
                    }
                }
            } else if let Some(f) = &c.output {
                let flags = open::WRITE | open::CREATE | if c.append { open::APPEND } else { open::TRUNCATE };
                match io::fs().ok_or(Error::NotFound).and_then(|fs| fs.open(&absolute(&self.cwd, f), flags)) {
                    Ok(s) => {
                        refs.refs[slot::STDOUT as usize] = Some(s.0);
                        opened.push(s);
                    }
                    Err(e) => {
                        errln!("msh: {f}: {e}");
                        failed = Some(1);
                        break;
                    }
                }
            }
            let path = program_path(&self.cwd, &words[0]);
            let argv: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
            let r = self.pm.spawn(&path, &argv, &env, &refs, 0);
            // The child (through its manager) owns the streams now: drop our
            // handles without closing the streams.
            for s in opened {
                let _ = obj::close(s.0);
            }
            match r {
                Ok(sp) => pids.push(sp.pid),
                Err(e) => {
                    errln!("msh: {}: {}", words[0], e);
                    failed = Some(if e == Error::NotFound { 127 } else { 126 });
                    break;
                }
            }
        }
        if let Some(r) = next_input.take() {
            let _ = r.close();
        }
        if p.background {
            self.next_job += 1;
            out!("[{}] {}\n", self.next_job, pids.last().copied().unwrap_or(0));
            self.jobs.push((self.next_job, pids, String::from(line)));
            return failed.unwrap_or(0);
        }
        let mut status = 0;
        set_foreground(&pids);
        for pid in &pids {
            status = match self.pm.wait(*pid, true) {
                Ok((_, s)) => s,
                Err(e) => {
                    errln!("msh: wait {pid}: {e}");
                    1
                }
            };
        }
        set_foreground(&[]);
        failed.unwrap_or(status)
    }

    fn line(&mut self, line: &str) -> Option<u64> {
        let lists = match parse::parse(line) {
            Ok(l) => l,
            Err(e) => {
                errln!("msh: {e}");
                self.status = 2;
                return None;
            }
        };
        for mut p in lists {
            p.expand_status(self.status);
            let p = &p;
            if let Some(first) = p.commands.first() {
                if first.words[0] == "exit" && p.commands.len() == 1 {
                    return Some(first.words.get(1).and_then(|s| s.parse().ok()).unwrap_or(self.status));
                }
            }
            self.status = self.pipeline(p, line);
        }
        // Reap finished background jobs.
        let pm = self.pm;
        self.jobs.retain_mut(|(n, pids, l)| {
            pids.retain(|p| pm.wait(*p, false).is_err());
            if pids.is_empty() {
                out!("[{n}] done {l}\n");
            }
            !pids.is_empty()
        });
        None
    }
}

pub fn main() -> i32 {
    let Some(pm) = io::pm() else {
        matryoshka_rt::println!("msh: no process manager");
        return 2;
    };
    let mut sh = Shell { pm, cwd: String::from(matryoshka_rt::env::var("PWD").unwrap_or("/")), status: 0, jobs: Vec::new(), next_job: 0 };
    let args: Vec<&str> = matryoshka_rt::env::args().collect();
    if args.get(1) == Some(&"-c") {
        let Some(cmd) = args.get(2) else {
            errln!("msh: -c needs a command line");
            return 2;
        };
        let status = sh.line(cmd).unwrap_or(sh.status);
        let _ = signal::INT;
        return status as i32;
    }
    // Interactive: a prompt, then lines from standard input until end of file.
    let Some(input) = io::stdin() else { return 0 };
    watch_interrupts(input, pm);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        out!("msh$ ");
        let line = loop {
            if let Some(i) = pending.iter().position(|&b| b == b'\n' || b == b'\r') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                break Some(Some(line));
            }
            match input.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                // Ctrl-C at the prompt: the line is gone, a new prompt.
                Err(Error::Interrupted) => {
                    pending.clear();
                    sh.status = proto_signalled_int();
                    break Some(None);
                }
                Err(_) => break None,
            }
        };
        let Some(line) = line else { return sh.status as i32 };
        let Some(line) = line else { continue };
        let text = String::from_utf8_lossy(&line);
        if let Some(code) = sh.line(text.trim()) {
            return code as i32;
        }
    }
}

/// The status of a command ended by Ctrl-C (as a process killed by INT).
fn proto_signalled_int() -> u64 {
    matryoshka_nest::proto::signalled(signal::INT)
}
