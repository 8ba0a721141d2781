//! The `reliable ipc` check: half-duplex connections deliver every message
//! exactly once and in order in both directions (same CPU and across CPUs),
//! refuse misuse, report disconnects, and survive being frozen, exported,
//! destroyed and rebuilt from thread state mid-stream.

use core::sync::atomic::{AtomicU64, Ordering};

use matryoshka_rt::ipc::conn::{self, Received};
use matryoshka_rt::ipc::{self, Message};
use matryoshka_rt::object::{self as obj, Handle, ThreadState};
use matryoshka_rt::{self as rt, SysError};

/// Messages each way in the conversation.
const FORWARD: u64 = 600;
const BACKWARD: u64 = 300;
const PING_PONGS: u64 = 100;

fn message(dir: u64, i: u64) -> Message {
    [dir, i, i.wrapping_mul(0x9e37_79b9), !i, i ^ dir, 0x5eed]
}

/// Accepts, then: receives FORWARD messages (the last with OVER), sends
/// BACKWARD back (the last with OVER), answers PING_PONGS send-over-receives,
/// and expects the client to disconnect. Exits 0 if everything arrived right.
extern "C" fn conversation_server(_: u64) -> ! {
    let ps = Handle(super::PORTSET.load(Ordering::Relaxed));
    let Ok((_, first)) = conn::accept(ps) else { rt::exit(10) };
    if first != message(0, u64::MAX) {
        rt::exit(11);
    }
    for i in 0..FORWARD {
        match conn::receive(conn::SERVER) {
            Ok(Received::Data(m)) if i + 1 < FORWARD && m == message(1, i) => {}
            Ok(Received::Over(m)) if i + 1 == FORWARD && m == message(1, i) => {}
            _ => rt::exit(12),
        }
    }
    for i in 0..BACKWARD {
        let sent = if i + 1 < BACKWARD { conn::send(conn::SERVER, message(2, i)) } else { conn::send_over(conn::SERVER, message(2, i)) };
        if sent.is_err() {
            rt::exit(13);
        }
    }
    for i in 0..PING_PONGS {
        match conn::receive(conn::SERVER) {
            Ok(Received::Over(m)) if m == message(3, i) => {}
            _ => rt::exit(14),
        }
        if conn::send_over(conn::SERVER, message(4, i)).is_err() {
            rt::exit(15);
        }
    }
    match conn::receive(conn::SERVER) {
        Ok(Received::Disconnected) => rt::exit(0),
        _ => rt::exit(16),
    }
}

extern "C" fn conversation_client(_: u64) -> ! {
    let port = Handle(super::PORT.load(Ordering::Relaxed));
    if conn::connect(port, message(0, u64::MAX)).is_err() {
        rt::exit(20);
    }
    if conn::connect(port, message(0, 0)) != Err(SysError::InvalidArgument) || conn::receive(conn::CLIENT) != Err(SysError::InvalidArgument)
    {
        rt::exit(21);
    }
    for i in 0..FORWARD {
        let sent = if i + 1 < FORWARD { conn::send(conn::CLIENT, message(1, i)) } else { conn::send_over(conn::CLIENT, message(1, i)) };
        if sent.is_err() {
            rt::exit(22);
        }
    }
    if conn::send(conn::CLIENT, message(9, 9)) != Err(SysError::InvalidArgument) {
        rt::exit(23); // a receiver may not send
    }
    for i in 0..BACKWARD {
        match conn::receive(conn::CLIENT) {
            Ok(Received::Data(m)) if i + 1 < BACKWARD && m == message(2, i) => {}
            Ok(Received::Over(m)) if i + 1 == BACKWARD && m == message(2, i) => {}
            _ => rt::exit(24),
        }
    }
    for i in 0..PING_PONGS {
        match conn::send_over_receive(conn::CLIENT, message(3, i)) {
            Ok(Received::Over(m)) if m == message(4, i) => {}
            _ => rt::exit(25),
        }
    }
    if conn::disconnect(conn::CLIENT).is_err() || conn::send(conn::CLIENT, message(9, 9)) != Err(SysError::InvalidArgument) {
        rt::exit(26);
    }
    rt::exit(0)
}

