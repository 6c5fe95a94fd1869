//! Run-time backend selection at the binary edge; library code stays generic over `B: Backend`.
//!
//! `--device ndarray|flex|wgpu[:N]|cuda[:N]` parses into a [`DeviceSpec`]; [`dispatch`] runs a
//! [`BackendTask`] on the matching backend. A backend that was not compiled in, or a CUDA
//! device without a usable driver, is a [`BackendError`], never a panic.

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;
#[allow(unused_imports)]
use burn::tensor::backend::{Backend, DTypeUsage};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's NdArray CPU backend.
    NdArray,
    /// burn's Flex CPU backend.
    Flex,
    /// wgpu: the default adapter, or the N-th discrete GPU.
    Wgpu(Option<usize>),
    /// CUDA device N.
    Cuda(usize),
}

impl DeviceSpec {
    /// Whether the device is the host CPU (NdArray, Flex).
    pub fn is_cpu(&self) -> bool {
        matches!(self, DeviceSpec::NdArray | DeviceSpec::Flex)
    }
}

/// The CPU backend used when no `--device` is given. Chosen by measurement on the connector
/// forward at paper size (`cargo bench -p og-llava --bench backends`, see docs/backends.md).
pub const DEFAULT_DEVICE: DeviceSpec = DeviceSpec::Flex;

impl Default for DeviceSpec {
    fn default() -> Self {
        if cfg!(feature = "flex") {
            DEFAULT_DEVICE
        } else if cfg!(feature = "ndarray") {
            DeviceSpec::NdArray
        } else if cfg!(feature = "cuda") {
            DeviceSpec::Cuda(0)
        } else {
            DeviceSpec::Wgpu(None)
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::NdArray => write!(f, "ndarray"),
            DeviceSpec::Flex => write!(f, "flex"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The most data-parallel replicas one process runs (each holds a whole model).
pub const MAX_REPLICAS: usize = 64;

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("unknown device {0:?}: expected ndarray, flex, wgpu[:N] or cuda[:N]")]
    Parse(String),
    #[error(
        "devices {0:?}: expected a count from 1 to {MAX_REPLICAS} or a comma-separated list of \
         devices"
    )]
    Count(String),
    #[error(
        "device {device} needs the `{feature}` cargo feature; rebuild with `--features {feature}`"
    )]
    NotCompiled {
        device: DeviceSpec,
        feature: &'static str,
    },
    #[error("devices {0} and {1} are of different backends: one run uses one backend")]
    Mixed(DeviceSpec, DeviceSpec),
    #[error("CUDA device {index} is not usable: {reason}")]
    Cuda { index: usize, reason: String },
    #[error("precision {0}")]
    Precision(String),
}

/// The float dtype a model computes in.
///
/// `bf16` makes bf16 the device's default float dtype (burn's per-device dtype policy), so
/// weights load, and activations are computed, in bf16; the models keep softmaxes, norm
/// statistics and the loss in f32. Training adds f32 master weights (og-train).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 where the device has hardware-accelerated bf16 matrix multiplication (CUDA
    /// tensor cores), f32 elsewhere (the CPU backends).
    #[default]
    Auto,
    F32,
    /// bf16; an error on a backend without bf16 arithmetic (NdArray, wgpu).
    Bf16,
}

impl FromStr for Precision {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Precision::Auto),
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(BackendError::Precision(format!(
                "{other:?}: expected auto, f32 or bf16"
            ))),
        }
    }
}

impl Precision {
    /// The float dtype this precision means on `device`; bf16 on a backend without bf16
    /// arithmetic is an error.
    pub fn resolve<B: Backend>(self, device: &B::Device) -> Result<DType, BackendError> {
        let bf16 = B::supports_dtype(device, DType::BF16);
        match self {
            Precision::F32 => Ok(DType::F32),
            Precision::Auto => Ok(
                if bf16 && B::dtype_usage(device, DType::BF16).contains(DTypeUsage::Accelerated) {
                    DType::BF16
                } else {
                    DType::F32
                },
            ),
            Precision::Bf16 if bf16 => Ok(DType::BF16),
            Precision::Bf16 => Err(BackendError::Precision(format!(
                "bf16: the {} backend has no bf16 arithmetic; use f32 (or a backend with bf16: \
                 cuda, flex)",
                B::name(device)
            ))),
        }
    }

