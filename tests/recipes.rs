//! Recipes (`recipes/*.toml`): the checked-in ones and the documented format parse, bad
//! recipes are refused naming the problem, and `build` resolves them without Docker
//! where it can fail early (unknown recipe, missing platform, unpinned source, cycles).

mod common;

use std::path::PathBuf;

use common::TestEnv;
use dockerbuild::recipe::{self, Input, Recipe};
use dockerbuild::store::Kind;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_checked_in_recipe_loads_with_its_script_and_pinned_sources() {
    let recipes = recipe::load_all(&repo().join("recipes")).unwrap();
    let names: Vec<&str> = recipes.iter().map(|(r, _)| r.name.as_str()).collect();
    assert!(names.contains(&"git"), "{names:?}");
    let lock = dockerbuild::lock::Lockfile::read(&repo().join("lockfiles/dockerbuild.lock"))
        .unwrap()
        .unwrap();
    let toolchains = dockerbuild::toolchain::load_all(&repo().join("toolchains")).unwrap();
    for (r, script) in &recipes {
        assert!(
            script.starts_with("#!"),
            "{}: a script with a shebang",
            r.name
        );
        for (input, from) in &r.inputs {
            match from {
                Input::Source(s) => assert!(
                    lock.get(s).is_some(),
                    "{}: input {input} names unpinned source {s}",
                    r.name
                ),
                Input::Recipe(d) => assert!(
                    names.contains(&d.as_str()),
                    "{}: input {input} names unknown recipe {d}",
                    r.name
                ),
            }
        }
        if let Some(p) = &r.platform {
            assert!(toolchains.iter().any(|t| &t.name == p), "{}: {p}", r.name);
        }
    }
}

#[test]
fn the_documented_format_parses() {
    let blocks = common::toml_blocks(&repo().join("recipes/README.md"));
    assert!(!blocks.is_empty());
    for b in blocks {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("example.toml"), &b).unwrap();
        std::fs::write(dir.path().join("git.sh"), "#!/bin/bash\n").unwrap();
        let (r, _) = Recipe::load(&dir.path().join("example.toml")).unwrap();
        assert_eq!(r.name, "example");
        assert_eq!(r.kind, Kind::Output);
        assert_eq!(r.inputs["git"], Input::Source("git".into()));
        assert_eq!(r.output_name("linux-arm64"), "example-linux-arm64");
    }
}

fn load(toml: &str) -> Result<Recipe, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), toml).unwrap();
    std::fs::write(dir.path().join("s.sh"), "#!/bin/bash\n").unwrap();
    Recipe::load(&dir.path().join("r.toml"))
        .map(|(r, _)| r)
        .map_err(|e| e.to_string())
}

#[test]
fn bad_recipes_are_refused_naming_the_problem() {
    let good = load("script = \"s.sh\"\nkind = \"python\"\nplatform = \"linux-x64\"\n").unwrap();
    assert_eq!(good.kind, Kind::Python);
    assert_eq!(
        good.output_name("linux-x64"),
        "r",
        "fixed platform: no suffix"
    );
    for (toml, says) in [
        ("script = \"s.sh\"\n[inputs]\na = \"git\"\n", "source:NAME"),
        (
            "script = \"s.sh\"\n[inputs]\na = \"source:\"\n",
            "source:NAME",
        ),
        ("script = \"../s.sh\"\n", "relative path inside recipes/"),
        (
            "script = \"/etc/passwd\"\n",
            "relative path inside recipes/",
        ),
        ("script = \"missing.sh\"\n", "missing.sh"),
        ("script = \"s.sh\"\nbogus = 1\n", "bogus"),
        ("script = \"s.sh\"\nkind = \"banana\"\n", "banana"),
        (
            "script = \"s.sh\"\n[inputs]\n\".hidden\" = \"source:git\"\n",
            ".hidden",
        ),
    ] {
        let e = load(toml).expect_err(toml);
        assert!(e.contains(says), "{toml}: {e}");
    }
}

/// A project with recipes but no Docker: `build` fails early, clearly, changing nothing.
#[test]
fn build_refuses_what_it_cannot_resolve() {
    let env = TestEnv::new();
    let project = env.path().join("project");
    std::fs::create_dir_all(project.join("recipes")).unwrap();
    std::fs::create_dir_all(project.join("lockfiles")).unwrap();
    std::fs::write(project.join("sources.toml"), "").unwrap();
    std::fs::write(
        project.join("lockfiles/dockerbuild.lock"),
        format!("{}version = 1\n", dockerbuild::lock::HEADER),
    )
    .unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(project.join("recipes").join(format!("{name}.toml")), text).unwrap()
    };
    std::fs::write(project.join("recipes/s.sh"), "#!/bin/bash\n").unwrap();
    write("a", "script = \"s.sh\"\n[inputs]\nb = \"recipe:b\"\n");
    write("b", "script = \"s.sh\"\n[inputs]\na = \"recipe:a\"\n");
    write(
        "unpinned",
        "script = \"s.sh\"\n[inputs]\nx = \"source:nowhere\"\n",
    );
    let p = project.to_str().unwrap();
    let build = |args: &[&str]| {
        let mut full = vec!["--project", p, "build"];
        full.extend_from_slice(args);
        env.fails(&full)
    };
    let e = build(&["nope", "-p", "linux-x64"]);
    assert!(
        e.contains("no recipe `nope`") && e.contains("a, b, unpinned"),
        "{e}"
    );
    let e = build(&["a"]);
    assert!(e.contains("takes a platform"), "{e}");
    let e = build(&["a", "-p", "linux-x64"]);
    assert!(e.contains("depends on itself through a -> b -> a"), "{e}");
    let e = build(&["unpinned", "-p", "linux-x64"]);
    assert!(
        e.contains("needs source `nowhere`") && e.contains("dockerbuild lock"),
        "{e}"
    );
    assert!(env.entries_on_disk().is_empty(), "nothing was added");
}
