//! The scanner thread: kmemleak's periodic scan in a running process, and
//! the server behind the control socket.
//!
//! ## Lifecycle
//!
//! Started at the end of the constructor, and again in every fork child
//! (a thread does not survive fork). It runs on a stack mapped by leakscan
//! (so its stack, TLS and TCB are leakscan's memory, never roots), with
//! every signal blocked (the program's handlers never run on it) and the
//! reentrancy guard held for good (whatever glibc allocates for it is never
//! tracked). It is not in the thread registry, so the exit check never
//! tries to stop it. When the process starts to exit it stops answering
//! and unlinks its socket.
//!
//! ## Deciding that a block leaked while the program runs
//!
//! A live scan ([`check::Mode::Live`]) sees a moving heap: a pointer may sit
//! in a register, or be on its way from one block to another, at the moment
//! its memory is scanned. So, as kmemleak does, a block is reported only if
//!
//! 1. it is older than `min_age` (younger ones, and what they point to, are
//!    excused from the scan);
//! 2. it was not allocated while the scan ran (likewise excused);
//! 3. it was unreferenced in two consecutive scans, with the same size,
//!    stack and allocation time (the same block, not a new one at the same
//!    address), and
//! 4. its contents did not change between them (checksum): a block whose
//!    contents change is in use.
//!
//! A scan asked for over the socket applies no minimum age unless asked
//! to, and runs a second scan at once when the first found unconfirmed
//! candidates, so `leakscan report --pid` answers with the leaks made so
//! far rather than "ask again later".
//!
//! ## Lock story
//!
//! Everything in [`Scanner`] belongs to this thread alone. The only shared
//! piece is the scan lock ([`SCAN_LOCK`]), taken for each check, because
//! the exit check and `__lsan_do_*leak_check` from program threads use the
//! same mark bits.

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::path::PathBuf;

use leakscan_core::control::{BlockInfo, BlockState, Cleared, Reply, Request, Stats, MAX_REQUEST};
use leakscan_core::report::{Report, Trigger};
use leakscan_platform::net::{self, Conn, Listener};
use leakscan_platform::{dirs, fdtable, mem, sys, user};

use crate::annotations;
use crate::check::{self, CheckResult, LeakRecord, ScratchVec, EXITING, RETIRING};
use crate::clock;
use crate::guard::Guard;
use crate::quarantine;
use crate::report;
use crate::state::{options, ENABLED, INDEX, SCANS, SCAN_GEN, SCAN_LOCK, SCAN_NS_TOTAL};
use crate::threads;
use crate::trailer::{self, Trailer, NOT_LEAK, NO_SCAN};
use crate::writer;

const STACK_BYTES: usize = 1 << 20;
/// How long a client may take to send its request, and to read the reply.
const CLIENT_TIMEOUT_MS: i32 = 2000;
/// Unread bytes a client may leave behind and still see a clean end of
/// the reply (a Unix socket's default send buffer is 208 KiB).
const MAX_DISCARD: usize = 256 << 10;
/// How long the scanner waits for the rest of such bytes to arrive.
const DISCARD_WAIT_MS: i32 = 500;
/// A live scan gives up when the frees it holds back exceed the process's
/// resident size when it started (or `MIN_QUARANTINE_BUDGET`, whichever is
/// larger): a scan may at most double the program's memory while it runs,
/// and gives that back when it ends.
const MIN_QUARANTINE_BUDGET: usize = 64 << 20;

/// The scanner's stack, mapped once and reused by a fork child's scanner
/// and by a scanner started again after `retire`.
static STACK: AtomicUsize = AtomicUsize::new(0);
/// Whether a scanner thread was started in this process (and has not been
/// retired).
static SCANNER_LIVE: AtomicBool = AtomicBool::new(false);
/// The scanner thread's kernel id, published as its first act (0 before).
static SCANNER_TID: AtomicI32 = AtomicI32::new(0);

/// A block that was unreferenced in the last scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    start: usize,
    size: usize,
    stack: u32,
    tick: u32,
    checksum: u64,
}

impl Candidate {
    fn of(l: &LeakRecord) -> Candidate {
        Candidate {
            start: l.start,
            size: l.size,
            stack: l.stack,
            tick: l.tick,
            checksum: l.checksum,
        }
    }