    /// Resolves the precision on `devices` and makes it their default float dtype; returns
    /// the dtype. A device's dtype is chosen once per process, before the first tensor is made
    /// on it: a device that already creates another dtype is an error.
    pub fn apply<B: Backend>(self, devices: &[B::Device]) -> Result<DType, BackendError> {
        use burn::tensor::Element;
        let Some(first) = devices.first() else {
            return Ok(DType::F32);
        };
        let dtype = self.resolve::<B>(first)?;
        for d in devices {
            if burn::tensor::set_default_dtypes::<B>(d, dtype, <B::IntElem as Element>::dtype())
                .is_err()
            {
                let now: DType = burn::tensor::get_device_settings::<B>(d).float_dtype.into();
                if now != dtype {
                    return Err(BackendError::Precision(format!(
                        "{dtype:?}: device {d:?} already holds {now:?} tensors in this process; \
                         the precision must be chosen before anything is created on it"
                    )));
                }
            }
        }
        Ok(dtype)
    }
}

impl FromStr for DeviceSpec {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => (
                n,
                Some(
                    i.parse::<usize>()
                        .map_err(|_| BackendError::Parse(s.to_string()))?,
                ),
            ),
            None => (s, None),
        };
        match (name.to_ascii_lowercase().as_str(), index) {
            ("ndarray", None) => Ok(DeviceSpec::NdArray),
            ("flex", None) => Ok(DeviceSpec::Flex),
            ("wgpu", i) => Ok(DeviceSpec::Wgpu(i)),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            _ => Err(BackendError::Parse(s.to_string())),
        }
    }
}

/// Work that runs on any backend: implement `run` once, generically.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Work that runs on several devices of one backend (data-parallel training).
pub trait MultiDeviceTask {
    type Output;
    fn run<B: Backend>(self, devices: Vec<B::Device>) -> Self::Output;
}

struct OneDevice<T>(T);

impl<T: BackendTask> MultiDeviceTask for OneDevice<T> {
    type Output = T::Output;
    fn run<B: Backend>(self, mut devices: Vec<B::Device>) -> T::Output {
        self.0.run::<B>(devices.remove(0))
    }
}

/// Runs `task` on the backend `spec` names.
pub fn dispatch<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output, BackendError> {
    dispatch_many(&[spec], OneDevice(task))
}

impl DeviceSpec {
    /// `n` devices of this kind: CUDA and wgpu count up from this index (`cuda:2` ×2 →
    /// `cuda:2, cuda:3`; `wgpu` → discrete GPUs 0, 1, …); the CPU backends repeat their one
    /// device (each replica then works on its own threads).
    pub fn replicas(self, n: usize) -> Vec<DeviceSpec> {
        (0..n)
            .map(|k| match self {
                DeviceSpec::Cuda(i) => DeviceSpec::Cuda(i + k),
                DeviceSpec::Wgpu(i) if n > 1 => DeviceSpec::Wgpu(Some(i.unwrap_or(0) + k)),
                other => other,
            })
            .collect()
    }

    /// Parses `N` (that many replicas of `base`, at most [`MAX_REPLICAS`]) or a
    /// comma-separated list of devices.
    pub fn parse_many(s: &str, base: DeviceSpec) -> Result<Vec<DeviceSpec>, BackendError> {
        if let Ok(n) = s.trim().parse::<usize>() {
            if n == 0 || n > MAX_REPLICAS {
                return Err(BackendError::Count(s.to_string()));
            }
            return Ok(base.replicas(n));
        }
        let specs: Vec<DeviceSpec> = s
            .split(',')
            .map(|d| d.trim().parse())
            .collect::<Result<_, _>>()?;
        one_backend(&specs)?;
        Ok(specs)
    }

