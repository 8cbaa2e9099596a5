//! The Kafka side of the end-to-end tests: a real Kafka-compatible broker (tansu), a running
//! `patron serve`, producing with rdkafka, reading the dead-letter topic back, and the two
//! independent answers a run is checked against (a file replay, and the generator's truth).
//!
//! Layout:
//! - [`tansu_bin`]: finds the broker binary, or installs it once per machine.
//! - [`Broker`]: a tansu broker on 127.0.0.1 (memory or sqlite storage), killed on drop; or the
//!   broker CI started, named by `PATRON_TEST_BROKERS`.
//! - [`ServeSetup`] and [`Serve`]: a config file, and `patron serve` running with it.
//! - [`EventProducer`], [`produce`], [`read_dead_letters`]: the client side of the topics.
//! - [`file_oracle`], [`assert_same_customers`], [`assert_matches_truth`],
//!   [`assert_counters`], [`assert_dead_letters`]: the checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use patron_synth::{SynthConfig, SynthEvent};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;

use super::{micros, parse_csv, path_str, patron, run_ok};

/// How long any wait in these tests may take before it fails. Generous: the machine is small,
/// and nothing here measures speed.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// The columns of `customers` that serve, a file replay and the generator's truth must agree on.
pub const CUSTOMERS_SQL: &str = "SELECT customer_id, frequency, monetary, avg_order_value, \
     first_purchase, last_purchase FROM customers ORDER BY customer_id";

const TANSU_INSTALL: [&str; 7] = [
    "install",
    "tansu",
    "--version",
    "0.6.0",
    "--locked",
    "--features",
    "dynostore,libsql",
];

/// A temporary directory for one test. With `PATRON_TEST_KEEP` set it is kept, and its path
/// printed, so the stores and logs can be examined after a failure.
pub fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("create a temp dir");
    if std::env::var_os("PATRON_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// The shortest session timeout tansu 0.6 gives a group safely, for tests that kill instances.
///
/// Its coordinator holds a member's JoinGroup for 3 s while another member leads, and a
/// member's last contact counts from its first join. With a 3 s timeout a restarted instance
/// could expire during its own join, just as the killed leader did: the group then formed with
/// no assignment and a leader that no longer existed, and no later member ever got partitions
/// (`crash_loop` failed that way under load). With 6 s the killed leader is gone by the
/// restart's second join, while the restart's own entry is re-made there if it lapsed.
pub const SHORT_SESSION: &str = "6s";

/// A topic or group name no other test, in this process or another, uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        millis % 1_000_000_000
    )
}

/// The tansu binary: `TANSU_BIN`, else `tansu` on PATH, else `~/.cargo/bin/tansu`; installed
/// there with cargo when none exists (once per machine; a lock file keeps parallel test
/// processes from building it twice).
pub fn tansu_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(find_or_install_tansu).clone()
}

fn find_or_install_tansu() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(bin) = std::env::split_paths(&path)
            .map(|dir| dir.join("tansu"))
            .find(|p| p.is_file())
    {
        return bin;
    }
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    let installed = home.join(".cargo/bin/tansu");
    if installed.is_file() {
        return installed;
    }
    let cache = home.join(".cache/patron");
    std::fs::create_dir_all(&cache).expect("create ~/.cache/patron");
    let lock = File::create(cache.join("tansu-install.lock")).expect("create the install lock");
    // Blocks while another test process installs; then the binary is there.
    lock.lock().expect("lock the tansu install");
    if !installed.is_file() {
        eprintln!(
            "note: no tansu broker found (TANSU_BIN, PATH, ~/.cargo/bin); running `cargo {}` \
             (about 10 minutes, once per machine)",
            TANSU_INSTALL.join(" ")
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(TANSU_INSTALL)
            // The test's own target dir may be locked by the cargo running this test.
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("cargo runs");
        assert!(
            status.success() && installed.is_file(),
            "`cargo {}` failed ({status}); install tansu or set TANSU_BIN",
            TANSU_INSTALL.join(" ")
        );
    }
    installed
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The last `max` bytes of a log file, for failure messages.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    Memory,
    /// `sqlite://./tansu.db`, relative to the broker's working directory, so the data survives
    /// a restart.
    Sqlite,
}