    /// The same block (not a new one at the same address).
    fn same_block(&self, start: usize, t: &Trailer) -> bool {
        self.start == start && self.size == t.size && self.stack == t.stack && self.tick == t.tick
    }
}

/// Find `start` in a list sorted by start.
fn lookup(list: &[Candidate], start: usize) -> Option<&Candidate> {
    list.binary_search_by_key(&start, |c| c.start)
        .ok()
        .map(|i| &list[i])
}

struct Scanner {
    /// Every block left unreferenced by the last scan, sorted by start.
    previous: Vec<Candidate>,
    /// The leaks of the last report, sorted by start.
    reported: Vec<Candidate>,
    /// Blocks `clear`ed: never reported again, and excused like roots.
    cleared: Vec<Candidate>,
    last_report: Option<Report>,
    /// Time of the last live scan's start.
    last_scan_tick: Option<u32>,
    /// Live scans that gave up (quarantine over budget, exit).
    gave_up: u64,
    last: Option<LastScan>,
}

#[derive(Clone, Copy)]
struct LastScan {
    duration_ns: u64,
    scanned_bytes: u64,
    quarantined: (usize, usize),
}

enum Outcome {
    /// The scan finished: the report, and whether it holds a leak the
    /// previous report did not.
    Done {
        report: Box<Report>,
        new_leaks: bool,
    },
    /// The scan gave up (exit started, quarantine over budget, out of
    /// memory).
    GaveUp,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            previous: Vec::new(),
            reported: Vec::new(),
            cleared: Vec::new(),
            last_report: None,
            last_scan_tick: None,
            gave_up: 0,
            last: None,
        }
    }

    fn is_cleared(&self, start: usize, t: &Trailer) -> bool {
        lookup(&self.cleared, start).is_some_and(|c| c.same_block(start, t))
    }

    /// One live scan; with `confirm_now`, a second one at once if the first
    /// left candidates unconfirmed.
    fn scan(&mut self, g: &Guard, trigger: Trigger, min_age_ms: u64, confirm_now: bool) -> Outcome {
        let outcome = self.scan_once(g, trigger, min_age_ms);
        let unconfirmed = self.previous.len() > self.reported.len();
        match outcome {
            Outcome::Done { .. } if confirm_now && unconfirmed => {
                self.scan_once(g, trigger, min_age_ms)
            }
            other => other,
        }
    }

    fn scan_once(&mut self, g: &Guard, trigger: Trigger, min_age_ms: u64) -> Outcome {
        if EXITING.load(Ordering::Acquire)
            || RETIRING.load(Ordering::Acquire)
            || !ENABLED.load(Ordering::Acquire)
        {
            return Outcome::GaveUp;
        }
        let opts = options();
        let budget = MIN_QUARANTINE_BUDGET.max(sys::resident_bytes());
        let now = clock::tick();
        let young = |t: &Trailer| clock::maybe_younger(t.tick, now, min_age_ms);
        let lock = SCAN_LOCK.lock();
        let result = check::run(
            g,
            check::Mode::Live {
                quarantine_budget: budget,
            },
            &|start, t| young(t) || self.is_cleared(start, t),
        );
        drop(lock);
        SCANS.fetch_add(1, Ordering::Relaxed);
        SCAN_NS_TOTAL.fetch_add(result.duration_ns, Ordering::Relaxed);
        self.last = Some(LastScan {
            duration_ns: result.duration_ns,
            scanned_bytes: result.scanned_bytes,
            quarantined: result.quarantined,
        });
        if !result.complete {
            self.gave_up += 1;
            return Outcome::GaveUp;
        }
        self.last_scan_tick = Some(now);
        // Cleared blocks that were freed since need no remembering.
        self.cleared.retain(|c| INDEX.is_start(c.start));

        // Confirm: unreferenced last time too, same block, same contents.
        let mut confirmed = ScratchVec::<LeakRecord>::new();
        let mut all = Vec::with_capacity(result.leaks.len());
        for l in result.leaks.as_slice() {
            let c = Candidate::of(l);
            if lookup(&self.previous, l.start) == Some(&c) {
                let _ = confirmed.push(*l);
            }
            all.push(c);
        }
        self.previous = all;
        let reported: Vec<Candidate> = confirmed.as_slice().iter().map(Candidate::of).collect();
        let new_leaks = reported
            .iter()
            .any(|c| lookup(&self.reported, c.start) != Some(c));
        self.reported = reported;
        let confirmed_result = CheckResult {
            leaks: confirmed,
            ..result
        };
        let number = SCANS.load(Ordering::Relaxed);
        let report = report::build(
            &confirmed_result,
            trigger,
            number,
            opts.max_objects,
            opts.symbolize,
        );
        self.last_report = Some(report.clone());
        Outcome::Done {
            report: Box::new(report),
            new_leaks,
        }
    }

    fn periodic(&mut self, g: &Guard) {
        let opts = options();
        if let Outcome::Done {
            report,
            new_leaks: true,
        } = self.scan(g, Trigger::Periodic, opts.min_age_ms, false)
        {
            let dir = writer::report_dir(opts.report_dir.as_deref());
            let json = report.to_json();
            // The exit check's report (or `__lsan_do_leak_check`'s) is the
            // last word: a periodic one built while it ran must not replace
            // it. Both are written under the scan lock, and the exit path
            // says so (EXITING, FINAL_CHECK_DONE) before it takes the lock.
            let _lock = SCAN_LOCK.lock();
            if EXITING.load(Ordering::Acquire)
                || annotations::FINAL_CHECK_DONE.load(Ordering::Acquire)
            {
                return;
            }
            match writer::write_report(&dir, report.process.pid, &json) {
                Ok(path) if opts.verbosity >= 1 => fdtable::write_stderr(
                    format!(
                        "leakscan: {} leaked blocks ({} bytes) so far in process {}; report: {}\n",
                        report.summary.leaked_blocks,
                        report.summary.leaked_bytes,
                        report.process.pid,
                        path.display()
                    )
                    .as_bytes(),
                ),
                Ok(_) => {}
                Err(e) => fdtable::write_stderr(format!("leakscan: {e}\n").as_bytes()),
            }
        }
    }

    fn answer(&mut self, g: &Guard, request: Request) -> Reply {
        match request {
            Request::Ping => Reply {
                process: Some(report::process_info()),
                ..Reply::success()
            },
            // Someone asked now, for the leaks made so far: no minimum age
            // unless the request sets one (the two back-to-back scans still
            // guard against pointers in flight).
            Request::Scan { min_age_ms } => {
                report_reply(self.scan(g, Trigger::Request, min_age_ms.unwrap_or(0), true))
            }
            Request::Report => match self.last_report.clone() {
                Some(report) => Reply {
                    report: Some(report),
                    ..Reply::success()
                },
                None => report_reply(self.scan(g, Trigger::Request, 0, true)),
            },
            Request::Clear => {
                let mut cleared = Cleared::default();
                for c in self.reported.drain(..) {
                    cleared.blocks += 1;
                    cleared.bytes += c.size as u64;
                    match self.cleared.binary_search_by_key(&c.start, |x| x.start) {
                        // An older block at the same address is gone.
                        Ok(i) => self.cleared[i] = c,
                        Err(i) => self.cleared.insert(i, c),
                    }
                }
                if let Some(r) = self.last_report.as_mut() {
                    r.leaks.clear();
                    r.summary = Default::default();
                }
                Reply {
                    cleared: Some(cleared),
                    ..Reply::success()
                }
            }
            Request::Dump { address } => match self.dump(address) {
                Some(block) => Reply {
                    block: Some(block),
                    ..Reply::success()
                },
                None => Reply::failure(format!("no tracked block contains {address:#x}")),
            },
            Request::Stats => Reply {
                stats: Some(self.stats()),
                ..Reply::success()
            },
        }
    }

    /// The block containing `address`, read under the quarantine so a
    /// concurrent free cannot release it meanwhile.
    fn dump(&self, address: usize) -> Option<BlockInfo> {
        let _lock = SCAN_LOCK.lock();
        quarantine::begin();
        // SAFETY: with frees deferred, an indexed block stays allocated.
        let found = INDEX.find(address, |s| unsafe { trailer::read(s) }.size);
        // SAFETY: as above.
        let info = found.map(|(start, _)| (start, unsafe { trailer::read(start) }));
        quarantine::end(true);
        let (start, t) = info?;
        let now = sys::coarse_ms() as u32;
        let in_previous = lookup(&self.previous, start).is_some_and(|c| c.same_block(start, &t));
        let in_reported = lookup(&self.reported, start).is_some_and(|c| c.same_block(start, &t));
        // Blocks allocated since the last scan started carry the current
        // generation.
        let scanned = self.last_scan_tick.is_some()
            && t.generation != SCAN_GEN.load(Ordering::Acquire) as u16;
        let state = if in_reported {
            BlockState::Leak
        } else if in_previous {
            BlockState::Unreferenced
        } else if scanned {
            BlockState::Referenced
        } else {
            BlockState::NotScannedYet
        };
        let mut annotations = Vec::new();
        if t.flags & NOT_LEAK != 0 {
            annotations.push("not_leak".to_string());
        }
        if t.flags & NO_SCAN != 0 {
            annotations.push("no_scan".to_string());
        }
        Some(BlockInfo {
            address: leakscan_core::report::hex(start as u64),
            size: t.size as u64,
            age_ms: u64::from(now.wrapping_sub(t.tick)),
            state,
            annotations,
            stack: report::stack_frames(t.stack, options().symbolize),
        })
    }

    fn stats(&self) -> Stats {
        let (mut blocks, mut bytes) = (0u64, 0u64);
        {
            let _lock = SCAN_LOCK.lock();
            quarantine::begin();
            INDEX.for_each_block(|start| {
                blocks += 1;
                // SAFETY: frees are deferred; the block stays allocated.
                bytes += unsafe { trailer::read(start) }.size as u64;
            });
            quarantine::end(true);
        }
        let opts = options();
        let last = self.last;
        let own = mem::registry_usage();
        Stats {
            live_blocks: blocks,
            live_bytes: bytes,
            scans: SCANS.load(Ordering::Relaxed),
            last_scan_ms: last.map_or(0.0, |l| l.duration_ns as f64 / 1e6),
            total_scan_ms: SCAN_NS_TOTAL.load(Ordering::Relaxed) as f64 / 1e6,
            last_scanned_bytes: last.map_or(0, |l| l.scanned_bytes),
            last_quarantine_blocks: last.map_or(0, |l| l.quarantined.0 as u64),
            last_quarantine_bytes: last.map_or(0, |l| l.quarantined.1 as u64),
            gave_up_scans: self.gave_up,
            reported_blocks: self.reported.len() as u64,
            cleared_blocks: self.cleared.len() as u64,
            scan_interval_ms: opts.scan_interval_ms,
            min_age_ms: opts.min_age_ms,
            own_mappings: own.0 as u64,
            unregistered_mappings: own.1 as u64,
        }
    }

    /// Serve one connection: one request line, one reply. The line is read
    /// even from a peer that will be refused, so that the refusal reaches
    /// it (closing on unread data would reset the connection instead).
    fn serve(&mut self, g: &Guard, conn: Conn) {
        let mut buf = [0u8; MAX_REQUEST];
        let line = conn.read_line(&mut buf, CLIENT_TIMEOUT_MS);
        let reply = if conn.peer_uid() != Some(user::uid()) {
            Reply::failure("permission denied: only the process's own user may connect")
        } else {
            match line {
                Ok(line) => match Request::parse(line) {
                    Ok(request) => self.answer(g, request),
                    Err(e) => Reply::failure(e),
                },
                Err(0) => return,
                Err(_) => Reply::failure(format!(
                    "request too long or incomplete (one line of at most {MAX_REQUEST} bytes)"
                )),
            }
        };
        let _ = conn.send_all(reply.to_line().as_bytes(), CLIENT_TIMEOUT_MS);
        conn.discard_pending(MAX_DISCARD, DISCARD_WAIT_MS);
    }
}

