//! Data-parallel training over several devices through burn's collective all-reduce
//! (`burn-collective`).
//!
//! Each device holds a replica of the model and of the AdamW state. A step's micro-batches are
//! dealt round-robin to the replicas (micro-batch `m` to replica `m mod D`); every replica runs
//! forward and backward on its share on its own thread, then the replicas sum one flat buffer
//! per step with [`burn_collective::all_reduce`]: their parts of the loss, an error flag, which
//! parameters got a gradient, and the gradients themselves. Every replica then takes the same
//! AdamW step with the same summed gradients, so the replicas stay identical without
//! broadcasting weights (PyTorch DDP's design).
//!
//! The loss is the token mean over the whole step on every device count (each replica divides
//! its token sum by the step's total), so `D` devices with micro-batches of `b` compute the same
//! step as one device with `D·b`, up to the order of float additions.
//!
//! Several nodes: burn-collective joins the local all-reduce of each node through a global
//! orchestrator (websocket) when [`Collective::nodes`] is given; see the crate's README.

use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::error::{Result, TrainError};

/// burn-collective keeps one server per backend type and process: one multi-device run at a
/// time per process.
static COLLECTIVE: Mutex<()> = Mutex::new(());

/// Several nodes joined through burn-collective's global orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    /// How many nodes take part (each with the same number of devices).
    pub count: u32,
    /// This node's rank, `0..count`; rank 0 writes metrics and checkpoints.
    pub rank: u32,
    /// The orchestrator's websocket address, e.g. `ws://10.0.0.1:3000`.
    pub orchestrator: String,
    /// This node's address as the other nodes reach it, e.g. `ws://10.0.0.2:3001`.
    pub address: String,
    /// The port of this node's data service (the address's port).
    pub data_port: u16,
}

/// Where the replicas of a run live: this process's devices, and optionally other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Collective {
    pub nodes: Option<Nodes>,
}

impl Collective {
    /// Replicas in the whole run.
    pub fn world(&self, local_devices: usize) -> usize {
        local_devices * self.nodes.as_ref().map_or(1, |n| n.count as usize)
    }

    /// The run-wide index of this process's `local`-th replica.
    pub fn rank_of(&self, local: usize, local_devices: usize) -> usize {
        self.nodes.as_ref().map_or(0, |n| n.rank as usize) * local_devices + local
    }

    /// This process's replica of run-wide rank `rank`, if it is one of ours.
    pub fn local_of(&self, rank: usize, local_devices: usize) -> Option<usize> {
        rank.checked_sub(self.rank_of(0, local_devices))
            .filter(|&l| l < local_devices)
    }

    /// Whether this process writes the run's files (rank 0 of the first node).
    pub fn writes_files(&self) -> bool {
        self.nodes.as_ref().is_none_or(|n| n.rank == 0)
    }

    fn config(&self, local_devices: usize) -> Result<CollectiveConfig> {
        let cfg = CollectiveConfig::default().with_num_devices(local_devices);
        Ok(match &self.nodes {
            None => cfg,
            Some(n) => {
                if n.rank >= n.count {
                    return Err(TrainError::Invalid(format!(
                        "node rank {} is not below the node count {}",
                        n.rank, n.count
                    )));
                }
                let addr = |s: &str, what: &str| {
                    s.parse().map_err(|_| {
                        TrainError::Invalid(format!(
                            "{what} {s:?} is not a websocket address (ws://host:port)"
                        ))
                    })
                };
                cfg.with_num_nodes(n.count)
                    .with_global_address(addr(&n.orchestrator, "orchestrator")?)
                    .with_node_address(addr(&n.address, "node address")?)
                    .with_data_service_port(n.data_port)
            }
        })
    }
}

