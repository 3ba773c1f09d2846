//! Stamps the binary with the commit it was built from, for `frugal --version`.
//! A build outside a git checkout (a source tarball) says "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FRUGAL_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: the HEAD file itself (a branch switch) and the
    // branch it names (a commit). Without git, only this script matters.
    println!("cargo:rerun-if-changed=build.rs");
    let mut watched = vec!["HEAD".to_string()];
    if let Some(branch) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
