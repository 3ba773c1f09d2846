//! A ring connection: a TCP or Unix-domain stream socket ([`Stream`]), the
//! peer at its other end ([`Link`]), the socket options the ring wants, and
//! passing a descriptor over a Unix socket (how the shared-memory segment
//! goes round the ring).

use crate::wait::PeerStream;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A ring connection.
#[derive(Debug)]
pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn as_raw_fd(&self) -> i32 {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
    pub fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }
    pub fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
    pub fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(bufs),
            Stream::Unix(s) => s.read_vectored(bufs),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PeerStream for Stream {
    fn peer_socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            Stream::Unix(_) => None,
        }
    }
    fn peer_label(&self) -> String {
        match self {
            Stream::Tcp(s) => PeerStream::peer_label(s),
            Stream::Unix(s) => PeerStream::peer_label(s),
        }
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        Stream::set_write_timeout(self, t)
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        Stream::set_nonblocking(self, on)
    }
    fn raw_fd(&self) -> i32 {
        self.as_raw_fd()
    }
}

/// One connection of the ring.
#[derive(Debug)]
pub(super) struct Link {
    pub stream: Stream,
    pub peer: usize,
    pub addr: SocketAddr,
}

/// Sets TCP_NODELAY (latency of small frames) and large kernel buffers of
/// `buffer_bytes` (bandwidth).
pub(super) fn tune(stream: &Stream, buffer_bytes: usize) -> std::io::Result<()> {
    if let Stream::Tcp(s) = stream {
        s.set_nodelay(true)?;
    }
    set_buffers(stream.as_raw_fd(), buffer_bytes);
    Ok(())
}

/// Requests `bytes` of kernel send and receive buffer on socket `fd`.
pub(super) fn set_buffers(fd: i32, bytes: usize) {
    // 0: leave the sizes to the kernel, whose autotuning may grow them past what SO_*BUF allows.
    if bytes == 0 {
        return;
    }
    let v: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    // The FORCE variants pass net.core.[rw]mem_max where the process may
    // (CAP_NET_ADMIN); elsewhere they fail and the plain ones apply, capped.
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        let set = |opt: libc::c_int| {
            // SAFETY: `fd` is an open socket owned by the caller; `v` lives across the call
            // and its size is passed. A failure only leaves the previous size.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            set(plain);
        }
    }
}

/// Sends one byte, and `fd` with it when given, over a Unix stream socket.
pub(super) fn send_byte_with_fd(sock: i32, byte: u8, fd: Option<i32>) -> std::io::Result<()> {
    let mut b = [byte];
    let mut iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr zeroed then filled with pointers to locals that outlive the call;
    // CMSG_* macros stay within `control`, which is large enough for one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
            libc::CMSG_DATA(c).cast::<i32>().write_unaligned(fd);
        }
        loop {
            let r = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
            if r == 1 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if r < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if r < 0 {
                e
            } else {
                std::io::ErrorKind::WriteZero.into()
            });
        }
    }
}

/// Receives one byte and the descriptor sent with it, if any (blocking, bounded by the
/// socket's receive timeout).
pub(super) fn recv_byte_with_fd(sock: i32) -> std::io::Result<(u8, Option<std::os::fd::OwnedFd>)> {
    use std::os::fd::FromRawFd;
    let mut b = [0u8];
    let mut iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: as in `send_byte_with_fd`; the received fd, if any, is taken into an OwnedFd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let r = loop {
            let r = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break r;
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if r == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut fd = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = libc::CMSG_DATA(c).cast::<i32>().read_unaligned();
                fd = Some(std::os::fd::OwnedFd::from_raw_fd(raw));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((b[0], fd))
    }
}
