//! SARIF output checked by a real validator: Microsoft's SARIF Multitool
//! (`validate`: the official SARIF 2.1.0 schema plus its rules), installed
//! by scripts/install-deps into `<target>/tools/sarif-multitool`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{check_fixture, leakscan, run, workdir, FIXTURE_TIME_LIMIT};

/// The validator, or a panic saying how to install it.
fn multitool() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_leakscan"));
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("leakscan lives in a target directory");
    let tool = target.join(
        "tools/sarif-multitool/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool",
    );
    assert!(
        tool.is_file(),
        "the SARIF validator is not installed at {}: run scripts/install-deps",
        tool.display()
    );
    tool
}

/// Validate `sarif`; returns the validator's error-level findings.
fn validation_errors(sarif: &Path, dir: &Path) -> Vec<String> {
    let log = dir.join(format!(
        "{}.validation.sarif",
        sarif.file_stem().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_file(&log);
    let mut cmd = Command::new(multitool());
    // .NET without ICU must not fail on a machine that lacks it.
    cmd.env("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1")
        .arg("validate")
        .arg("--output")
        .arg(&log)
        .arg(sarif);
    let out = run(&mut cmd, dir, "multitool", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "the validator failed:\n{}", out.stderr);
    let text = fs::read_to_string(&log).unwrap_or_else(|e| {
        panic!(
            "the validator wrote no log {}: {e}\n{}",
            log.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let log: Value = serde_json::from_str(&text).expect("the validator's log is JSON");
    log["runs"][0]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["level"] == "error")
        .map(|r| r.to_string())
        .collect()
}

#[test]
fn leakscan_sarif_passes_the_validator() {
    let checked = check_fixture("sarif_valid", "lsan_suppressions.c");
    let sarif = checked.dir.join("leaks.sarif");
    let mut cmd = leakscan();
    cmd.args(["report", "--format", "sarif", "--source-root"])
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("--output")
        .arg(&sarif)
        .arg(checked.dir.join("report.json"));
    let out = run(&mut cmd, &checked.dir, "report", FIXTURE_TIME_LIMIT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let errors = validation_errors(&sarif, &checked.dir);
    assert!(
        errors.is_empty(),
        "SARIF validation errors:\n{}",
        errors.join("\n")
    );

    let log: Value = serde_json::from_str(&fs::read_to_string(&sarif).unwrap()).unwrap();
    let results = log["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), checked.report.leaks.len());
    for (result, group) in results.iter().zip(&checked.report.leaks) {
        assert_eq!(
            result["partialFingerprints"]["leakscanGroupId/v1"],
            group.id.as_deref().unwrap()
        );
        let flow = &result["codeFlows"][0]["threadFlows"][0]["locations"];
        assert_eq!(flow.as_array().unwrap().len(), group.stack.len());
    }
    // The location is the fixture's source, relative to the repository.
    let uri = &results[0]["locations"][0]["physicalLocation"]["artifactLocation"];
    assert_eq!(uri["uri"], "tests/fixtures/lsan_suppressions.c", "{uri}");
    assert_eq!(uri["uriBaseId"], "SRCROOT");
}

/// The validator does catch a broken log: the test above can fail.
#[test]
fn the_validator_rejects_broken_sarif() {
    let dir = workdir("sarif_broken");
    let broken = dir.join("broken.sarif");
    fs::write(
        &broken,
        r#"{"version": "2.1.0", "runs": [{"tool": {"driver": {}}, "results": [{"message": {}}]}]}"#,
    )
    .unwrap();
    assert!(!validation_errors(&broken, &dir).is_empty());
}
