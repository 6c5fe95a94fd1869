//! One process-wide order between building autodiff graphs and running `backward()`.
//!
//! burn-autodiff 0.21 sweeps "orphaned" graph steps at the end of every `backward()`. A sweep
//! on one thread can reclaim a node that another thread is still wiring into a new operation,
//! and that thread's parameter then silently comes back without a gradient (burn issue #5573,
//! fixed after 0.21). Replicas that train on threads, or two runs in one process, hit it: under
//! AdamW a single missing gradient moves a parameter by a whole learning rate.
//!
//! Graph building (forward passes, optimiser updates) takes the shared side of one lock and
//! `backward()` the exclusive side: forwards still run side by side, a backward runs alone.

use std::sync::{RwLock, RwLockReadGuard};

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

static GRAPHS: RwLock<()> = RwLock::new(());

/// Held while this thread builds graph operations; any number of threads may hold it.
pub(crate) fn building() -> RwLockReadGuard<'static, ()> {
    GRAPHS.read().unwrap_or_else(|e| e.into_inner())
}

/// `loss.backward()` while no other thread builds or runs a graph.
pub(crate) fn backward<B: AutodiffBackend>(loss: Tensor<B, 1>) -> B::Gradients {
    let _alone = GRAPHS.write().unwrap_or_else(|e| e.into_inner());
    loss.backward()
}
