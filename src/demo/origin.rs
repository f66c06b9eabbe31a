//! A tiny origin that answers like Magento: tagged, cacheable catalogue pages that take a
//! while to render, with the top menu as an ESI include (as Magento emits it under
//! Varnish), private checkout pages, uncacheable customer sections, a health check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// How long the demo "PHP" takes to render a page, so a MISS is visibly slower than a HIT.
const RENDER_TIME: Duration = Duration::from_millis(150);

/// Magento's top navigation block (ttl 3600) as an include.
const MENU_INCLUDE: &str =
    "<nav><esi:include src=\"/page_cache/block/esi/blocks/%5B%22catalog.topnav%22%5D/handles/WyJkZWZhdWx0Il0%3D/\" /></nav>";

#[derive(Default)]
pub struct DemoOrigin {
    rendered: AtomicU64,
}

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        if path == "/health_check.php" || path == "/pub/health_check.php" {
            return page(
                200,
                "text/plain",
                "OK\n".into(),
                &[("cache-control", "no-store")],
            );
        }
        tokio::time::sleep(RENDER_TIME).await;
        let n = self.rendered.fetch_add(1, Ordering::Relaxed) + 1;
        let rendered = n.to_string();
        let cacheable = "public, max-age=86400, s-maxage=86400";
        if path.starts_with("/page_cache/block/esi/") {
            let body = format!(
                "<ul><li>Category 1</li><li>Category 2</li><li>Category 3</li><li>menu render #{n}</li></ul>"
            );
            return page(
                200,
                "text/html",
                body,
                &[
                    ("cache-control", "public, max-age=3600, s-maxage=3600"),
                    ("x-magento-tags", "cat_c_1,cat_c_2,cat_c_3"),
                    ("x-demo-render", &rendered),
                ],
            );
        }
        if path == "/" {
            let body = format!(
                "<html><body>{MENU_INCLUDE}<h1>Demo shop</h1><p>render #{n}</p></body></html>\n"
            );
            return page(
                200,
                "text/html",
                body,
                &[
                    ("cache-control", cacheable),
                    ("x-magento-tags", "cms_p_1,store"),
                    ("x-demo-render", &rendered),
                ],
            );
        }
        if let Some(id) = number_in(&path, "/product-", ".html") {
            let body = format!(
                "<html><body>{MENU_INCLUDE}<h1>Product {id}</h1><p>render #{n}</p></body></html>\n"
            );
            let tags = format!("cat_p_{id},cat_p,store");
            return page(
                200,
                "text/html",
                body,
                &[
                    ("cache-control", cacheable),
                    ("x-magento-tags", &tags),
                    ("set-cookie", "PHPSESSID=demo-session; path=/"),
                    ("x-demo-render", &rendered),
                ],
            );
        }
        if let Some(id) = number_in(&path, "/category-", ".html") {
            let products: Vec<String> = (id * 10..id * 10 + 10)
                .map(|p| format!("cat_p_{p}"))
                .collect();
            let tags = format!("cat_c_{id},cat_c,{},store", products.join(","));
            let body = format!(
                "<html><body>{MENU_INCLUDE}<h1>Category {id}</h1><p>render #{n}</p></body></html>\n"
            );
            return page(
                200,
                "text/html",
                body,
                &[
                    ("cache-control", cacheable),
                    ("x-magento-tags", &tags),
                    ("x-demo-render", &rendered),
                ],
            );
        }
        if path.starts_with("/checkout") {
            return page(
                200,
                "text/html",
                "<html><body>Your cart</body></html>\n".into(),
                &[
                    ("cache-control", "private, max-age=0"),
                    ("x-demo-render", &rendered),
                ],
            );
        }
        if path.starts_with("/customer") {
            return page(
                200,
                "application/json",
                "{\"customer\":null}\n".into(),
                &[
                    (
                        "cache-control",
                        "no-store, no-cache, must-revalidate, max-age=0",
                    ),
                    ("set-cookie", "private_content_version=1; path=/"),
                    ("x-demo-render", &rendered),
                ],
            );
        }
        page(
            404,
            "text/html",
            "<html><body>Not found</body></html>\n".into(),
            &[
                (
                    "cache-control",
                    "no-store, no-cache, must-revalidate, max-age=0",
                ),
                ("x-demo-render", &rendered),
            ],
        )
    }
}

fn number_in(path: &str, prefix: &str, suffix: &str) -> Option<u64> {
    path.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn page(
    status: u16,
    content_type: &str,
    body: String,
    headers: &[(&str, &str)],
) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into_bytes()).unwrap_or_else(|_| {
        let mut fallback = Response::new(b"demo origin: bad response\n".to_vec());
        *fallback.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}
