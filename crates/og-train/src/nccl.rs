//! NCCL all-reduce across the GPUs of every node (cudarc's bindings; `libnccl.so.2` is loaded
//! at run time, e.g. from PyTorch's `nvidia/nccl/lib` on `LD_LIBRARY_PATH`).
//!
//! The hub ([`crate::hub`]) is the rendezvous only, the role torchrun's store plays: rank 0
//! draws NCCL's unique id and every replica receives it in one hub round
//! ([`HubClient::share_from_rank0`]). Every replica then joins one communicator
//! on its own GPU, and each step's flat buffer is summed by NCCL (ring/tree over NVLink,
//! InfiniBand or TCP, as NCCL chooses) instead of through the hub. The buffer goes through host
//! memory on each side: burn 0.21 does not expose its CUDA tensors' device pointers.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use crate::error::{Result, TrainError};
use crate::hub::HubClient;

/// Bytes of an NCCL unique id.
const ID_BYTES: usize = 128;

/// One replica's communicator.
pub(crate) struct NcclReplica {
    comm: Comm,
    stream: Arc<CudaStream>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap; every use goes through the `Mutex` that holds it.
unsafe impl Send for NcclReplica {}

fn nccl_err(what: &str) -> impl Fn(cudarc::nccl::result::NcclError) -> TrainError + '_ {
    move |e| {
        TrainError::Collective(format!(
            "NCCL {what}: {e:?} (is libnccl.so.2 on the library path?)"
        ))
    }
}

fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> TrainError + '_ {
    move |e| TrainError::Collective(format!("CUDA {what}: {e}"))
}

/// Joins every local replica (`ordinals[l]` its CUDA device, `ranks[l]` its run-wide rank) to
/// one NCCL communicator of `world` ranks, receiving the id through each replica's hub
/// connection. Blocks until every rank of the run has joined (NCCL's own initialisation).
pub(crate) fn join(
    clients: &[Mutex<HubClient>],
    ordinals: &[usize],
    ranks: &[usize],
    world: usize,
) -> Result<Vec<Mutex<NcclReplica>>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .zip(ordinals.iter().zip(ranks))
            .map(|(client, (&ordinal, &rank))| {
                s.spawn(move || -> Result<NcclReplica> {
                    let ctx = CudaContext::new(ordinal).map_err(cuda_err("context"))?;
                    let stream = ctx.new_stream().map_err(cuda_err("stream"))?;
                    let mine: Option<Vec<u8>> = if rank == 0 {
                        let id = Id::new().map_err(nccl_err("unique id"))?;
                        Some(id.internal().iter().map(|&c| c as u8).collect())
                    } else {
                        None
                    };
                    let shared = client
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .share_from_rank0(mine.as_deref(), ID_BYTES)?;
                    let mut internal = [0 as std::ffi::c_char; ID_BYTES];
                    for (d, &b) in internal.iter_mut().zip(&shared) {
                        *d = b as std::ffi::c_char;
                    }
                    let id = Id::uninit(internal);
                    let comm = Comm::from_rank(stream.clone(), rank, world, id)
                        .map_err(nccl_err("communicator"))?;
                    Ok(NcclReplica { comm, stream })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| TrainError::Collective("NCCL set-up panicked".into()))?
                    .map(Mutex::new)
            })
            .collect()
    })
}

/// Sums `data` over every rank of the communicator.
pub(crate) fn all_reduce(replica: &Mutex<NcclReplica>, data: &[f32]) -> Result<Vec<f32>> {
    let r = replica.lock().unwrap_or_else(|e| e.into_inner());
    let mut buf = r
        .stream
        .clone_htod(data)
        .map_err(cuda_err("copy to the device"))?;
    r.comm
        .all_reduce_in_place(&mut buf, &ReduceOp::Sum)
        .map_err(nccl_err("all-reduce"))?;
    r.stream
        .clone_dtoh(&buf)
        .map_err(cuda_err("copy from the device"))
}