    fn backend_name(self) -> &'static str {
        match self {
            DeviceSpec::NdArray => "ndarray",
            DeviceSpec::Flex => "flex",
            DeviceSpec::Wgpu(_) => "wgpu",
            DeviceSpec::Cuda(_) => "cuda",
        }
    }
}

/// All of `specs` name devices of one backend.
fn one_backend(specs: &[DeviceSpec]) -> Result<(), BackendError> {
    match specs
        .iter()
        .find(|s| s.backend_name() != specs[0].backend_name())
    {
        Some(other) => Err(BackendError::Mixed(specs[0], *other)),
        None => Ok(()),
    }
}

/// Runs `task` on the devices `specs` name, which must all be of one backend.
#[allow(unreachable_code, unused_variables)]
pub fn dispatch_many<T: MultiDeviceTask>(
    specs: &[DeviceSpec],
    task: T,
) -> Result<T::Output, BackendError> {
    let Some(&first) = specs.first() else {
        return Err(BackendError::Count(String::new()));
    };
    one_backend(specs)?;
    match first {
        DeviceSpec::NdArray => {
            #[cfg(feature = "ndarray")]
            return Ok(
                task.run::<burn::backend::NdArray<f32>>(vec![Default::default(); specs.len()])
            );
            Err(BackendError::NotCompiled {
                device: first,
                feature: "ndarray",
            })
        }
        DeviceSpec::Flex => {
            #[cfg(feature = "flex")]
            return Ok(task.run::<burn::backend::Flex<f32>>(vec![Default::default(); specs.len()]));
            Err(BackendError::NotCompiled {
                device: first,
                feature: "flex",
            })
        }
        DeviceSpec::Wgpu(_) => {
            #[cfg(feature = "wgpu")]
            {
                use burn::backend::wgpu::WgpuDevice;
                let devices = specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Wgpu(Some(n)) => WgpuDevice::DiscreteGpu(*n),
                        _ => WgpuDevice::DefaultDevice,
                    })
                    .collect();
                return Ok(task.run::<burn::backend::Wgpu>(devices));
            }
            Err(BackendError::NotCompiled {
                device: first,
                feature: "wgpu",
            })
        }
        DeviceSpec::Cuda(_) => {
            #[cfg(feature = "cuda")]
            {
                let mut devices = Vec::new();
                for s in specs {
                    if let DeviceSpec::Cuda(index) = *s {
                        cuda_probe(index)?;
                        devices.push(burn::backend::cuda::CudaDevice { index });
                    }
                }
                return Ok(task.run::<burn::backend::Cuda>(devices));
            }
            Err(BackendError::NotCompiled {
                device: first,
                feature: "cuda",
            })
        }
    }
}

/// Checks that the CUDA driver loads, initialises and has device `index`, before burn touches
/// it (burn 0.21 panics in a worker thread otherwise).
#[cfg(feature = "cuda")]
pub fn cuda_probe(index: usize) -> Result<(), BackendError> {
    let err = |reason: String| BackendError::Cuda { index, reason };
    let names: &[&str] = if cfg!(windows) {
        &["nvcuda.dll"]
    } else {
        &["libcuda.so.1", "libcuda.so"]
    };
    // SAFETY: loading the CUDA driver library runs its initialisers, which is what using CUDA
    // at all requires; the symbols are called with their documented C signatures.
    unsafe {
        let lib = names
            .iter()
            .find_map(|n| libloading::Library::new(n).ok())
            .ok_or_else(|| {
                err(format!(
                    "no CUDA driver library found ({})",
                    names.join(", ")
                ))
            })?;
        let init: libloading::Symbol<unsafe extern "C" fn(u32) -> i32> =
            lib.get(b"cuInit\0").map_err(|e| err(e.to_string()))?;
        let count_fn: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| err(e.to_string()))?;
        let rc = init(0);
        if rc != 0 {
            return Err(err(format!("cuInit failed with CUDA error {rc}")));
        }
        let mut count = 0i32;
        let rc = count_fn(&mut count);
        if rc != 0 {
            return Err(err(format!("cuDeviceGetCount failed with CUDA error {rc}")));
        }
        if index >= count as usize {
            return Err(err(format!("the driver reports {count} device(s)")));
        }
    }
    Ok(())
}

