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
//! Several nodes ([`Collective::nodes`]) read only their own micro-batches, so a step's token
//! count is known only after the sum: there each replica sends token sums and its token count,
//! and the summed buffer is divided by the summed count.
//!
//! Several nodes: every replica of every node sums through the hub
//! that `og-llava orchestrator` runs ([`crate::hub`]): burn-collective 0.21's own multi-node
//! all-reduce fails intermittently (see the crate's README).

use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::error::{Result, TrainError};
use crate::hub::HubClient;

/// burn-collective keeps one server per backend type and process: one multi-device run at a
/// time per process.
static COLLECTIVE: Mutex<()> = Mutex::new(());

/// Several nodes joined through the hub ([`crate::hub`], `og-llava orchestrator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    /// How many nodes take part (each with the same number of devices).
    pub count: u32,
    /// This node's rank, `0..count`; rank 0 writes metrics and checkpoints.
    pub rank: u32,
    /// The hub's address, `HOST:PORT` (or `tcp://HOST:PORT`), e.g. `10.0.0.1:3000`.
    pub orchestrator: String,
    /// The run's shared token, when the hub asks for one ([`crate::hub::TOKEN_ENV`]).
    pub token: Option<String>,
    /// Sum the gradients with NCCL on these CUDA ordinals (one per local replica, in order);
    /// the hub is then the rendezvous only. Needs the `nccl` feature.
    pub nccl: Option<Vec<usize>>,
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

    fn check(&self) -> Result<()> {
        match &self.nodes {
            Some(n) if n.rank >= n.count => Err(TrainError::Invalid(format!(
                "node rank {} is not below the node count {}",
                n.rank, n.count
            ))),
            _ => Ok(()),
        }
    }
}

/// How this process's replicas sum: burn-collective's local all-reduce (one node), or one hub
/// connection per replica (several nodes).
enum Link {
    Local {
        peers: Vec<PeerId>,
        _guard: std::sync::MutexGuard<'static, ()>,
    },
    Hub(Vec<Mutex<HubClient>>),
    /// NCCL communicators; the hub connections that carried the rendezvous stay open (the hub
    /// ends a run when a replica leaves).
    #[cfg(feature = "nccl")]
    Nccl {
        _rendezvous: Vec<Mutex<HubClient>>,
        comms: Vec<Mutex<crate::nccl::NcclReplica>>,
    },
}

/// The replicas of a run, joined; unregisters them when dropped.
pub(crate) struct Session<B: Backend> {
    link: Link,
    devices: Vec<B::Device>,
}

