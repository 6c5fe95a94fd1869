//! The all-reduce of a multi-node run: a hub (`og-llava orchestrator`) that every replica of
//! every node connects to over TCP.
//!
//! burn-collective 0.21's global (multi-node) all-reduce cannot run twice in one registration
//! and, re-registered at every step, fails now and then on its own (a download finds its
//! connection closed, a connect to a peer's data server is refused); see the crate's README.
//! This hub replaces it with the simplest protocol that cannot race: each replica sends its
//! flat f32 buffer, the hub sums the buffers in rank order and sends the sum back to every
//! replica. Traffic is twice the buffer per replica and step through the hub (a star, not a
//! ring), which suits the LoRA + connector gradients this crate trains.
//!
//! Wire format (little-endian): a replica opens with `MAGIC, VERSION, world, rank` (four
//! `u32`); then every round is a frame `len: u64` + `len` `f32`s each way. A replica that
//! closes its connection between rounds ends the run for all; one that fails mid-round makes
//! the hub drop every connection, so the others stop with an error instead of waiting.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Result, TrainError};

const MAGIC: u32 = 0x4f47_4842;
const VERSION: u32 = 1;

fn err(what: impl std::fmt::Display) -> TrainError {
    TrainError::Collective(what.to_string())
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// One frame; `None` when the peer closed the connection before it.
fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<f32>>> {
    let mut len = [0u8; 8];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u64::from_le_bytes(len) as usize;
    let mut bytes = vec![0u8; len * 4];
    r.read_exact(&mut bytes)?;
    Ok(Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

fn write_frame(w: &mut impl Write, data: &[f32]) -> std::io::Result<()> {
    w.write_all(&(data.len() as u64).to_le_bytes())?;
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for x in data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    w.write_all(&bytes)?;
    w.flush()
}

/// Serves runs on `port` one after another until the process is interrupted.
pub fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| err(format!("listening on port {port}: {e}")))?;
    loop {
        match serve_run(&listener) {
            Ok(world) => eprintln!("hub: a run of {world} replicas ended"),
            Err(e) => eprintln!("hub: a run failed: {e}"),
        }
    }
}

/// Gathers one run's replicas (a connection that does not say hello properly is turned away),
/// then sums rounds until a replica leaves; returns the run's replica count.
pub fn serve_run(listener: &TcpListener) -> Result<u32> {
    let mut members: BTreeMap<u32, (BufReader<TcpStream>, BufWriter<TcpStream>)> = BTreeMap::new();
    let mut world: Option<u32> = None;
    while world.is_none_or(|w| members.len() < w as usize) {
        let (stream, peer) = listener.accept().map_err(err)?;
        let _ = stream.set_nodelay(true);
        // A connection that says nothing is turned away instead of holding up the run.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(stream.try_clone().map_err(err)?);
        let hello = (0..4)
            .map(|_| read_u32(&mut reader))
            .collect::<std::io::Result<Vec<u32>>>();
        let _ = stream.set_read_timeout(None);
        let refuse = |why: String| eprintln!("hub: turned away {peer}: {why}");
        let Ok(hello) = hello else {
            refuse("no hello".into());
            continue;
        };
        let (magic, version, w, rank) = (hello[0], hello[1], hello[2], hello[3]);
        if magic != MAGIC || version != VERSION {
            refuse("not an og-llava replica of this version".into());
            continue;
        }
        if world.is_some_and(|x| x != w) || rank >= w || members.contains_key(&rank) {
            refuse(format!(
                "rank {rank} of {w} does not fit the run being gathered ({} of {:?})",
                members.len(),
                world
            ));
            continue;
        }
        world = Some(w);
        members.insert(rank, (reader, BufWriter::new(stream)));
    }
    let world = world.expect("at least one replica joined");
    loop {
        let mut sum: Option<Vec<f32>> = None;
        for (rank, (reader, _)) in members.iter_mut() {
            let part = read_frame(reader).map_err(|e| err(format!("replica {rank}: {e}")))?;
            let Some(part) = part else {
                return Ok(world); // a replica left between rounds: the run is over
            };
            match &mut sum {
                None => sum = Some(part),
                Some(acc) if acc.len() == part.len() => {
                    for (a, p) in acc.iter_mut().zip(&part) {
                        *a += p;
                    }
                }
                Some(acc) => {
                    return Err(err(format!(
                        "replica {rank} sent {} values where the others sent {}",
                        part.len(),
                        acc.len()
                    )));
                }
            }
        }
        let sum = sum.expect("every round has members");
        for (rank, (_, writer)) in members.iter_mut() {
            write_frame(writer, &sum).map_err(|e| err(format!("replica {rank}: {e}")))?;
        }
    }
}

/// The `HOST:PORT` part of a hub address (`HOST:PORT` or `scheme://HOST:PORT`), or `None`
/// when it names no port.
pub fn hub_address(address: &str) -> Option<&str> {
    let a = address.split_once("://").map_or(address, |(_, a)| a);
    a.rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .map(|_| a)
}

/// One replica's connection to the hub.
pub struct HubClient {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl HubClient {
    /// Connects to the hub at `address` (`HOST:PORT`, optionally `tcp://HOST:PORT`) as replica
    /// `rank` of `world`, retrying while the hub is not up yet (for `patience`).
    pub fn connect(address: &str, world: u32, rank: u32, patience: Duration) -> Result<Self> {
        let address = hub_address(address)
            .ok_or_else(|| err(format!("hub address {address:?} needs a port: HOST:PORT")))?;
        let start = Instant::now();
        let stream = loop {
            match TcpStream::connect(address) {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= patience => {
                    return Err(err(format!("connecting to the hub at {address}: {e}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let _ = stream.set_nodelay(true);
        let mut writer = BufWriter::new(stream.try_clone().map_err(err)?);
        for x in [MAGIC, VERSION, world, rank] {
            writer.write_all(&x.to_le_bytes()).map_err(err)?;
        }
        writer.flush().map_err(err)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// The element-wise sum of `data` over every replica of the run (each sends as many
    /// values).
    pub fn all_reduce(&mut self, data: &[f32]) -> Result<Vec<f32>> {
        let lost = |e: String| err(format!("the hub: {e}"));
        write_frame(&mut self.writer, data).map_err(|e| lost(e.to_string()))?;
        match read_frame(&mut self.reader) {
            Ok(Some(sum)) if sum.len() == data.len() => Ok(sum),
            Ok(Some(sum)) => Err(lost(format!(
                "sent {} values back for {}",
                sum.len(),
                data.len()
            ))),
            Ok(None) => Err(lost(
                "closed the connection (another replica failed or left)".into(),
            )),
            Err(e) => Err(lost(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> (u16, std::thread::JoinHandle<Vec<Result<u32>>>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let h = std::thread::spawn(move || (0..2).map(|_| serve_run(&listener)).collect());
        (port, h)
    }

    /// Many rounds in one run (what burn-collective 0.21's global all-reduce cannot do), a
    /// stray connection turned away, then a second run on the same hub; a replica that leaves
    /// mid-run makes the other's round an error instead of a wait.
    #[test]
    fn replicas_sum_round_after_round_and_a_departure_is_an_error() {
        let (port, h) = hub();
        let addr = format!("tcp://127.0.0.1:{port}");
        let patience = Duration::from_secs(10);
        let run = |rank: u32, base: f32| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = HubClient::connect(&addr, 2, rank, patience).unwrap();
                (0..5)
                    .map(|round| c.all_reduce(&[base, base * round as f32]).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let (a, b) = (run(0, 1.0), run(1, 10.0));
        // A connection that is not a replica is turned away without disturbing the run.
        TcpStream::connect(("127.0.0.1", port))
            .unwrap()
            .write_all(&[0u8; 16])
            .unwrap();
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(a, b);
        assert_eq!(a[3], vec![11.0, 33.0]);

        // Second run: replica 1 leaves after one round; replica 0's second round fails.
        let mut c0 = HubClient::connect(&addr, 2, 0, patience).unwrap();
        let leaver = {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c1 = HubClient::connect(&addr, 2, 1, patience).unwrap();
                c1.all_reduce(&[2.0]).unwrap()
            })
        };
        assert_eq!(c0.all_reduce(&[1.0]).unwrap(), vec![3.0]);
        assert_eq!(leaver.join().unwrap(), vec![3.0]);
        let e = c0.all_reduce(&[1.0]).unwrap_err();
        assert!(e.to_string().contains("closed the connection"), "{e}");
        let runs = h.join().unwrap();
        assert_eq!(hub_address("tcp://10.0.0.1:3000"), Some("10.0.0.1:3000"));
        assert_eq!(hub_address("10.0.0.1"), None);
        assert_eq!(runs[0].as_ref().unwrap(), &2);
        assert!(runs[1].is_ok());
    }
}
