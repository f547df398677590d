//! The sockets' hand-off gate.

use std::io::{self};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use super::fd::lock;

/// The hand-off gate of the process's sockets. While it is closed, nothing is accepted or read:
/// listeners and connections wait in [`Gate::enter`]. Closing it waits for every connection to
/// finish the request it is serving (to become idle), so that the hand-off can pass them all
/// between two requests.
pub(crate) struct Gate {
    closed: std::sync::atomic::AtomicBool,
    /// Threads past `enter` (serving a request, or accepting).
    busy: std::sync::atomic::AtomicUsize,
    m: Mutex<()>,
    cv: std::sync::Condvar,
    /// An eventfd, readable while the gate is closed: wakes the threads polling their sockets.
    wake: OwnedFd,
    /// The same state for async tasks (tokio sockets, `sockets/tokio_net.rs`), which wait for a
    /// change through it without parking a thread.
    state: tokio::sync::watch::Sender<bool>,
}

pub(crate) fn gate() -> &'static Gate {
    static G: OnceLock<Gate> = OnceLock::new();
    G.get_or_init(|| {
        // SAFETY: eventfd creates a descriptor, owned here.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(
            fd >= 0,
            "dsu: cannot create an eventfd: {}",
            io::Error::last_os_error()
        );
        Gate {
            closed: std::sync::atomic::AtomicBool::new(false),
            busy: std::sync::atomic::AtomicUsize::new(0),
            m: Mutex::new(()),
            cv: std::sync::Condvar::new(),
            // SAFETY: as above.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            state: tokio::sync::watch::Sender::new(false),
        }
    })
}

impl Gate {
    /// Waits until `fd` is readable (or hung up) with the gate open, and counts the caller
    /// busy; [`leave`](Self::leave) ends that.
    pub(crate) fn enter(&self, fd: RawFd) -> io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            if self.closed.load(SeqCst) {
                self.wait_open();
                continue;
            }
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents & libc::POLLNVAL != 0 {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            if fds[0].revents == 0 {
                continue;
            }
            // SeqCst on both sides: either the closer sees this thread busy, or this thread
            // sees the gate closed.
            self.busy.fetch_add(1, SeqCst);
            if self.closed.load(SeqCst) {
                self.leave();
                continue;
            }
            return Ok(());
        }
    }

    /// Ends what [`enter`](Self::enter) began.
    pub(crate) fn leave(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.busy.fetch_sub(1, SeqCst);
        if self.closed.load(SeqCst) {
            let _g = lock(&self.m);
            self.cv.notify_all();
        }
    }

    fn wait_open(&self) {
        let mut g = lock(&self.m);
        while self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            g = self
                .cv
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Closes the gate: nothing more is accepted or read until [`open`](Self::open).
    #[cfg_attr(dsu_off, allow(dead_code))]
    pub(crate) fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes to the eventfd. (It cannot overflow: it is read back to 0 on
        // every open.)
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        self.wake_tasks();
    }

    /// Counts an async caller busy (as `enter` does, without polling a descriptor: tokio
    /// does). `false` if the gate closed meanwhile: then it is not counted.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn try_enter_busy(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        // As in `enter`: either the closer sees this task busy, or this task sees it closed.
        self.busy.fetch_add(1, SeqCst);
        if self.closed.load(SeqCst) {
            self.leave();
            return false;
        }
        true
    }

    /// The gate's state for async tasks: `true` while it is closed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.state.subscribe()
    }

    fn wake_tasks(&self) {
        self.state
            .send_replace(self.closed.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// Waits until no thread is busy (every connection between two requests), until
    /// `deadline`; `Err(busy)` on timeout.
    #[cfg_attr(dsu_off, allow(dead_code))]
    pub(crate) fn wait_idle(&self, deadline: std::time::Instant) -> Result<(), usize> {
        let mut g = lock(&self.m);
        loop {
            let busy = self.busy.load(std::sync::atomic::Ordering::SeqCst);
            if busy == 0 {
                return Ok(());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(busy);
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Opens the gate again: the waiting threads go on.
    #[cfg_attr(dsu_off, allow(dead_code))]
    pub(crate) fn open(&self) {
        {
            let _g = lock(&self.m);
            let mut buf = [0u8; 8];
            // SAFETY: reads the eventfd's counter back to 0 (non-blocking).
            unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            self.closed
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        self.cv.notify_all();
        self.wake_tasks();
    }
}
