//! Config loading: built-in defaults < TOML file < `PATRON__SECTION__KEY` environment variables.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use patron_core::config::PatronConfig;

pub(crate) fn load(file: Option<&Path>) -> Result<PatronConfig, String> {
    let mut fig = Figment::from(Serialized::defaults(PatronConfig::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(format!("config file {} not found", path.display()));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig.merge(Env::prefixed("PATRON__").split("__"));
    let config = fig.extract::<PatronConfig>().map_err(|e| {
        // figment reports the key path and the source (file or env var); keep it to one line.
        let first = e
            .into_iter()
            .next()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let origin = file
            .map(|p| format!("{}: ", p.display()))
            .unwrap_or_default();
        format!("invalid config: {origin}{}", first.replace('\n', " "))
    })?;
    patron_query::kpi::validate_objectives(&config.objectives)
        .map_err(|e| format!("invalid config: [[objectives]] {e}"))?;
    let session = config.source.session_timeout;
    if !(Duration::from_secs(1)..=Duration::from_secs(30 * 60)).contains(&session) {
        return Err(format!(
            "invalid config: [source] session_timeout = {} must be between 1s and 30m",
            humantime::format_duration(session)
        ));
    }
    let window = config.offers.response_window();
    if window.as_secs() > patron_store::offers::MAX_RESPONSE_HOURS as u64 * 3600 {
        return Err(format!(
            "invalid config: [offers] response_window = {} is over the 31 days it can be",
            humantime::format_duration(window)
        ));
    }
    Ok(config)
}

/// Parses an `--as-of` value: RFC 3339, or a date (midnight UTC).
pub(crate) fn parse_as_of(text: &str) -> Result<i64, String> {
    if let Some(ms) = patron_core::time::parse_rfc3339(text) {
        return Ok(ms);
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp_millis())
        .ok_or_else(|| {
            format!("--as-of `{text}` is not an RFC 3339 timestamp or a YYYY-MM-DD date")
        })
}
