//! Multi-node runs described by a launcher's environment instead of flags: torchrun's
//! `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, or SLURM's
//! `SLURM_NTASKS`, `SLURM_PROCID`, `SLURM_LOCALID` (with `MASTER_ADDR`/`MASTER_PORT` set by the
//! job script, as SLURM gives no rendezvous address).
//!
//! Each launched process is one node of the run (`--nodes WORLD --node-rank RANK`); rank 0
//! hosts the all-reduce hub at `MASTER_ADDR:MASTER_PORT` in-process (the role torchrun's store
//! plays), so no separate `og-llava orchestrator` is needed.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};

use crate::CliError;

/// A run as the launcher described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Processes in the run (`WORLD_SIZE` or `SLURM_NTASKS`).
    pub world: u32,
    /// This process's rank (`RANK` or `SLURM_PROCID`).
    pub rank: u32,
    /// Its rank on its machine (`LOCAL_RANK` or `SLURM_LOCALID`; 0 when unset): the CUDA device
    /// it drives when `--devices` is not given.
    pub local_rank: u32,
    /// Where the hub listens, `MASTER_ADDR:MASTER_PORT`.
    pub master_addr: String,
    pub master_port: u16,
    /// Which launcher's variables were read.
    pub source: Launcher,
}

/// The launchers whose conventions are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
}

impl Launcher {
    /// The variables (world, rank, local rank) of this launcher.
    fn names(self) -> [&'static str; 3] {
        match self {
            Launcher::Torchrun => ["WORLD_SIZE", "RANK", "LOCAL_RANK"],
            Launcher::Slurm => ["SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"],
        }
    }
}

