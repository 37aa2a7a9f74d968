//! Loopback ports chosen at run time.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};

/// The only address any fleet server listens on.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port that is free on 127.0.0.1 now and has not been handed out before by
/// this process (so two servers of one test never get the same port).
pub fn free_port() -> Result<u16> {
    let mut guard = HANDED_OUT.lock().unwrap();
    let used = guard.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let l = TcpListener::bind((LOOPBACK, 0)).context("binding 127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        if used.insert(p) {
            return Ok(p);
        }
    }
    anyhow::bail!("no free loopback port after 100 tries")
}

/// True if something accepts TCP connections on 127.0.0.1:`port`.
pub fn is_listening(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((LOOPBACK, port)), Duration::from_millis(200)).is_ok()
}