/// A registered collective of this process's replicas; unregisters them when dropped.
pub(crate) struct Session<B: Backend> {
    peers: Vec<PeerId>,
    devices: Vec<B::Device>,
    config: CollectiveConfig,
    /// Multi-node: every step registers, all-reduces once and unregisters (burn-collective
    /// 0.21's global all-reduce reuses its transfer ids, so a second all-reduce within one
    /// registration finds a stale tensor and hangs: tracel-ai/burn#4549).
    rejoin: bool,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl<B: Backend> Session<B> {
    /// One peer per device. On one node the peers register now (blocking until all have);
    /// with several nodes they register at every step.
    pub(crate) fn start(devices: &[B::Device], collective: &Collective) -> Result<Self> {
        let guard = COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner());
        let config = collective.config(devices.len())?;
        let peers: Vec<PeerId> = (0..devices.len())
            .map(|d| PeerId(collective.rank_of(d, devices.len()) as u32))
            .collect();
        burn_collective::reset_collective::<B>();
        let session = Self {
            peers,
            devices: devices.to_vec(),
            config,
            rejoin: collective.nodes.is_some(),
            _guard: guard,
        };
        if !session.rejoin {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..devices.len())
                    .map(|local| {
                        let session = &session;
                        s.spawn(move || session.register(local))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("collective registration does not panic"))
                    .collect::<Result<Vec<()>>>()
            })?;
        }
        Ok(session)
    }

    /// Registers local replica `local` (blocks until every peer of the run has registered).
    fn register(&self, local: usize) -> Result<()> {
        burn_collective::register::<B>(
            self.peers[local],
            self.devices[local].clone(),
            self.config.clone(),
        )
        .map_err(|e| TrainError::Collective(format!("registering the devices: {e:?}")))
    }

    /// Sums `tensor` over every replica of the run.
    fn all_reduce_sum(&self, local: usize, tensor: FloatTensor<B>) -> Result<FloatTensor<B>> {
        let peer = self.peers[local];
        if self.rejoin {
            self.register(local)?;
        }
        let summed = burn_collective::all_reduce::<B>(peer, tensor, ReduceOperation::Sum)
            .map_err(|e| TrainError::Collective(format!("all-reduce of the gradients: {e:?}")));
        if self.rejoin {
            burn_collective::finish_collective::<B>(peer).map_err(|e| {
                TrainError::Collective(format!("leaving the step's collective: {e:?}"))
            })?;
        }
        summed
    }
}

impl<B: Backend> Drop for Session<B> {
    fn drop(&mut self) {
        if !self.rejoin {
            for &p in &self.peers {
                let _ = burn_collective::finish_collective::<B>(p);
            }
        }
        burn_collective::reset_collective::<B>();
    }
}

/// What one replica contributes to a step.
pub(crate) struct Contribution<B: AutodiffBackend> {
    /// Its part of the step's loss (its token sum divided by the step's token count).
    pub loss: f64,
    /// Whether its forward/backward failed (the others then stop too).
    pub failed: bool,
    /// Its gradients by parameter name (token sums divided by the step's token count).
    pub grads: BTreeMap<String, Tensor<B::InnerBackend, 1>>,
}

/// What the replicas agree on after the all-reduce.
pub(crate) struct Reduced<B: AutodiffBackend> {
    pub loss: f64,
    /// How many replicas failed.
    pub failed: usize,
    /// The summed gradients of every parameter that got one on some replica.
    pub grads: BTreeMap<String, Tensor<B::InnerBackend, 1>>,
}

