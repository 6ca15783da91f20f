//! Talking to running processes: `leakscan scan|clear|dump|stats PID` and
//! `leakscan ps`, over each process's control socket (protocol in
//! `leakscan_core::control`).
//!
//! Sockets live beside the reports: `<report_dir>/<pid>.sock`, or
//! `<report_dir>/run-*/<pid>.sock` for programs started by `leakscan run`.
//! A socket whose process is gone (it ended with `_exit` or a signal and
//! could not remove it) is stale: `ps` removes it, the other commands say
//! the process is not running.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leakscan_core::control::{Reply, Request};
use leakscan_core::report::Report;

use crate::args::{Format, ReportArgs, ScanArgs, ViewArgs};
use crate::error::Error;
use crate::output::Destination;
use crate::settings::{Env, ReportSettings};

/// How long a scan may take before we give up waiting (a scan of a few GiB
/// takes seconds; a process stopped in a debugger never answers).
const SCAN_TIMEOUT: Duration = Duration::from_secs(300);
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);

/// Every control socket under `report_dir`, as (pid, path).
pub fn sockets(report_dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out = Vec::new();
    let mut dirs = vec![report_dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(report_dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let is_run_dir = name.to_str().is_some_and(|n| n.starts_with("run-"));
            if is_run_dir && e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_suffix(".sock"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(pid) = pid {
                out.push((pid, e.path()));
            }
        }
    }
    out.sort();
    out
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// How long to wait for the socket of a process that has none yet: one
/// started a moment ago (`prog & leakscan report --pid $!`) binds it as
/// soon as its scanner thread runs.
const SOCKET_WAIT: Duration = Duration::from_secs(3);

/// The control socket of `pid`, or why there is none.
fn socket_of(report_dir: &Path, pid: u32) -> Result<PathBuf, Error> {
    let deadline = std::time::Instant::now() + SOCKET_WAIT;
    loop {
        if !process_exists(pid) {
            return Err(Error::Control(format!("process {pid} is not running")));
        }
        if let Some(path) = find_socket(report_dir, pid) {
            return Ok(path);
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Control(format!(
        "process {pid} has no leakscan control socket in {} (is it running with \
         libleakscan.so, with the same report_dir, and control_socket=1?)",
        report_dir.display()
    )))
}

fn find_socket(report_dir: &Path, pid: u32) -> Option<PathBuf> {
    // The direct path first: it needs no permission to list the directory.
    let direct = report_dir.join(format!("{pid}.sock"));
    if direct.exists() {
        return Some(direct);
    }
    sockets(report_dir)
        .into_iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, path)| path)
}

/// Send one request to the socket at `path` and read the reply.
pub fn request_at(path: &Path, request: &Request) -> Result<Reply, Error> {
    let timeout = match request {
        Request::Scan { .. } | Request::Report => SCAN_TIMEOUT,
        _ => QUICK_TIMEOUT,
    };
    let fail = |what: &str, e: std::io::Error| {
        Error::Control(format!(
            "{}: {what}: {}",
            path.display(),
            crate::error::os(&e)
        ))
    };
    let mut stream = UnixStream::connect(path).map_err(|e| fail("cannot connect", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(QUICK_TIMEOUT)))
        .map_err(|e| fail("socket", e))?;
    stream
        .write_all(request.line().as_bytes())
        .map_err(|e| fail("cannot send the request", e))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| fail("no reply", e))?;
    if text.trim().is_empty() {
        return Err(Error::Control(format!(
            "{}: the process closed the connection without answering (it may be exiting)",
            path.display()
        )));
    }
    let reply: Reply = serde_json::from_str(text.trim_end())
        .map_err(|e| Error::Control(format!("{}: unreadable reply: {e}", path.display())))?;
    if !reply.ok {
        return Err(Error::Control(format!(
            "process refused: {}",
            reply.error.as_deref().unwrap_or("no reason given")
        )));
    }
    Ok(reply)
}

/// Send one request to process `pid`.
pub fn request(report_dir: &Path, pid: u32, request: &Request) -> Result<Reply, Error> {
    let path = socket_of(report_dir, pid)?;
    request_at(&path, request)
}

