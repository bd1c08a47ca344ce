//! A scratch folder per test. Tests run in parallel threads of one process and several test
//! processes run at once, so the name carries the process id and a per-process counter.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty folder under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new folder whose name ends in `label` (to tell folders apart when one is left behind).
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("facegroup-test-{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_distinct_folders_removed_on_drop() {
        let (a, b) = (TempDir::new("x"), TempDir::new("x"));
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir());
        assert_eq!(std::fs::read_dir(a.path()).map(|d| d.count()).ok(), Some(0));
        std::fs::write(a.path().join("f"), b"data").expect("write");
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
    }
}
