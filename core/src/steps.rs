//! The step DSL. A template's `steps` (frozen into each run) are JSON objects with common keys
//! (`name`, `kind`, `timeout_ms`, `cancel_grace_ms`, `continue_on_error`, `always`) and the keys of
//! their kind. Unknown keys are refused, so a typo never silently does nothing.
//!
//! `${{ params.x }}` in a step's text is replaced by the run's param `x`, quoted for where it lands:
//! shell-quoted in a shell command (a param can never inject shell syntax), percent-encoded in a URL,
//! verbatim where no shell reads it (docker args, HTTP headers and bodies).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSpec {
    pub name: String,
    /// None: bounded only by the run's timeout.
    pub timeout_ms: Option<u64>,
    /// SIGTERM → SIGKILL grace on cancel or timeout. None: the worker's default.
    pub cancel_grace_ms: Option<u64>,
    /// A failure of this step does not fail the run.
    pub continue_on_error: bool,
    /// Cleanup: runs even after an earlier step failed or the run was cancelled.
    pub always: bool,
    pub action: StepAction,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepAction {
    Shell(ShellStep),
    Docker(DockerStep),
    Http(HttpStep),
    Noop(NoopStep),
}

impl StepAction {
    pub fn kind(&self) -> &'static str {
        match self {
            StepAction::Shell(_) => "shell",
            StepAction::Docker(_) => "docker",
            StepAction::Http(_) => "http",
            StepAction::Noop(_) => "noop",
        }
    }
}

/// `sh -c COMMAND` in its own process group, in the run's working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    pub command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Relative to the run's working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Never,
    #[default]
    IfNotPresent,
    Always,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub source: String,
    pub target: String,
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

/// A container through the Docker Engine API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerStep {
    pub image: String,
    #[serde(default)]
    pub pull_policy: PullPolicy,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// `none` unless a network from the worker's allow-list is named.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Paths inside the container copied out as artifacts when the step ends.
    #[serde(default)]
    pub artifacts: Vec<String>,
}

/// An HTTP request through reqwest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    #[serde(default = "get")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A string is sent as is; any other JSON value is sent as JSON.
    #[serde(default)]
    pub body: Option<Value>,
    /// Statuses that count as success. Empty: any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// Extra tries on a connection error or a 5xx/429 answer.
    #[serde(default)]
    pub retries: u32,
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Artifact name for the response body.
    #[serde(default = "default_response_artifact")]
    pub save_as: String,
}

fn get() -> String {
    "GET".into()
}

fn default_retry_backoff_ms() -> u64 {
    500
}

fn default_response_artifact() -> String {
    "response".into()
}

/// Records itself and nothing else (probes, benchmarks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoopStep {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: String,
    kind: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    cancel_grace_ms: Option<u64>,
    #[serde(default)]
    continue_on_error: bool,
    #[serde(default)]
    always: bool,
}

const COMMON_KEYS: [&str; 6] = ["name", "kind", "timeout_ms", "cancel_grace_ms", "continue_on_error", "always"];

/// Parses a run's or template's `steps` array, naming the step and key of every problem.
pub fn parse_steps(steps: &Value) -> Result<Vec<StepSpec>, String> {
    let list = steps.as_array().ok_or("steps must be a list")?;
    if list.is_empty() {
        return Err("steps must not be empty".into());
    }
    list.iter().enumerate().map(|(i, s)| parse_step(s).map_err(|e| format!("step {i}: {e}"))).collect()
}

/// Parses one step (see [`parse_steps`]).
pub fn parse_step(step: &Value) -> Result<StepSpec, String> {
    let obj = step.as_object().ok_or("a step must be an object")?;
    let (common, rest): (serde_json::Map<_, _>, serde_json::Map<_, _>) =
        obj.clone().into_iter().partition(|(k, _)| COMMON_KEYS.contains(&k.as_str()));
    let common: Common = serde_json::from_value(Value::Object(common)).map_err(|e| e.to_string())?;
    let rest = Value::Object(rest);
    let named = |e: serde_json::Error| format!("'{}' ({}): {e}", common.name, common.kind);
    let action = match common.kind.as_str() {
        "shell" => StepAction::Shell(serde_json::from_value(rest).map_err(named)?),
        "docker" => StepAction::Docker(serde_json::from_value(rest).map_err(named)?),
        "http" => StepAction::Http(serde_json::from_value(rest).map_err(named)?),
        "noop" => StepAction::Noop(serde_json::from_value(rest).map_err(named)?),
        other => return Err(format!("'{}': unknown kind '{other}' (shell, docker, http, noop)", common.name)),
    };
    Ok(StepSpec {
        name: common.name,
        timeout_ms: common.timeout_ms,
        cancel_grace_ms: common.cancel_grace_ms,
        continue_on_error: common.continue_on_error,
        always: common.always,
        action,
    })
}

