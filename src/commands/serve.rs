//! `patron serve`: consume the topic, keep the store, serve the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use patron_api::{ApiState, Auth};
use patron_core::config::{PatronConfig, SourceKind};
use patron_store::Store;
use patron_stream::kafka::KafkaSource;
use patron_stream::kafka::embedded::EmbeddedBroker;
use patron_stream::kafka::ingest::{self, IngestOptions, IngestSummary, Mode, StartAt};
use patron_stream::kafka::members::Membership;
use patron_stream::kafka::produce::IntakeProducer;
use patron_stream::kafka::status::IngestStatus;
use tracing::{info, warn};

use crate::{CmdResult, Failure};

/// Consume events from Kafka, keep per-customer state, and serve the HTTP API.
///
/// With the default config ([source] kind = "embedded") an in-process Kafka-compatible broker
/// starts too; its address is printed so any Kafka client can produce to it. Its log lives in
/// memory: use [source] kind = "kafka" in production.
///
/// Offsets are committed in the store with the state, so a crash or restart neither loses nor
/// double-counts an event. SIGTERM or Ctrl-C stops reading, checkpoints and exits 0.
///
/// Example:
///   patron serve --config config/default.toml
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The store file. Default: [store] path.
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Serve without API keys. Allowed only when [api] listen is a loopback address.
    #[arg(long)]
    insecure_no_auth: bool,
}

/// Produces traffic into the broker (given its bootstrap address) until the flag is set.
pub(crate) type Traffic = Box<dyn FnOnce(String, Arc<AtomicBool>) + Send>;

/// What `demo` adds to a plain `serve`.
pub(crate) struct Extras {
    /// Started on its own thread once the broker is up.
    pub(crate) traffic: Option<Traffic>,
    /// Printed after the addresses.
    pub(crate) banner: Vec<String>,
}

pub(crate) fn run(args: ServeArgs, config: PatronConfig) -> CmdResult {
    let auth = auth_for(&config, args.insecure_no_auth)?;
    let path = super::store_path(args.store, &config);
    serve(
        config,
        path,
        auth,
        Extras {
            traffic: None,
            banner: Vec::new(),
        },
    )
}

/// Keys from config; none is a usage error unless `--insecure-no-auth` on loopback.
pub(crate) fn auth_for(config: &PatronConfig, insecure: bool) -> Result<Auth, Failure> {
    let listen: SocketAddr = config.api.listen.parse().map_err(|_| {
        Failure::Usage(format!(
            "[api] listen `{}` is not an address like 127.0.0.1:8080",
            config.api.listen
        ))
    })?;
    if insecure {
        if !listen.ip().is_loopback() {
            return Err(Failure::Usage(format!(
                "--insecure-no-auth is refused on {listen}: it is allowed only on a loopback address"
            )));
        }
        return Ok(Auth::open());
    }
    if config.api.keys.is_empty() {
        return Err(Failure::Usage(
            "no API keys configured: add [[api.keys]] (name, role, sha256) to the config, or pass --insecure-no-auth on a loopback address".into(),
        ));
    }
    Auth::from_config(&config.api.keys).map_err(Failure::Usage)
}

