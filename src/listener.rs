//! Listening sockets: one SO_REUSEPORT listener per shard, all bound to the same address, so the
//! kernel spreads accepted connections across shards with no shared accept queue.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Bind `n` SO_REUSEPORT listeners on `addr`. With port 0, the first one picks the port and the
/// others bind to the same one.
pub fn bind_reuseport(
    addr: SocketAddr,
    n: usize,
    backlog: u32,
) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        let l: TcpListener = s.into();
        if addr.port() == 0 {
            addr = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}
