//! Responses Floodgate writes itself (errors, refusals).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Writes a complete `text/plain` response that no browser or proxy may cache.
pub async fn plain(
    session: &mut Session,
    status: u16,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> Result<()> {
    let body = Bytes::copy_from_slice(body.as_bytes());
    page(
        session,
        status,
        "text/plain; charset=utf-8",
        body,
        extra_headers,
    )
    .await
}

/// Writes a complete response that no browser or proxy may cache.
pub async fn page(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra_headers: &[(&str, &str)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra_headers.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in extra_headers {
        resp.insert_header(name.to_string(), *value)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
