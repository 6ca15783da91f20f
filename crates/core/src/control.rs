//! The control protocol, version 1: what `leakscan` says to a running
//! process over `<report_dir>/<pid>.sock`, and what it answers.
//!
//! Like kmemleak's debugfs file, but one request per connection:
//!
//! ```text
//! client → agent   one line of ASCII: COMMAND [ARGUMENT]... '\n' (at most 512 bytes)
//! agent  → client  one JSON object (a `Reply`), then '\n', then the agent closes
//! ```
//!
//! Commands: `scan [min_age=SECONDS]` (scan now, reply with the report),
//! `report` (the last report; scans first if none has run), `clear` (what
//! is reported now is never reported again), `dump ADDR` (the block
//! containing ADDR), `stats`, and `ping` (who is there). A request that is
//! not one of these gets `{"ok": false, "error": …}`, never a dropped
//! connection. Every reply carries `"protocol": 1`; commands and reply
//! fields may be added within version 1, anything else bumps it. Both the
//! agent and the CLI use this module, so they cannot disagree.

use serde::{Deserialize, Serialize};

use crate::options::{excerpt, parse_seconds};
use crate::report::{Frame, Process, Report};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Scan now; `min_age_ms` overrides the process's `min_age`.
    Scan {
        min_age_ms: Option<u64>,
    },
    Report,
    Clear,
    Dump {
        address: usize,
    },
    Stats,
    Ping,
}

impl Request {
    /// Parse one request line (without or with its trailing newline).
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        if line.len() > MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
        let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
        let mut words = text.split_ascii_whitespace();
        let command = words.next().ok_or_else(|| "empty request".to_string())?;
        let args: Vec<&str> = words.collect();
        let no_args = |r: Request| {
            if args.is_empty() {
                Ok(r)
            } else {
                Err(format!("`{}` takes no argument", excerpt(command)))
            }
        };
        match command {
            "scan" => {
                let mut min_age_ms = None;
                for arg in &args {
                    match arg.split_once('=') {
                        Some(("min_age", v)) => min_age_ms = Some(parse_seconds(v)?),
                        _ => return Err(format!("unknown argument `{}` to scan", excerpt(arg))),
                    }
                }
                Ok(Request::Scan { min_age_ms })
            }
            "report" => no_args(Request::Report),
            "clear" => no_args(Request::Clear),
            "stats" => no_args(Request::Stats),
            "ping" => no_args(Request::Ping),
            "dump" => match args.as_slice() {
                [addr] => parse_address(addr).map(|address| Request::Dump { address }),
                _ => Err("usage: dump ADDRESS".into()),
            },
            other => Err(format!("unknown command `{}`", excerpt(other))),
        }
    }

    /// The request line for this request, as the CLI sends it.
    pub fn line(&self) -> String {
        match self {
            Request::Scan { min_age_ms: None } => "scan\n".into(),
            Request::Scan {
                min_age_ms: Some(ms),
            } => format!("scan min_age={}.{:03}\n", ms / 1000, ms % 1000),
            Request::Report => "report\n".into(),
            Request::Clear => "clear\n".into(),
            Request::Dump { address } => format!("dump {address:#x}\n"),
            Request::Stats => "stats\n".into(),
            Request::Ping => "ping\n".into(),
        }
    }
}

/// `0x…` hexadecimal or decimal.
pub fn parse_address(text: &str) -> Result<usize, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => usize::from_str_radix(hex, 16),
        None => text.parse::<usize>(),
    };
    parsed.map_err(|_| format!("`{}` is not an address (0x… or decimal)", excerpt(text)))
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub protocol: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `scan`, `report`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    /// `clear`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<Cleared>,
    /// `dump`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockInfo>,
    /// `stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    /// `ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

impl Reply {
    pub fn success() -> Reply {
        Reply {
            protocol: PROTOCOL_VERSION,
            ok: true,
            error: None,
            report: None,
            cleared: None,
            block: None,
            stats: None,
            process: None,
        }
    }

    pub fn failure(error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(error.into()),
            ..Reply::success()
        }
    }

    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"protocol":1,"ok":false,"error":"reply not serializable"}"#.into()
        });
        s.push('\n');
        s
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleared {
    pub blocks: u64,
    pub bytes: u64,
}