/// Sums `mine` with every other replica's contribution. `params` lists every trainable
/// parameter (name, element count) in the same order on every replica, so every replica makes
/// the same collective call whatever its own batch produced.
pub(crate) fn all_reduce<B: AutodiffBackend>(
    session: &Session<B::InnerBackend>,
    local: usize,
    params: &[(String, usize)],
    mine: Contribution<B>,
    device: &burn::tensor::Device<B::InnerBackend>,
) -> Result<Reduced<B>> {
    let n = params.len();
    let mut head = vec![mine.loss as f32, if mine.failed { 1.0 } else { 0.0 }];
    head.extend(
        params
            .iter()
            .map(|(name, _)| f32::from(u8::from(mine.grads.contains_key(name)))),
    );
    let mut parts: Vec<Tensor<B::InnerBackend, 1>> = vec![Tensor::from_data(
        TensorData::new(head, [2 + n]),
        (device, DType::F32),
    )];
    let mut grads = mine.grads;
    for (name, numel) in params {
        parts.push(match grads.remove(name) {
            Some(g) if !mine.failed => g,
            _ => Tensor::zeros([*numel], (device, DType::F32)),
        });
    }
    let flat = Tensor::cat(parts, 0);
    let summed = session.all_reduce_sum(local, flat.into_primitive().tensor())?;
    let summed: Tensor<B::InnerBackend, 1> = Tensor::from_primitive(TensorPrimitive::Float(summed));
    let head: Vec<f32> = summed
        .clone()
        .slice(0..2 + n)
        .into_data()
        .into_vec()
        .map_err(|e| TrainError::Collective(format!("reading the reduced step: {e:?}")))?;
    let mut out = BTreeMap::new();
    let mut at = 2 + n;
    for (i, (name, numel)) in params.iter().enumerate() {
        if head[2 + i] > 0.0 {
            out.insert(name.clone(), summed.clone().slice(at..at + numel));
        }
        at += numel;
    }
    Ok(Reduced {
        loss: head[0] as f64,
        failed: head[1].round() as usize,
        grads: out,
    })
}

/// Runs burn-collective's global orchestrator on `port` until the process is interrupted
/// (Ctrl-C): the nodes of a multi-node run register with it and it coordinates their
/// all-reduces. Start it once, anywhere the nodes can reach, before the nodes.
pub fn run_orchestrator(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::Collective(format!("starting the orchestrator runtime: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = Autodiff<NdArray<f32>>;

    #[test]
    fn ranks_map_to_this_nodes_replicas() {
        let node = |rank| Collective {
            nodes: Some(Nodes {
                count: 2,
                rank,
                orchestrator: "ws://127.0.0.1:1".into(),
                address: "ws://127.0.0.1:2".into(),
                data_port: 2,
            }),
        };
        assert_eq!(node(1).world(2), 4);
        assert_eq!(node(1).rank_of(1, 2), 3);
        let local: Vec<_> = (0..4).map(|r| node(1).local_of(r, 2)).collect();
        assert_eq!(local, vec![None, None, Some(0), Some(1)]);
        let one = Collective::default();
        assert_eq!((one.local_of(1, 2), one.local_of(2, 2)), (Some(1), None));
    }

    /// Two replicas: one with a gradient for `a` only, one that failed. Both calls return (no
    /// replica waits forever), both see the failure, and the sum holds only what was sent.
    #[test]
    fn a_failed_replica_still_joins_and_is_reported() {
        let device = Default::default();
        let session = Session::<NdArray<f32>>::start(&[device, device], &Collective::default())
            .expect("two local peers");
        let params = vec![("a".to_string(), 3), ("b".to_string(), 2)];
        let out: Vec<Reduced<B>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|local| {
                    let (session, params) = (&session, &params);
                    s.spawn(move || {
                        let mut grads = BTreeMap::new();
                        if local == 0 {
                            grads.insert(
                                "a".to_string(),
                                Tensor::from_floats([1.0, 2.0, 3.0], &device),
                            );
                        }
                        let mine = Contribution::<B> {
                            loss: 0.25,
                            failed: local == 1,
                            grads,
                        };
                        all_reduce::<B>(session, local, params, mine, &device).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &out {
            assert_eq!(r.failed, 1);
            assert_eq!(r.loss, 0.5);
            assert_eq!(r.grads.keys().collect::<Vec<_>>(), vec!["a"]);
            let a: Vec<f32> = r.grads["a"].clone().into_data().to_vec().unwrap();
            assert_eq!(a, vec![1.0, 2.0, 3.0]);
        }
    }
}