fn conversation(server_cpu: u64, client_cpu: u64) -> Result<(), &'static str> {
    let me = obj::self_space();
    let server = obj::thread_create(me, conversation_server, super::stack_top(0), 0).map_err(|_| "thread_create")?;
    obj::thread_set_affinity(server, 1 << server_cpu).map_err(|_| "affinity")?;
    let client = obj::thread_create(me, conversation_client, super::stack_top(1), 0).map_err(|_| "thread_create")?;
    obj::thread_set_affinity(client, 1 << client_cpu).map_err(|_| "affinity")?;
    let (c, s) = (obj::thread_wait(client, true), obj::thread_wait(server, true));
    let _ = (obj::close(client), obj::close(server));
    if c != Ok(0) || s != Ok(0) {
        rt::println!("init: connection client exit {c:?}, server exit {s:?}");
        return Err("a reliable conversation lost, duplicated or reordered a message");
    }
    Ok(())
}

/// Receives until the sender stops: the receiver's disconnect loses the
/// sender's blocked message, which fails with Dead.
extern "C" fn quitting_server(_: u64) -> ! {
    let ps = Handle(super::PORTSET.load(Ordering::Relaxed));
    let Ok(_) = conn::accept(ps) else { rt::exit(1) };
    let Ok(Received::Data(_)) = conn::receive(conn::SERVER) else { rt::exit(2) };
    let _ = conn::disconnect(conn::SERVER);
    rt::exit(0)
}

static STREAM_PROGRESS: AtomicU64 = AtomicU64::new(0);
/// While set, the stream's receiver pauses a third of the way in (so the
/// sender blocks mid-send when the stream is frozen).
static STREAM_HOLD: AtomicU64 = AtomicU64::new(0);
const STREAM: u64 = 400;

/// Streams STREAM numbered messages, then disconnects. Its position lives
/// in its registers and stack only, so a rebuilt copy carries on.
extern "C" fn stream_client(_: u64) -> ! {
    let port = Handle(super::PORT.load(Ordering::Relaxed));
    if conn::connect(port, [0; 6]).is_err() {
        rt::exit(1);
    }
    for i in 1..=STREAM {
        if conn::send(conn::CLIENT, [i, !i, 0, 0, 0, 0]).is_err() {
            rt::exit(2);
        }
    }
    let _ = conn::disconnect(conn::CLIENT);
    rt::exit(0)
}

/// Receives the stream and checks every number arrives once, in order;
/// exits with how many arrived.
extern "C" fn stream_server(_: u64) -> ! {
    let ps = Handle(super::PORTSET.load(Ordering::Relaxed));
    let Ok(_) = conn::accept(ps) else { rt::exit(u64::MAX) };
    let mut next = 1;
    loop {
        match conn::receive(conn::SERVER) {
            Ok(Received::Data(m)) if m[0] == next && m[1] == !next => {
                STREAM_PROGRESS.store(next, Ordering::Relaxed);
                while next == STREAM / 3 && STREAM_HOLD.load(Ordering::Relaxed) != 0 {
                    obj::yield_now();
                }
                next += 1;
            }
            Ok(Received::Disconnected) => rt::exit(next - 1),
            _ => rt::exit(u64::MAX),
        }
    }
}