fn report_reply(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Done { report, .. } => Reply {
            report: Some(*report),
            ..Reply::success()
        },
        Outcome::GaveUp => Reply::failure(
            "the scan gave up (the process is exiting, ran short of memory, or freed too \
             much while it ran); try again",
        ),
    }
}

fn socket_path() -> PathBuf {
    socket_path_of(sys::getpid())
}

fn socket_path_of(pid: i32) -> PathBuf {
    let opts = options();
    writer::report_dir(opts.report_dir.as_deref()).join(format!("{pid}.sock"))
}

/// The listening descriptor and the pid it was bound for, so that a fork
/// child can close the socket it inherited (it binds its own): a
/// long-lived child must not hold its parent's socket open. Set only where
/// the socket is in the program's descriptor table: a scanner with a table
/// of its own (`fdtable`) leaves nothing for a child to inherit.
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);
static LISTEN_PID: AtomicI32 = AtomicI32::new(0);

/// True while the scanner thread creates its socket: the exit handler
/// waits for that to finish, so no socket outlives the process.
static BINDING: AtomicBool = AtomicBool::new(false);

fn bind_socket() -> Option<Listener> {
    BINDING.store(true, Ordering::SeqCst);
    if EXITING.load(Ordering::SeqCst) {
        BINDING.store(false, Ordering::SeqCst);
        park();
    }
    let path = socket_path();
    let bound = path
        .parent()
        .map_or(Ok(()), dirs::ensure_private_dir)
        .and_then(|()| Listener::bind(&path));
    let bound = match bound {
        // The exit handler removes our socket; if the process started to
        // exit while we were binding, it may have looked too early.
        Ok(l) if EXITING.load(Ordering::SeqCst) => {
            drop(l);
            BINDING.store(false, Ordering::SeqCst);
            park();
        }
        other => other,
    };
    BINDING.store(false, Ordering::SeqCst);
    match bound {
        Ok(l) => {
            if !fdtable::in_private_table() {
                LISTEN_PID.store(sys::getpid(), Ordering::Relaxed);
                LISTEN_FD.store(l.fd(), Ordering::Release);
            }
            Some(l)
        }
        Err(e) => {
            if options().verbosity >= 1 {
                fdtable::write_stderr(format!("leakscan: no control socket: {e}\n").as_bytes());
            }
            None
        }
    }
}

