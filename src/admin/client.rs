//! The operator's side of the admin API, for the CLI (`floodgate maintenance`).

use std::time::Duration;

/// Switches maintenance mode (`Some`) or reads it (`None`); returns the admin's JSON answer.
pub async fn maintenance(admin: &str, on: Option<bool>) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let base = admin.trim_end_matches('/');
    let request = match on {
        Some(true) => client.post(format!("{base}/maintenance/on")),
        Some(false) => client.post(format!("{base}/maintenance/off")),
        None => client.get(format!("{base}/maintenance")),
    };
    let response = request.send().await.map_err(|e| {
        format!(
            "cannot reach Floodgate's admin listener at {base}: {e} (is server.admin_listen set?)"
        )
    })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("the admin listener answered {status}: {body}"))
    }
}
