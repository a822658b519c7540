//! Records what the binary was built from, for `meshentry version` and `/server_info`: the
//! git commit (or `MESHENTRY_GIT_COMMIT`, else "unknown": a tarball build has no git and
//! must still build), the compiler's version and the target triple.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MESHENTRY_GIT_COMMIT");
    let commit = std::env::var("MESHENTRY_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MESHENTRY_GIT_COMMIT={}", commit.trim());

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(Command::new(rustc).arg("--version")).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MESHENTRY_RUSTC_VERSION={rustc_version}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=MESHENTRY_TARGET={target}");
}

/// `git rev-parse HEAD`, and the files whose change means another commit (HEAD, the branch's
/// ref, packed refs), so a new commit rebuilds this crate and nothing else does.
fn git_commit() -> Option<String> {
    let commit = output(Command::new("git").args(["rev-parse", "HEAD"]))?;
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = output(Command::new("git").args(["symbolic-ref", "-q", "HEAD"])) {
        watch.push(branch);
    }
    for name in watch {
        if let Some(path) = output(Command::new("git").args(["rev-parse", "--git-path", &name]))
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}

/// A command's first line of output, if it ran and succeeded.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().next()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}
