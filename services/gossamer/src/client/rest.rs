//! The small REST client the CLI and the benches share: requests with the API token,
//! answers as JSON, errors with the API's own message.

use anyhow::{bail, Result};

/// Adds the API token from `GOSSAMER_TOKEN` (admin or read-only), when it is set.
pub fn with_token(req: ureq::Request) -> ureq::Request {
    match std::env::var("GOSSAMER_TOKEN") {
        Ok(t) if !t.trim().is_empty() => req.set("Authorization", &format!("Bearer {}", t.trim())),
        _ => req,
    }
}

/// Sends a request (with a JSON body, if any) and returns the JSON answer, or fails
/// with the API's error and status.
pub fn call(req: ureq::Request, body: Option<serde_json::Value>) -> Result<serde_json::Value> {
    let req = with_token(req);
    let result = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match result {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => {
            let body: serde_json::Value = r.into_json().unwrap_or_default();
            bail!("{} ({code})", body["error"].as_str().unwrap_or("request failed"))
        }
        Err(e) => bail!("{e}"),
    }
}