impl<B: Backend> Session<B> {
    /// One peer per device, registered now (blocking until all have): with burn-collective on
    /// one node, with the hub (which waits for every node's replicas) on several.
    pub(crate) fn start(devices: &[B::Device], collective: &Collective) -> Result<Self> {
        collective.check()?;
        let n = devices.len();
        if let Some(nodes) = &collective.nodes {
            let world = collective.world(n) as u32;
            let clients = (0..n)
                .map(|local| {
                    HubClient::connect(
                        &nodes.orchestrator,
                        world,
                        collective.rank_of(local, n) as u32,
                        nodes.token.as_deref(),
                        std::time::Duration::from_secs(300),
                    )
                    .map(Mutex::new)
                })
                .collect::<Result<Vec<_>>>()?;
            let link = match &nodes.nccl {
                None => Link::Hub(clients),
                Some(ordinals) => nccl_link(clients, ordinals, collective, n)?,
            };
            return Ok(Self {
                link,
                devices: devices.to_vec(),
            });
        }
        let guard = COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner());
        let config = CollectiveConfig::default().with_num_devices(n);
        let peers: Vec<PeerId> = (0..n).map(|d| PeerId(d as u32)).collect();
        burn_collective::reset_collective::<B>();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|local| {
                    let (peer, device, config) =
                        (peers[local], devices[local].clone(), config.clone());
                    s.spawn(move || {
                        burn_collective::register::<B>(peer, device, config).map_err(|e| {
                            TrainError::Collective(format!("registering the devices: {e:?}"))
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("collective registration does not panic"))
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(Self {
            link: Link::Local {
                peers,
                _guard: guard,
            },
            devices: devices.to_vec(),
        })
    }

    /// Sums `tensor` (f32) over every replica of the run.
    fn all_reduce_sum(&self, local: usize, tensor: FloatTensor<B>) -> Result<FloatTensor<B>> {
        match &self.link {
            Link::Local { peers, .. } => {
                burn_collective::all_reduce::<B>(peers[local], tensor, ReduceOperation::Sum)
                    .map_err(|e| {
                        TrainError::Collective(format!("all-reduce of the gradients: {e:?}"))
                    })
            }
            Link::Hub(clients) => self.through_host(local, tensor, |data| {
                clients[local]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .all_reduce(data)
            }),
            #[cfg(feature = "nccl")]
            Link::Nccl { comms, .. } => self.through_host(local, tensor, |data| {
                crate::nccl::all_reduce(&comms[local], data)
            }),
        }
    }

    /// `tensor` read to the host, summed by `sum`, and back on replica `local`'s device.
    fn through_host(
        &self,
        local: usize,
        tensor: FloatTensor<B>,
        sum: impl FnOnce(&[f32]) -> Result<Vec<f32>>,
    ) -> Result<FloatTensor<B>> {
        let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(tensor));
        let data: Vec<f32> = t
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| TrainError::Collective(format!("reading the gradients: {e:?}")))?;
        let n = data.len();
        let summed = Tensor::<B, 1>::from_data(
            TensorData::new(sum(&data)?, [n]),
            (&self.devices[local], DType::F32),
        );
        Ok(summed.into_primitive().tensor())
    }
}

/// NCCL communicators for this node's replicas (CUDA `ordinals`), the id shared through
/// `clients`.
#[cfg(feature = "nccl")]
fn nccl_link(
    clients: Vec<Mutex<HubClient>>,
    ordinals: &[usize],
    collective: &Collective,
    n: usize,
) -> Result<Link> {
    if ordinals.len() != n {
        return Err(TrainError::Invalid(format!(
            "NCCL: {} CUDA ordinals for {n} replicas",
            ordinals.len()
        )));
    }
    let ranks: Vec<usize> = (0..n).map(|l| collective.rank_of(l, n)).collect();
    let comms = crate::nccl::join(&clients, ordinals, &ranks, collective.world(n))?;
    Ok(Link::Nccl {
        _rendezvous: clients,
        comms,
    })
}

#[cfg(not(feature = "nccl"))]
fn nccl_link(
    _clients: Vec<Mutex<HubClient>>,
    _ordinals: &[usize],
    _collective: &Collective,
    _n: usize,
) -> Result<Link> {
    Err(TrainError::Invalid(
        "NCCL needs og-train's `nccl` feature (og-llava-cli builds it with `--features cuda`)"
            .into(),
    ))
}

impl<B: Backend> Drop for Session<B> {
    fn drop(&mut self) {
        if let Link::Local { peers, .. } = &self.link {
            for &p in peers {
                let _ = burn_collective::finish_collective::<B>(p);
            }
            burn_collective::reset_collective::<B>();
        }
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
    /// Its supervised tokens and examples (nodes that read only their own share of a step
    /// learn the step's totals from their sum).
    pub tokens: usize,
    pub examples: usize,
}

/// What the replicas agree on after the all-reduce.
pub(crate) struct Reduced<B: AutodiffBackend> {
    pub loss: f64,
    /// How many replicas failed.
    pub failed: usize,
    /// The summed gradients of every parameter that got one on some replica.
    pub grads: BTreeMap<String, Tensor<B::InnerBackend, 1>>,
    /// The step's supervised tokens and examples over every replica.
    pub tokens: usize,
    pub examples: usize,
}

/// Values before the gradients in the flat buffer: loss, failure flag, tokens, examples.
const HEAD: usize = 4;

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
    // Counts stay exact in f32 up to 2^24 (16.7M tokens in one step).
    let mut head = vec![
        mine.loss as f32,
        if mine.failed { 1.0 } else { 0.0 },
        mine.tokens as f32,
        mine.examples as f32,
    ];
    head.extend(
        params
            .iter()
            .map(|(name, _)| f32::from(u8::from(mine.grads.contains_key(name)))),
    );
    let mut parts: Vec<Tensor<B::InnerBackend, 1>> = vec![Tensor::from_data(
        TensorData::new(head, [HEAD + n]),
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
        .slice(0..HEAD + n)
        .into_data()
        .into_vec()
        .map_err(|e| TrainError::Collective(format!("reading the reduced step: {e:?}")))?;
    let mut out = BTreeMap::new();
    let mut at = HEAD + n;
    for (i, (name, numel)) in params.iter().enumerate() {
        if head[HEAD + i] > 0.0 {
            out.insert(name.clone(), summed.clone().slice(at..at + numel));
        }
        at += numel;
    }
    Ok(Reduced {
        loss: head[0] as f64,
        failed: head[1].round() as usize,
        grads: out,
        tokens: head[2].round() as usize,
        examples: head[3].round() as usize,
    })
}

/// Runs the hub of multi-node runs ([`crate::hub`]) on `bind:port` until the process is
/// interrupted (Ctrl-C): the replicas of every node connect to it and it sums their steps, one
/// run after another. Start it once, anywhere the nodes can reach.
pub fn run_orchestrator(
    bind: std::net::IpAddr,
    port: u16,
    config: &crate::hub::HubConfig,
) -> Result<()> {
    crate::hub::serve(bind, port, config)
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
                orchestrator: "127.0.0.1:1".into(),
                token: None,
                nccl: None,
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
                            tokens: 3 + local,
                            examples: 1,
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
            assert_eq!((r.tokens, r.examples), (7, 2));
            assert_eq!(r.grads.keys().collect::<Vec<_>>(), vec!["a"]);
            let a: Vec<f32> = r.grads["a"].clone().into_data().to_vec().unwrap();
            assert_eq!(a, vec![1.0, 2.0, 3.0]);
        }
    }
}