/// A Kafka-compatible broker on 127.0.0.1.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    /// `None` for the broker CI runs, or while stopped.
    child: Option<Child>,
    /// `None` for the broker CI runs.
    storage: Option<Storage>,
    /// The working directory (sqlite file) and the broker's log.
    dir: tempfile::TempDir,
}

impl Broker {
    /// A memory-engine broker: the one named by `PATRON_TEST_BROKERS` if set, else a new one.
    pub fn memory() -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Ok(brokers) = std::env::var("PATRON_TEST_BROKERS") {
            let port = brokers
                .trim()
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or_else(|| panic!("PATRON_TEST_BROKERS={brokers:?} is not 127.0.0.1:PORT"));
            return Broker {
                port,
                child: None,
                storage: None,
                dir,
            };
        }
        Self::spawn_new(Storage::Memory, dir)
    }

    /// A broker of its own with sqlite storage, which keeps its topics across [`Broker::stop`]
    /// and [`Broker::restart`].
    pub fn sqlite() -> Broker {
        Self::spawn_new(Storage::Sqlite, tempfile::tempdir().expect("temp dir"))
    }

    fn spawn_new(storage: Storage, dir: tempfile::TempDir) -> Broker {
        let mut broker = Broker {
            port: 0,
            child: None,
            storage: Some(storage),
            dir,
        };
        // Another process may take the port between choosing and binding it: try a few.
        for _ in 0..5 {
            broker.port = free_port();
            if broker.try_start() {
                return broker;
            }
        }
        panic!(
            "tansu did not start after 5 attempts; its log:\n{}",
            tail(&broker.log(), 4000)
        );
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// Starts tansu on `self.port`; false if it exited before accepting connections.
    fn try_start(&mut self) -> bool {
        let storage = match self.storage.expect("a broker of our own") {
            Storage::Memory => "memory://tansu/",
            Storage::Sqlite => "sqlite://./tansu.db",
        };
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open the tansu log");
        let mut child = Command::new(tansu_bin())
            .args([
                "broker",
                "--storage-engine",
                storage,
                "--listener-url",
                &url,
            ])
            .args(["--advertised-listener-url", &url])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", tansu_bin().display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if child.try_wait().expect("poll tansu").is_some() {
                return false;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers` and `[source] brokers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL): clients see it vanish.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("a running broker of our own");
        child.kill().expect("kill tansu");
        child.wait().expect("reap tansu");
    }

    /// Starts the broker again on the same port, with the same storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is still running");
        // The port may linger for a moment after the kill.
        for _ in 0..20 {
            if self.try_start() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "tansu did not restart on port {}; its log:\n{}",
            self.port,
            tail(&self.log(), 4000)
        );
    }

    /// Creates a topic with `tansu topic create`, retrying while a new broker settles.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let broker = format!("tcp://{}", self.bootstrap());
        let mut last = String::new();
        for _ in 0..20 {
            let out = Command::new(tansu_bin())
                .args(["topic", "create", name, "--partitions"])
                .arg(partitions.to_string())
                .args(["--broker", &broker])
                .output()
                .expect("tansu topic create runs");
            if out.status.success() {
                return;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("tansu topic create {name} failed:\n{last}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where one serve instance keeps its config, store and logs, and what it reads.
#[derive(Debug, Clone)]
pub struct ServeSetup {
    pub config: PathBuf,
    pub store: PathBuf,
    /// Every start of serve appends its stderr here.
    pub stderr_log: PathBuf,
    pub topic: String,
    pub dlq_topic: String,
    pub group_id: String,
}

impl ServeSetup {
    /// Serve reading `broker`: creates the events topic (4 partitions) and the dead-letter
    /// topic (1 partition), with fresh names, and writes the config into `dir`.
    pub fn kafka(dir: &Path, broker: &Broker) -> ServeSetup {
        let setup = Self::named(dir);
        broker.create_topic(&setup.topic, 4);
        broker.create_topic(&setup.dlq_topic, 1);
        setup.write_config("kafka", &broker.bootstrap());
        setup
    }

    /// Serve with its embedded broker, which creates both topics itself.
    pub fn embedded(dir: &Path) -> ServeSetup {
        let setup = Self::named(dir);
        setup.write_config("embedded", "");
        setup
    }

    fn named(dir: &Path) -> ServeSetup {
        let topic = unique("t-events");
        ServeSetup {
            config: dir.join("serve.toml"),
            store: dir.join("serve.redb"),
            stderr_log: dir.join("serve.stderr.log"),
            dlq_topic: format!("{topic}-dlq"),
            topic,
            group_id: unique("g-serve"),
        }
    }

    fn write_config(&self, kind: &str, brokers: &str) {
        // `{:?}` quotes like a TOML basic string for the plain paths and names used here.
        let text = format!(
            "[store]\npath = {:?}\n\n\
             [source]\nkind = {kind:?}\nbrokers = {brokers:?}\ntopic = {:?}\n\
             group_id = {:?}\ndlq_topic = {:?}\n\n\
             [checkpoint]\ninterval = \"200ms\"\nmax_events = 5000\n\n\
             [clv]\nrefit_interval = \"1s\"\n\n\
             [api]\nlisten = \"127.0.0.1:0\"\n",
            path_str(&self.store),
            self.topic,
            self.group_id,
            self.dlq_topic,
        );
        std::fs::write(&self.config, text).expect("write the serve config");
    }

    /// A second instance in `dir` (created): the same topics and consumer group, its own
    /// config, store and log.
    pub fn sibling(&self, dir: &Path) -> ServeSetup {
        std::fs::create_dir_all(dir).expect("create the sibling's dir");
        let other = ServeSetup {
            config: dir.join("serve.toml"),
            store: dir.join("serve.redb"),
            stderr_log: dir.join("serve.stderr.log"),
            ..self.clone()
        };
        let text = std::fs::read_to_string(&self.config).expect("read the serve config");
        let text = text.replace(
            &format!("path = {:?}", path_str(&self.store)),
            &format!("path = {:?}", path_str(&other.store)),
        );
        std::fs::write(&other.config, text).expect("write the sibling's config");
        other
    }

    /// Sets `[source] session_timeout`: how soon the group hands a killed instance's partitions
    /// to whoever joins next. Tests that kill instances use [`SHORT_SESSION`].
    pub fn set_session_timeout(&self, timeout: &str) {
        self.set_source("session_timeout", &format!("{timeout:?}"));
    }

    /// Sets a key of `[source]` to `value` (TOML).
    pub fn set_source(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read the serve config");
        let dlq = format!("dlq_topic = {:?}\n", self.dlq_topic);
        assert!(text.contains(&dlq), "no dlq_topic line in {text}");
        let text = text.replacen(&dlq, &format!("{dlq}{key} = {value}\n"), 1);
        std::fs::write(&self.config, text).expect("write the serve config");
    }

    /// Adds TOML (sections such as `[offers]`) to the end of the config.
    pub fn append_config(&self, extra: &str) {
        let mut text = std::fs::read_to_string(&self.config).expect("read the serve config");
        text.push('\n');
        text.push_str(extra);
        std::fs::write(&self.config, text).expect("write the serve config");
    }

    /// Starts `patron serve` and waits until its API listens.
    pub fn start(&self) -> Serve {
        Serve::start(self)
    }
}

/// A running `patron serve`. Dropping it kills the process.
#[derive(Debug)]
pub struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stdout: Arc<Mutex<Vec<String>>>,
    pub stderr_log: PathBuf,
    agent: ureq::Agent,
}

impl Serve {
    fn start(setup: &ServeSetup) -> Serve {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&setup.stderr_log)
            .expect("open the serve stderr log");
        let mut child = patron()
            .args([
                "serve",
                "--config",
                path_str(&setup.config),
                "--insecure-no-auth",
            ])
            .env("PATRON_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start patron serve");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stdout.take().expect("piped stdout");
        let lines = Arc::clone(&stdout);
        // Keep draining, so serve never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("stdout lines").push(line);
            }
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut serve = Serve {
            child,
            url: String::new(),
            stdout,
            stderr_log: setup.stderr_log.clone(),
            agent,
        };
        serve.url = serve.wait_line("HTTP: ").trim().to_owned();
        serve
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What follows `prefix` on the first stdout line starting with it, waiting for it.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let found = self
                .stdout
                .lock()
                .expect("stdout lines")
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_owned));
            if let Some(rest) = found {
                return rest;
            }
            if let Some(status) = self.child.try_wait().expect("poll serve") {
                panic!(
                    "serve exited ({status}) before printing `{prefix}`\n{}",
                    self.diagnostics()
                );
            }
            assert!(
                Instant::now() < deadline,
                "serve printed no `{prefix}` line within {DEADLINE:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// stdout so far and the tail of stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "serve stdout:\n{}\nserve stderr (tail of {}):\n{}",
            self.stdout.lock().expect("stdout lines").join("\n"),
            self.stderr_log.display(),
            tail(&self.stderr_log, 6000)
        )
    }

    /// GET `path`: the status code and body, or the transport error.
    pub fn get(&self, path: &str) -> Result<(u16, String), ureq::Error> {
        let mut resp = self.agent.get(format!("{}{path}", self.url)).call()?;
        let code = resp.status().as_u16();
        let body = resp.body_mut().read_to_string()?;
        Ok((code, body))
    }

    /// `method` `path` with an optional body: the status code and the body as JSON.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json")
            .body(body.unwrap_or("").to_owned())
            .expect("a request");
        let mut resp = self
            .agent
            .run(request)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let code = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().expect("a body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} answered {code}, not JSON ({e}): {text}"));
        (code, json)
    }

    /// GET `/v1/status` as JSON.
    pub fn status(&self) -> Result<Value, String> {
        match self.get("/v1/status") {
            Ok((200, body)) => serde_json::from_str(&body)
                .map_err(|e| format!("/v1/status is not JSON ({e}): {body}")),
            Ok((code, body)) => Err(format!("/v1/status answered {code}: {body}")),
            Err(e) => Err(format!("/v1/status: {e}")),
        }
    }

    /// Polls `path` until it answers `code`; the codes seen on the way, for the failure message.
    pub fn wait_code(&mut self, path: &str, code: u16) {
        let deadline = Instant::now() + DEADLINE;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.assert_running();
            match self.get(path) {
                Ok((c, _)) if c == code => return,
                Ok((c, body)) => last = format!("{c}: {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "GET {path} never answered {code} within {DEADLINE:?}; last: {last}\n{}",
            self.diagnostics()
        );
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll serve") {
            panic!(
                "serve exited unexpectedly ({status})\n{}",
                self.diagnostics()
            );
        }
    }

    /// Polls `/v1/status` until every partition's committed offset is the end of what was
    /// produced to it and no dead letter is pending; returns that status.
    pub fn wait_caught_up(&mut self, ends: &TopicEnds) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut last = String::from("(no answer yet)");
        // Caught up, and still so with the same offsets after the broker's next statistics
        // (log ends arrive once a second): nothing routed is still on its way.
        let mut settled: Option<(Instant, Value)> = None;
        while Instant::now() < deadline {
            self.assert_running();
            match self.status() {
                Ok(status) => {
                    match ends.compare(&status) {
                        Progress::CaughtUp => {
                            let offsets = status["partitions"].clone();
                            match &settled {
                                Some((since, seen)) if *seen == offsets => {
                                    if since.elapsed() >= Duration::from_millis(2_500) {
                                        return status;
                                    }
                                }
                                _ => settled = Some((Instant::now(), offsets)),
                            }
                        }
                        Progress::Behind => settled = None,
                    }
                    last = format!("{status:#}");
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "serve did not catch up within {DEADLINE:?} (produced: {ends:?})\nlast /v1/status: \
             {last}\n{}",
            self.diagnostics()
        );
    }

    /// SIGTERM, then waits for the exit, which must be 0.
    pub fn terminate(mut self) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let status = self.wait_exit();
        assert!(
            status.success(),
            "serve exited with {status} after SIGTERM, not 0\n{}",
            self.diagnostics()
        );
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll serve") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!(
            "serve did not exit within {DEADLINE:?} of SIGTERM\n{}",
            self.diagnostics()
        );
    }

    /// SIGKILL: no drain, no final checkpoint.
    pub fn kill(mut self) {
        self.child.kill().expect("kill serve");
        self.child.wait().expect("reap serve");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The next offset after the last record produced, per partition: what a caught-up consumer
/// has committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicEnds(pub BTreeMap<i32, i64>);

pub enum Progress {
    CaughtUp,
    Behind,
}

impl TopicEnds {
    pub fn of(positions: &[Position]) -> TopicEnds {
        let mut ends = TopicEnds::default();
        for p in positions {
            let end = ends.0.entry(p.partition).or_default();
            *end = (*end).max(p.offset + 1);
        }
        ends
    }

    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }

    /// Where `/v1/status` stands against these ends. Caught up: every partition committed at
    /// least what was produced to it and up to its log end (identity records that serve routes
    /// between partitions follow the produced ones), and no dead letter or identity record is
    /// waiting to be sent.
    pub fn compare(&self, status: &Value) -> Progress {
        let Some(partitions) = status["partitions"].as_array() else {
            return Progress::Behind;
        };
        let mut committed: BTreeMap<i64, i64> = BTreeMap::new();
        let mut at_log_end = true;
        for p in partitions {
            let (Some(partition), Some(offset)) =
                (p["partition"].as_i64(), p["committed_offset"].as_i64())
            else {
                continue;
            };
            committed.insert(partition, offset);
            // The log end comes from the broker's statistics and may trail the commits.
            at_log_end &= p["high_watermark"].as_i64() == Some(offset);
        }
        let all_in = self
            .0
            .iter()
            .all(|(&p, &end)| committed.get(&i64::from(p)).is_some_and(|c| *c >= end));
        let pending = status["dead_letters"]["pending"].as_u64();
        let routing = status["identity_routing"]["pending"].as_u64().unwrap_or(0);
        if all_in && at_log_end && pending == Some(0) && routing == 0 {
            Progress::CaughtUp
        } else {
            Progress::Behind
        }
    }
}