extern "C" fn main_loop(_arg: *mut c_void) -> *mut c_void {
    // Held for the thread's whole life: nothing it does is tracked.
    let g = Guard::enter_reentrant();
    SCANNER_TID.store(sys::gettid(), Ordering::Release);
    // Before the first descriptor of ours: everything this thread opens
    // (socket, connections, /proc/self/maps, reports) must stay out of the
    // program's table, where it could take a number the program has just
    // closed and means to reuse (see `fdtable`).
    fdtable::leave_shared_table();
    let opts = options();
    let interval = opts.scan_interval_ms;
    let mut scanner = Scanner::new();
    let mut listener = if opts.control_socket {
        bind_socket()
    } else {
        None
    };
    let mut next_scan = (interval > 0).then(|| sys::monotonic_ns() / 1_000_000 + interval);
    loop {
        if EXITING.load(Ordering::Acquire) {
            park();
        }
        if leakscan_platform::threads::program_ended() {
            // glibc's exit(0) after the last thread, which leakscan's own
            // count kept from happening (outside the scan lock: the exit
            // check takes it).
            sys::exit_normally(0);
        }
        if RETIRING.load(Ordering::Acquire) {
            // The thread ends; with it its descriptor table and the socket
            // (whose file the listener removes). `retire` waits for the
            // kernel to let it go.
            drop(listener);
            leakscan_platform::threads::recount_internal_thread();
            return core::ptr::null_mut();
        }
        clock::tick();
        let now = sys::monotonic_ns() / 1_000_000;
        let wait_ms = next_scan.map_or(clock::TICK_MS, |t| {
            t.saturating_sub(now).min(clock::TICK_MS)
        }) as i32;
        match &listener {
            Some(l) if l.is_intact() => {
                if let Some(conn) = l.accept(wait_ms) {
                    scanner.serve(&g, conn);
                }
            }
            Some(_) => {
                // The program closed our descriptor (possible only where we
                // share its table): bind again.
                LISTEN_FD.store(-1, Ordering::Release);
                if let Some(l) = listener.take() {
                    l.forget();
                }
                listener = bind_socket();
            }
            None => sys::sleep_ms(wait_ms as u64),
        }
        let now = sys::monotonic_ns() / 1_000_000;
        if let Some(t) = next_scan {
            if now >= t {
                scanner.periodic(&g);
                next_scan = Some(sys::monotonic_ns() / 1_000_000 + interval);
            }
        }
    }
}