/// Stops a stream mid-way, exports both threads and their link, kills them,
/// rebuilds them from the export alone and lets them finish.
fn freeze_and_rebuild() -> Result<(), &'static str> {
    let me = obj::self_space();
    STREAM_PROGRESS.store(0, Ordering::Relaxed);
    STREAM_HOLD.store(1, Ordering::Relaxed);
    let server = obj::thread_create(me, stream_server, super::stack_top(0), 0).map_err(|_| "thread_create")?;
    let client = obj::thread_create(me, stream_client, super::stack_top(1), 0).map_err(|_| "thread_create")?;
    while STREAM_PROGRESS.load(Ordering::Relaxed) < STREAM / 3 {
        obj::yield_now();
    }
    obj::thread_stop(client).map_err(|_| "thread_stop")?;
    obj::thread_stop(server).map_err(|_| "thread_stop")?;
    let saved: [(ThreadState, Option<Handle>, u64); 2] = [
        {
            let (peer, flags) = conn::get_link(client, conn::CLIENT).map_err(|_| "get_link (client)")?;
            (obj::thread_get_state(client).map_err(|_| "thread_get_state")?, peer, flags)
        },
        {
            let (peer, flags) = conn::get_link(server, conn::SERVER).map_err(|_| "get_link (server)")?;
            (obj::thread_get_state(server).map_err(|_| "thread_get_state")?, peer, flags)
        },
    ];
    let names = |r: Option<Handle>, t: Handle| r.is_some_and(|r| obj::reference_compare(r, t) == Ok(true));
    if saved[0].2 != 1 | 2 || saved[1].2 != 1 || !names(saved[0].1, server) || !names(saved[1].1, client) {
        return Err("get_connection does not show the link (peer, who sends) of a stopped stream");
    }
    for t in [client, server] {
        let _ = obj::thread_kill(t);
        let _ = obj::thread_wait(t, true);
        let _ = obj::close(t);
    }
    let rebuilt =
        [obj::thread_create_stopped(me).map_err(|_| "create_stopped")?, obj::thread_create_stopped(me).map_err(|_| "create_stopped")?];
    for (t, (state, _, _)) in rebuilt.iter().zip(saved.iter()) {
        obj::thread_set_state(*t, state).map_err(|_| "thread_set_state")?;
    }
    // Each exported peer reference named the old thread: link the new ones.
    conn::set_link(rebuilt[0], conn::CLIENT, Some(rebuilt[1]), saved[0].2 & 2 != 0).map_err(|_| "set_link (client)")?;
    conn::set_link(rebuilt[1], conn::SERVER, Some(rebuilt[0]), saved[1].2 & 2 != 0).map_err(|_| "set_link (server)")?;
    if conn::set_link(rebuilt[1], 7, None, false) != Err(SysError::InvalidArgument) {
        return Err("set_connection accepted side 7");
    }
    STREAM_HOLD.store(0, Ordering::Relaxed);
    for t in rebuilt {
        obj::thread_resume(t).map_err(|_| "thread_resume")?;
    }
    let (c, s) = (obj::thread_wait(rebuilt[0], true), obj::thread_wait(rebuilt[1], true));
    for h in rebuilt.into_iter().chain(saved.iter().filter_map(|s| s.1)) {
        let _ = obj::close(h);
    }
    if c != Ok(0) || s != Ok(STREAM) {
        rt::println!("init: rebuilt stream client exit {c:?}, server exit {s:?}");
        return Err("a stream rebuilt from exported state lost, duplicated or reordered a message");
    }
    Ok(())
}

/// Payload lengths of the client's three messages (the last turns the
/// direction over).
const PAYLOAD_LENS: [usize; 3] = [10, 4096 + 7, 64 * 1024];

fn payload_byte(i: usize, len: usize) -> u8 {
    (i * 31 + len) as u8
}