/// Where the broker put one produced record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// Delivery reports by send index.
#[derive(Default)]
struct DeliveryLog(Mutex<HashMap<usize, Result<Position, String>>>);

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let outcome = match result {
            Ok(m) => Ok(Position {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().expect("delivery log").insert(index, outcome);
    }
}

/// An rdkafka producer of [`SynthEvent`]s (key = `event.key`, value = `event.payload`) that
/// records where each one landed.
pub struct EventProducer {
    producer: BaseProducer<DeliveryLog>,
    topic: String,
    sent: usize,
}

impl EventProducer {
    pub fn new(brokers: &str, topic: &str) -> EventProducer {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // Retries must not write a record twice: offsets and dead letters are counted.
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .create_with_context(DeliveryLog::default())
            .expect("create the producer");
        EventProducer {
            producer,
            topic: topic.to_owned(),
            sent: 0,
        }
    }

    /// Enqueues `events`, in order.
    pub fn send(&mut self, events: &[SynthEvent]) {
        for event in events {
            let mut record = BaseRecord::with_opaque_to(&self.topic, self.sent)
                .key(event.key.as_str())
                .payload(event.payload.as_slice());
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        self.producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => panic!("producing to {}: {e}", self.topic),
                }
            }
            self.sent += 1;
            self.producer.poll(Duration::ZERO);
        }
    }

    /// Waits for every delivery report; the position of each record sent, in send order.
    pub fn finish(self) -> Vec<Position> {
        self.producer
            .flush(DEADLINE)
            .unwrap_or_else(|e| panic!("flushing to {}: {e}", self.topic));
        let deadline = Instant::now() + DEADLINE;
        while self
            .producer
            .context()
            .0
            .lock()
            .expect("delivery log")
            .len()
            < self.sent
        {
            assert!(Instant::now() < deadline, "delivery reports missing");
            self.producer.poll(Duration::from_millis(100));
        }
        let mut log = self.producer.context().0.lock().expect("delivery log");
        (0..self.sent)
            .map(|i| match log.remove(&i) {
                Some(Ok(p)) => p,
                Some(Err(e)) => panic!("record {i} to {} not delivered: {e}", self.topic),
                None => unreachable!("counted above"),
            })
            .collect()
    }
}

