//! HTTP load generator for the "GET profile / offers vs /healthz" target (DESIGN.md, Targets),
//! driven by `benches/api_latency.sh`.
//!
//! For each endpoint, in one run against one server and at one concurrency over keep-alive
//! connections:
//!   1. closed loop: every connection sends its next request as soon as the last one answered,
//!      for `--seconds`; that gives the endpoint's maximum rate;
//!   2. open loop: a constant arrival rate of `--open-load` (default 0.5) times that endpoint's
//!      own maximum, for `--open-seconds`, with latencies taken from the scheduled send time
//!      whenever a request had to wait for its connection (no coordinated omission). Each
//!      connection waits for its slots on a timerfd of its own (`--open-timer kernel`), so
//!      requests leave spread as scheduled; with tokio's millisecond timer (`--open-timer
//!      tokio`) all requests due within a millisecond leave together, and the last of each
//!      burst queues behind the others in the server.
//!
//! The measured route is `--path-template` (default `/v1/customers/{id}`, the profile; e.g.
//! `/v1/customers/{id}/offers?channel=web&limit=3` for offers), `{id}` replaced per request by an
//! id from `--ids` (one per line): `--hot-share` of them go to a hot set of `--hot-fraction` of
//! the ids, the rest uniformly over all ids. `/healthz` gets the same requests with the same
//! headers, so only the handler differs. `--label` names the route in the output and the JSON.
//!
//! It prints a table and one JSON line (prefixed `json: `), and appends the JSON to `--json`.
//!
//! The HTTP/1.1 client is a few lines over tokio's `TcpStream` rather than a client crate: the
//! client shares two cores with the server, so it should cost as little as possible, and a
//! client crate would change features of dependencies the whole workspace shares (a long
//! rebuild on this machine). It speaks only what the server answers: `Content-Length` or
//! chunked bodies, keep-alive, reconnect on `Connection: close` or an error.
//!
//!   cargo bench --workspace --bench http_load -- --url http://127.0.0.1:8080 --key KEY \
//!       --ids ids.txt --connections 32 --threads 2

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use hdrhistogram::Histogram;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt::ReceiveTimestampns,
};
use rustix::fd::OwnedFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "GET /v1/customers/{id}[...] vs /healthz: max rate and latency at half load")]
struct Args {
    /// Base URL of the server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// Bearer key with the role the route needs (sent to /healthz as well).
    #[arg(long)]
    key: Option<String>,
    /// Customer ids, one per line.
    #[arg(long)]
    ids: PathBuf,
    /// The measured route: path and query, `{id}` replaced by a percent-encoded customer id.
    #[arg(long, default_value = "/v1/customers/{id}")]
    path_template: String,
    /// Name of the measured route in the output and the JSON (its key, and `ratio_LABEL_healthz`).
    #[arg(long, default_value = "profile")]
    label: String,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Client threads, each a single-threaded event loop over its share of the connections.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Length of each closed-loop (max rate) phase.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Length of each open-loop (fixed rate) phase.
    #[arg(long, default_value_t = 15.0)]
    open_seconds: f64,
    /// Unrecorded closed-loop warm-up before each endpoint's phases.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Open-loop rate as a share of the endpoint's own closed-loop maximum.
    #[arg(long, default_value_t = 0.5)]
    open_load: f64,
    /// How open-loop requests wait for their slots: `kernel` (a timerfd per connection,
    /// microsecond resolution, so requests leave spread as scheduled) or `tokio` (tokio's
    /// timer, which fires on millisecond ticks: everything due within a millisecond leaves
    /// at once, as a burst).
    #[arg(long, value_enum, default_value_t = OpenTimer::Kernel)]
    open_timer: OpenTimer,
    /// Share of the ids that are hot.
    #[arg(long, default_value_t = 0.01)]
    hot_fraction: f64,
    /// Share of requests that go to the hot ids.
    #[arg(long, default_value_t = 0.8)]
    hot_share: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Process id of the server, when it runs on this machine: its CPU use per phase is shown
    /// beside the client's and the machine's (from /proc), so a run says how busy the shared
    /// cores were.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Append the JSON result line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OpenTimer {
    Kernel,
    Tokio,
}

