//! More real packages (issue #7): PyYAML, whose `_yaml` extension Cython generates at build
//! time over libyaml built from Debian's source, and greenlet, a C++ extension module, both
//! cross-compiled for linux-arm64 by `wheel-build` and used by Debian's arm64 Python under
//! QEMU (the `run-arm64` runner image). The worked example of wheels/README.md is the
//! PyYAML spec that is built here.

mod common;

use std::path::Path;

use common::images::{ready, repo};
use common::wheels::{import_on, machine, members, needed, wheel_build, wheel_named};
use dockerbuild::wheel::WheelSpec;

/// The README's worked example ("a spec written by someone else") is, parsed with the real
/// types, exactly the checked-in spec that the Docker test below builds.
#[test]
fn the_readme_worked_example_is_the_pyyaml_spec() {
    let blocks = common::toml_blocks(&repo().join("wheels/README.md"));
    let block = blocks
        .iter()
        .find(|b| b.lines().any(|l| l == "# wheels/pyyaml.toml"))
        .expect("wheels/README.md has the PyYAML example");
    let example = WheelSpec::parse(block, "pyyaml", Path::new("pyyaml")).unwrap();
    let checked_in = WheelSpec::load(&repo().join("wheels/pyyaml.toml")).unwrap();
    assert_eq!(example, checked_in);
    assert_eq!(checked_in.libraries, ["libyaml"]);
    assert!(
        checked_in.host.iter().any(|d| d.name() == "cython"),
        "Cython runs at build time"
    );
}

/// PyYAML (Cython + libyaml, linked statically) and greenlet (C++) for linux-arm64 and
/// CPython 3.11, imported and exercised by Debian's arm64 Python 3.11 under QEMU.
#[test]
fn pyyaml_with_libyaml_and_cpp_greenlet_work_on_arm64() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wheels = wheel_build(
        &[
            "-w",
            "pyyaml",
            "-w",
            "greenlet",
            "-p",
            "linux-arm64",
            "--python",
            "3.11",
        ],
        dir.path(),
    );
    assert_eq!(wheels.len(), 2, "{wheels:#?}");

    // PyYAML: the Cython extension is aarch64 code with libyaml inside it.
    let yaml = wheel_named(dir.path(), "PyYAML-6.0.2-cp311-cp311-linux_aarch64");
    let so = members(&yaml, ".so");
    assert_eq!(so.len(), 1, "one extension: {:?}", names(&so));
    assert_eq!(so[0].0, "yaml/_yaml.cpython-311-aarch64-linux-gnu.so");
    assert_eq!(machine(&so[0].1), 183, "EM_AARCH64");
    let yaml_needs = needed("linux-arm64", &so[0].1);
    assert!(
        yaml_needs.iter().all(|n| !n.starts_with("libyaml")),
        "libyaml is linked in, not needed at run time: {yaml_needs:?}"
    );
    assert!(
        String::from_utf8_lossy(&so[0].1).contains("yaml_parser_initialize"),
        "libyaml's code is in the extension"
    );
    // Cython generated the C (the sdist ships only _yaml.pyx): its module init is there.
    assert!(String::from_utf8_lossy(&so[0].1).contains("Cython"));

    // greenlet: C++ (it needs the C++ runtime), aarch64 code.
    let greenlet = wheel_named(dir.path(), "greenlet-3.1.1-cp311-cp311-linux_aarch64");
    let so = members(&greenlet, "_greenlet.cpython-311-aarch64-linux-gnu.so");
    assert_eq!(so.len(), 1, "{}", greenlet.display());
    assert_eq!(machine(&so[0].1), 183, "EM_AARCH64");
    let greenlet_needs = needed("linux-arm64", &so[0].1);
    assert!(
        greenlet_needs.iter().any(|n| n.starts_with("libstdc++")),
        "a C++ extension: {greenlet_needs:?}"
    );

    let out = import_on(
        "run-arm64",
        dir.path(),
        "import platform, yaml, greenlet\n\
         doc = {'name': 'dockerbuild', 'tags': ['a', 1, 2.5, None], 'nested': {'x': True}}\n\
         text = yaml.dump(doc, Dumper=yaml.CDumper, sort_keys=True)\n\
         assert yaml.load(text, Loader=yaml.CLoader) == doc, text\n\
         print(platform.machine(), yaml.__with_libyaml__, yaml._yaml.get_version_string())\n\
         print(yaml._yaml.__file__.rsplit('/', 1)[1])\n\
         trace = []\n\
         def worker(a):\n    trace.append(a)\n    b = main.switch(a + 1)\n    trace.append(b)\n    return 'done'\n\
         main = greenlet.getcurrent()\n\
         g = greenlet.greenlet(worker)\n\
         print(g.switch(1), g.switch(10), trace, g.dead)\n\
         print(greenlet._greenlet.__file__.rsplit('/', 1)[1])",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "aarch64 True 0.2.5",
            "_yaml.cpython-311-aarch64-linux-gnu.so",
            "2 done [1, 10] True",
            "_greenlet.cpython-311-aarch64-linux-gnu.so",
        ],
        "{out}"
    );
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    files.iter().map(|(n, _)| n.as_str()).collect()
}
