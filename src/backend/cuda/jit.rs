//! Kernel JIT: compile every `kernels/*.cu` with NVRTC for the device's architecture,
//! cache the result on disk, load it into a CUDA context, and look kernels up by name.

use super::jit_cache::{cache_dir, cache_key, cache_path, CompileTarget};
use super::kernel_sources::{all_kernel_files, KernelFile, KERNEL_FILES, LAZY_KERNEL_FILES};
use super::nvrtc::Nvrtc;
use crate::backend::DType;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Every kernel of every file, loaded into one context: the files of `KERNEL_FILES` at
/// startup, those of `LAZY_KERNEL_FILES` when one of their kernels is first asked for.
pub struct KernelRegistry {
    functions: HashMap<String, CudaFunction>,
    target: CompileTarget,
    loader: Loader,
    /// One slot per lazy file: its kernels, or why it failed to build (not retried).
    lazy: Vec<OnceLock<Result<HashMap<String, CudaFunction>, String>>>,
}

/// What compiling and loading a file needs, kept for the lazy files.
struct Loader {
    ctx: Arc<CudaContext>,
    nvrtc: Nvrtc,
    target: CompileTarget,
    dir: Option<PathBuf>,
}

impl Loader {
    /// Compiles (or loads from the disk cache) `file` and loads its kernels.
    fn load_file(&self, file: &KernelFile) -> Result<HashMap<String, CudaFunction>> {
        let image = compile_cached(&self.nvrtc, file, self.target, self.dir.as_deref())?;
        let ptx = match self.target {
            CompileTarget::Sass(_) => Ptx::from_binary(image),
            CompileTarget::Ptx(_) => Ptx::from_src(String::from_utf8_lossy(&image).into_owned()),
        };
        let module = self.ctx.load_module(ptx).with_context(|| {
            format!(
                "loading kernels/{} ({})",
                file.file,
                self.target.arch_flag()
            )
        })?;
        let mut functions = HashMap::new();
        for op in file.ops {
            for dtype in DType::ALL {
                let name = kernel_name(op, dtype);
                let function = module
                    .load_function(&name)
                    .with_context(|| format!("kernel {name} missing from kernels/{}", file.file))?;
                functions.insert(name, function);
            }
        }
        Ok(functions)
    }
}

impl KernelRegistry {
    /// Compiles (or loads from the disk cache) and loads all kernels for `ctx`'s device.
    pub fn load(ctx: &Arc<CudaContext>, nvrtc: &Nvrtc) -> Result<Self> {
        let (major, minor) = ctx
            .compute_capability()
            .context("querying compute capability")?;
        let device_cc = (major * 10 + minor) as u32;
        let target =
            CompileTarget::choose(device_cc, nvrtc.supported_archs()).ok_or_else(|| {
                anyhow!(
                    "NVRTC {}.{} supports {:?}, none usable for compute capability {major}.{minor}",
                    nvrtc.version().0,
                    nvrtc.version().1,
                    nvrtc.supported_archs()
                )
            })?;
        let loader = Loader {
            ctx: ctx.clone(),
            nvrtc: nvrtc.clone(),
            target,
            dir: cache_dir(|name| std::env::var(name).ok()),
        };
        let mut functions = HashMap::new();
        for file in KERNEL_FILES {
            functions.extend(loader.load_file(file)?);
        }
        Ok(Self {
            functions,
            target,
            loader,
            lazy: LAZY_KERNEL_FILES.iter().map(|_| OnceLock::new()).collect(),
        })
    }

    /// The kernel `<op>_<dtype>`.
    pub fn get(&self, op: &str, dtype: DType) -> Result<&CudaFunction> {
        let name = kernel_name(op, dtype);
        if let Some(function) = self.functions.get(&name) {
            return Ok(function);
        }
        let (slot, file) = self
            .lazy
            .iter()
            .zip(LAZY_KERNEL_FILES)
            .find(|(_, file)| file.ops.contains(&op))
            .ok_or_else(|| anyhow!("no kernel named {name}"))?;
        let loaded = slot.get_or_init(|| {
            tracing::info!(file = file.file, "compiling kernels on first use");
            self.loader
                .load_file(file)
                .map_err(|err| format!("{err:#}"))
        });
        match loaded {
            Ok(functions) => functions
                .get(&name)
                .ok_or_else(|| anyhow!("no kernel named {name}")),
            Err(err) => Err(anyhow!("{err}")),
        }
    }

    /// What the kernels were compiled for.
    pub fn target(&self) -> CompileTarget {
        self.target
    }
}

/// `rms_norm` + bf16 -> `rms_norm_bf16`.
pub fn kernel_name(op: &str, dtype: DType) -> String {
    format!("{op}_{}", dtype.kernel_suffix())
}

/// Returns the compiled image of `file`, from the disk cache when present.
pub fn compile_cached(
    nvrtc: &Nvrtc,
    file: &KernelFile,
    target: CompileTarget,
    dir: Option<&Path>,
) -> Result<Vec<u8>> {
    let key = cache_key(
        &file.full_source(),
        target,
        nvrtc.version(),
        &Nvrtc::options(target),
    );
    let path = dir.map(|d| cache_path(d, file.file, target, &key));
    if let Some(path) = &path {
        if let Ok(image) = std::fs::read(path) {
            if !image.is_empty() {
                tracing::debug!(file = file.file, path = %path.display(), "kernel cache hit");
                return Ok(image);
            }
        }
    }
    let start = Instant::now();
    let compiled = nvrtc.compile(file, target)?;
    tracing::info!(
        file = file.file,
        arch = %target.arch_flag(),
        ms = start.elapsed().as_millis() as u64,
        "compiled kernels with NVRTC"
    );
    if !compiled.log.is_empty() {
        tracing::warn!(file = file.file, log = %compiled.log, "NVRTC warnings");
    }
    if let Some(path) = &path {
        if let Err(err) = write_atomically(path, &compiled.image) {
            tracing::warn!(path = %path.display(), error = %err, "could not cache compiled kernels");
        }
    }
    Ok(compiled.image)
}

/// Writes through a temporary file and a rename, so a concurrent reader (another rank or
/// process) never sees a half-written image.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Compiles every kernel file for `target` and fails on any error or warning. This is
/// the CI check: the same sources and options as the GPU path, no device needed.
pub fn check_all(nvrtc: &Nvrtc, target: CompileTarget) -> Result<Vec<(&'static str, usize)>> {
    let mut sizes = Vec::new();
    for file in all_kernel_files() {
        let compiled = nvrtc.compile(file, target)?;
        if !compiled.log.is_empty() {
            anyhow::bail!(
                "kernels/{} compiled for {} with warnings (treated as errors):\n{}",
                file.file,
                target.arch_flag(),
                compiled.log
            );
        }
        sizes.push((file.file, compiled.image.len()));
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_have_dtype_suffix() {
        assert_eq!(kernel_name("rms_norm", DType::BF16), "rms_norm_bf16");
        assert_eq!(kernel_name("attention", DType::F32), "attention_f32");
    }

    #[test]
    fn atomic_write_creates_folders_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/norm-sm_90-0123.cubin");
        write_atomically(&path, b"image").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"image");
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }
}