/// How a substituted param is written into the text around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// One shell word, single-quoted: `'it'\''s'`.
    Shell,
    /// Percent-encoded (RFC 3986 unreserved characters kept).
    Url,
    /// As is: for places no shell or URL parser reads.
    Verbatim,
}

/// Replaces every `${{ params.NAME }}` in `text`. An unknown param or a malformed placeholder is an
/// error naming it: a step never runs with a hole in its command.
pub fn substitute(text: &str, params: &Value, quoting: Quoting) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after.find("}}").ok_or_else(|| format!("unclosed '${{{{' in {text:?}"))?;
        let expr = after[..end].trim();
        let name = expr
            .strip_prefix("params.")
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .ok_or_else(|| format!("'${{{{ {expr} }}}}' is not a param reference (use ${{{{ params.NAME }}}})"))?;
        let value = params.get(name).ok_or_else(|| format!("unknown param '{name}' in '${{{{ {expr} }}}}'"))?;
        out.push_str(&quote(&param_text(value), quoting));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A param as text: strings as they are, null as empty, anything else as JSON.
pub fn param_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn quote(s: &str, quoting: Quoting) -> String {
    match quoting {
        Quoting::Verbatim => s.to_string(),
        Quoting::Shell => format!("'{}'", s.replace('\'', r"'\''")),
        Quoting::Url => s
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect(),
    }
}

/// The env var a param reaches a shell step as: `RUNLANE_PARAM_` + the name upper-cased, with
/// every character outside `[A-Z0-9_]` turned into `_`.
pub fn param_env_name(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("RUNLANE_PARAM_{cleaned}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_parse_with_common_and_kind_keys() {
        let steps = parse_steps(&json!([
            {"name": "a", "kind": "shell", "command": "echo hi", "timeout_ms": 5000, "always": true},
            {"name": "b", "kind": "http", "url": "http://x/", "expect_status": [200]},
            {"name": "c", "kind": "noop"},
            {"name": "d", "kind": "docker", "image": "busybox", "pull_policy": "never"}
        ]))
        .expect("parses");
        assert_eq!(steps.len(), 4);
        assert!(steps[0].always && steps[0].timeout_ms == Some(5000));
        assert!(matches!(&steps[1].action, StepAction::Http(h) if h.method == "GET" && h.save_as == "response"));
        assert!(matches!(&steps[3].action, StepAction::Docker(d) if d.pull_policy == PullPolicy::Never));
    }

    #[test]
    fn typos_and_unknown_kinds_are_named() {
        let err = parse_steps(&json!([{"name": "a", "kind": "shell", "comand": "x"}])).expect_err("typo");
        assert!(err.contains("step 0") && err.contains("comand"), "{err}");
        let err = parse_steps(&json!([{"name": "a", "kind": "ssh"}])).expect_err("kind");
        assert!(err.contains("unknown kind 'ssh'"), "{err}");
    }

    #[test]
    fn shell_substitution_cannot_inject() {
        let params = json!({"x": "\"; touch /tmp/pwned; echo \"", "q": "it's", "n": 3});
        let out = substitute("echo ${{ params.x }} ${{params.q}} ${{ params.n }}", &params, Quoting::Shell)
            .expect("substitutes");
        assert_eq!(out, r#"echo '"; touch /tmp/pwned; echo "' 'it'\''s' '3'"#);
    }

    #[test]
    fn url_and_verbatim_substitution_and_errors() {
        let params = json!({"q": "a b&c"});
        assert_eq!(
            substitute("http://h/?q=${{ params.q }}", &params, Quoting::Url).expect("url"),
            "http://h/?q=a%20b%26c"
        );
        assert_eq!(substitute("${{ params.q }}", &params, Quoting::Verbatim).expect("verbatim"), "a b&c");
        assert!(substitute("${{ params.nope }}", &params, Quoting::Verbatim).expect_err("unknown").contains("'nope'"));
        assert!(
            substitute("${{ env.HOME }}", &params, Quoting::Verbatim).expect_err("not a param").contains("env.HOME")
        );
        assert!(substitute("${{ params.q", &params, Quoting::Verbatim).expect_err("unclosed").contains("unclosed"));
    }

    #[test]
    fn param_env_names_are_safe() {
        assert_eq!(param_env_name("db-host.name"), "RUNLANE_PARAM_DB_HOST_NAME");
    }
}
