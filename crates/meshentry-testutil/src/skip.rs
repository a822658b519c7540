//! Skipping a test that cannot run here, so that the run says so.
//!
//! A test whose tool is missing fails: CI (`scripts/test`) installs every tool the tests use,
//! and a test that returned "ok" without running would hide that. Only what a machine can
//! genuinely lack whatever is installed (a kernel feature, a permission the sandbox withholds)
//! is a reason to skip, and then with [`skip!`](crate::skip!): it writes `SKIPPED: ...` straight
//! to the terminal (the harness hides a passing test's own output) and appends the test and
//! the reason to `skipped-tests.txt` in Cargo's target tmp directory, which `scripts/test`
//! counts and prints at the end of the run.

use std::io::Write;
use std::path::Path;

/// The file, in `CARGO_TARGET_TMPDIR`, that lists the tests skipped since `scripts/test` began.
pub const SKIPPED_FILE: &str = "skipped-tests.txt";

/// Records a skip: prints it past the harness's output capture and appends it to
/// [`SKIPPED_FILE`] in `tmp_dir`. Use [`skip!`](crate::skip!), which fills in the test's place and
/// the target tmp directory.
pub fn record(tmp_dir: &Path, place: &str, reason: &str) {
    let line = format!("SKIPPED: {place}: {reason}");
    // `eprintln!` would be captured with the test's output and never shown for a pass.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    let path = tmp_dir.join(SKIPPED_FILE);
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = appended {
        panic!("{line}, and it cannot be recorded in {}: {e}", path.display());
    }
}

/// Skips the rest of the calling test with `reason` (a `format!` string), loudly and counted
/// (see the [module](crate::skip)): expands to a `return`. For integration tests, whose
/// `CARGO_TARGET_TMPDIR` Cargo sets.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)+) => {{
        $crate::skip::record(
            ::std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
            &format!("{}:{}", file!(), line!()),
            &format!($($reason)+),
        );
        return;
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_appended_to_the_list() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        record(dir.path(), "here.rs:1", "no such feature");
        record(dir.path(), "there.rs:2", "nor that one");
        let text = std::fs::read_to_string(dir.path().join(SKIPPED_FILE)).unwrap_or_default();
        assert_eq!(
            text,
            "SKIPPED: here.rs:1: no such feature\nSKIPPED: there.rs:2: nor that one\n"
        );
    }
}
