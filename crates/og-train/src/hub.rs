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
//! Wire format (little-endian): a replica opens with `MAGIC, VERSION, world, rank, token_len`
//! (five `u32`) and `token_len` bytes of the run's shared token; then every round is a frame
//! `len: u64` + `len` `f32`s each way. A reply whose `len` is `u64::MAX` is an error instead:
//! `u32` length + UTF-8 message (a rank that never joined, a rank that went silent, a frame of
//! the wrong length). A replica that closes its connection between rounds ends the run for
//! all; one that fails mid-round makes the hub tell every other replica why and drop them.
//!
//! Nothing a peer sends is trusted: the world size is bounded ([`MAX_WORLD`]), the first frame
//! by [`HubConfig::max_values`] and every later one must have the first one's length; memory
//! grows only as bytes arrive, so a lying header costs nothing. Gathering gives up after
//! [`HubConfig::gather_timeout`] naming the ranks that never came, and forgets replicas that
//! leave while it waits; a round gives up after [`HubConfig::round_timeout`] naming the rank
//! that went silent.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Result, TrainError};

const MAGIC: u32 = 0x4f47_4842;
const VERSION: u32 = 2;
/// The most replicas one run may have (nodes × devices).
pub const MAX_WORLD: u32 = 4096;
/// The longest shared token, in bytes.
pub const MAX_TOKEN: usize = 1024;
/// The environment variable both the hub and the replicas read the shared token from.
pub const TOKEN_ENV: &str = "OG_HUB_TOKEN";
const ERROR_FRAME: u64 = u64::MAX;

fn err(what: impl std::fmt::Display) -> TrainError {
    TrainError::Collective(what.to_string())
}