/// Where a block stood at the last scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    /// Reported as a leak (unreferenced in two consecutive scans).
    Leak,
    /// Unreferenced in the last scan only: reported if the next agrees.
    Unreferenced,
    /// Reached from the roots in the last scan (or excused: annotated,
    /// cleared, too young).
    Referenced,
    /// Allocated after the last scan started.
    NotScannedYet,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// The block's start (the address asked about may be interior).
    pub address: String,
    pub size: u64,
    pub age_ms: u64,
    pub state: BlockState,
    /// Annotations: `not_leak`, `no_scan`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<String>,
    pub stack: Vec<Frame>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub live_blocks: u64,
    pub live_bytes: u64,
    /// Scans run so far (periodic, requested and exact).
    pub scans: u64,
    pub last_scan_ms: f64,
    pub total_scan_ms: f64,
    pub last_scanned_bytes: u64,
    /// Blocks freed during the last scan and held back until it ended.
    pub last_quarantine_blocks: u64,
    pub last_quarantine_bytes: u64,
    /// Live scans that gave up (their quarantine outgrew its budget, or
    /// the process started to exit) and were retried at the next period.
    #[serde(default)]
    pub gave_up_scans: u64,
    /// Leaked blocks in the last report, and blocks cleared since start.
    pub reported_blocks: u64,
    pub cleared_blocks: u64,
    pub scan_interval_ms: u64,
    pub min_age_ms: u64,
    /// leakscan's own mappings now, and those that never fit in its
    /// registry (which would be scanned as the program's memory).
    #[serde(default)]
    pub own_mappings: u64,
    #[serde(default)]
    pub unregistered_mappings: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::{fuzz_cases, seed_from_env, Rng};

    #[test]
    fn every_request_round_trips_through_its_line() {
        for r in [
            Request::Scan { min_age_ms: None },
            Request::Scan {
                min_age_ms: Some(1500),
            },
            Request::Report,
            Request::Clear,
            Request::Dump { address: 0x5581a0 },
            Request::Stats,
            Request::Ping,
        ] {
            assert_eq!(Request::parse(r.line().as_bytes()), Ok(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\n",
            b"SCAN",
            b"scan min_age=x",
            b"scan now",
            b"report 1",
            b"dump",
            b"dump 0xzz",
            b"dump 1 2",
            b"\xff\xfe",
            &[b'a'; MAX_REQUEST + 1],
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Request::parse(b"dump 4096"),
            Ok(Request::Dump { address: 4096 })
        );
    }

    /// A request line as a hostile or broken client might send it.
    fn hostile_request(rng: &mut Rng) -> Vec<u8> {
        const WORDS: &[&[u8]] = &[
            b"scan",
            b"report",
            b"clear",
            b"dump",
            b"stats",
            b"ping",
            b"min_age=",
            b"min_age",
            b"=",
            b" ",
            b"\t",
            b"\r",
            b"\n",
            b"\x00",
            b"\xff",
            b"\xc3",
            b"0x",
            b"0X",
            b"-1",
            b"18446744073709551615",
            b"18446744073709551616",
            b"0xffffffffffffffff",
            b"0x1ffffffffffffffff",
            b"0xffff800000000000",
            b"1e400",
            b"NaN",
            b"inf",
            b"0.5",
            b"31536000",
            b"31536001",
            b"+7",
            b"0x",
            b"\x1b[2J",
        ];
        let mut out = Vec::new();
        for _ in 0..rng.below(12) {
            match rng.below(8) {
                0 => out.extend((0..rng.below(32)).map(|_| rng.next() as u8)),
                1 => out.extend(std::iter::repeat_n(b'x', rng.below(2 * MAX_REQUEST))),
                _ => out.extend_from_slice(WORDS[rng.below(WORDS.len())]),
            }
        }
        out
    }

    #[test]
    fn randomized_requests_are_answered_never_panicked_on() {
        let seed = seed_from_env(0xc0_27_01);
        for case in fuzz_cases(5000) {
            let mut rng = Rng::for_case(seed, case);
            let line = hostile_request(&mut rng);
            let context = || format!("seed {seed:#x} case {case}: {line:?}");
            match Request::parse(&line) {
                // A request that parsed is what its own line says.
                Ok(r) => assert_eq!(Request::parse(r.line().as_bytes()), Ok(r), "{}", context()),
                Err(e) => {
                    // The reply is one short JSON line that says why.
                    let reply = Reply::failure(e.clone()).to_line();
                    assert_eq!(reply.matches('\n').count(), 1, "{}", context());
                    assert!(reply.len() < 400 && !e.is_empty(), "{}: {e}", context());
                    let back: Reply = serde_json::from_str(&reply).unwrap();
                    assert_eq!(back.error.as_deref(), Some(e.as_str()));
                }
            }
        }
    }

    #[test]
    fn odd_addresses_and_durations() {
        assert_eq!(parse_address("0xffffffffffffffff"), Ok(usize::MAX));
        assert!(parse_address("0x1ffffffffffffffff").is_err());
        assert!(parse_address("-1").is_err() && parse_address("0x").is_err());
        assert!(Request::parse(b"scan min_age=NaN").is_err());
        assert!(Request::parse(b"scan min_age=1e400").is_err());
        assert!(Request::parse(b"scan min_age=31536001").is_err());
        assert_eq!(
            Request::parse(b"scan min_age=1 min_age=0.25\r"),
            Ok(Request::Scan {
                min_age_ms: Some(250)
            })
        );
        let e = Request::parse(&[b'z'; MAX_REQUEST]).unwrap_err();
        assert!(e.len() < 100, "{e}");
    }

    #[test]
    fn replies_round_trip_and_skip_absent_parts() {
        let r = Reply::failure("no");
        let line = r.to_line();
        assert_eq!(line, "{\"protocol\":1,\"ok\":false,\"error\":\"no\"}\n");
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }
}
