//! `patron demo`: `serve` on the embedded broker, fed by the built-in generator.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use patron_core::config::{
    ApiKeyConfig, OfferConfig, OffersSection, OffersTable, PatronConfig, Role, SourceKind,
};
use patron_stream::kafka::produce::EventProducer;
use patron_synth::{Generator, SynthConfig};

use super::serve::{Extras, serve};
use crate::{CmdResult, Failure};

/// Run the whole pipeline with nothing to install: the embedded broker, a generator streaming
/// realistic customers into it, the consumer, the store and the API.
///
/// Prints the Kafka bootstrap address, the HTTP address and a fresh admin API key. Watch the
/// state grow with `curl -H "Authorization: Bearer <key>" http://127.0.0.1:8080/v1/status`, or
/// query it after stopping with `patron query --store patron-demo/demo.redb "SELECT ..."`.
/// Ctrl-C stops it cleanly.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Synthetic customers.
    #[arg(long, default_value_t = 20_000)]
    customers: u64,
    /// Days of purchase history, ending today.
    #[arg(long, default_value_t = 730)]
    days: u32,
    /// Events per second streamed into the broker (0: as fast as it takes them).
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Working directory for the store.
    #[arg(long, value_name = "DIR", default_value = "patron-demo")]
    dir: PathBuf,
    /// Keep the store of an earlier demo instead of starting fresh.
    #[arg(long)]
    keep: bool,
}

pub(crate) fn run(args: DemoArgs, mut config: PatronConfig) -> CmdResult {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Failure::Runtime(format!("{}: {e}", args.dir.display())))?;
    let store = args.dir.join("demo.redb");
    if store.exists() && !args.keep {
        std::fs::remove_file(&store)
            .map_err(|e| Failure::Runtime(format!("{}: {e}", store.display())))?;
    }
    let start = chrono::Utc::now() - chrono::Duration::days(i64::from(args.days));
    let synth = SynthConfig {
        customers: args.customers,
        days: args.days,
        seed: args.seed,
        start,
        bad_rate: 0.002,
        duplicate_rate: 0.01,
        segment_spec_rate: 0.1,
        ..SynthConfig::default()
    };
    let generator = Generator::try_new(synth).map_err(|e| Failure::Usage(e.to_string()))?;

    let key = super::keys::fresh_key("demo");
    config.source.kind = SourceKind::Embedded;
    config.api.keys = vec![ApiKeyConfig {
        name: "demo-admin".into(),
        role: Role::Admin,
        sha256: patron_api::auth::sha256_hex(&key),
    }];
    if config.offers.catalog().is_empty() {
        config.offers = demo_offers(config.offers.exploration());
    }
    let auth = patron_api::Auth::from_config(&config.api.keys).map_err(Failure::Usage)?;
    let topic = config.source.topic.clone();
    let rate = args.rate;
    let traffic = move |brokers: String, stop: Arc<AtomicBool>| {
        if let Err(e) = stream(generator, &brokers, &topic, rate, &stop) {
            eprintln!("demo generator stopped: {e}");
        }
    };
    let banner = vec![
        format!("API key (admin, this run only): {key}"),
        format!("Dashboard: http://{}/#key={key}", config.api.listen),
        format!(
            "Streaming {} customers' events at {} events/s. Try:",
            args.customers,
            if rate == 0 {
                "full speed".to_string()
            } else {
                rate.to_string()
            }
        ),
        format!(
            "  curl -H 'Authorization: Bearer {key}' http://{}/v1/status",
            config.api.listen
        ),
        format!(
            "After Ctrl-C: patron query --store {} \"SELECT rfm_segment, count(*) FROM customers GROUP BY 1\"",
            store.display()
        ),
    ];
    serve(
        config,
        store,
        auth,
        Extras {
            traffic: Some(Box::new(traffic)),
            banner,
        },
    )
}

/// Produces the generated stream, paced to `rate` events per second.
fn stream(
    generator: Generator,
    brokers: &str,
    topic: &str,
    rate: u64,
    stop: &AtomicBool,
) -> Result<(), patron_stream::StreamError> {
    let mut producer = EventProducer::new(brokers, topic)?;
    let started = Instant::now();
    let mut sent = 0u64;
    for event in generator {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        producer.send(event.key.as_bytes(), &event.payload)?;
        sent += 1;
        if rate > 0 && sent.is_multiple_of(100) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    if !stop.load(Ordering::Relaxed) {
        eprintln!(
            "demo generator: all {sent} events sent; the server keeps running (Ctrl-C stops it)"
        );
    }
    Ok(())
}

/// A small catalog so `GET /v1/customers/{id}/offers` has something to rank in the demo.
fn demo_offers(exploration: patron_core::config::Exploration) -> OffersSection {
    let offer = |id: &str, name: &str, eligible: &str, value: f64, cost: f64| OfferConfig {
        id: id.into(),
        name: name.into(),
        eligible: eligible.into(),
        value,
        cost,
        channels: vec!["web".into(), "email".into()],
        category: None,
        max_impressions: Some(3),
        window: Some(Duration::from_secs(7 * 86_400)),
        cooldown_after_decline: Some(Duration::from_secs(14 * 86_400)),
        starts: None,
        ends: None,
        holdout: 0.1,
    };
    OffersSection::Table(OffersTable {
        exploration,
        catalog: vec![
            offer(
                "welcome-back",
                "Welcome back: 15% off",
                "r_score <= 2",
                12.0,
                2.0,
            ),
            offer("free-shipping", "Free shipping", "true", 5.0, 1.0),
            offer("vip-preview", "VIP early access", "f_score >= 4", 20.0, 0.5),
        ],
        ..OffersTable::default()
    })
}
