//! Terminal settings (password prompts).

use super::*;

/// Turn a terminal's echo off (`false`) or on; returns whether it was on, so a caller
/// can restore it. Fails with `NOTTY` when `fd` is no terminal.
pub fn set_echo(fd: BorrowedFd<'_>, on: bool) -> SysResult<bool> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let mut t = tcgetattr(fd)?;
    let was = t.local_modes.contains(LocalModes::ECHO);
    t.local_modes.set(LocalModes::ECHO, on);
    tcsetattr(fd, OptionalActions::Now, &t)?;
    Ok(was)
}