/// Produces `events` to `topic` and waits until all are acknowledged.
pub fn produce(brokers: &str, topic: &str, events: &[SynthEvent]) -> Vec<Position> {
    let mut producer = EventProducer::new(brokers, topic);
    producer.send(events);
    producer.finish()
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Every record of the dead-letter topic (one partition, 0).
pub fn read_dead_letters(brokers: &str, topic: &str) -> Vec<Record> {
    read_partition(brokers, topic, 0)
}

/// Every record of one partition, read from the start to the end (partition EOF, which
/// follows the fetch-response watermark, not tansu's under-reporting ListOffsets).
pub fn read_partition(brokers: &str, topic: &str, partition: i32) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("g-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("create a consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("a topic partition");
    consumer.assign(&tpl).expect("assign the partition");
    let mut records = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let mut last_error = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => records.push(Record {
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                let value = h.value.unwrap_or_default();
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(value).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(KafkaError::PartitionEOF(_))) => return records,
            // Transient while the client connects; the deadline bounds it.
            Some(Err(e)) => last_error = Some(e),
            None => {}
        }
    }
    panic!(
        "reading {topic}/{partition} did not reach its end within {DEADLINE:?} ({} read, last \
         error {last_error:?})",
        records.len()
    );
}

/// The broker holds exactly what was produced: `events[i]` at `positions[i]`, and nothing
/// else. A check of the harness, so that a difference in serve's state is serve's.
pub fn assert_broker_holds(
    brokers: &str,
    topic: &str,
    events: &[SynthEvent],
    positions: &[Position],
) {
    let ends = TopicEnds::of(positions);
    let mut held = HashMap::new();
    for &partition in ends.0.keys() {
        // Identity records serve routed between partitions are not the producer's.
        let records = read_partition(brokers, topic, partition);
        for r in records
            .into_iter()
            .filter(|r| !r.headers.contains_key("patron.route"))
        {
            held.insert(
                Position {
                    partition,
                    offset: r.offset,
                },
                r.payload,
            );
        }
    }
    assert_eq!(
        held.len(),
        events.len(),
        "{topic} holds {} records, {} were produced",
        held.len(),
        events.len()
    );
    for (event, position) in events.iter().zip(positions) {
        assert!(
            held.get(position) == Some(&event.payload),
            "{topic} does not hold the record produced at {position:?}"
        );
    }
}

