//! Magento's PURGE on the proxy listener (docs/magento-cache-protocol.md, section 3):
//! refused unless the client is in `purge.allow`, answered with what was purged.
//!
//! Invariant: a PURGE is answered 200 only after the purge is applied here; a malformed
//! one is refused 400 and purges nothing.

use pingora::prelude::*;
use pingora::proxy::Session;

use super::{respond, Floodgate, Runtime};
use crate::purge::metrics::PurgeRefusal;

/// A purge header Magento would never send: its value is refused, not guessed at.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not ASCII")]
struct NotAscii(&'static str);

impl Floodgate {
    /// Answers Magento's PURGE.
    pub(super) async fn purge(
        &self,
        session: &mut Session,
        rt: &Runtime,
        client: Option<std::net::IpAddr>,
    ) -> Result<()> {
        if !client.is_some_and(|ip| rt.purge_acl.allows(ip)) {
            let who = client.map_or_else(|| "this client".to_string(), |ip| ip.to_string());
            let body = format!("PURGE is not allowed from {who}: add it to purge.allow\n");
            self.purger.metrics().refused(PurgeRefusal::Refused);
            return respond::plain(session, 405, &body, &[]).await;
        }
        let headers = &session.req_header().headers;
        let value = |name: &'static str| -> std::result::Result<Option<String>, NotAscii> {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().map_err(|_| NotAscii(name)))
                .collect::<std::result::Result<_, _>>()?;
            Ok((!values.is_empty()).then(|| values.join("|")))
        };
        let (pattern, pool) = match (value("x-magento-tags-pattern"), value("x-pool")) {
            (Ok(pattern), Ok(pool)) => (pattern, pool),
            (Err(reason), _) | (_, Err(reason)) => {
                self.purger.metrics().refused(PurgeRefusal::Invalid);
                return respond::plain(session, 400, &format!("{reason}\n"), &[]).await;
            }
        };
        if pattern.is_none() && pool.is_none() {
            let body = "PURGE needs an X-Magento-Tags-Pattern or X-Pool header\n";
            self.purger.metrics().refused(PurgeRefusal::Invalid);
            return respond::plain(session, 400, body, &[]).await;
        }
        let soft = rt.config.purge.soft
            || headers
                .get("x-floodgate-purge")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"soft"));
        match self
            .purger
            .purge(pattern.as_deref(), pool.as_deref(), soft)
            .await
        {
            Ok(report) => {
                self.purger
                    .metrics()
                    .purged(report.objects, report.tags, report.took);
                let body = format!(
                    "{} {} objects, {} queued for re-warming, in {:.3} ms\n",
                    if soft { "expired" } else { "purged" },
                    report.objects,
                    report.queued_for_warming,
                    report.took.as_secs_f64() * 1000.0
                );
                let answered = respond::plain(session, 200, &body, &[]).await;
                // Magento waits for the answer, not for the index's housekeeping.
                self.purger.settle();
                answered
            }
            Err(reason) => {
                self.purger.metrics().refused(reason.refusal());
                respond::plain(
                    session,
                    reason.status(),
                    &format!("{}\n", reason.answer()),
                    &[],
                )
                .await
            }
        }
    }
}
