//! The Pod sandbox process: it holds the Pod's namespaces while the Pod
//! lives. As PID 1 of its PID namespace it would ignore SIGTERM and SIGINT
//! (no default action for PID 1), so it handles both by exiting, and it
//! reaps children that are re-parented to it.

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn reap(_: libc::c_int) {
    // SAFETY: waitpid is async-signal-safe; a null status pointer is allowed.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn main() {
    // SAFETY: the handlers above only call async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGTERM, exit_now as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, exit_now as *const () as libc::sighandler_t);
        libc::signal(libc::SIGCHLD, reap as *const () as libc::sighandler_t);
    }
    loop {
        // SAFETY: pause has no preconditions; it returns after a handled signal.
        unsafe { libc::pause() };
    }
}