/// `patron query --store S --format csv SQL`.
pub fn query_csv(store: &Path, sql: &str) -> String {
    run_ok(&["query", "--store", path_str(store), "--format", "csv", sql])
}

/// The counters `patron replay --input` printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayCounts {
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: BTreeMap<String, u64>,
}

/// The reference answer: the same payloads written one per line and replayed from the file.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// [`CUSTOMERS_SQL`] over the replayed store.
    pub customers_csv: String,
    pub counts: ReplayCounts,
}

/// Replays `events` from a JSONL file into a store of its own under `dir`.
pub fn file_oracle(dir: &Path, events: &[SynthEvent]) -> Oracle {
    let input = dir.join("oracle-events.jsonl");
    let store = dir.join("oracle.redb");
    let mut text = Vec::new();
    for e in events {
        text.extend_from_slice(&e.payload);
        text.push(b'\n');
    }
    std::fs::write(&input, text).expect("write the oracle input");
    let summary = run_ok(&[
        "replay",
        "--input",
        path_str(&input),
        "--store",
        path_str(&store),
        "--dead-letter",
        path_str(&dir.join("oracle-dead.jsonl")),
    ]);
    let count = |label: &str| -> Option<u64> {
        summary.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            if words.next()? != label {
                return None;
            }
            words.next()?.parse().ok()
        })
    };
    let counts = ReplayCounts {
        applied: count("applied").expect("an `applied` line in the replay summary"),
        duplicates: count("duplicates").expect("a `duplicates` line in the replay summary"),
        rejected: patron_synth::reason::ALL
            .iter()
            .filter_map(|r| Some(((*r).to_owned(), count(r)?)))
            .collect(),
    };
    Oracle {
        customers_csv: query_csv(&store, CUSTOMERS_SQL),
        counts,
    }
}

