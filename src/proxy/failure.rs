//! The answer when a request could not be proxied.
//!
//! Invariant: the origin's failure never reaches a visitor as 502: it is a stale copy
//! (elsewhere) or the busy/maintenance page, 503 with `Retry-After`.

use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};
use pingora::{ErrorSource, ErrorType};

use super::metrics::Unavailable;
use super::{respond, Floodgate, RequestCtx};
use crate::upstream::Shed;

impl Floodgate {
    /// What the visitor gets when the request could not be proxied: the busy or
    /// maintenance page with `Retry-After` where the origin could not answer (never a
    /// 502), the plain status otherwise, nothing when part of the answer is out already.
    pub(super) async fn answer_failure(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        ctx.permit = None;
        ctx.client_permit = None;
        // Part of the response is out (an assembled page cut short): nothing can be added.
        if session.response_written().is_some() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // The origin is down, refused, or too slow: say when to come back, never 502.
            _ if e.esource() == &ErrorSource::Upstream => 503,
            _ if e.esource() == &ErrorSource::Downstream => match e.etype() {
                // The client did not send its body in time.
                ErrorType::ReadTimedout => 408,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            _ => 500,
        };
        if code == 503 {
            let body = if ctx.shed == Some(Shed::Maintenance) {
                ctx.rt.pages.maintenance.clone()
            } else {
                ctx.rt.pages.busy.clone()
            };
            let reason = ctx
                .shed
                .map_or(Unavailable::OriginFailed, Unavailable::from);
            self.requests.unavailable(reason);
            let hsts = ctx.rt.hsts.as_ref().filter(|_| ctx.tls);
            let mut headers = vec![
                ("retry-after", ctx.rt.pages.retry_after.as_str()),
                ("x-floodgate-shed", reason.label()),
            ];
            if let Some(hsts) = hsts.and_then(|v| v.to_str().ok()) {
                headers.push(("strict-transport-security", hsts));
            }
            let _ = respond::page(session, 503, "text/html; charset=utf-8", body, &headers).await;
        } else if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
