//! Helpers of the tests that build real wheels on the shared store and import them in a
//! runner image (the target's Debian userland under QEMU).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::images::{dockerbuild, image, repo, shared_store};

/// `wheel-build --json` on the shared store; returns the wanted wheels' JSON.
pub fn wheel_build(args: &[&str], out_dir: &Path) -> Vec<serde_json::Value> {
    let out = dockerbuild(&shared_store(), &repo())
        .args(["--json", "wheel-build", "-j", "2", "-o"])
        .arg(out_dir)
        .args(args)
        .output()
        .unwrap();
    super::assert_success(&out, &format!("wheel-build {args:?}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["wheels"].as_array().unwrap().clone()
}

/// Every file of a wheel whose name ends with `suffix`, with its bytes.
pub fn members(wheel: &Path, suffix: &str) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(wheel).unwrap()).unwrap();
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let name = f.name().unwrap().into_owned();
        if name.ends_with(suffix) {
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            out.push((name, b));
        }
    }
    out
}

/// The wheel of `dir` whose file name starts with `prefix`.
pub fn wheel_named(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* wheel in {}", dir.display()))
}

/// `e_machine` of an ELF file (little-endian).
pub fn machine(elf: &[u8]) -> u16 {
    assert_eq!(&elf[..4], b"\x7fELF");
    u16::from_le_bytes([elf[18], elf[19]])
}

/// The `DT_NEEDED` entries of an ELF file, as binutils' `readelf -d` in a toolchain's
/// image reads them (not dockerbuild's own ELF reader, which the tags code uses).
pub fn needed(toolchain: &str, elf: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.so"), elf).unwrap();
    let out = dockerbuild(&shared_store(), dir.path())
        .args(["run", "-p", toolchain, "--", "readelf", "-d", "x.so"])
        .output()
        .unwrap();
    super::assert_success(&out, &"readelf -d");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Dynamic section"), "{text}");
    text.lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_owned))
        .collect()
}

/// Runs Python code in a runner image (the target's Debian userland under QEMU), with the
/// wheels of `dir` unpacked onto its path by the target's own Python; returns stdout.
pub fn import_on(runner: &str, dir: &Path, code: &str) -> String {
    image(runner);
    let script = format!(
        "import glob, sys, zipfile\n\
         for w in sorted(glob.glob('/work/*.whl')):\n    zipfile.ZipFile(w).extractall('/tmp/site')\n\
         sys.path.insert(0, '/tmp/site')\n{code}\n"
    );
    let out = dockerbuild(&shared_store(), dir)
        .args(["run", "-p", runner, "--", "python3", "-c", &script])
        .output()
        .unwrap();
    super::assert_success(&out, &format!("import on {runner}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