/// Equal CSV text, or a failure that shows the first rows that differ instead of both tables.
pub fn assert_same_customers(actual: &str, expected: &str, what: &str) {
    if actual == expected {
        return;
    }
    let (a, e): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), expected.lines().collect());
    let first = a
        .iter()
        .zip(&e)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(e.len()));
    let show = |rows: &[&str]| {
        rows.iter()
            .skip(first)
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{what}: the customers tables differ ({} vs {} lines); from line {first}:\nactual:\n\
         {}\nexpected:\n{}",
        a.len(),
        e.len(),
        show(&a),
        show(&e)
    );
}

/// Frequency and monetary per customer equal the generator's own account of what it drew,
/// and no other profile has a purchase.
pub fn assert_matches_truth(customers_csv: &str, cfg: &SynthConfig) {
    let rows: HashMap<String, (u64, i64)> = parse_csv(customers_csv)
        .into_iter()
        .map(|r| {
            let frequency = r["frequency"].parse().expect("frequency is an integer");
            let monetary = if r["monetary"].is_empty() {
                0
            } else {
                micros(&r["monetary"])
            };
            (r["customer_id"].clone(), (frequency, monetary))
        })
        .collect();
    let truths: Vec<_> = patron_synth::customer_truths(cfg)
        .expect("a valid synth config")
        .collect();
    for t in &truths {
        let Some(&(frequency, monetary)) = rows.get(&t.customer_id) else {
            panic!("customer {} is missing from the store", t.customer_id);
        };
        assert_eq!(
            frequency,
            u64::from(t.purchases),
            "{} frequency",
            t.customer_id
        );
        let cents = ((t.gross - t.refunded) * 100.0).round() as i64;
        assert_eq!(monetary, cents * 10_000, "{} monetary", t.customer_id);
    }
    let buyers = rows.values().filter(|(f, _)| *f > 0).count();
    assert_eq!(
        buyers,
        truths.len(),
        "profiles with a purchase vs customers generated"
    );
}

