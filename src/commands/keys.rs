//! `patron keys new --role R`: a fresh API key and the config entry that admits it.
//!
//! The key is printed once and never stored; the config holds only its SHA-256.

use clap::{Args, Subcommand, ValueEnum};
use patron_api::auth::sha256_hex;
use rand::Rng;

use crate::CmdResult;

#[derive(Debug, Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Print a fresh random key and the `[[api.keys]]` entry holding its hash.
    ///
    /// Paste the entry into the config file `serve` reads; hand the key to its user. Roles nest:
    /// admin ⊃ marketing ⊃ reader; ingest (POST /v1/events only) is separate.
    New(NewKey),
}

#[derive(Debug, Args)]
struct NewKey {
    /// What the key may do.
    #[arg(long, value_enum)]
    role: KeyRole,
    /// A label for the config entry (default: the role and the start of the hash).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyRole {
    /// Profiles, segments, KPIs, status, the model.
    Reader,
    /// Reader, plus next-best offers.
    Marketing,
    /// Everything, including SQL, refits, erasure and the offer catalog.
    Admin,
    /// Only POST /v1/events.
    Ingest,
}

impl KeyRole {
    fn name(self) -> &'static str {
        match self {
            KeyRole::Reader => "reader",
            KeyRole::Marketing => "marketing",
            KeyRole::Admin => "admin",
            KeyRole::Ingest => "ingest",
        }
    }
}

pub(crate) fn run(args: KeysArgs) -> CmdResult {
    match args.action {
        KeysAction::New(new) => {
            let key = fresh_key(new.role.name());
            let hash = sha256_hex(&key);
            let name = new
                .name
                .unwrap_or_else(|| format!("{}-{}", new.role.name(), &hash[..8]));
            println!("{key}");
            println!();
            println!("# Add to the config; the key above is shown only this once.");
            println!("[[api.keys]]");
            println!("name = {}", toml_string(&name));
            println!("role = \"{}\"", new.role.name());
            println!("sha256 = \"{hash}\"");
            Ok(())
        }
    }
}

/// `pk_<role>_` and 192 random bits from the thread's CSPRNG (seeded by the OS), in hex.
pub(crate) fn fresh_key(label: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("pk_{label}_{hex}")
}

/// A TOML basic string (names may hold quotes or backslashes).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"key\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_labelled() {
        let a = fresh_key("admin");
        let b = fresh_key("admin");
        assert_ne!(a, b);
        assert!(a.starts_with("pk_admin_"));
        assert_eq!(a.len(), "pk_admin_".len() + 48);
    }

    #[test]
    fn names_are_quoted_for_toml() {
        assert_eq!(toml_string(r#"ops "blue""#), r#""ops \"blue\"""#);
    }
}
