//! `patron fit`: fit the CLV models on a store and keep the result in it.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use patron_core::config::{PatronConfig, TimeUnit};
use patron_query::clv::{fit_store, save_model};

use crate::settings::parse_as_of;
use crate::{CmdResult, Failure};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum UnitArg {
    Day,
    Week,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Text,
    Json,
}

/// Fit BG/NBD and Gamma-Gamma on the store's customers; print and store the parameters.
///
/// Scores (p_alive, expected_purchases, expected_avg_value, clv) use the stored model from then
/// on. A fit that does not converge, or data that cannot identify the model (no repeat buyers),
/// is an error and leaves the previous model in place.
#[derive(Debug, Args)]
pub(crate) struct FitArgs {
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Fit as of this instant (RFC 3339 or YYYY-MM-DD). Default: the store's event clock.
    #[arg(long, value_name = "TS")]
    as_of: Option<String>,
    /// Time unit of the fitted rates. Default: `[clv] time_unit`.
    #[arg(long, value_enum)]
    time_unit: Option<UnitArg>,
    #[arg(long, value_enum, default_value = "text")]
    format: FormatArg,
}

pub(crate) fn run(args: FitArgs, config: PatronConfig) -> CmdResult {
    let store = super::open_existing(&super::store_path(args.store, &config), &config)?;
    let as_of = args
        .as_of
        .as_deref()
        .map(parse_as_of)
        .transpose()
        .map_err(Failure::Usage)?;
    let unit = match args.time_unit {
        Some(UnitArg::Day) => TimeUnit::Day,
        Some(UnitArg::Week) => TimeUnit::Week,
        None => config.clv.time_unit,
    };
    let model = fit_store(&store, as_of, unit).map_err(Failure::runtime)?;
    save_model(&store, &model).map_err(Failure::runtime)?;
    match args.format {
        FormatArg::Json => println!(
            "{}",
            serde_json::to_string_pretty(&model).expect("model serialises")
        ),
        FormatArg::Text => {
            let bg = &model.bgnbd;
            let gg = &model.gamma_gamma;
            println!(
                "BG/NBD ({:?}s, as of {})",
                model.time_unit,
                patron_core::time::to_rfc3339(model.as_of)
            );
            println!(
                "  r = {:.6}  alpha = {:.6}  a = {:.6}  b = {:.6}",
                bg.params.r, bg.params.alpha, bg.params.a, bg.params.b
            );
            println!(
                "  log-likelihood = {:.4}  customers = {}  iterations = {}",
                bg.log_likelihood, bg.customers, bg.iterations
            );
            println!("Gamma-Gamma");
            println!(
                "  p = {:.6}  q = {:.6}  gamma = {:.6}",
                gg.params.p, gg.params.q, gg.params.gamma
            );
            println!(
                "  log-likelihood = {:.4}  repeat buyers = {}",
                gg.log_likelihood, gg.customers
            );
            println!(
                "fit time {:.3}s; model stored in {}",
                model.fit_seconds,
                store.path().display()
            );
        }
    }
    Ok(())
}