/// The process is exiting: never scan or answer again.
fn park() -> ! {
    loop {
        sys::sleep_ms(60_000);
    }
}

/// Start the scanner thread, unless both periodic scans and the control
/// socket are off.
pub fn start(_g: &Guard) {
    let opts = options();
    if opts.scan_interval_ms == 0 && !opts.control_socket {
        return;
    }
    // Ticking from now on (a fork child's first stamps are the parent's last
    // tick, which the scanner's first tick accounts for); `stop` below if
    // no thread starts.
    clock::tick();
    let mut stack = STACK.load(Ordering::Acquire);
    if stack == 0 {
        match mem::map(STACK_BYTES) {
            Some(p) => {
                stack = p.as_ptr() as usize;
                STACK.store(stack, Ordering::Release);
            }
            None => return clock::stop(),
        }
    }
    let Some(create) = threads::real_create() else {
        return clock::stop();
    };
    // SAFETY: `create` is the real pthread_create; the stack is our own
    // mapping, never unmapped, and no other scanner thread uses it (one per
    // process; a fork child's parent thread does not exist there).
    let started = unsafe {
        leakscan_platform::threads::spawn_internal(
            create,
            stack as *mut u8,
            STACK_BYTES,
            main_loop,
            core::ptr::null_mut(),
        )
    };
    if started {
        SCANNER_LIVE.store(true, Ordering::Release);
    } else {
        clock::stop();
        if options().verbosity >= 1 {
            fdtable::write_stderr(b"leakscan: could not start the scanner thread\n");
        }
    }
}

