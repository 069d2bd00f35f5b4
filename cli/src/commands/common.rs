//! What every subcommand that talks to the queue shares: settings and the connection.

use anyhow::Context;
use runlane_core::db;
use runlane_core::settings::Settings;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML settings file (defaults < file < RUNLANE__SECTION__KEY env vars < flags)
    #[arg(long, env = "RUNLANE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL (overrides database.url)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
}

impl ConfigArgs {
    /// Loads settings with these flags, plus a command's own overrides, on top.
    pub fn load(&self, mut overrides: Vec<(&'static str, String)>) -> anyhow::Result<Settings> {
        if let Some(url) = &self.database_url {
            overrides.push(("database.url", url.clone()));
        }
        Settings::load(self.config.as_deref(), &overrides).map_err(anyhow::Error::msg)
    }
}

/// The database URL from the settings, or what to do about its absence.
pub fn database_url(settings: &Settings) -> anyhow::Result<&str> {
    let url = settings.database.url.as_ref().context(
        "no database URL: pass --database-url, set DATABASE_URL or RUNLANE__DATABASE__URL, or put database.url in the config file",
    )?;
    Ok(url.expose_secret())
}

/// Connects and checks the schema version.
pub async fn connect(settings: &Settings, application_name: &str) -> anyhow::Result<PgPool> {
    let url = database_url(settings)?;
    let pool = db::connect(url, settings.database.max_connections, application_name)
        .await
        .context("connecting to PostgreSQL")?;
    db::check_schema(&pool).await?;
    Ok(pool)
}

/// Milliseconds in the largest whole unit: 90s, 10m, 1h, 7d, 250ms.
pub fn duration(ms: i64) -> String {
    match ms {
        0 => "0".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_their_largest_whole_unit() {
        let got: Vec<String> = [0, 250, 1_500, 90_000, 600_000, 3_600_000, 604_800_000].map(duration).to_vec();
        assert_eq!(got, ["0", "250ms", "1500ms", "90s", "10m", "1h", "7d"]);
    }
}
