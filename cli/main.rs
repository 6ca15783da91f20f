//! `leakscan`: run programs under the leak detector and render its reports.
//!
//! This file only parses, dispatches and maps the outcome to an exit status:
//! what the command reports (`run`: the program's status, `--error-exitcode`,
//! 128+signal; `report`: 0, or 1 for leaks with `--fail-on-leaks`), or 2 with
//! one line on stderr when leakscan itself failed.

mod args;
mod elf;
mod error;
mod input;
mod live;
mod output;
mod render;
mod report;
mod reportdir;
mod run;
mod settings;
mod source;
mod symbolize;
mod view;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Command, LowArgs};
use crate::error::Error;
use crate::settings::{Env, ReportSettings, RunSettings};

fn main() -> ExitCode {
    let low = match LowArgs::try_parse() {
        Ok(low) => low,
        Err(e) => return args::clap_exit(e),
    };
    match dispatch(low) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("leakscan: {}", error::one_line(&e.to_string()));
            ExitCode::from(2)
        }
    }
}

fn dispatch(low: LowArgs) -> Result<u8, Error> {
    let env = Env::from_process();
    match low.command {
        Command::Run(args) => run::run(&RunSettings::new(args, &env)?),
        Command::Report(args) => report::run(&ReportSettings::new(args, &env)?),
        Command::Scan(args) => live::run_scan(args, &env),
        Command::Clear(args) => live::run_clear(&settings::live_report_dir(&env)?, args.pid),
        Command::Dump(args) => {
            live::run_dump(&settings::live_report_dir(&env)?, args.pid, args.address)
        }
        Command::Stats(args) => live::run_stats(&settings::live_report_dir(&env)?, args.pid),
        Command::Ps(args) => live::run_ps(&settings::live_report_dir(&env)?, args.format),
    }
}