/// The rejection count per reason the generator built into `events`.
pub fn expected_rejects(events: &[SynthEvent]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in events.iter().filter_map(|e| e.expected_reject) {
        *counts.entry(r.to_owned()).or_default() += 1;
    }
    counts
}

/// The counters of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    pub applied: Option<u64>,
    pub duplicates: Option<u64>,
    pub rejected: Option<u64>,
    pub rejected_by_reason: BTreeMap<String, u64>,
}

impl Counters {
    /// The counters in a `/v1/status` answer (reasons with a zero count left out).
    pub fn of_status(status: &Value) -> Counters {
        Counters {
            applied: status["applied"].as_u64(),
            duplicates: status["duplicates"].as_u64(),
            rejected: status["rejected"].as_u64(),
            rejected_by_reason: status["rejected_by_reason"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// serve's counters in `/v1/status` agree with the file replay and with the generator.
pub fn assert_counters(status: &Value, oracle: &Oracle, events: &[SynthEvent]) {
    let rejects = expected_rejects(events);
    let duplicates = events.iter().filter(|e| e.duplicate).count() as u64;
    assert_eq!(
        (oracle.counts.duplicates, &oracle.counts.rejected),
        (duplicates, &rejects),
        "the file replay's duplicates and rejections (left) vs the generator's (right)"
    );
    let got = Counters::of_status(status);
    let expected_rejected = Counters {
        applied: None,
        duplicates: None,
        rejected: Some(rejects.values().sum()),
        rejected_by_reason: rejects,
    };
    assert_eq!(
        Counters {
            applied: None,
            duplicates: None,
            ..got.clone()
        },
        expected_rejected,
        "serve's rejections (left) vs the generator's (right); status: {status:#}"
    );
    // Every valid record is applied or counted as a duplicate. DESIGN.md guarantees catching a
    // duplicate only within `dedup_window` of the customer's newest event: an anonymous
    // visitor's duplicate can arrive (from its own partition) after an `identify` from another
    // partition merged it into a customer whose events run months ahead, and may then be
    // applied. The file replay reads in time order and catches them all.
    let (applied, dups) = (got.applied.unwrap_or(0), got.duplicates.unwrap_or(0));
    assert_eq!(
        applied + dups,
        oracle.counts.applied + duplicates,
        "applied + duplicates; status: {status:#}"
    );
    assert!(
        dups <= duplicates && duplicates - dups <= duplicates / 10 + 3,
        "serve caught {dups} of {duplicates} duplicates; status: {status:#}"
    );
    assert!(status["as_of"].is_string(), "as_of in {status:#}");
}

/// The dead-letter topic holds each bad event exactly once, with its raw bytes, key, reason and
/// source position; `positions[i]` is where `events[i]` was produced to `topic`.
pub fn assert_dead_letters(
    letters: &[Record],
    events: &[SynthEvent],
    positions: &[Position],
    topic: &str,
) {
    assert_eq!(events.len(), positions.len());
    let by_position: HashMap<Position, usize> =
        positions.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let mut seen = HashSet::new();
    for dl in letters {
        let header = |name: &str| -> &str {
            dl.headers.get(name).map(String::as_str).unwrap_or_else(|| {
                panic!(
                    "dead letter at offset {} has no {name} header: {:?}",
                    dl.offset, dl.headers
                )
            })
        };
        assert_eq!(header("patron.source.topic"), topic, "{:?}", dl.headers);
        let source = Position {
            partition: header("patron.source.partition")
                .parse()
                .expect("a decimal partition"),
            offset: header("patron.source.offset")
                .parse()
                .expect("a decimal offset"),
        };
        let Some(&index) = by_position.get(&source) else {
            panic!("dead letter {:?} points at no produced record", dl.headers);
        };
        let event = &events[index];
        assert!(
            seen.insert(index),
            "the record at {source:?} was dead-lettered twice"
        );
        assert_eq!(
            Some(header("patron.reason")),
            event.expected_reject,
            "reason of the record at {source:?}: {}",
            String::from_utf8_lossy(&event.payload)
        );
        assert!(
            !header("patron.detail").is_empty(),
            "an empty detail at {source:?}"
        );
        assert!(
            dl.payload == event.payload,
            "dead letter at {source:?} does not carry the raw bytes"
        );
        assert_eq!(
            dl.key.as_deref(),
            Some(event.key.as_bytes()),
            "key of the dead letter at {source:?}"
        );
    }
    let bad = events
        .iter()
        .filter(|e| e.expected_reject.is_some())
        .count();
    assert_eq!(
        seen.len(),
        bad,
        "{bad} bad events produced, {} dead-lettered",
        seen.len()
    );
}
