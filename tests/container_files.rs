//! The container files (Dockerfile, deploy/k8s.yaml) agree with Docker's rules and with
//! the flags `kiln serve` really has. No Docker daemon is needed: these are the mistakes
//! that otherwise only show when an image is built or a pod is scheduled.

use clap::{Args, Command};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn read(path: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Every environment variable a `kiln serve` flag reads, plus the ones kiln reads itself.
fn known_variables() -> BTreeSet<String> {
    let serve = kiln::server::ServeArgs::augment_args(Command::new("serve"));
    let mut known: BTreeSet<String> = serve
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    known.insert("KILN_CACHE_DIR".into()); // cache root (model/demo.rs, cuda/jit_cache.rs)
    known.insert("KILN_LOG".into()); // log filter (main.rs)
    known
}

/// `KILN_*` names in `text`.
fn kiln_variables(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("KILN_") && w.len() > 5)
        .map(str::to_owned)
        .collect()
}

#[test]
fn from_lines_only_use_args_declared_before_the_first_from() {
    let dockerfile = read("Dockerfile");
    let mut global_args = BTreeSet::new();
    let mut seen_from = false;
    for line in dockerfile.lines().map(str::trim) {
        if let Some(arg) = line.strip_prefix("ARG ") {
            if !seen_from {
                global_args.insert(arg.split('=').next().unwrap().trim().to_string());
            }
        } else if let Some(image) = line.strip_prefix("FROM ") {
            seen_from = true;
            for used in image.split("${").skip(1) {
                let name = used.split('}').next().unwrap();
                assert!(
                    global_args.contains(name),
                    "`FROM {image}` uses ARG {name}, which is not declared before the first \
                     FROM (Docker: \"base name should not be blank\")"
                );
            }
        }
    }
    assert!(seen_from);
}

#[test]
fn the_image_runs_kiln_serve_as_a_user_with_a_health_check() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["kiln", "serve"]"#));
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER line");
    assert_ne!(user.trim(), "root");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/health"));
}

#[test]
fn every_kiln_variable_the_container_files_set_is_one_kiln_reads() {
    let known = known_variables();
    for path in ["Dockerfile", "deploy/k8s.yaml"] {
        for name in kiln_variables(&read(path)) {
            assert!(
                known.contains(&name),
                "{path} sets {name}, which kiln does not read"
            );
        }
    }
}

#[test]
fn the_pod_grace_period_outlasts_the_shutdown_timeout() {
    let k8s = read("deploy/k8s.yaml");
    let number_after = |key: &str| -> u64 {
        let at = k8s.find(key).unwrap_or_else(|| panic!("{key} in k8s.yaml")) + key.len();
        k8s[at..]
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let grace = number_after("terminationGracePeriodSeconds:");
    let timeout = number_after("KILN_SHUTDOWN_TIMEOUT, value:");
    assert!(
        grace > timeout,
        "grace period {grace} s must outlast the shutdown timeout {timeout} s"
    );
}