/// Receives three payload messages (the second with a portset handle), then
/// sends the last one's first 1000 bytes back reversed, and expects the
/// client to hang up. Exits 0 if everything arrived whole.
extern "C" fn payload_server(_: u64) -> ! {
    extern crate alloc;
    let ps = Handle(super::PORTSET.load(Ordering::Relaxed));
    let Ok(_) = conn::accept(ps) else { rt::exit(1) };
    let mut buf = alloc::vec![0u8; 64 * 1024];
    for (k, &len) in PAYLOAD_LENS.iter().enumerate() {
        let Ok((what, got)) = conn::receive_payload(conn::SERVER, &mut buf) else { rt::exit(2) };
        let whole = got.len == len && buf[..len].iter().enumerate().all(|(i, &b)| b == payload_byte(i, len));
        let kind_ok = match (k, what) {
            (2, Received::Over(m)) | (0 | 1, Received::Data(m)) => m[0] == k as u64,
            _ => false,
        };
        let handle_ok = match (k, got.handle) {
            (1, Some(h)) => obj::info(h).map(|(t, _)| t) == Ok(matryoshka_rt::object::types::PORTSET) && obj::close(h).is_ok(),
            (_, None) => true,
            _ => false,
        };
        if !(whole && kind_ok && handle_ok) {
            rt::exit(3 + k as u64);
        }
    }
    let back: alloc::vec::Vec<u8> = buf[..1000].iter().rev().copied().collect();
    let mut p = ipc::Payload { send: &back, handle: None, recv: &mut [] };
    if conn::send_payload(conn::SERVER, [7; 6], &mut p, true).is_err() {
        rt::exit(10);
    }
    match conn::receive(conn::SERVER) {
        Ok(Received::Disconnected) => rt::exit(0),
        _ => rt::exit(11),
    }
}

/// Bytes and a capability travel on a connection too.
fn payload_stream() -> Result<(), &'static str> {
    extern crate alloc;
    let me = obj::self_space();
    let server = obj::thread_create(me, payload_server, super::stack_top(0), 0).map_err(|_| "thread_create")?;
    let port = Handle(super::PORT.load(Ordering::Relaxed));
    conn::connect(port, [0; 6]).map_err(|_| "connect")?;
    let gift = ipc::portset_create().map_err(|_| "portset_create")?;
    for (k, &len) in PAYLOAD_LENS.iter().enumerate() {
        let bytes: alloc::vec::Vec<u8> = (0..len).map(|i| payload_byte(i, len)).collect();
        let mut p = ipc::Payload { send: &bytes, handle: (k == 1).then_some(gift), recv: &mut [] };
        conn::send_payload(conn::CLIENT, [k as u64; 6], &mut p, k == 2).map_err(|_| "send_payload")?;
    }
    let mut back = [0u8; 1000];
    let reply = conn::receive_payload(conn::CLIENT, &mut back);
    let _ = conn::disconnect(conn::CLIENT);
    let exited = obj::thread_wait(server, true);
    let _ = (obj::close(server), obj::close(gift));
    let expect_back = |i: usize| payload_byte(999 - i, 64 * 1024);
    match reply {
        Ok((Received::Over([7, 7, 7, 7, 7, 7]), got)) if got.len == 1000 && back.iter().enumerate().all(|(i, &b)| b == expect_back(i)) => {}
        _ => return Err("a payload sent back over the connection did not arrive whole"),
    }
    if exited != Ok(0) {
        rt::println!("init: payload server exit {exited:?}");
        return Err("payloads sent over a connection did not arrive whole, or without their capability");
    }
    Ok(())
}

static TURN_HOLD: AtomicU64 = AtomicU64::new(0);

/// Takes the client's turn, then waits for TURN_HOLD to clear before it
/// answers, so the client sits in the receive half of send_over_receive.
extern "C" fn slow_turn_server(_: u64) -> ! {
    let ps = Handle(super::PORTSET.load(Ordering::Relaxed));
    let Ok(_) = conn::accept(ps) else { rt::exit(1) };
    let Ok(Received::Over(m)) = conn::receive(conn::SERVER) else { rt::exit(2) };
    TURN_HOLD.store(2, Ordering::Release);
    while TURN_HOLD.load(Ordering::Acquire) != 0 {
        obj::yield_now();
    }
    let _ = conn::send_over(conn::SERVER, [m[0] + 1; 6]);
    let _ = conn::receive(conn::SERVER);
    rt::exit(0)
}

