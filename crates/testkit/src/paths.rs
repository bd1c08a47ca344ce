//! Where the real models, sample photos and ONNX Runtime library are. Tests run against the real
//! files `scripts/setup.sh` fetches (no fakes), so a missing one is a set-up problem: it panics
//! with the command that fixes it rather than skipping the test.

use std::path::{Path, PathBuf};

/// The repository root (canonical where the file system allows).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// `$FACEGROUP_MODELS_DIR`, else `<repo>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("FACEGROUP_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
}

/// `$FACEGROUP_TEST_IMAGES`, else `<repo>/testdata/images` (the sample photos).
pub fn images_dir() -> PathBuf {
    std::env::var_os("FACEGROUP_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("testdata/images"))
}

/// The bytes of sample photo `name` (e.g. `obama.jpg`).
pub fn image_bytes(name: &str) -> Vec<u8> {
    let path = images_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `python3 scripts/fetch.py images` (or scripts/setup.sh)",
            path.display()
        )
    })
}

/// `$ORT_DYLIB_PATH`, or the library inside the setup script's virtualenv.
pub fn ort_dylib() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries.flatten().find_map(|py| {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi).ok()?.flatten().find_map(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                name.starts_with("libonnxruntime.so.").then(|| f.path())
            })
        })
    });
    found.unwrap_or_else(|| {
        panic!("ONNX Runtime not found: set ORT_DYLIB_PATH or run scripts/setup.sh")
    })
}

/// A program installed into the repo's `.venv` by scripts/setup.sh.
pub(crate) fn venv_bin(name: &str) -> PathBuf {
    let p = repo_root().join(".venv/bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (installs moto[server] and SecantusDB)",
        p.display()
    );
    p
}

/// Runs the repo's `.venv` Python (boto3 and friends for set-up scripts) with `args` in the repo
/// root, feeding it `stdin`; returns its stdout, or panics with its stderr when it fails.
pub fn run_python(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(venv_bin("python"))
        .current_dir(repo_root())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start .venv/bin/python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write python's stdin");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "python {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Encodes `jpeg` as HEIC (or AVIF with `extra = ["-A"]`) into `out` with Debian's `heif-enc`
/// (libheif-examples, installed by scripts/setup.sh) and returns the file's bytes. Tests make
/// their HEIF photos this way from the sample JPEGs instead of committing any; a missing tool
/// fails the test with the fix.
pub fn heif_enc(jpeg: &[u8], out: &Path, extra: &[&str]) -> Vec<u8> {
    let input = out.with_extension("source.jpg");
    std::fs::write(&input, jpeg).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let result = std::process::Command::new("heif-enc")
        .args(extra)
        .args(["-q", "90", "-o"])
        .arg(out)
        .arg(&input)
        .output()
        .unwrap_or_else(|e| {
            panic!("heif-enc: {e}; run scripts/setup.sh (installs Debian's libheif-examples)")
        });
    let _ = std::fs::remove_file(&input);
    assert!(
        result.status.success(),
        "heif-enc failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
}