impl Launch {
    /// The launch the environment `var` describes: `None` when no launcher variable is set or
    /// the run has one process; an error naming the variable when one is missing or invalid.
    /// torchrun's variables win over SLURM's.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, CliError> {
        let source = if var("WORLD_SIZE").is_some() {
            Launcher::Torchrun
        } else if var("SLURM_NTASKS").is_some() {
            Launcher::Slurm
        } else {
            return Ok(None);
        };
        let [world_name, rank_name, local_name] = source.names();
        let number = |name: &str, value: Option<String>| -> Result<Option<u32>, CliError> {
            value
                .map(|v| {
                    v.trim().parse::<u32>().map_err(|_| {
                        CliError::Usage(format!("{name}={v:?}: expected a whole number"))
                    })
                })
                .transpose()
        };
        let world = number(world_name, var(world_name))?.unwrap_or(1);
        if world <= 1 {
            return Ok(None);
        }
        let missing = |name: &str| {
            CliError::Usage(format!(
                "{world_name}={world} but {name} is not set (set it, or launch with --nodes, \
                 --node-rank and --orchestrator)"
            ))
        };
        let rank = number(rank_name, var(rank_name))?.ok_or_else(|| missing(rank_name))?;
        let local_rank = number(local_name, var(local_name))?.unwrap_or(0);
        let master_addr = var("MASTER_ADDR")
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| missing("MASTER_ADDR"))?
            .trim()
            .to_string();
        let port = var("MASTER_PORT").ok_or_else(|| missing("MASTER_PORT"))?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| CliError::Usage(format!("MASTER_PORT={port:?}: expected 1 to 65535")))?;
        if world > og_train::hub::MAX_WORLD {
            return Err(CliError::Usage(format!(
                "{world_name}={world}: at most {} nodes",
                og_train::hub::MAX_WORLD
            )));
        }
        if rank >= world {
            return Err(CliError::Usage(format!(
                "{rank_name}={rank} is not below {world_name}={world}"
            )));
        }
        Ok(Some(Launch {
            world,
            rank,
            local_rank,
            master_addr,
            master_port,
            source,
        }))
    }

    /// The hub's address as the nodes dial it.
    pub fn orchestrator(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }

    /// Where rank 0's hub listens: loopback when `MASTER_ADDR` names this machine's loopback
    /// (every rank on one machine), otherwise every interface (which needs `OG_HUB_TOKEN`).
    pub fn hub_bind(&self) -> IpAddr {
        let loopback = (self.master_addr.as_str(), self.master_port)
            .to_socket_addrs()
            .map(|mut a| a.all(|a| a.ip().is_loopback()))
            .unwrap_or(false);
        if loopback {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }

    /// Starts the hub on this process (rank 0 only) on a background thread; the listener is
    /// bound before this returns, so a port in use or a missing token is an error here.
    pub fn host_hub(&self, config: og_train::hub::HubConfig) -> Result<(), CliError> {
        let listener = og_train::hub::listen(self.hub_bind(), self.master_port, &config)
            .map_err(CliError::from)?;
        std::thread::Builder::new()
            .name("og-hub".into())
            .spawn(move || og_train::hub::serve_forever(&listener, &config))
            .map_err(|e| CliError::Usage(format!("starting the hub thread: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn message(r: Result<Option<Launch>, CliError>) -> String {
        match r {
            Err(CliError::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn torchrun_and_slurm_variables_describe_the_run() {
        let torchrun = [
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.7"),
            ("MASTER_PORT", "29500"),
        ];
        let l = Launch::from_env(env(&torchrun)).unwrap().unwrap();
        assert_eq!(
            (l.world, l.rank, l.local_rank, l.source),
            (4, 3, 1, Launcher::Torchrun)
        );
        assert_eq!(l.orchestrator(), "10.0.0.7:29500");
        assert_eq!(l.hub_bind(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));

        let slurm = [
            ("SLURM_NTASKS", "2"),
            ("SLURM_PROCID", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "6000"),
        ];
        let l = Launch::from_env(env(&slurm)).unwrap().unwrap();
        assert_eq!(
            (l.world, l.rank, l.local_rank, l.source),
            (2, 0, 0, Launcher::Slurm)
        );
        assert_eq!(l.hub_bind(), IpAddr::V4(Ipv4Addr::LOCALHOST));

        // torchrun's variables win where both are set.
        let both: Vec<_> = torchrun.iter().chain(&slurm[..2]).copied().collect();
        assert_eq!(
            Launch::from_env(env(&both)).unwrap().unwrap().source,
            Launcher::Torchrun
        );
    }

    #[test]
    fn no_launcher_or_one_process_is_a_plain_run() {
        assert_eq!(Launch::from_env(env(&[])).unwrap(), None);
        assert_eq!(
            Launch::from_env(env(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(),
            None
        );
        assert_eq!(
            Launch::from_env(env(&[("SLURM_NTASKS", "1")])).unwrap(),
            None
        );
    }

    #[test]
    fn missing_and_invalid_variables_are_named() {
        let base = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1234"),
        ];
        let without = |name: &str| {
            let kept: Vec<_> = base.iter().filter(|(k, _)| *k != name).copied().collect();
            message(Launch::from_env(env(&kept)))
        };
        assert!(without("RANK").contains("RANK is not set"));
        assert!(without("MASTER_ADDR").contains("MASTER_ADDR is not set"));
        assert!(without("MASTER_PORT").contains("MASTER_PORT is not set"));
        let with = |name: &str, value: &str| {
            let mut v: Vec<_> = base.iter().filter(|(k, _)| *k != name).copied().collect();
            v.push((name, value));
            message(Launch::from_env(env(&v)))
        };
        assert!(with("RANK", "2").contains("RANK=2 is not below WORLD_SIZE=2"));
        assert!(with("WORLD_SIZE", "two").contains("WORLD_SIZE=\"two\""));
        assert!(with("MASTER_PORT", "0").contains("MASTER_PORT=\"0\""));
        assert!(with("MASTER_PORT", "70000").contains("expected 1 to 65535"));
        assert!(with("LOCAL_RANK", "-1").contains("LOCAL_RANK"));
        assert!(with("WORLD_SIZE", "5000").contains("at most"));
        let slurm = message(Launch::from_env(env(&[
            ("SLURM_NTASKS", "3"),
            ("SLURM_PROCID", "1"),
        ])));
        assert!(
            slurm.contains("SLURM_NTASKS=3 but MASTER_ADDR is not set"),
            "{slurm}"
        );
    }
}
