//! A stored ESI page served from the cache: its fragments are started and handed to
//! its hit handler, which Pingora reads the assembled body from.

use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::fresh_fragments::FreshFragments;
use super::{Floodgate, RequestCtx, Runtime};
use crate::cache::StoredHit;
use crate::esi::{self, Assembly};

impl Floodgate {
    /// What ESI needs of this request and of the configuration it runs under.
    pub(super) fn esi_settings<'a>(
        &'a self,
        ctx: &RequestCtx,
        rt: &'a Runtime,
        cache: &'a FreshFragments<'a>,
    ) -> esi::Settings<'a> {
        esi::Settings {
            depth: ctx.esi_depth(),
            config: &rt.config.esi,
            max_bytes: rt.config.cache.max_object_bytes,
            metrics: &self.esi_metrics,
            cache,
            // A fragment spends its page view's budget; a client's request starts one.
            budget: match &ctx.esi_role {
                Some(role) => role.budget().clone(),
                None => esi::ViewBudget::new(rt.config.esi.max_includes_per_view),
            },
            client: ctx.client,
        }
    }

    /// Starts a stored page's fragments and hands them to its hit handler, which Pingora
    /// reads the body from.
    pub(super) async fn assemble_hit(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
    ) {
        let template = match session
            .cache
            .hit_handler()
            .as_any()
            .downcast_ref::<StoredHit>()
            .and_then(|hit| hit.derived())
            .and_then(esi::stored_template)
        {
            Some(template) => template,
            None => return,
        };
        let fresh = FreshFragments {
            rules: &ctx.rt.rules,
            store: self.store,
        };
        let settings = self.esi_settings(ctx, &ctx.rt, &fresh);
        let Some(assembly) = Assembly::for_response(session, resp, template, &settings).await
        else {
            return;
        };
        if let Some(hit) = session
            .cache
            .hit_handler()
            .as_any_mut()
            .downcast_mut::<StoredHit>()
        {
            hit.assemble(Box::new(assembly));
        }
    }
}