/// A one-shot timer with the kernel's resolution: a non-blocking timerfd polled by the
/// connection's event loop. Tokio's own timers round up to the next millisecond tick.
struct SlotTimer {
    fd: AsyncFd<OwnedFd>,
}

impl SlotTimer {
    fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // The safe constructor is deprecated in favour of an `unsafe` one, which the workspace
        // forbids; it is sound here: the `OwnedFd` moves into the `AsyncFd` and is closed only
        // when that is dropped.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Self { fd })
    }

    async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = Timespec::try_from(wait).map_err(|_| io::Error::other("wait too long"))?;
        timerfd_settime(
            self.fd.get_ref(),
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: zero,
                it_value: value,
            },
        )?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(read) => return read.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Where requests go: a fixed path, or a template with a customer id drawn per request.
#[derive(Clone)]
enum Target {
    Fixed(&'static str),
    Template(Arc<PathTemplate>),
}

/// A path split at its `{id}`.
struct PathTemplate {
    prefix: String,
    suffix: String,
    ids: IdPicker,
}

impl PathTemplate {
    fn new(template: &str, ids: IdPicker) -> Self {
        let (prefix, suffix) = template
            .split_once("{id}")
            .unwrap_or_else(|| panic!("--path-template `{template}` has no `{{id}}`"));
        assert!(
            prefix.starts_with('/') && !suffix.contains("{id}"),
            "--path-template must start with `/` and hold one `{{id}}`, got `{template}`"
        );
        Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            ids,
        }
    }
}

struct IdPicker {
    /// Shuffled; the first `hot` are the hot set.
    ids: Vec<String>,
    hot: usize,
    hot_share: f64,
}

impl IdPicker {
    fn pick(&self, rng: &mut SplitMix) -> &str {
        let n = if rng.unit() < self.hot_share {
            self.hot
        } else {
            self.ids.len()
        };
        &self.ids[(rng.next() % n as u64) as usize]
    }
}

/// SplitMix64: enough randomness for picking ids, and no dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Request heads are written into a reused buffer: `GET <path> HTTP/1.1` plus fixed headers.
struct RequestWriter {
    host: String,
    auth: String,
}

impl RequestWriter {
    fn write(&self, target: &Target, rng: &mut SplitMix, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"GET ");
        match target {
            Target::Fixed(path) => out.extend_from_slice(path.as_bytes()),
            Target::Template(t) => {
                out.extend_from_slice(t.prefix.as_bytes());
                percent_encode(t.ids.pick(rng), out);
                out.extend_from_slice(t.suffix.as_bytes());
            }
        }
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.auth.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn percent_encode(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

/// One keep-alive HTTP/1.1 connection with one request in flight.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Bytes of `buf` read from the socket and not yet consumed.
    len: usize,
    /// When the kernel received the last bytes read (`SO_TIMESTAMPNS`, the wall clock): the
    /// response's arrival at this host, before this client was scheduled to read it.
    received_at: Option<SystemTime>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: vec![0; 64 * 1024],
            len: 0,
            received_at: None,
        }
    }

    /// Sends `request` and reads the whole response; returns its status code.
    async fn send(&mut self, request: &[u8]) -> io::Result<u16> {
        let result = self.exchange(request).await;
        if !matches!(result, Ok((_, true))) {
            self.stream = None;
            self.len = 0;
        }
        result.map(|(status, _)| status)
    }

    /// The status, and whether the connection may be reused.
    async fn exchange(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            setsockopt(&s, ReceiveTimestampns, &true).map_err(io::Error::from)?;
            self.stream = Some(s);
            self.len = 0;
        }
        self.stream
            .as_mut()
            .expect("connected")
            .write_all(request)
            .await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf[..self.len], b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = Head::parse(&self.buf[..head_end])?;
        let mut pos = head_end;
        if head.chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf[pos..self.len], b"\r\n") {
                        break pos + i;
                    }
                    self.fill().await?;
                };
                let size_text =
                    std::str::from_utf8(&self.buf[pos..line_end]).map_err(|_| bad("chunk size"))?;
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
                pos = line_end + 2;
                // The chunk and its CRLF; the last (empty) chunk is followed by one CRLF, as
                // the server sends no trailers.
                self.need(pos + size + 2).await?;
                pos += size + 2;
                if size == 0 {
                    break;
                }
            }
        } else {
            self.need(pos + head.content_length).await?;
            pos += head.content_length;
        }
        self.buf.copy_within(pos..self.len, 0);
        self.len -= pos;
        Ok((head.status, head.keep_alive))
    }

    /// Reads until `buf` holds at least `n` bytes.
    async fn need(&mut self, n: usize) -> io::Result<()> {
        if n > self.buf.len() {
            self.buf.resize(n.next_power_of_two(), 0);
        }
        while self.len < n {
            self.fill().await?;
        }
        Ok(())
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let stream = self.stream.as_ref().expect("connected");
        let free = &mut self.buf[self.len..];
        let (n, received_at) = stream
            .async_io(Interest::READABLE, || recv_stamped(stream, free))
            .await?;
        self.received_at = received_at.or(self.received_at);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.len += n;
        Ok(())
    }
}