/// In a fork child: the parent's scanner is gone; close the socket it
/// listened on (only if the descriptor is still that socket) and start
/// this process's own scanner.
pub fn after_fork_in_child(g: &Guard) {
    // The parent's scanner may have been binding; it does not exist here.
    BINDING.store(false, Ordering::SeqCst);
    fdtable::forget_after_fork();
    SCANNER_LIVE.store(false, Ordering::Relaxed);
    SCANNER_TID.store(0, Ordering::Relaxed);
    let fd = LISTEN_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        let path = socket_path_of(LISTEN_PID.load(Ordering::Relaxed));
        Listener::inherited(fd, path).forget();
    }
    if !EXITING.load(Ordering::Acquire) {
        start(g);
    }
}

/// Whether a scanner thread runs in this process.
pub fn running() -> bool {
    SCANNER_LIVE.load(Ordering::Acquire)
}

/// With `check::RETIRING` set: wait until the scanner thread has ended and
/// the kernel has released it (its live scan gives up; it looks at the
/// flag at least every tick). True if it was running and is gone: `start`
/// may then use its stack again. False if none ran, or if it did not end
/// within `RETIRE_WAIT_MS` (it then goes on as before once the flag is
/// cleared, or ends then: either way no second scanner may start).
pub fn retire() -> bool {
    if !SCANNER_LIVE.load(Ordering::Acquire) {
        return false;
    }
    let deadline = sys::monotonic_ns() + RETIRE_WAIT_MS * 1_000_000;
    let gone = leakscan_platform::threads::wait_for_release(&SCANNER_TID, deadline);
    if gone {
        SCANNER_LIVE.store(false, Ordering::Release);
    }
    gone
}

/// How long `retire` waits for the scanner thread to end: a live scan
/// gives up within milliseconds, a connection being served within its
/// timeouts.
const RETIRE_WAIT_MS: u64 = 10_000;

/// The process is exiting: remove our socket (the thread parks itself, and
/// removes the socket itself if it was still binding it).
pub fn shut_down() {
    EXITING.store(true, Ordering::SeqCst);
    clock::stop();
    // A bind in progress finishes (and, seeing EXITING, removes its own
    // socket) before the process goes; bounded, should that thread be
    // stuck.
    let deadline = sys::monotonic_ns() + 500_000_000;
    while BINDING.load(Ordering::SeqCst) && sys::monotonic_ns() < deadline {
        sys::yield_now();
    }
    let opts = options();
    if opts.control_socket {
        let path = socket_path();
        if std::fs::symlink_metadata(&path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            net::unlink(&path);
        }
    }
}
