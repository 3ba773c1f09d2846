//! Shared by the sm_90a kernel tests (matmul_wgmma.rs, flash_wgmma.rs).

use frugal_ptx::ptxas::Ptxas;

/// ptxas's "info" lines about lost wgmma overlap (serialised wgmma, injected fences); the
/// [`Ptxas`] report keeps only warnings, so this runs the binary itself.
pub fn performance_notes(ptxas: &Ptxas, name: &str, text: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("frugal-sm90-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let src = dir.join(format!("{name}.ptx"));
    std::fs::write(&src, text).unwrap_or_else(|e| panic!("write {}: {e}", src.display()));
    let out = std::process::Command::new(ptxas.path())
        .args(["--gpu-name", "sm_90a", "-v", "-o"])
        .arg(dir.join(format!("{name}.cubin")))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", ptxas.path().display()));
    let _ = std::fs::remove_dir_all(&dir);
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    log.lines()
        .filter(|l| {
            l.contains("Performance Loss") || l.contains("injected") || l.contains("serializ")
        })
        .map(|l| format!("{name}: {l}"))
        .collect()
}