/// One `recvmsg` on a non-blocking socket: the bytes read, and the kernel's receive time of the
/// last of them when the socket reports it.
fn recv_stamped(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    use std::os::fd::AsRawFd;
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    let received_at = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::ScmTimestampns(t) => {
            let since_epoch = Duration::new(
                u64::try_from(t.tv_sec()).ok()?,
                u32::try_from(t.tv_nsec()).ok()?,
            );
            Some(SystemTime::UNIX_EPOCH + since_epoch)
        }
        _ => None,
    });
    Ok((msg.bytes, received_at))
}

struct Head {
    status: u16,
    content_length: usize,
    chunked: bool,
    keep_alive: bool,
}

impl Head {
    fn parse(head: &[u8]) -> io::Result<Self> {
        let text = std::str::from_utf8(head).map_err(|_| bad("response head"))?;
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let mut out = Self {
            status,
            content_length: 0,
            chunked: false,
            keep_alive: true,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                out.content_length = value.parse().map_err(|_| bad("content-length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                out.chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                out.keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        Ok(out)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP {what}"))
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

/// What one connection saw in one phase.
struct ConnResult {
    latency: Histogram<u64>,
    /// Open loop only: how late the client itself sent requests whose connection was idle
    /// (the tokio timer ticks every millisecond).
    send_lag: Histogram<u64>,
    /// From the same origin as `latency` to the kernel's receive time of the response's last
    /// bytes: the latency without this client's own wait to be scheduled and read them.
    delivered: Histogram<u64>,
    /// Responses the kernel gave no receive time for (none expected on Linux).
    unstamped: u64,
    ok: u64,
    errors: u64,
    last_error: Option<String>,
}

/// How a phase paces its requests.
#[derive(Clone, Copy)]
enum Pace {
    /// As fast as the server answers.
    Closed,
    /// This many requests per second over all connections, waiting for slots with this timer.
    Open(f64, OpenTimer),
}

struct Shared {
    addr: SocketAddr,
    writer: RequestWriter,
}

/// One phase as every connection sees it.
#[derive(Clone)]
struct PhaseSpec {
    target: Target,
    pace: Pace,
    connections: usize,
    start: Instant,
    end: Instant,
    seed: u64,
}

async fn run_connection(
    shared: Arc<Shared>,
    mut conn: Conn,
    spec: PhaseSpec,
    index: usize,
) -> (Conn, ConnResult) {
    let PhaseSpec {
        target,
        pace,
        connections,
        start,
        end,
        seed,
    } = spec;
    let mut rng = SplitMix(seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut request = Vec::with_capacity(256);
    let mut r = ConnResult {
        latency: histogram(),
        send_lag: histogram(),
        delivered: histogram(),
        unstamped: 0,
        ok: 0,
        errors: 0,
        last_error: None,
    };
    // Open loop: this connection's slots are every `interval`, staggered across connections.
    let interval = match pace {
        Pace::Open(rate, _) => Duration::from_secs_f64(connections as f64 / rate),
        Pace::Closed => Duration::ZERO,
    };
    let timer = match pace {
        Pace::Open(_, OpenTimer::Kernel) => {
            Some(SlotTimer::new().unwrap_or_else(|e| panic!("cannot create a timerfd: {e}")))
        }
        _ => None,
    };
    let mut slot = start + interval.mul_f64(index as f64 / connections as f64);
    loop {
        let origin = match pace {
            Pace::Closed => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
            Pace::Open(..) => {
                if slot >= end {
                    break;
                }
                let now = Instant::now();
                if now >= end + OPEN_LOOP_GRACE {
                    // Far behind schedule: the server cannot take this rate; stop anyway.
                    break;
                }
                let origin = if now < slot {
                    // The connection was idle at its slot: measure from the actual send, so
                    // the timer's lateness is not charged to the server.
                    match &timer {
                        Some(timer) => timer
                            .sleep_until(slot)
                            .await
                            .unwrap_or_else(|e| panic!("timerfd wait failed: {e}")),
                        None => tokio::time::sleep_until(slot.into()).await,
                    }
                    let sent = Instant::now();
                    record(&mut r.send_lag, sent - slot);
                    sent
                } else {
                    // Still busy with an earlier request at its slot: the wait counts.
                    slot
                };
                slot += interval;
                origin
            }
        };
        // The origin on the wall clock, which the kernel's receive times are on.
        let origin_wall = SystemTime::now() - origin.elapsed();
        request.clear();
        shared.writer.write(&target, &mut rng, &mut request);
        conn.received_at = None;
        match conn.send(&request).await {
            Ok(status) if (200..300).contains(&status) => {
                r.ok += 1;
                record(&mut r.latency, origin.elapsed());
                match conn
                    .received_at
                    .and_then(|at| at.duration_since(origin_wall).ok())
                {
                    Some(d) => record(&mut r.delivered, d),
                    None => r.unstamped += 1,
                }
            }
            Ok(status) => {
                r.errors += 1;
                r.last_error = Some(format!("HTTP {status}"));
            }
            Err(e) => {
                r.errors += 1;
                r.last_error = Some(e.to_string());
                // Do not spin on a dead server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (conn, r)
}

/// How long an open-loop phase may overrun its schedule before it gives up.
const OPEN_LOOP_GRACE: Duration = Duration::from_secs(5);

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

struct PhaseResult {
    rate: f64,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    /// From the same origin as `latency` to the kernel's receive time of the response's last
    /// bytes: the latency without this client's own wait to be scheduled and read them.
    delivered: Histogram<u64>,
    /// Responses the kernel gave no receive time for (none expected on Linux).
    unstamped: u64,
    ok: u64,
    errors: u64,
    last_error: Option<String>,
    /// CPU use over the phase; `None` where /proc cannot be read.
    cpu: Option<CpuUse>,
}

/// Cumulative CPU time of the machine, this client and the server, in the kernel's clock ticks
/// (`/proc/stat` and `/proc/<pid>/stat` count in the same unit, so no tick rate is assumed).
#[derive(Clone, Copy)]
struct CpuTicks {
    /// Ticks all CPUs spent busy: user, nice, system, irq, softirq and steal.
    busy: u64,
    /// Ticks all CPUs spent, busy or idle (waiting for I/O counts as idle).
    all: u64,
    cpus: usize,
    client: u64,
    server: Option<u64>,
    /// Context switches of all the client's threads, and of the server's.
    client_switches: u64,
    server_switches: Option<u64>,
}

impl CpuTicks {
    fn read(server_pid: Option<u32>) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        let total: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let field = |i: usize| total.get(i).copied().unwrap_or(0);
        let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
        let cpus = lines.filter(|l| l.starts_with("cpu")).count();
        Some(Self {
            busy,
            all: busy + field(3) + field(4),
            cpus,
            client: process_ticks("self")?,
            server: server_pid.and_then(|pid| process_ticks(&pid.to_string())),
            client_switches: context_switches("self")?,
            server_switches: server_pid.and_then(|pid| context_switches(&pid.to_string())),
        })
    }
}

/// User and system ticks of a process, all its threads (`/proc/<pid>/stat` fields 14 and 15).
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it start with the state (field 3).
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Voluntary and involuntary context switches of every thread of a process, from
/// `/proc/<pid>/task/*/status` (threads that ended are not counted).
fn context_switches(pid: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_once(':')?.1.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// How busy the cores were over a phase.
#[derive(Clone, Copy)]
struct CpuUse {
    cpus: usize,
    /// Cores' worth of CPU time: 1.0 is one core busy for the whole phase.
    client_cores: f64,
    server_cores: Option<f64>,
    /// Share of all the machine's CPU time that was busy, whoever used it.
    machine_busy: f64,
    /// Context switches over the phase: the client's threads, and the server's.
    client_switches: u64,
    server_switches: Option<u64>,
}

impl CpuUse {
    fn between(before: &CpuTicks, after: &CpuTicks) -> Option<Self> {
        let all = after.all.checked_sub(before.all).filter(|&t| t > 0)? as f64;
        // Elapsed ticks of one CPU.
        let per_cpu = all / before.cpus.max(1) as f64;
        let cores = |b: u64, a: u64| a.saturating_sub(b) as f64 / per_cpu;
        Some(Self {
            cpus: before.cpus,
            client_cores: cores(before.client, after.client),
            server_cores: before.server.zip(after.server).map(|(b, a)| cores(b, a)),
            machine_busy: after.busy.saturating_sub(before.busy) as f64 / all,
            client_switches: after.client_switches.saturating_sub(before.client_switches),
            server_switches: before
                .server_switches
                .zip(after.server_switches)
                .map(|(b, a)| a.saturating_sub(b)),
        })
    }

    /// One line; `requests` (those answered in the phase) turns switch counts into rates.
    fn describe(&self, requests: u64) -> String {
        let per_request = |n: u64| n as f64 / requests.max(1) as f64;
        format!(
            "client {:.2} cores, {:.2} switches/request, {}machine {:.0} % busy",
            self.client_cores,
            per_request(self.client_switches),
            self.server_cores
                .zip(self.server_switches)
                .map(|(s, n)| format!(
                    "server {s:.2} cores, {:.2} switches/request, ",
                    per_request(n)
                ))
                .unwrap_or_default(),
            self.machine_busy * 100.0
        )
    }
}

/// A client thread: a current-thread tokio runtime (its own epoll loop, like a wrk thread) that
/// owns its share of the connections across phases.
struct Worker {
    phases: mpsc::Sender<PhaseSpec>,
    results: mpsc::Receiver<Vec<ConnResult>>,
}

impl Worker {
    /// Starts a thread owning the connections with these indices.
    fn start(shared: Arc<Shared>, indices: Vec<usize>) -> Self {
        let (phases, phase_rx) = mpsc::channel::<PhaseSpec>();
        let (result_tx, results) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let mut conns: Vec<(usize, Conn)> = indices
                .into_iter()
                .map(|i| (i, Conn::new(shared.addr)))
                .collect();
            for spec in phase_rx {
                let out = runtime.block_on(async {
                    let tasks: Vec<_> = conns
                        .drain(..)
                        .map(|(i, c)| {
                            let (shared, spec) = (shared.clone(), spec.clone());
                            tokio::spawn(async move {
                                let (c, r) = run_connection(shared, c, spec, i).await;
                                (i, c, r)
                            })
                        })
                        .collect();
                    let mut out = Vec::with_capacity(tasks.len());
                    for t in tasks {
                        let (i, c, r) = t.await.expect("connection task");
                        conns.push((i, c));
                        out.push(r);
                    }
                    out
                });
                if result_tx.send(out).is_err() {
                    break;
                }
            }
        });
        Self { phases, results }
    }
}

/// Runs one phase on every connection of every worker.
fn phase(
    workers: &[Worker],
    connections: usize,
    target: &Target,
    pace: Pace,
    seconds: f64,
    seed: u64,
    server_pid: Option<u32>,
) -> PhaseResult {
    let ticks = CpuTicks::read(server_pid);
    let start = Instant::now() + Duration::from_millis(5);
    let spec = PhaseSpec {
        target: target.clone(),
        pace,
        connections,
        start,
        end: start + Duration::from_secs_f64(seconds),
        seed,
    };
    for w in workers {
        w.phases.send(spec.clone()).expect("worker thread");
    }
    let mut out = PhaseResult {
        rate: 0.0,
        latency: histogram(),
        send_lag: histogram(),
        delivered: histogram(),
        unstamped: 0,
        ok: 0,
        errors: 0,
        last_error: None,
        cpu: None,
    };
    for r in workers
        .iter()
        .flat_map(|w| w.results.recv().expect("worker thread"))
    {
        out.latency.add(&r.latency).expect("same bounds");
        out.send_lag.add(&r.send_lag).expect("same bounds");
        out.delivered.add(&r.delivered).expect("same bounds");
        out.unstamped += r.unstamped;
        out.ok += r.ok;
        out.errors += r.errors;
        out.last_error = out.last_error.or(r.last_error);
    }
    out.rate = out.ok as f64 / start.elapsed().as_secs_f64();
    out.cpu = ticks
        .zip(CpuTicks::read(server_pid))
        .and_then(|(before, after)| CpuUse::between(&before, &after));
    out
}

struct EndpointResult {
    name: String,
    closed: PhaseResult,
    open: PhaseResult,
    open_target: f64,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e6
}

fn phase_json(p: &PhaseResult) -> serde_json::Value {
    serde_json::json!({
        "requests_per_s": p.rate.round(),
        "ok": p.ok,
        "errors": p.errors,
        "p50_ms": ms(&p.latency, 0.5),
        "p99_ms": ms(&p.latency, 0.99),
        "p999_ms": ms(&p.latency, 0.999),
        "max_ms": p.latency.max() as f64 / 1e6,
        "delivered_p50_ms": ms(&p.delivered, 0.5),
        "delivered_p99_ms": ms(&p.delivered, 0.99),
        "delivered_p999_ms": ms(&p.delivered, 0.999),
        "unstamped": p.unstamped,
        "client_cores": p.cpu.map(|c| c.client_cores),
        "server_cores": p.cpu.and_then(|c| c.server_cores),
        "machine_busy_share": p.cpu.map(|c| c.machine_busy),
        "client_switches": p.cpu.map(|c| c.client_switches),
        "server_switches": p.cpu.and_then(|c| c.server_switches),
    })
}

fn main() {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.ids)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", args.ids.display()));
    let mut ids: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!ids.is_empty(), "{} holds no ids", args.ids.display());
    let mut rng = SplitMix(args.seed);
    for i in (1..ids.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        ids.swap(i, j);
    }
    let hot = ((ids.len() as f64 * args.hot_fraction).ceil() as usize).clamp(1, ids.len());
    let template = Arc::new(PathTemplate::new(
        &args.path_template,
        IdPicker {
            ids,
            hot,
            hot_share: args.hot_share,
        },
    ));
    let picker = &template.ids;

    let host = args
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve `{host}` from --url {}", args.url));
    let auth = args
        .key
        .as_ref()
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        addr,
        writer: RequestWriter { host, auth },
    });

    let threads = args.threads.clamp(1, args.connections.max(1));
    let workers: Vec<Worker> = (0..threads)
        .map(|t| {
            let indices = (t..args.connections).step_by(threads).collect();
            Worker::start(shared.clone(), indices)
        })
        .collect();
    let endpoints = [
        ("/healthz".to_owned(), Target::Fixed("/healthz")),
        (args.label.clone(), Target::Template(template.clone())),
    ];
    let mut results = Vec::new();
    for (name, target) in endpoints {
        let run = |pace, seconds, seed| {
            phase(
                &workers,
                args.connections,
                &target,
                pace,
                seconds,
                seed,
                args.server_pid,
            )
        };
        eprintln!("{name}: warm-up {:.0} s", args.warmup);
        run(Pace::Closed, args.warmup, args.seed + 1);
        eprintln!("{name}: closed loop {:.0} s", args.seconds);
        let closed = run(Pace::Closed, args.seconds, args.seed + 2);
        if closed.ok == 0 {
            panic!(
                "{name}: no successful request in the closed loop ({} errors, last: {:?})",
                closed.errors, closed.last_error
            );
        }
        let open_target = closed.rate * args.open_load;
        eprintln!(
            "{name}: open loop at {open_target:.0} req/s for {:.0} s",
            args.open_seconds
        );
        let open = run(
            Pace::Open(open_target, args.open_timer),
            args.open_seconds,
            args.seed + 3,
        );
        results.push(EndpointResult {
            name,
            closed,
            open,
            open_target,
        });
    }
    drop(workers);

    println!("{}: GET {}", args.label, args.path_template);
    println!(
        "{} connections, {} client threads, ids: {} ({} hot, {:.0}% of requests to them)",
        args.connections,
        threads,
        picker.ids.len(),
        picker.hot,
        args.hot_share * 100.0
    );
    println!(
        "{:<24} {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "endpoint", "phase", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
    );
    for r in &results {
        for (label, p) in [
            ("closed loop".to_owned(), &r.closed),
            (format!("open @{:.0} req/s", r.open_target), &r.open),
        ] {
            println!(
                "{:<24} {:<16} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}",
                r.name,
                label,
                p.rate,
                ms(&p.latency, 0.5),
                ms(&p.latency, 0.99),
                ms(&p.latency, 0.999),
                p.latency.max() as f64 / 1e6,
                p.errors
            );
            if let Some(e) = &p.last_error {
                println!("    last error: {e}");
            }
        }
        println!(
            "    open loop client send lag (timer, not charged): p50 {:.3} ms, p99 {:.3} ms",
            ms(&r.open.send_lag, 0.5),
            ms(&r.open.send_lag, 0.99)
        );
        println!(
            "    open loop to the kernel's receive time (without the client's read wait): \
             p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms{}",
            ms(&r.open.delivered, 0.5),
            ms(&r.open.delivered, 0.99),
            ms(&r.open.delivered, 0.999),
            match r.open.unstamped {
                0 => String::new(),
                n => format!(" ({n} responses without a receive time)"),
            }
        );
        if let (Some(closed), Some(open)) = (r.closed.cpu, r.open.cpu) {
            println!(
                "    CPU of the machine's {} cores: closed loop {}; open loop {}",
                open.cpus,
                closed.describe(r.closed.ok),
                open.describe(r.open.ok)
            );
        }
    }
    let (health, route) = (&results[0], &results[1]);
    let label = &args.label;
    let ratio = route.closed.rate / health.closed.rate;
    let p99_open = ms(&route.open.latency, 0.99);
    println!(
        "throughput ratio {label} / healthz: {ratio:.3} (target >= 0.6: {})",
        if ratio >= 0.6 { "met" } else { "missed" }
    );
    // The target is defined at half load; another load is a diagnostic, not a verdict.
    let verdict = match (args.open_load == 0.5, p99_open <= 1.0) {
        (false, _) => "the target is at 50%, not judged",
        (true, true) => "met",
        (true, false) => "missed",
    };
    println!(
        "{label} p99 at {:.0}% of its max rate: {p99_open:.3} ms (target <= 1 ms: {verdict})",
        args.open_load * 100.0,
    );
    let mut json = serde_json::json!({
        "bench": "http_load",
        "label": label,
        "path_template": args.path_template,
        "connections": args.connections,
        "client_threads": threads,
        "ids": picker.ids.len(),
        "hot_ids": picker.hot,
        "hot_share": args.hot_share,
        "seconds": args.seconds,
        "open_seconds": args.open_seconds,
        "open_load": args.open_load,
        // As spelled on the command line.
        "open_timer": clap::ValueEnum::to_possible_value(&args.open_timer)
            .map(|v| v.get_name().to_owned()),
        "healthz": {
            "closed": phase_json(&health.closed),
            "open": phase_json(&health.open),
            "open_target_per_s": health.open_target.round(),
        },
    });
    // Keyed by the label, so the profile lines keep the keys of earlier runs.
    json[label.as_str()] = serde_json::json!({
        "closed": phase_json(&route.closed),
        "open": phase_json(&route.open),
        "open_target_per_s": route.open_target.round(),
    });
    json[format!("ratio_{label}_healthz")] = ratio.into();
    json[format!("{label}_p99_open_ms")] = p99_open.into();
    // The target's figure, only from a run at the load it is defined at.
    if args.open_load == 0.5 {
        json[format!("{label}_p99_half_load_ms")] = p99_open.into();
    }
    println!("json: {json}");
    if let Some(path) = &args.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        writeln!(f, "{json}").expect("write json");
    }
}
