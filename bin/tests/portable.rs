//! `scripts/check-portable.py`, the check `scripts/build-portable.sh` runs on the binary
//! for old Linuxes: tiny shared libraries built here with `cc` (which cargo links with
//! anyway) must pass or fail it with the offending symbol or library named. The zig build
//! itself takes minutes and stays a manual step (see the README).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{scratch_in, text};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

fn check(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(script("check-portable.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run python3: {e}"))
}

/// Builds `lib<name>.so` in `dir` from C source, linked with `-L dir` and `libs`.
fn shared_lib(dir: &Path, name: &str, source: &str, libs: &[&str]) -> String {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let lib = dir.join(format!("lib{name}.so"));
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-L")
        .arg(dir)
        .args(libs)
        .output()
        .unwrap_or_else(|e| panic!("run cc: {e}"));
    assert!(out.status.success(), "cc {name}: {:?}", text(&out));
    lib.to_str().unwrap().to_string()
}

#[test]
fn old_symbols_pass_new_ones_fail_by_name() {
    let dir = scratch_in("portable", "glibc");
    // puts and memcpy@GLIBC_2.2.5 (x86_64's oldest) are in every glibc since 2.17.
    let old = shared_lib(
        &dir,
        "old",
        "#include <stdio.h>\nint hello(void) { return puts(\"hi\"); }\n",
        &[],
    );
    let out = check(&[&old]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("OK (target: GLIBC_2.17)"), "{stdout}");

    // getrandom arrived in glibc 2.25.
    let new = shared_lib(
        &dir,
        "new",
        "#include <sys/random.h>\n\
         long fill(void *p, unsigned long n) { return getrandom(p, n, 0); }\n",
        &[],
    );
    let out = check(&[&new]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("getrandom@GLIBC_2.25 (from libc.so.6)"),
        "{stdout}"
    );
    // The same library passes a target that has getrandom.
    let out = check(&["--max-glibc", "2.25", &new]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[test]
fn a_library_outside_glibc_fails_by_name() {
    let dir = scratch_in("portable", "libs");
    shared_lib(&dir, "gpuish", "int gpuish(void) { return 1; }\n", &[]);
    let user = shared_lib(
        &dir,
        "user",
        "int gpuish(void);\nint use(void) { return gpuish(); }\n",
        &["-lgpuish"],
    );
    let out = check(&[&user]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("needs library libgpuish.so"), "{stdout}");
    let out = check(&["--allow", "libgpuish.so", &user]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

/// The host-linked binary needs this machine's glibc, but no library beyond glibc's own:
/// CUDA and NCCL are loaded at run time, never linked.
#[test]
fn frugal_links_only_glibc_libraries() {
    let out = check(&["--max-glibc", "99.0", env!("CARGO_BIN_EXE_frugal")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("libc.so.6"), "{stdout}");
}

#[test]
fn bad_input_is_a_usage_error() {
    let dir = scratch_in("portable", "bad");
    let not_elf = dir.join("not-elf");
    std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
    let out = check(&[not_elf.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("not an ELF file"), "{stderr}");
    let out = check(&["--max-glibc", "two", not_elf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));

    // The build script refuses what it does not offer before building anything.
    for args in [&["--arch", "sparc"][..], &["--fast"]] {
        let out = Command::new(script("build-portable.sh"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run build-portable.sh: {e}"));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {:?}", text(&out));
    }
}
