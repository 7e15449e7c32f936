//! Where a model computes: burn's pure-Rust CPU backend (flex), or a CUDA GPU through burn's
//! CUDA backend (cubecl-cuda) when parm is built with `--features cuda`.
//!
//! burn picks the backend at run time from the [`Device`] value (burn-dispatch), so the
//! models and training loops are the same code on both; only the device handed to them
//! changes. A CUDA device is probed here before burn first touches it, because burn answers a
//! missing driver, a missing NVRTC or a bad index with a panic, and parm answers with an error.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::NnError;

/// The message for `--device cuda` on a build without the feature.
pub const NO_CUDA_FEATURE: &str = "built without the cuda feature; rebuild with --features cuda";

/// A compute device as the CLI names it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDevice {
    /// burn's flex backend on the CPU (the default; every build has it).
    #[default]
    Cpu,
    /// The CUDA GPU with this index, as the driver counts them (`CUDA_VISIBLE_DEVICES`
    /// applies).
    Cuda(usize),
}

impl FromStr for ComputeDevice {
    type Err = String;

    /// Parses `cpu`, `cuda` or `cuda:N`.
    ///
    /// # Errors
    /// Any other text, and `cuda...` on a build without the `cuda` feature
    /// ([`NO_CUDA_FEATURE`]).
    fn from_str(s: &str) -> Result<Self, String> {
        let device = match s.trim() {
            "cpu" => return Ok(ComputeDevice::Cpu),
            "cuda" => ComputeDevice::Cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(index)) => ComputeDevice::Cuda(index),
                _ => return Err(format!("unknown device {s:?}: expected cpu, cuda or cuda:N (N = 0, 1, ...)")),
            },
        };
        if cfg!(feature = "cuda") { Ok(device) } else { Err(NO_CUDA_FEATURE.to_string()) }
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeDevice::Cpu => write!(f, "cpu"),
            ComputeDevice::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl ComputeDevice {
    /// The burn device for inference (training wraps it with `.autodiff()`). A CUDA device is
    /// probed first: driver, device count, NVRTC, and one small kernel.
    ///
    /// # Errors
    /// [`NnError::Device`] when the build has no CUDA backend, or the machine has no usable
    /// driver, no such GPU, or no NVRTC library on the loader's path.
    pub fn open(&self) -> Result<Device, NnError> {
        match *self {
            ComputeDevice::Cpu => Ok(Device::flex()),
            ComputeDevice::Cuda(index) => open_cuda(index).map_err(|message| NnError::Device { device: self.to_string(), message }),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_index: usize) -> Result<Device, String> {
    Err(NO_CUDA_FEATURE.to_string())
}

#[cfg(feature = "cuda")]
fn open_cuda(index: usize) -> Result<Device, String> {
    probe_driver(index)?;
    let device = Device::cuda(index);
    first_kernel(&device)?;
    Ok(device)
}

/// Checks what burn would otherwise panic on: the driver library, `cuInit`, the index, and
/// NVRTC (cubecl compiles every kernel with it at run time).
#[cfg(feature = "cuda")]
fn probe_driver(index: usize) -> Result<(), String> {
    use cudarc::driver::result;
    // SAFETY: only tries to dlopen the library; nothing from it is called here.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) found: this machine has no NVIDIA driver; use --device cpu".into());
    }
    result::init().map_err(|e| format!("the CUDA driver did not initialise ({e}): no usable GPU; use --device cpu"))?;
    let count = result::device::get_count().map_err(|e| format!("cannot count CUDA devices: {e}"))?;
    if index >= count.max(0) as usize {
        return Err(format!("no GPU {index}: the driver sees {count} CUDA device(s)"));
    }
    // SAFETY: as above, a dlopen only.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("NVRTC (libnvrtc.so.12) not found: add its directory to LD_LIBRARY_PATH (for example the lib/ of \
                    the Python package nvidia-cuda-nvrtc)"
            .into());
    }
    Ok(())
}

/// Runs one tiny computation so that a failure to compile or launch a kernel (an NVRTC that
/// does not know this GPU, for example) is an error here rather than a panic mid-run.
#[cfg(feature = "cuda")]
fn first_kernel(device: &Device) -> Result<(), String> {
    use burn::tensor::Tensor;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the payload becomes the error message below
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let x = Tensor::<1>::ones([4], device);
        x.clone().add(x).sum().into_scalar::<f32>()
    }));
    std::panic::set_hook(previous);
    match outcome {
        Ok(v) if (v - 8.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(format!("a test kernel computed {v} instead of 8")),
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            Err(format!("the first CUDA kernel failed: {text}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_junk() {
        assert_eq!("cpu".parse::<ComputeDevice>(), Ok(ComputeDevice::Cpu));
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0"] {
            let e = bad.parse::<ComputeDevice>().unwrap_err();
            assert!(e.contains("unknown device"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cuda_parses_only_with_the_feature() {
        let parsed = ["cuda", "cuda:0", "cuda:3"].map(|s| s.parse::<ComputeDevice>());
        if cfg!(feature = "cuda") {
            assert_eq!(parsed, [Ok(ComputeDevice::Cuda(0)), Ok(ComputeDevice::Cuda(0)), Ok(ComputeDevice::Cuda(3))]);
        } else {
            assert!(parsed.iter().all(|p| p.as_ref().unwrap_err() == NO_CUDA_FEATURE));
        }
    }

    #[test]
    fn opening_cuda_without_a_usable_gpu_is_an_error() {
        // Without the feature always; with it on a machine with no GPU (CI, this one).
        let opened = ComputeDevice::Cuda(0).open();
        if !cfg!(feature = "cuda") {
            assert!(opened.is_err(), "no CUDA backend, yet cuda:0 opened");
        }
        if let Err(e) = opened {
            assert!(e.to_string().starts_with("cuda:0: "), "{e}");
        }
    }

    #[test]
    fn display_round_trips() {
        assert_eq!(ComputeDevice::Cuda(2).to_string(), "cuda:2");
        assert_eq!(ComputeDevice::Cpu.to_string(), "cpu");
    }
}
