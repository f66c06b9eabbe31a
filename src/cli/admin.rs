//! The operator's side of the admin API, for the CLI (`floodgate purge`, `floodgate
//! maintenance`).

use super::client;

/// What to purge, as `POST /purge` takes it.
#[derive(Debug, Default, serde::Serialize)]
pub struct PurgeRequest {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    pub all: bool,
    pub everything: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub soft: bool,
}

/// Purges through the admin API; returns a one-line summary.
pub async fn purge(
    admin: &str,
    token: Option<&str>,
    request: &PurgeRequest,
) -> anyhow::Result<String> {
    let base = admin.trim_end_matches('/');
    let response = authorized(client()?.post(format!("{base}/purge")), token)
        .json(request)
        .send()
        .await
        .map_err(|e| unreachable_admin(base, e))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| anyhow::anyhow!("the admin listener answered {status} with no JSON: {e}"))?;
    if !status.is_success() {
        return Err(anyhow::anyhow!(
            "purge refused ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        ));
    }
    Ok(format!(
        "{} {} objects, {} queued for re-warming, in {:.3} ms\n",
        if body["soft"].as_bool() == Some(true) {
            "expired"
        } else {
            "purged"
        },
        body["objects"],
        body["queued_for_warming"],
        body["took_ms"].as_f64().unwrap_or(0.0)
    ))
}

/// The admin token from `--token-file`, read once per command.
pub fn token(file: Option<&str>) -> anyhow::Result<Option<String>> {
    file.map(crate::config::read_token)
        .transpose()
        .map_err(anyhow::Error::from)
}

pub(crate) fn authorized(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

fn unreachable_admin(base: &str, e: reqwest::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach Floodgate's admin listener at {base}: {e} (is server.admin_listen set?)"
    )
}

/// Switches maintenance mode (`Some`) or reads it (`None`); returns the admin's JSON answer.
pub async fn maintenance(
    admin: &str,
    token: Option<&str>,
    on: Option<bool>,
) -> anyhow::Result<String> {
    let client = client()?;
    let base = admin.trim_end_matches('/');
    // Operations are JSON: the admin API refuses what a browser could send cross-site.
    let request = match on {
        Some(true) => client
            .post(format!("{base}/maintenance/on"))
            .json(&serde_json::json!({})),
        Some(false) => client
            .post(format!("{base}/maintenance/off"))
            .json(&serde_json::json!({})),
        None => client.get(format!("{base}/maintenance")),
    };
    let request = authorized(request, token);
    let response = request.send().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach Floodgate's admin listener at {base}: {e} (is server.admin_listen set?)"
        )
    })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(anyhow::anyhow!(
            "the admin listener answered {status}: {body}"
        ))
    }
}
