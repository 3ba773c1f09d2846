//! Rank 0's rendezvous listener when `launch` picks the port.

use crate::error::CliError;
use frugal_comm::rendezvous::LISTENER_FD_ENV;
use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;

/// Rank 0's rendezvous listener on loopback when launch picks the port: bound
/// here and held until the ranks have ended, and inherited by rank 0, which
/// serves on it ([`LISTENER_FD_ENV`]). A port found free and released instead
/// lies in the kernel's ephemeral range until rank 0 binds it, and any
/// connection opened on the machine meanwhile may take it.
pub struct MasterListener {
    listener: std::net::TcpListener,
    port: u16,
}

impl MasterListener {
    /// Binds 127.0.0.1 on a port the kernel picks.
    ///
    /// # Errors
    /// [`CliError::NoFreePort`] naming `command`.
    pub fn bind_loopback(command: &'static str) -> Result<MasterListener, CliError> {
        let bound = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| Ok((listener.local_addr()?.port(), listener)));
        let (port, listener) = bound.map_err(|source| CliError::NoFreePort { command, source })?;
        Ok(MasterListener { listener, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listening socket's descriptor (close-on-exec in launch).
    pub(crate) fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Lets `cmd`'s process inherit the listening socket (launch's own stays
    /// close-on-exec for every other child) and names it in [`LISTENER_FD_ENV`].
    pub(crate) fn hand_over(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.fd();
        cmd.env(LISTENER_FD_ENV, fd.to_string());
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // fcntl, which is async-signal-safe, on a descriptor the child inherited from
        // launch (this listener, open until the ranks have ended).
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}