extern "C" fn turn_client(_: u64) -> ! {
    let port = Handle(super::PORT.load(Ordering::Relaxed));
    if conn::connect(port, [0; 6]).is_err() {
        rt::exit(1);
    }
    let answer = conn::send_over_receive(conn::CLIENT, [41; 6]);
    let _ = conn::disconnect(conn::CLIENT);
    rt::exit(if answer == Ok(Received::Over([42; 6])) { 0 } else { 3 })
}

/// A client stopped in the receive half of send_over_receive is exported
/// as the plain receive that remains (its send took effect).
fn combined_call_restarts_as_receive() -> Result<(), &'static str> {
    let me = obj::self_space();
    TURN_HOLD.store(1, Ordering::Release);
    let server = obj::thread_create(me, slow_turn_server, super::stack_top(0), 0).map_err(|_| "thread_create")?;
    let client = obj::thread_create(me, turn_client, super::stack_top(1), 0).map_err(|_| "thread_create")?;
    while TURN_HOLD.load(Ordering::Acquire) != 2 {
        obj::yield_now();
    }
    obj::thread_stop(client).map_err(|_| "thread_stop")?;
    let st = obj::thread_get_state(client).map_err(|_| "thread_get_state")?;
    obj::thread_resume(client).map_err(|_| "thread_resume")?;
    TURN_HOLD.store(0, Ordering::Release);
    let (c, s) = (obj::thread_wait(client, true), obj::thread_wait(server, true));
    let _ = (obj::close(client), obj::close(server));
    // SAFETY: rip points into this program's own text.
    let insn = unsafe { core::ptr::read_volatile(st.rip as *const [u8; 2]) };
    if st.gpr[ThreadState::RAX] != rt::nr::CONN_RECEIVE || insn != [0x0f, 0x05] || st.gpr[ThreadState::RDI] != conn::CLIENT {
        return Err("send_over_receive stopped after its send was not exported as conn_receive");
    }
    if c != Ok(0) || s != Ok(0) {
        return Err("the conversation did not finish after the restarted receive");
    }
    Ok(())
}

pub fn check() -> Result<(), &'static str> {
    let cpus = obj::system_info().map_err(|_| "system_info")?.cpus;
    let ps = ipc::portset_create().map_err(|_| "portset_create")?;
    let port = ipc::port_create(ps, 3).map_err(|_| "port_create")?;
    super::PORTSET.store(ps.0, Ordering::Relaxed);
    super::PORT.store(port.0, Ordering::Relaxed);
    let result = (|| {
        conversation(0, 0)?;
        conversation(cpus - 1, 0)?;
        // Misuse from a thread with no connection.
        if conn::send(conn::CLIENT, [0; 6]) != Err(SysError::InvalidArgument)
            || conn::receive(conn::SERVER) != Err(SysError::InvalidArgument)
            || conn::receive(2) != Err(SysError::InvalidArgument)
            || conn::disconnect(conn::SERVER) != Err(SysError::InvalidArgument)
        {
            return Err("connection calls without a connection were not refused");
        }
        // The receiver hangs up while the sender waits: the send fails.
        let me = obj::self_space();
        let quitter = obj::thread_create(me, quitting_server, super::stack_top(0), 0).map_err(|_| "thread_create")?;
        conn::connect(port, [0; 6]).map_err(|_| "connect")?;
        conn::send(conn::CLIENT, [1; 6]).map_err(|_| "send")?;
        let lost = conn::send(conn::CLIENT, [2; 6]);
        let _ = obj::thread_wait(quitter, true);
        let _ = obj::close(quitter);
        if lost != Err(SysError::Dead) || conn::send(conn::CLIENT, [3; 6]) != Err(SysError::InvalidArgument) {
            return Err("a send to a receiver that disconnected did not fail with Dead");
        }
        combined_call_restarts_as_receive()?;
        payload_stream()?;
        freeze_and_rebuild()
    })();
    let _ = (obj::close(port), obj::close(ps));
    result
}