pub(crate) fn serve(
    config: PatronConfig,
    store_path: PathBuf,
    auth: Auth,
    extras: Extras,
) -> CmdResult {
    let store = super::open_store(&store_path, &config)?;
    let source = &config.source;
    let embedded = match source.kind {
        SourceKind::Embedded => Some(
            EmbeddedBroker::start(&source.topic, &source.dlq_topic).map_err(Failure::runtime)?,
        ),
        SourceKind::Kafka => None,
    };
    // A real cluster keeps its log, so its positions need no incarnation.
    let (brokers, incarnation) = match &embedded {
        Some(broker) => (broker.bootstrap_servers(), broker.incarnation().to_owned()),
        None if source.brokers.trim().is_empty() => {
            return Err(Failure::Usage(
                "[source] brokers is empty: set it for kind = \"kafka\" (e.g. \"kafka-1:9092\")"
                    .into(),
            ));
        }
        None => (source.brokers.clone(), String::new()),
    };
    let kafka = KafkaSource {
        brokers,
        topic: source.topic.clone(),
        group_id: source.group_id.clone(),
        dlq_topic: source.dlq_topic.clone(),
        incarnation,
        changelog: source.changelog,
        changelog_seed_batch: source.changelog_seed_batch,
        session_timeout: source.session_timeout,
    };
    if embedded.is_some() {
        println!("Kafka bootstrap: {}", kafka.brokers);
        eprintln!(
            "note: the embedded broker keeps its log in memory. Events it accepted but Patron has not yet checkpointed are lost if the process dies; use [source] kind = \"kafka\" in production."
        );
    }
    let status = Arc::new(IngestStatus::new(
        &kafka.position_key(),
        &kafka.topic,
        &kafka.dlq_topic,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let ingest_done = Arc::new(tokio::sync::Notify::new());

    let ingest_thread = {
        let (store, config, status, stop, done) = (
            store.clone(),
            config.clone(),
            status.clone(),
            stop.clone(),
            ingest_done.clone(),
        );
        let opts = IngestOptions {
            source: kafka.clone(),
            mode: Mode::Follow,
            start: StartAt::Earliest,
            partitions: None,
        };
        std::thread::Builder::new()
            .name("patron-consumer".into())
            .spawn(move || {
                let result = ingest::run(store, &config, &opts, status, &stop);
                done.notify_one();
                result
            })
            .map_err(Failure::runtime)?
    };
    let refit_thread = {
        let (store, config, stop) = (store.clone(), config.clone(), stop.clone());
        std::thread::Builder::new()
            .name("patron-refit".into())
            .spawn(move || refit_loop(&store, &config, &stop))
            .map_err(Failure::runtime)?
    };
    let traffic_thread = extras.traffic.map(|traffic| {
        let (brokers, stop) = (kafka.brokers.clone(), stop.clone());
        std::thread::spawn(move || traffic(brokers, stop))
    });

    let seeded = patron_api::offers::seed_catalog(&store, config.offers.catalog())
        .map_err(Failure::Usage)?;
    if seeded > 0 {
        tracing::info!("{seeded} offers from config written to the catalog");
    }
    let state = ApiState::new(
        store.clone(),
        status.clone(),
        auth,
        config.api.metrics_key.clone(),
    )
    .with_config(Arc::new(config.clone()))
    .with_intake(Arc::new(
        IntakeProducer::new(&kafka.brokers, &kafka.topic).map_err(Failure::runtime)?,
    ));
    let runtime = super::runtime()?;
    let served: Result<(), Failure> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.api.listen)
            .await
            .map_err(|e| {
                Failure::Runtime(format!("cannot listen on {}: {e}", config.api.listen))
            })?;
        let addr = listener.local_addr().map_err(Failure::runtime)?;
        println!("HTTP: http://{addr}");
        let state = match (embedded.is_none(), advertised_url(&config, addr)) {
            // Instances of one group find each other through the members topic.
            (true, Some(url)) => {
                let members =
                    Membership::start(&kafka.brokers, &kafka.topic, &url, status.clone(), stop.clone())
                        .map_err(Failure::runtime)?;
                info!(%url, "advertised to the group for request forwarding");
                Arc::new(state.with_members(members))
            }
            (true, None) => {
                warn!("[api] listen binds every interface and [api] advertised_url is unset: other instances cannot forward requests here");
                Arc::new(state)
            }
            (false, _) => Arc::new(state),
        };
        for line in &extras.banner {
            println!("{line}");
        }
        info!(store = %store_path.display(), "serving");
        let shutdown = {
            let done = ingest_done.clone();
            async move {
                tokio::select! {
                    _ = shutdown_signal() => info!("stopping: draining and checkpointing"),
                    _ = done.notified() => {},
                }
            }
        };
        // Rebuild the scored view (ranks, segments, KPIs) in the background, so no request
        // waits for the scan.
        tokio::spawn(patron_api::kpis::keep_view_fresh(state.clone()));
        patron_api::serve(listener, state, shutdown)
            .await
            .map_err(Failure::runtime)
    });
    // Ends the background tasks (the view refresher holds the API state, and with it the intake
    // producer), so nothing talks to the embedded broker after it stops.
    drop(runtime);
    stop.store(true, Ordering::Relaxed);
    let ingested = ingest_thread
        .join()
        .map_err(|_| Failure::Runtime("the ingest thread panicked".into()))?;
    if let Some(t) = traffic_thread {
        let _ = t.join();
    }
    let _ = refit_thread.join();
    drop(embedded);
    served?;
    let summary = ingested.map_err(Failure::runtime)?;
    report(&summary);
    Ok(())
}

fn report(s: &IngestSummary) {
    eprintln!(
        "stopped: {} records this run ({} applied, {} duplicates, {} rejected) in {:.1}s; {} checkpoints, p99 {:.1} ms; {} dead letters pending",
        s.records,
        s.applied,
        s.duplicates,
        s.rejected_total(),
        s.elapsed.as_secs_f64(),
        s.checkpoints,
        s.checkpoint_p99.as_secs_f64() * 1e3,
        s.dead_letters_pending
    );
    for (p, why) in &s.stopped {
        eprintln!("partition {p} stopped: {why}");
    }
}

/// SIGTERM or Ctrl-C.
/// Where other instances reach this one: `[api] advertised_url`, else the bound address when
/// it names one interface.
fn advertised_url(config: &PatronConfig, bound: SocketAddr) -> Option<String> {
    match &config.api.advertised_url {
        Some(url) => Some(url.trim_end_matches('/').to_owned()),
        None if bound.ip().is_unspecified() => None,
        None => Some(format!("http://{bound}")),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Refits the CLV models every `[clv] refit_interval` (the first time after at most a
/// minute, so a new store gets a model soon), on a read snapshot: ingestion never waits.
fn refit_loop(store: &Store, config: &PatronConfig, stop: &AtomicBool) {
    let interval = config.clv.refit_interval.max(Duration::from_secs(1));
    let mut next = Instant::now() + interval.min(Duration::from_secs(60));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + interval;
        match patron_query::clv::fit_store(store, None, config.clv.time_unit) {
            Ok(model) => match patron_query::clv::save_model(store, &model) {
                Ok(()) => info!(
                    seconds = model.fit_seconds,
                    customers = model.bgnbd.customers,
                    "CLV models refitted"
                ),
                Err(e) => warn!("cannot store the refitted CLV model: {e}"),
            },
            Err(e) => warn!("CLV refit skipped: {e}"),
        }
    }
}