/// How a hub serves runs.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The shared token every replica must present; required when the hub listens beyond
    /// loopback.
    pub token: Option<String>,
    /// How long the first replica of a run waits for the others.
    pub gather_timeout: Duration,
    /// How long a round waits for each replica's buffer.
    pub round_timeout: Duration,
    /// The most `f32`s the first frame of a run may hold.
    pub max_values: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            token: None,
            gather_timeout: Duration::from_secs(600),
            round_timeout: Duration::from_secs(3600),
            max_values: 1 << 30,
        }
    }
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads exactly `n` bytes, growing the buffer only as they arrive.
fn read_bytes(r: &mut impl Read, n: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(n.min(1 << 20) as usize);
    r.take(n).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < n {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            format!(
                "the connection closed {} bytes into a {n}-byte frame",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// What a frame held.
#[derive(Debug)]
enum Frame {
    Values(Vec<f32>),
    Error(String),
    /// The peer closed the connection before the frame.
    Closed,
}

/// One frame of at most `max` values (exactly `max` when `exact`).
fn read_frame(r: &mut impl Read, max: u64, exact: bool) -> std::io::Result<Frame> {
    let mut len = [0u8; 8];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Frame::Closed),
        Err(e) => return Err(e),
    }
    let len = u64::from_le_bytes(len);
    if len == ERROR_FRAME {
        let n = read_u32(r)?.min(64 * 1024);
        let text = read_bytes(r, n as u64)?;
        return Ok(Frame::Error(String::from_utf8_lossy(&text).into_owned()));
    }
    if len > max || (exact && len != max) {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "a frame of {len} values where {} {max} were expected",
                if exact { "exactly" } else { "at most" }
            ),
        ));
    }
    let bytes = read_bytes(r, len * 4)?;
    Ok(Frame::Values(
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

fn write_error(w: &mut impl Write, message: &str) -> std::io::Result<()> {
    let text = &message.as_bytes()[..message.len().min(64 * 1024)];
    w.write_all(&ERROR_FRAME.to_le_bytes())?;
    w.write_all(&(text.len() as u32).to_le_bytes())?;
    w.write_all(text)?;
    w.flush()
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Whether two tokens are equal, in time independent of where they differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves runs on `bind:port` one after another until the process is interrupted. Listening
/// beyond loopback needs a shared token.
pub fn serve(bind: IpAddr, port: u16, config: &HubConfig) -> Result<()> {
    serve_forever(&listen(bind, port, config)?, config)
}

/// The hub's listener on `bind:port`; beyond loopback only with a shared token.
pub fn listen(bind: IpAddr, port: u16, config: &HubConfig) -> Result<TcpListener> {
    if !bind.is_loopback() && config.token.is_none() {
        return Err(err(format!(
            "listening on {bind} (beyond this machine) needs a shared token: set {TOKEN_ENV} \
             for the hub and every node"
        )));
    }
    TcpListener::bind((bind, port)).map_err(|e| err(format!("listening on {bind}:{port}: {e}")))
}

/// Serves runs on `listener` one after another, for ever.
pub fn serve_forever(listener: &TcpListener, config: &HubConfig) -> ! {
    loop {
        match serve_run(listener, config) {
            Ok(world) => eprintln!("hub: a run of {world} replicas ended"),
            Err(e) => eprintln!("hub: a run failed: {e}"),
        }
    }
}

/// A replica's connection.
struct Member {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Member {
    /// Whether the replica has closed its connection (looked at without blocking).
    fn left(&self) -> bool {
        if !self.reader.buffer().is_empty() || self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let gone = match self.stream.peek(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(e) => !timed_out(&e),
        };
        let _ = self.stream.set_nonblocking(false);
        gone
    }
}

/// A replica's hello (`MAGIC, VERSION, world, rank`, token), checked; `Err` says why the
/// connection is turned away.
fn read_hello(r: &mut impl Read, config: &HubConfig) -> std::result::Result<(u32, u32), String> {
    let head = (0..5)
        .map(|_| read_u32(r))
        .collect::<std::io::Result<Vec<u32>>>()
        .map_err(|_| "no hello".to_string())?;
    let (magic, version, world, rank, token_len) = (head[0], head[1], head[2], head[3], head[4]);
    if magic != MAGIC || version != VERSION {
        return Err("not an og-llava replica of this version".into());
    }
    if token_len as usize > MAX_TOKEN {
        return Err(format!("a {token_len}-byte token (at most {MAX_TOKEN})"));
    }
    let token = read_bytes(r, token_len as u64).map_err(|_| "no token".to_string())?;
    if !same_token(&token, config.token.as_deref().unwrap_or("").as_bytes()) {
        return Err("wrong token".into());
    }
    if world == 0 || world > MAX_WORLD || rank >= world {
        return Err(format!(
            "rank {rank} of {world} (at most {MAX_WORLD} replicas)"
        ));
    }
    Ok((world, rank))
}

/// A connection's hello, read with a deadline; the member it makes.
fn hello(
    stream: &TcpStream,
    config: &HubConfig,
) -> std::result::Result<(u32, u32, Member), String> {
    let _ = stream.set_nodelay(true);
    // A connection that says nothing is turned away instead of holding up the run.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let clone = || stream.try_clone().map_err(|e| e.to_string());
    let mut reader = BufReader::new(clone()?);
    let (world, rank) = read_hello(&mut reader, config)?;
    let _ = stream.set_read_timeout(None);
    let member = Member {
        stream: clone()?,
        reader,
        writer: BufWriter::new(clone()?),
    };
    Ok((world, rank, member))
}

/// What the hub makes of one replica's byte stream without a socket: its hello, then frames
/// until the stream ends (every later frame as long as the first); the frame count, or why
/// the hub would drop the replica. For fuzzing the protocol.
pub fn replay(bytes: &[u8], config: &HubConfig) -> std::result::Result<usize, String> {
    let mut r = bytes;
    read_hello(&mut r, config)?;
    let (mut len, mut frames) = (None::<u64>, 0);
    loop {
        let (max, exact) = len.map_or((config.max_values, false), |n| (n, true));
        match read_frame(&mut r, max, exact).map_err(|e| e.to_string())? {
            Frame::Values(v) => {
                len = Some(v.len() as u64);
                frames += 1;
            }
            Frame::Closed => return Ok(frames),
            Frame::Error(m) => return Err(format!("an error frame: {m}")),
        }
    }
}

/// Tells every member why the run ends (best effort) and returns that as the error.
fn fail_all(members: &mut BTreeMap<u32, Member>, message: String) -> TrainError {
    for m in members.values_mut() {
        let _ = write_error(&mut m.writer, &message);
    }
    err(message)
}

/// The ranks below `world` that are not in `members`.
fn missing(members: &BTreeMap<u32, Member>, world: u32) -> String {
    let ranks: Vec<String> = (0..world)
        .filter(|r| !members.contains_key(r))
        .take(16)
        .map(|r| r.to_string())
        .collect();
    ranks.join(", ")
}

/// Gathers one run's replicas: a connection that does not say hello properly is turned away,
/// a replica that leaves while the others are awaited is forgotten, and after
/// `gather_timeout` without a full run the waiting replicas are told which ranks never came.
fn gather(listener: &TcpListener, config: &HubConfig) -> Result<(u32, BTreeMap<u32, Member>)> {
    listener.set_nonblocking(true).map_err(err)?;
    let mut members: BTreeMap<u32, Member> = BTreeMap::new();
    let mut world: Option<u32> = None;
    let mut since = Instant::now();
    loop {
        if let Some(w) = world.filter(|&w| members.len() == w as usize) {
            listener.set_nonblocking(false).map_err(err)?;
            return Ok((w, members));
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                match hello(&stream, config) {
                    Ok((w, rank, _))
                        if world.is_some_and(|x| x != w) || members.contains_key(&rank) =>
                    {
                        eprintln!(
                            "hub: turned away {peer}: rank {rank} of {w} does not fit the run \
                             being gathered ({} of {:?})",
                            members.len(),
                            world
                        );
                    }
                    Ok((w, rank, member)) => {
                        if members.is_empty() {
                            since = Instant::now();
                        }
                        world = Some(w);
                        members.insert(rank, member);
                    }
                    Err(why) => eprintln!("hub: turned away {peer}: {why}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(e)),
        }
        members.retain(|rank, m| {
            let left = m.left();
            if left {
                eprintln!("hub: rank {rank} left before its run began");
            }
            !left
        });
        if members.is_empty() {
            world = None;
        } else if since.elapsed() > config.gather_timeout {
            let w = world.expect("members imply a world");
            let message = format!(
                "ranks {} of {w} did not join within {} s",
                missing(&members, w),
                config.gather_timeout.as_secs()
            );
            return Err(fail_all(&mut members, message));
        }
    }
}

/// Gathers one run's replicas ([`gather`]), then sums rounds until a replica leaves; returns
/// the run's replica count.
pub fn serve_run(listener: &TcpListener, config: &HubConfig) -> Result<u32> {
    let (world, mut members) = gather(listener, config)?;
    for m in members.values() {
        let _ = m.stream.set_read_timeout(Some(config.round_timeout));
    }
    let mut len: Option<u64> = None;
    loop {
        let mut sum: Option<Vec<f32>> = None;
        let ranks: Vec<u32> = members.keys().copied().collect();
        for rank in ranks {
            let m = members.get_mut(&rank).expect("listed");
            let (max, exact) = len.map_or((config.max_values, false), |n| (n, true));
            let message = match read_frame(&mut m.reader, max, exact) {
                Ok(Frame::Values(v)) => {
                    len = Some(v.len() as u64);
                    match &mut sum {
                        None => sum = Some(v),
                        Some(acc) => acc.iter_mut().zip(&v).for_each(|(a, p)| *a += p),
                    }
                    continue;
                }
                Ok(Frame::Closed) => {
                    // A replica left between rounds: the run is over.
                    let _ = fail_all(&mut members, format!("rank {rank} left the run"));
                    return Ok(world);
                }
                Ok(Frame::Error(_)) => format!("rank {rank} sent an error frame"),
                Err(e) if timed_out(&e) => format!(
                    "rank {rank} sent nothing within {} s",
                    config.round_timeout.as_secs()
                ),
                Err(e) => format!("rank {rank}: {e}"),
            };
            return Err(fail_all(&mut members, message));
        }
        let sum = sum.expect("every round has members");
        for (rank, m) in members.iter_mut() {
            write_frame(&mut m.writer, &sum).map_err(|e| err(format!("replica {rank}: {e}")))?;
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
    /// `rank` of `world` with the run's shared `token` (if the hub has one), retrying while the
    /// hub is not up yet (for `patience`).
    pub fn connect(
        address: &str,
        world: u32,
        rank: u32,
        token: Option<&str>,
        patience: Duration,
    ) -> Result<Self> {
        let address = hub_address(address)
            .ok_or_else(|| err(format!("hub address {address:?} needs a port: HOST:PORT")))?;
        let token = token.unwrap_or("").as_bytes();
        if token.len() > MAX_TOKEN {
            return Err(err(format!(
                "the hub token is longer than {MAX_TOKEN} bytes"
            )));
        }
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
        for x in [MAGIC, VERSION, world, rank, token.len() as u32] {
            writer.write_all(&x.to_le_bytes()).map_err(err)?;
        }
        writer.write_all(token).map_err(err)?;
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
        match read_frame(&mut self.reader, data.len() as u64, true) {
            Ok(Frame::Values(sum)) => Ok(sum),
            Ok(Frame::Error(message)) => Err(lost(message)),
            Ok(Frame::Closed) => Err(lost(
                "closed the connection (another replica failed or left, or this one was \
                 turned away: see the hub's log)"
                    .into(),
            )),
            Err(e) => Err(lost(e.to_string())),
        }
    }
}

impl HubClient {
    /// Rank 0's `len` bytes, on every replica, in one round: the rendezvous of a collective
    /// library (NCCL's unique id, the role torchrun's store plays). Rank 0 passes its bytes,
    /// every other replica `None`; the hub's sum is rank 0's bytes.
    pub fn share_from_rank0(&mut self, bytes: Option<&[u8]>, len: usize) -> Result<Vec<u8>> {
        let values: Vec<f32> = match bytes {
            Some(b) if b.len() == len => b.iter().map(|&x| f32::from(x)).collect(),
            Some(b) => {
                return Err(err(format!("{} bytes to share, {len} expected", b.len())));
            }
            None => vec![0.0; len],
        };
        self.all_reduce(&values)?
            .into_iter()
            .map(|v| {
                if (0.0..=255.0).contains(&v) && v.fract() == 0.0 {
                    Ok(v as u8)
                } else {
                    Err(err(
                        "the bytes shared from rank 0 are malformed: did two replicas claim \
                         rank 0?",
                    ))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank 0's bytes reach every replica; two replicas that both share bytes are caught.
    #[test]
    fn bytes_from_rank_0_reach_every_replica() {
        let (addr, h) = hub(2, quick());
        let id: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
        let run = |rank: u32, bytes: Option<Vec<u8>>| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                client(&addr, 3, rank).share_from_rank0(bytes.as_deref(), 128)
            })
        };
        let got: Vec<_> = [run(0, Some(id.clone())), run(1, None), run(2, None)]
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert!(got.iter().all(|g| g == &id));
        let twice: Vec<_> = [
            run(0, Some(id.clone())),
            run(1, Some(id.clone())),
            run(2, None),
        ]
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
        assert!(twice.iter().all(|r| {
            r.as_ref()
                .is_err_and(|e| e.to_string().contains("two replicas claim"))
        }));
        drop(h);
    }

    fn quick() -> HubConfig {
        HubConfig {
            token: Some("s3cret".into()),
            gather_timeout: Duration::from_secs(2),
            round_timeout: Duration::from_secs(2),
            max_values: 1024,
        }
    }

    fn hub(runs: usize, config: HubConfig) -> (String, std::thread::JoinHandle<Vec<Result<u32>>>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let h =
            std::thread::spawn(move || (0..runs).map(|_| serve_run(&listener, &config)).collect());
        (format!("tcp://127.0.0.1:{port}"), h)
    }

    const PATIENCE: Duration = Duration::from_secs(10);

    fn client(addr: &str, world: u32, rank: u32) -> HubClient {
        HubClient::connect(addr, world, rank, Some("s3cret"), PATIENCE).unwrap()
    }

    /// Raw bytes to the hub, as a hostile peer sends them.
    fn raw(addr: &str, words: &[u32], tail: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(hub_address(addr).unwrap()).unwrap();
        for w in words {
            s.write_all(&w.to_le_bytes()).unwrap();
        }
        s.write_all(tail).unwrap();
        s
    }

    /// Many rounds in one run (what burn-collective 0.21's global all-reduce cannot do),
    /// strangers turned away (no hello, a wrong token, a world beyond the bound), then a second
    /// run on the same hub; a replica that leaves mid-run makes the other's round an error.
    #[test]
    fn replicas_sum_round_after_round_and_strangers_are_turned_away() {
        let (addr, h) = hub(2, quick());
        let run = |rank: u32, base: f32| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = client(&addr, 2, rank);
                (0..5)
                    .map(|round| c.all_reduce(&[base, base * round as f32]).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let (a, b) = (run(0, 1.0), run(1, 10.0));
        raw(&addr, &[0, 0, 0, 0], &[]);
        let mut wrong = HubClient::connect(&addr, 2, 0, Some("guess"), PATIENCE).unwrap();
        assert!(wrong.all_reduce(&[1.0, 1.0]).is_err());
        raw(&addr, &[MAGIC, VERSION, u32::MAX, 0, 6], b"s3cret");
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(a, b);
        assert_eq!(a[3], vec![11.0, 33.0]);

        let mut c0 = client(&addr, 2, 0);
        let leaver = {
            let addr = addr.clone();
            std::thread::spawn(move || client(&addr, 2, 1).all_reduce(&[2.0]).unwrap())
        };
        assert_eq!(c0.all_reduce(&[1.0]).unwrap(), vec![3.0]);
        assert_eq!(leaver.join().unwrap(), vec![3.0]);
        let e = c0.all_reduce(&[1.0]).unwrap_err();
        assert!(e.to_string().contains("rank 1 left the run"), "{e}");
        let runs = h.join().unwrap();
        assert_eq!(hub_address("tcp://10.0.0.1:3000"), Some("10.0.0.1:3000"));
        assert_eq!(hub_address("10.0.0.1"), None);
        assert_eq!(runs[0].as_ref().unwrap(), &2);
        assert!(runs[1].is_ok());
    }

    /// A frame header claiming 2⁶⁴−2 values is refused without allocating, a frame of another
    /// length than the run's is refused, and the hub serves the next run.
    #[test]
    fn lying_frames_end_the_run_not_the_hub() {
        let (addr, h) = hub(3, quick());
        let honest = {
            let addr = addr.clone();
            std::thread::spawn(move || client(&addr, 2, 0).all_reduce(&[1.0]))
        };
        let mut liar = raw(&addr, &[MAGIC, VERSION, 2, 1, 6], b"s3cret");
        liar.write_all(&(u64::MAX - 1).to_le_bytes()).unwrap();
        let e = honest.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("rank 1"), "{e}");

        let first = {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = client(&addr, 2, 0);
                c.all_reduce(&[1.0, 2.0]).unwrap();
                c.all_reduce(&[1.0, 2.0])
            })
        };
        let mut second = client(&addr, 2, 1);
        assert_eq!(second.all_reduce(&[1.0, 2.0]).unwrap(), vec![2.0, 4.0]);
        let e = second.all_reduce(&[1.0, 2.0, 3.0]).unwrap_err();
        assert!(e.to_string().contains("exactly 2"), "{e}");
        assert!(first.join().unwrap().is_err());

        let pair: Vec<_> = (0..2)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || client(&addr, 2, rank).all_reduce(&[rank as f32]))
            })
            .collect();
        for p in pair {
            assert_eq!(p.join().unwrap().unwrap(), vec![1.0]);
        }
        let runs = h.join().unwrap();
        assert!(runs[0].is_err() && runs[1].is_err());
    }

    /// A replica that leaves while the run gathers is forgotten (its rank can join again);
    /// ranks that never come are named after the gather timeout, a silent rank after the round
    /// timeout.
    #[test]
    fn the_missing_and_the_silent_are_named() {
        let (addr, h) = hub(2, quick());
        drop(client(&addr, 3, 2));
        std::thread::sleep(Duration::from_millis(200));
        let e = client(&addr, 3, 0).all_reduce(&[1.0]).unwrap_err();
        assert!(
            e.to_string().contains("ranks 1, 2 of 3 did not join"),
            "{e}"
        );

        let silent = client(&addr, 2, 1);
        let e = client(&addr, 2, 0).all_reduce(&[1.0]).unwrap_err();
        assert!(e.to_string().contains("rank 1 sent nothing"), "{e}");
        drop(silent);
        let runs = h.join().unwrap();
        assert!(runs.iter().all(|r| r.is_err()));
    }

    #[test]
    fn a_hub_beyond_loopback_needs_a_token() {
        let e = serve("0.0.0.0".parse().unwrap(), 0, &HubConfig::default()).unwrap_err();
        assert!(e.to_string().contains(TOKEN_ENV), "{e}");
    }
}