/// Ask `pid` to scan now and return its report.
pub fn scan(report_dir: &Path, pid: u32, min_age_ms: Option<u64>) -> Result<Report, Error> {
    let reply = request(report_dir, pid, &Request::Scan { min_age_ms })?;
    reply
        .report
        .ok_or_else(|| Error::Control(format!("process {pid} sent no report")))
}

/// One running process with the library, for `leakscan ps`.
#[derive(Debug, serde::Serialize)]
pub struct Running {
    pub pid: u32,
    pub exe: String,
    pub argv: Vec<String>,
    pub socket: PathBuf,
}

/// The processes answering on a socket under `report_dir`; stale sockets
/// (their process is gone) are removed on the way.
pub fn ps(report_dir: &Path) -> Vec<Running> {
    let mut out = Vec::new();
    for (pid, path) in sockets(report_dir) {
        if !process_exists(pid) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if let Ok(Reply {
            process: Some(p), ..
        }) = request_at(&path, &Request::Ping)
        {
            out.push(Running {
                pid,
                exe: p.exe,
                argv: p.argv,
                socket: path,
            });
        }
    }
    out
}

/// `leakscan scan PID`: `leakscan report --pid PID`, JSON by default.
pub fn run_scan(args: ScanArgs, env: &Env) -> Result<u8, Error> {
    let report_args = ReportArgs {
        file: None,
        dir: None,
        pid: Some(args.pid),
        min_age: args.min_age,
        format: Some(args.format),
        output: None,
        color: args.color,
        fail_on_leaks: args.fail_on_leaks,
        view: ViewArgs::default(),
    };
    crate::report::run(&ReportSettings::new(report_args, env)?)
}

/// `leakscan clear PID`: one line saying what was cleared.
pub fn run_clear(report_dir: &Path, pid: u32) -> Result<u8, Error> {
    let reply = request(report_dir, pid, &Request::Clear)?;
    let c = reply.cleared.unwrap_or_default();
    println!(
        "cleared {} leaked blocks ({} bytes) in process {pid}: they will not be reported again",
        c.blocks, c.bytes
    );
    Ok(0)
}

/// `leakscan dump PID ADDR`: the block as JSON.
pub fn run_dump(report_dir: &Path, pid: u32, address: usize) -> Result<u8, Error> {
    let reply = request(report_dir, pid, &Request::Dump { address })?;
    let block = reply
        .block
        .ok_or_else(|| Error::Control(format!("process {pid} sent no block")))?;
    let text = serde_json::to_string_pretty(&block).unwrap_or_default();
    Destination::Stdout.write(&(text + "\n"))?;
    Ok(0)
}

/// `leakscan stats PID`: the counters as JSON.
pub fn run_stats(report_dir: &Path, pid: u32) -> Result<u8, Error> {
    let reply = request(report_dir, pid, &Request::Stats)?;
    let stats = reply
        .stats
        .ok_or_else(|| Error::Control(format!("process {pid} sent no stats")))?;
    let text = serde_json::to_string_pretty(&stats).unwrap_or_default();
    Destination::Stdout.write(&(text + "\n"))?;
    Ok(0)
}

/// `leakscan ps`: a table (text) or an array (JSON).
pub fn run_ps(report_dir: &Path, format: Format) -> Result<u8, Error> {
    let running = ps(report_dir);
    let text = match format {
        Format::Json | Format::Sarif => {
            serde_json::to_string_pretty(&running).unwrap_or_default() + "\n"
        }
        Format::Text => {
            let mut t = format!("{:>8}  {}\n", "PID", "COMMAND");
            for r in &running {
                let cmd = if r.argv.is_empty() {
                    r.exe.clone()
                } else {
                    r.argv.join(" ")
                };
                t.push_str(&format!("{:>8}  {cmd}\n", r.pid));
            }
            t
        }
    };
    Destination::Stdout.write(&text)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_found_in_the_dir_and_in_run_dirs() {
        let dir = std::env::temp_dir().join(format!("leakscan-live-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run-1-2")).unwrap();
        std::fs::create_dir_all(dir.join("other")).unwrap();
        for f in [
            "12.sock",
            "run-1-2/34.sock",
            "other/56.sock",
            "78.json",
            "x.sock",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let found: Vec<u32> = sockets(&dir).into_iter().map(|(p, _)| p).collect();
        assert_eq!(found, [12, 34]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
