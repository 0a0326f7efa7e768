//! Records the commit the benchmarks are built from, so a binary kept beside another (an
//! A/B pair) prints its own commit, not the checkout's at the time it runs.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SLUICE_LOAD_COMMIT={commit}");
    // Built again when the checkout moves to another commit. A file that does not exist
    // (no packed refs) would have the script run at every build, so only those that do.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", "packed-refs"]
        .into_iter()
        .chain(branch.as_deref())
        .filter_map(|path| git(&["rev-parse", "--git-path", path]))
        .filter(|file| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(file)
                .exists()
        });
    for file in watched {
        println!("cargo:rerun-if-changed={file}");
    }
}
