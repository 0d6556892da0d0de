//! Where compiled kernels are cached on disk and under which key. Pure logic, no CUDA.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What NVRTC is asked to produce for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompileTarget {
    /// Machine code (cubin) for `sm_XY`: no driver JIT, no PTX-version mismatch.
    Sass(u32),
    /// PTX for `compute_XY`, JIT-compiled by the driver: used when this NVRTC cannot emit
    /// machine code for the device (a GPU newer than the NVRTC library).
    Ptx(u32),
}

impl CompileTarget {
    /// The value of NVRTC's `--gpu-architecture`.
    pub fn arch_flag(&self) -> String {
        match self {
            CompileTarget::Sass(cc) => format!("sm_{cc}"),
            CompileTarget::Ptx(cc) => format!("compute_{cc}"),
        }
    }

    /// File extension of the cached artifact.
    pub fn extension(&self) -> &'static str {
        match self {
            CompileTarget::Sass(_) => "cubin",
            CompileTarget::Ptx(_) => "ptx",
        }
    }

    /// Picks the target for a device of compute capability `device_cc` (e.g. 90) given the
    /// architectures this NVRTC supports: the exact SASS when possible, else PTX of the
    /// newest older architecture (forward compatible), else nothing.
    pub fn choose(device_cc: u32, supported: &[u32]) -> Option<CompileTarget> {
        if supported.contains(&device_cc) {
            return Some(CompileTarget::Sass(device_cc));
        }
        supported
            .iter()
            .copied()
            .filter(|&cc| cc < device_cc)
            .max()
            .map(CompileTarget::Ptx)
    }
}

/// Cache key: everything that changes the compiled output.
pub fn cache_key(
    source: &str,
    target: CompileTarget,
    nvrtc_version: (i32, i32),
    options: &[String],
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(source.as_bytes());
    hasher.update([0u8]);
    hasher.update(target.arch_flag().as_bytes());
    hasher.update(format!("\0nvrtc {}.{}\0", nvrtc_version.0, nvrtc_version.1).as_bytes());
    for option in options {
        hasher.update(option.as_bytes());
        hasher.update([0u8]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache folder: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln/kernels`, else
/// `$HOME/.cache/kiln/kernels`; `None` when none of them is set (caching is then skipped).
/// Takes the environment as a lookup function so tests need not mutate the process env.
pub fn cache_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("KILN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        return Some(Path::new(&xdg).join("kiln").join("kernels"));
    }
    non_empty("HOME").map(|home| Path::new(&home).join(".cache").join("kiln").join("kernels"))
}

/// `<dir>/<file stem>-<arch>-<first 16 hex digits of key>.<ext>`, readable at a glance.
pub fn cache_path(dir: &Path, file: &str, target: CompileTarget, key: &str) -> PathBuf {
    let stem = file.strip_suffix(".cu").unwrap_or(file);
    let short = &key[..key.len().min(16)];
    dir.join(format!(
        "{stem}-{}-{short}.{}",
        target.arch_flag(),
        target.extension()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn exact_sass_when_supported() {
        assert_eq!(
            CompileTarget::choose(90, &[75, 80, 86, 89, 90]),
            Some(CompileTarget::Sass(90))
        );
    }

    #[test]
    fn newer_gpu_falls_back_to_ptx_of_newest_older_arch() {
        assert_eq!(
            CompileTarget::choose(120, &[75, 80, 90, 100]),
            Some(CompileTarget::Ptx(100))
        );
        assert_eq!(
            CompileTarget::choose(87, &[75, 80, 86, 89, 90]),
            Some(CompileTarget::Ptx(86))
        );
    }

    #[test]
    fn gpu_older_than_every_supported_arch_has_no_target() {
        assert_eq!(CompileTarget::choose(70, &[75, 80]), None);
    }

    #[test]
    fn arch_flags_and_extensions() {
        assert_eq!(CompileTarget::Sass(89).arch_flag(), "sm_89");
        assert_eq!(CompileTarget::Ptx(90).arch_flag(), "compute_90");
        assert_eq!(CompileTarget::Sass(89).extension(), "cubin");
        assert_eq!(CompileTarget::Ptx(90).extension(), "ptx");
    }

    #[test]
    fn key_changes_with_every_input() {
        let opts = vec!["--std=c++17".to_string()];
        let base = cache_key("src", CompileTarget::Sass(90), (13, 0), &opts);
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            cache_key("src", CompileTarget::Sass(90), (13, 0), &opts)
        );
        assert_ne!(
            base,
            cache_key("src2", CompileTarget::Sass(90), (13, 0), &opts)
        );
        assert_ne!(
            base,
            cache_key("src", CompileTarget::Sass(80), (13, 0), &opts)
        );
        assert_ne!(
            base,
            cache_key("src", CompileTarget::Ptx(90), (13, 0), &opts)
        );
        assert_ne!(
            base,
            cache_key("src", CompileTarget::Sass(90), (12, 9), &opts)
        );
        assert_ne!(
            base,
            cache_key("src", CompileTarget::Sass(90), (13, 0), &[])
        );
    }

    #[test]
    fn cache_dir_precedence() {
        let all = env_of(&[
            ("KILN_CACHE_DIR", "/k"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_dir(all), Some(PathBuf::from("/k")));
        let xdg = env_of(&[
            ("KILN_CACHE_DIR", ""),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_dir(xdg), Some(PathBuf::from("/x/kiln/kernels")));
        let home = env_of(&[("HOME", "/h")]);
        assert_eq!(
            cache_dir(home),
            Some(PathBuf::from("/h/.cache/kiln/kernels"))
        );
        assert_eq!(cache_dir(env_of(&[])), None);
    }

    #[test]
    fn cache_path_is_readable() {
        let key = "0123456789abcdef0123";
        let path = cache_path(Path::new("/c"), "norm.cu", CompileTarget::Sass(90), key);
        assert_eq!(path, PathBuf::from("/c/norm-sm_90-0123456789abcdef.cubin"));
    }
}
