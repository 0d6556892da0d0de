//! NVRTC, the run-time CUDA compiler, loaded dynamically. Needs no GPU: CI uses it to
//! compile-check every kernel for every architecture we support.

use super::jit_cache::CompileTarget;
use super::kernel_sources::KernelFile;
use anyhow::{bail, Context, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, c_int, CStr, CString};

/// Options every kernel is compiled with (besides `--gpu-architecture`).
pub const BASE_OPTIONS: &[&str] = &["-default-device", "--std=c++17"];

/// A loaded NVRTC library and what it can target.
#[derive(Debug, Clone)]
pub struct Nvrtc {
    version: (i32, i32),
    supported_archs: Vec<u32>,
}

/// The output of one compilation.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    /// cubin bytes for [`CompileTarget::Sass`], PTX text (no trailing NUL) for `Ptx`.
    pub image: Vec<u8>,
    pub target: CompileTarget,
    /// NVRTC's log: empty when the source compiled without warnings.
    pub log: String,
}

impl Nvrtc {
    /// Loads libnvrtc. Fails with a clear message (never panics) when it is not installed.
    pub fn load() -> Result<Self> {
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { sys::is_culib_present() } {
            bail!(
                "NVRTC (libnvrtc.so) not found: install the CUDA runtime or `pip install \
                 nvidia-cuda-nvrtc` and put its lib folder on LD_LIBRARY_PATH"
            );
        }
        // cudarc panics on a missing symbol (an NVRTC older than its bindings): catch it.
        std::panic::catch_unwind(Self::query)
            .map_err(|_| anyhow::anyhow!("libnvrtc was found but lacks an expected symbol"))?
    }

    fn query() -> Result<Self> {
        let mut major: c_int = 0;
        let mut minor: c_int = 0;
        // SAFETY: out-pointers to live locals.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .context("nvrtcVersion")?;
        let mut count: c_int = 0;
        // SAFETY: out-pointer to a live local.
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut count) }
            .result()
            .context("nvrtcGetNumSupportedArchs")?;
        let mut archs = vec![0 as c_int; count.max(0) as usize];
        // SAFETY: the buffer holds exactly `count` ints, as NVRTC requires.
        unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
            .result()
            .context("nvrtcGetSupportedArchs")?;
        Ok(Self {
            version: (major, minor),
            supported_archs: archs.into_iter().map(|a| a as u32).collect(),
        })
    }

    /// `(major, minor)`, e.g. `(13, 0)`.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// Compute capabilities NVRTC can emit machine code for, e.g. `[75, 80, ..., 120]`.
    pub fn supported_archs(&self) -> &[u32] {
        &self.supported_archs
    }

    /// Full option list for a target.
    pub fn options(target: CompileTarget) -> Vec<String> {
        let mut options = vec![format!("--gpu-architecture={}", target.arch_flag())];
        options.extend(BASE_OPTIONS.iter().map(|s| s.to_string()));
        options
    }

    /// Compiles one kernel file. Errors carry the file name and NVRTC's log.
    pub fn compile(&self, file: &KernelFile, target: CompileTarget) -> Result<CompiledKernel> {
        let source = CString::new(file.full_source())
            .with_context(|| format!("{} contains a NUL byte", file.file))?;
        let name = CString::new(file.file).context("kernel file name contains a NUL byte")?;
        let program = Program(
            result::create_program(&source, Some(&name))
                .with_context(|| format!("nvrtcCreateProgram({})", file.file))?,
        );
        let options = Self::options(target);
        // SAFETY: `program` is alive until the end of this function.
        let compiled = unsafe { result::compile_program(program.0, &options) };
        let log = program.log();
        if let Err(err) = compiled {
            bail!(
                "NVRTC failed to compile kernels/{} for {} ({err:?}):\n{log}",
                file.file,
                target.arch_flag()
            );
        }
        let image = match target {
            CompileTarget::Sass(_) => program.cubin(),
            CompileTarget::Ptx(_) => program.ptx(),
        }
        .with_context(|| format!("reading NVRTC output for kernels/{}", file.file))?;
        Ok(CompiledKernel { image, target, log })
    }
}

/// Owns an `nvrtcProgram` and destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Program {
    fn log(&self) -> String {
        // SAFETY: the program is alive.
        match unsafe { result::get_program_log(self.0) } {
            Ok(raw) => c_chars_to_string(&raw),
            Err(err) => format!("(no log: {err:?})"),
        }
    }

    fn ptx(&self) -> Result<Vec<u8>> {
        // SAFETY: the program is alive and compiled.
        let raw = unsafe { result::get_ptx(self.0) }
            .map_err(|e| anyhow::anyhow!("nvrtcGetPTX: {e:?}"))?;
        Ok(c_chars_to_string(&raw).into_bytes())
    }

    fn cubin(&self) -> Result<Vec<u8>> {
        let mut size: usize = 0;
        // SAFETY: the program is alive and compiled; out-pointer to a live local.
        unsafe { sys::nvrtcGetCUBINSize(self.0, &mut size) }
            .result()
            .map_err(|e| anyhow::anyhow!("nvrtcGetCUBINSize: {e:?}"))?;
        if size == 0 {
            bail!("NVRTC produced no cubin");
        }
        let mut bytes = vec![0u8; size];
        // SAFETY: the buffer holds exactly `size` bytes.
        unsafe { sys::nvrtcGetCUBIN(self.0, bytes.as_mut_ptr() as *mut c_char) }
            .result()
            .map_err(|e| anyhow::anyhow!("nvrtcGetCUBIN: {e:?}"))?;
        Ok(bytes)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program, destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// NVRTC returns NUL-terminated C strings in `Vec<c_char>`.
fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().trim().to_string(),
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_string(),
    }
}
