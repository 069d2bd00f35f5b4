//! `runlane token create|revoke`: API tokens. Run as the database owner. A token is printed once;
//! only its sha256 is stored.

use super::common::{ConfigArgs, connect};
use anyhow::bail;
use runlane_core::db;
use runlane_core::model::Lane;
use runlane_executor_api::auth::{new_token, token_hash};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Create a token and print it (once)
    Create {
        /// worker, operator or viewer
        #[arg(long)]
        role: String,
        /// Limit the token to these lanes (e.g. A,B)
        #[arg(long, value_delimiter = ',')]
        lanes: Option<Vec<Lane>>,
        /// Lifetime: 30d, 12h, 90m or 3600s
        #[arg(long)]
        expires: Option<String>,
        /// A name to recognise it by
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id
    Revoke { id: uuid::Uuid },
}

/// `30d`, `12h`, `90m`, `3600s` → seconds.
pub fn parse_lifetime(s: &str) -> anyhow::Result<i64> {
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| anyhow::anyhow!("--expires {s}: write e.g. 30d, 12h, 90m or 3600s"))?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3_600,
        "m" => n * 60,
        "s" => n,
        _ => bail!("--expires {s}: the unit is d, h, m or s"),
    };
    if secs <= 0 {
        bail!("--expires {s}: must be in the future");
    }
    Ok(secs)
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    let pool = connect(&settings, "runlane-token").await?;
    match args.action {
        Action::Create { role, lanes, expires, name, json } => {
            let expires_at = expires
                .as_deref()
                .map(parse_lifetime)
                .transpose()?
                .map(|s| chrono::Utc::now() + chrono::Duration::seconds(s));
            let token = new_token();
            let id = db::create_token(&pool, &name, &role, lanes.as_deref(), expires_at, &token_hash(&token)).await?;
            if json {
                println!("{}", serde_json::json!({"id": id, "token": token, "role": role, "expires_at": expires_at}));
            } else {
                println!("{token}");
                eprintln!("token {id} ({role}) created; it is shown only this once");
            }
        }
        Action::Revoke { id } => {
            db::revoke_token(&pool, id).await?;
            println!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_lifetime("30d").expect("d"), 30 * 86_400);
        assert_eq!(parse_lifetime("90m").expect("m"), 5_400);
        assert!(parse_lifetime("3w").is_err());
        assert!(parse_lifetime("0s").is_err());
        assert!(parse_lifetime("").is_err());
    }
}
