//! Params filled into steps, once for the worker and for dry runs: each kind says which of its keys
//! take `${{ params.x }}` and how the value is quoted there ([`steps::substitute`]). The worker runs
//! what [`StepAction::render`] returns, and a dry run shows it, so what an operator previews is what
//! would run.

use crate::steps::{DockerStep, HttpStep, Quoting, ShellStep, StepAction, substitute};
use serde_json::Value;
use std::collections::BTreeMap;

impl StepAction {
    /// The step with every placeholder filled in from `params`, or the first one that cannot be
    /// (naming it): the worker fails such a step before it starts anything.
    pub fn render(&self, params: &Value) -> Result<StepAction, String> {
        Ok(match self {
            StepAction::Shell(s) => StepAction::Shell(s.render(params)?),
            StepAction::Docker(d) => StepAction::Docker(d.render(params)?),
            StepAction::Http(h) => StepAction::Http(h.render(params)?),
            StepAction::Noop(n) => StepAction::Noop(n.clone()),
        })
    }
}

impl ShellStep {
    /// The command shell-quoted (a param is always one word), env values verbatim.
    pub fn render(&self, params: &Value) -> Result<ShellStep, String> {
        Ok(ShellStep {
            command: substitute(&self.command, params, Quoting::Shell)?,
            env: verbatim_map(&self.env, params)?,
            working_dir: self.working_dir.clone(),
        })
    }
}

impl DockerStep {
    /// Command, entrypoint and env verbatim: no shell reads them.
    pub fn render(&self, params: &Value) -> Result<DockerStep, String> {
        let list =
            |l: &Vec<String>| l.iter().map(|s| substitute(s, params, Quoting::Verbatim)).collect::<Result<Vec<_>, _>>();
        Ok(DockerStep {
            command: list(&self.command)?,
            entrypoint: self.entrypoint.as_ref().map(list).transpose()?,
            env: verbatim_map(&self.env, params)?,
            ..self.clone()
        })
    }
}

impl HttpStep {
    /// The URL percent-encoded (see [`substitute_url`]), header values and bodies verbatim (inside
    /// every string of a JSON body).
    pub fn render(&self, params: &Value) -> Result<HttpStep, String> {
        Ok(HttpStep {
            url: substitute_url(&self.url, params)?,
            headers: verbatim_map(&self.headers, params)?,
            body: self.body.as_ref().map(|b| fill_json(b, params)).transpose()?,
            ..self.clone()
        })
    }
}

fn verbatim_map(map: &BTreeMap<String, String>, params: &Value) -> Result<BTreeMap<String, String>, String> {
    map.iter().map(|(k, v)| Ok((k.clone(), substitute(v, params, Quoting::Verbatim)?))).collect()
}

/// A placeholder that opens the URL supplies its scheme and host (`${{ params.base }}/health`) and
/// is taken as given; every other one is percent-encoded.
fn substitute_url(url: &str, params: &Value) -> Result<String, String> {
    let url = url.trim();
    if url.starts_with("${{")
        && let Some(end) = url.find("}}")
    {
        let (base, rest) = url.split_at(end + 2);
        return Ok(substitute(base, params, Quoting::Verbatim)? + &substitute(rest, params, Quoting::Url)?);
    }
    substitute(url, params, Quoting::Url)
}

/// Substitutes params inside every string of a JSON body.
fn fill_json(v: &Value, params: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(substitute(s, params, Quoting::Verbatim)?),
        Value::Array(items) => Value::Array(items.iter().map(|i| fill_json(i, params)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), fill_json(v, params)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use crate::steps::{StepAction, parse_steps};
    use serde_json::json;

    fn action(step: serde_json::Value) -> StepAction {
        parse_steps(&json!([step])).expect("step").remove(0).action
    }

    #[test]
    fn each_kind_fills_its_keys_quoted_for_where_they_land() {
        let params = json!({"svc": "a b", "base": "http://h:1", "n": 3});
        let shell = action(json!({"name": "s", "kind": "shell", "command": "echo ${{ params.svc }}",
                                  "env": {"N": "${{ params.n }}"}}));
        let StepAction::Shell(s) = shell.render(&params).expect("shell") else { panic!("shell") };
        assert_eq!((s.command.as_str(), s.env["N"].as_str()), ("echo 'a b'", "3"));

        let http = action(json!({"name": "h", "kind": "http", "url": "${{ params.base }}/x?q=${{ params.svc }}",
                                 "headers": {"x-svc": "${{ params.svc }}"}, "body": {"svc": ["${{ params.svc }}"]}}));
        let StepAction::Http(h) = http.render(&params).expect("http") else { panic!("http") };
        assert_eq!(h.url, "http://h:1/x?q=a%20b");
        assert_eq!(h.headers["x-svc"], "a b");
        assert_eq!(h.body, Some(json!({"svc": ["a b"]})));

        let docker =
            action(json!({"name": "d", "kind": "docker", "image": "i", "command": ["echo", "${{ params.svc }}"],
                                   "entrypoint": ["${{ params.n }}"]}));
        let StepAction::Docker(d) = docker.render(&params).expect("docker") else { panic!("docker") };
        assert_eq!((d.command, d.entrypoint), (vec!["echo".to_string(), "a b".into()], Some(vec!["3".to_string()])));
    }

    #[test]
    fn a_placeholder_naming_no_param_is_an_error_naming_it() {
        let shell = action(json!({"name": "s", "kind": "shell", "command": "echo ${{ params.nope }}"}));
        let err = shell.render(&json!({})).expect_err("unknown param");
        assert!(err.contains("'nope'"), "{err}");
    }
}
