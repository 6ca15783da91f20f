//! Who we are (uid) and how we treat signals as a wrapper process.

/// Real user id of the calling process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// A signal's conventional name (`SIGSEGV`), for messages; `None` for
/// numbers without one (real-time signals, garbage).
pub fn signal_name(sig: i32) -> Option<&'static str> {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    };
    Some(name)
}

/// SIGINT and SIGQUIT ignored in this process, as a shell does while it waits
/// for a foreground job: Ctrl-C at the terminal goes to the whole foreground
/// process group, so the program gets it and decides what to do, and the
/// wrapper survives to collect the program's report.
///
/// The previous dispositions are restored when this value is dropped, and
/// [`ShellSignals::restore_in_child`] restores them in a child before it
/// execs, so the program starts with the dispositions the wrapper was given
/// (ignored dispositions survive exec; everything else is reset by it).
pub struct ShellSignals {
    saved: [(libc::c_int, libc::sigaction); 2],
}

impl ShellSignals {
    /// Ignore SIGINT and SIGQUIT until the returned value is dropped.
    pub fn ignore() -> std::io::Result<ShellSignals> {
        // SAFETY: sigaction is plain old data; all-zero is a valid value
        // (SIG_DFL, empty mask, no flags) and is overwritten below.
        let blank: libc::sigaction = unsafe { std::mem::zeroed() };
        let mut ignore = blank;
        ignore.sa_sigaction = libc::SIG_IGN;
        let mut saved = [(libc::SIGINT, blank), (libc::SIGQUIT, blank)];
        for i in 0..saved.len() {
            let (sig, old) = &mut saved[i];
            // SAFETY: `ignore` and `old` are valid, exclusive sigaction
            // values for the duration of the call; `sig` is a valid signal.
            if unsafe { libc::sigaction(*sig, &ignore, old) } != 0 {
                let err = std::io::Error::last_os_error();
                restore(&saved[..i]);
                return Err(err);
            }
        }
        Ok(ShellSignals { saved })
    }

    /// Make `cmd`'s child put back the dispositions saved by
    /// [`ShellSignals::ignore`] between fork and exec.
    pub fn restore_in_child(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let saved = self.saved;
        let reset = move || {
            for (sig, act) in &saved {
                // SAFETY: sigaction is async-signal-safe, so it may run
                // between fork and exec; `act` was filled in by the kernel.
                if unsafe { libc::sigaction(*sig, act, std::ptr::null_mut()) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: pre_exec's contract is that the closure only does what is
        // safe in a forked child of a possibly multi-threaded process: it
        // calls sigaction (async-signal-safe), reads errno, and allocates
        // nothing.
        unsafe {
            cmd.pre_exec(reset);
        }
    }
}

impl Drop for ShellSignals {
    fn drop(&mut self) {
        restore(&self.saved);
    }
}

fn restore(saved: &[(libc::c_int, libc::sigaction)]) {
    for (sig, act) in saved {
        // SAFETY: `act` is a disposition the kernel returned for `sig`;
        // failure leaves the signal ignored, which is harmless at this point.
        unsafe {
            libc::sigaction(*sig, act, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGSEGV), Some("SIGSEGV"));
        assert_eq!(signal_name(libc::SIGKILL), Some("SIGKILL"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(40), None);
    }
}
