//! passthru, the null nester: `passthru [--quiet] -- PROGRAM [ARGS]` runs
//! PROGRAM as its child and is its child's parent, nothing more. The child
//! gets the real file system, process manager and streams (the manager's
//! defaults, which are passthru's own), and only its Parent reference
//! points here; passthru answers each Parent request by asking its own
//! parent. So one layer costs a process and the Parent requests, and
//! nothing on any path that does not cross it: the pure cost of a layer.
//! It holds its child's space with every right (state encapsulation), and
//! exits with its child's status.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

extern crate alloc;

#[cfg(target_os = "none")]
mod nester {
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    use matryoshka_nest::client::{Parent, SpawnRefs, SPAWN_CONTROL};
    use matryoshka_nest::loader::AT_SELF_SPACE;
    use matryoshka_nest::proto::{op, slot, Error};
    use matryoshka_nest::server::{self, Reply, Request, Service};
    use matryoshka_nest::{errln, io};
    use matryoshka_rt::env;
    use matryoshka_rt::ipc;
    use matryoshka_rt::object::{self as obj, Handle};

    struct Passthru {
        parent: Option<Parent>,
    }

    impl Service for Passthru {
        fn handle(&self, req: Request) -> Reply {
            if let Some(h) = req.handle {
                let _ = obj::close(h);
                return Reply::err(Error::Invalid);
            }
            Reply::from(match req.op() {
                // Pass through: whatever our parent has under that name.
                op::PARENT_GET_REF => {
                    req.text(64).and_then(|name| self.parent.ok_or(Error::NotFound)?.get(name)).map(|h| Reply::ok([0; 5]).giving(h))
                }
                _ => Err(Error::Unsupported),
            })
        }
    }

    pub fn main() -> i32 {
        let args: Vec<&str> = env::args().collect();
        let Some(dash) = args.iter().position(|a| *a == "--") else {
            errln!("usage: passthru -- PROGRAM [ARGS]");
            return 2;
        };
        if let Some(a) = args[1..dash].first() {
            errln!("passthru: unknown option {a}");
            return 2;
        }
        let child: Vec<&str> = args[dash + 1..].to_vec();
        if child.is_empty() {
            errln!("usage: passthru -- PROGRAM [ARGS]");
            return 2;
        }
        let (Some(pm), Some(me)) = (io::pm(), env::aux(AT_SELF_SPACE)) else {
            errln!("passthru: started without a process manager");
            return 2;
        };
        let r = (|| -> Result<u64, Error> {
            let portset = ipc::portset_create()?;
            let port = ipc::port_create(portset, 1)?;
            let service: &'static Passthru = Box::leak(Box::new(Passthru { parent: io::parent() }));
            server::start(Handle(me), portset, service, 1)?;
            let mut refs = SpawnRefs::default();
            refs.refs[slot::PARENT as usize] = Some(port);
            let path = if child[0].contains('/') { io::absolute(child[0]) } else { alloc::format!("/bin/{}", child[0]) };
            let env: Vec<&str> = env::vars().collect();
            let spawned = pm.spawn(&path, &child, &env, &refs, SPAWN_CONTROL)?;
            let _ = obj::close(port);
            let (_, status) = pm.wait(spawned.pid, true)?;
            if let Some(space) = spawned.space {
                let _ = obj::close(space);
            }
            Ok(status)
        })();
        match r {
            Ok(status) => status as i32,
            Err(e) => {
                errln!("passthru: {}: {e}", child[0]);
                if e == Error::NotFound {
                    127
                } else {
                    126
                }
            }
        }
        .clamp(0, 255)
    }
}

#[cfg(target_os = "none")]
matryoshka_rt::entry!(nester::main);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("passthru: this program runs under the Matryoshka kernel (it is bin/passthru in the boot archive)");
    std::process::exit(2);
}