/// The backends this build can dispatch to.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "ndarray") {
        v.push("ndarray");
    }
    if cfg!(feature = "flex") {
        v.push("flex");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Name;
    impl BackendTask for Name {
        type Output = String;
        fn run<B: Backend>(self, _device: B::Device) -> String {
            B::name(&Default::default())
        }
    }

    #[test]
    fn parse_many() {
        let base = DeviceSpec::Cuda(1);
        assert_eq!(
            DeviceSpec::parse_many("3", base).unwrap(),
            vec![
                DeviceSpec::Cuda(1),
                DeviceSpec::Cuda(2),
                DeviceSpec::Cuda(3)
            ]
        );
        assert_eq!(
            DeviceSpec::parse_many("2", DeviceSpec::NdArray).unwrap(),
            vec![DeviceSpec::NdArray, DeviceSpec::NdArray]
        );
        assert_eq!(
            DeviceSpec::parse_many("cuda:0, cuda:2", base).unwrap(),
            vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(2)]
        );
        assert!(matches!(
            DeviceSpec::parse_many("0", base),
            Err(BackendError::Count(_))
        ));
        assert!(matches!(
            DeviceSpec::parse_many("100000", base),
            Err(BackendError::Count(_))
        ));
        assert!(matches!(
            DeviceSpec::parse_many("cuda:0,flex", base),
            Err(BackendError::Mixed(..))
        ));
        assert!(matches!(
            dispatch_many(&[DeviceSpec::NdArray, DeviceSpec::Flex], OneDevice(Name)),
            Err(BackendError::Mixed(..))
        ));
    }

    #[test]
    fn parse() {
        assert_eq!(
            "ndarray".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::NdArray
        );
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            "wgpu".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Wgpu(None)
        );
        assert!(matches!(
            "tpu".parse::<DeviceSpec>(),
            Err(BackendError::Parse(_))
        ));
        assert!(matches!(
            "cuda:x".parse::<DeviceSpec>(),
            Err(BackendError::Parse(_))
        ));
        assert!(matches!(
            "flex:0".parse::<DeviceSpec>(),
            Err(BackendError::Parse(_))
        ));
    }

    /// The same connector on both CPU backends computes the same function.
    #[cfg(all(feature = "ndarray", feature = "flex"))]
    #[test]
    fn cpu_backends_agree() {
        let probe = crate::ConnectorProbe {
            grid: 6,
            vision_hidden_size: 32,
            text_hidden_size: 48,
            iterations: 1,
        };
        let a = dispatch(DeviceSpec::NdArray, probe.clone()).unwrap();
        let b = dispatch(DeviceSpec::Flex, probe).unwrap();
        assert_eq!(a.shape, [1, 42, 48]);
        assert!(a.mean.is_finite() && a.mean != 0.0);
        assert!((a.mean - b.mean).abs() < 1e-5, "{} vs {}", a.mean, b.mean);
    }

    #[test]
    fn missing_backends_are_errors() {
        #[cfg(not(feature = "cuda"))]
        {
            let e = dispatch(DeviceSpec::Cuda(0), Name).unwrap_err();
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
        #[cfg(not(feature = "wgpu"))]
        assert!(matches!(
            dispatch(DeviceSpec::Wgpu(None), Name),
            Err(BackendError::NotCompiled {
                feature: "wgpu",
                ..
            })
        ));
        #[cfg(feature = "ndarray")]
        assert!(
            dispatch(DeviceSpec::NdArray, Name)
                .unwrap()
                .to_lowercase()
                .contains("ndarray")
        );
    }
}
