//! The configuration's shape. Every default here is what Magento's generated VCL does,
//! so an empty file behaves like Varnish with `bin/magento varnish:vcl:generate`.
//!
//! Over 500 lines on purpose: this is the whole file format, section by section in the
//! order of the README's configuration reference and `conf/floodgate.toml`, each key with
//! its default and its restart rule beside it. Read as one document it is checked
//! against both at a glance; split, a key's default would sit away from its section.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerSection,
    pub origin: OriginSection,
    pub cache: CacheSection,
    pub magento: MagentoSection,
    pub purge: PurgeSection,
    pub warm: WarmSection,
    pub limits: LimitsSection,
    pub log: LogSection,
    pub redis: RedisSection,
    pub esi: EsiSection,
    pub tls: TlsSection,
    pub insights: InsightsSection,
}

impl Config {
    /// The keys changed from `self` to `new` that only take effect after a restart,
    /// because they shaped a listener, a pool or a store when it was built: the
    /// listeners and threads of `server` (its ACL-like keys are read per request),
    /// `origin`, `warm`, `redis`, the log's level and format, `cache.memory_bytes` and
    /// the hit-for-miss lifetimes. Every other key applies at the next request.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let old = self;
        let mut changed = Vec::new();
        // trusted_proxies, admin_token_file, admin_hosts, redirect_http_to_https and
        // hsts_max_age_secs are read per request.
        let (o, n) = (&old.server, &new.server);
        if o.listen != n.listen
            || o.admin_listen != n.admin_listen
            || o.threads != n.threads
            || o.runtime_dir != n.runtime_dir
            || o.proxy_protocol_listen != n.proxy_protocol_listen
            || o.tls_listen != n.tls_listen
            || o.h2_idle_timeout_secs != n.h2_idle_timeout_secs
        {
            changed.push("server");
        }
        // The certificates themselves are re-read by every reload.
        if old.tls.http2 != new.tls.http2 {
            changed.push("tls.http2");
        }
        // The rest of `origin` reloads (the list, probe, timeouts); the probe's schedule
        // is the load balancer's, fixed when it starts.
        if old.origin.health_check_interval_secs != new.origin.health_check_interval_secs {
            changed.push("origin.health_check_interval_secs");
        }
        if old.origin.dns_servers != new.origin.dns_servers {
            changed.push("origin.dns_servers");
        }
        if old.warm != new.warm {
            changed.push("warm");
        }
        if old.redis != new.redis {
            changed.push("redis");
        }
        if old.log.level != new.log.level || old.log.format != new.log.format {
            changed.push("log.level/log.format");
        }
        if old.cache.memory_bytes != new.cache.memory_bytes {
            changed.push("cache.memory_bytes");
        }
        if old.cache.disk_dir != new.cache.disk_dir || old.cache.disk_bytes != new.cache.disk_bytes
        {
            changed.push("cache.disk_dir/cache.disk_bytes");
        }
        if old.insights != new.insights {
            changed.push("insights");
        }
        if old.cache.uncacheable_ttl_secs != new.cache.uncacheable_ttl_secs
            || old.cache.private_uncacheable_ttl_secs != new.cache.private_uncacheable_ttl_secs
        {
            changed.push("cache.*uncacheable_ttl_secs");
        }
        changed
    }
}

/// Why the cache misses: the reasons and top lists behind `GET /insights`, the status
/// page and `floodgate top`. Bounded memory whatever the traffic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InsightsSection {
    /// Keep the top lists and the per-second history (the reason counters in `/metrics`
    /// are kept either way).
    pub enabled: bool,
    /// The sliding window the top lists cover, seconds.
    pub window_secs: u64,
    /// Entries tracked per top list (paths, tags); memory is bounded by this.
    pub tracked: usize,
    /// Entries each list shows.
    pub shown: usize,
    /// Seconds of per-second samples kept for the status page's charts.
    pub history_secs: usize,
}

impl Default for InsightsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            window_secs: 600,
            tracked: 500,
            shown: 20,
            history_secs: 3600,
        }
    }
}

/// Edge Side Includes, as Magento emits them for blocks with a `ttl` (the top menu).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EsiSection {
    /// Process ESI in `text/*` responses; off for shops whose pages carry none.
    pub enabled: bool,
    /// How deep fragments may include fragments; deeper includes are left out.
    pub max_depth: u8,
    /// Includes fetched per page or fragment; further ones are left out.
    pub max_fragments: usize,
    /// Longest wait for one fragment (queueing at the origin included), milliseconds;
    /// a fragment not there by then is left out and the page goes on.
    pub fragment_timeout_ms: u64,
    /// Includes fetched for one page view at most, all depths together, so a page that
    /// includes itself many times costs a bounded amount of work.
    pub max_includes_per_view: usize,
}

impl Default for EsiSection {
    fn default() -> Self {
        Self {
            enabled: true,
            max_depth: 3,
            max_fragments: 32,
            fragment_timeout_ms: 5000,
            max_includes_per_view: 64,
        }
    }
}

/// Several Floodgate nodes share Redis as their purge bus. Without a URL, a node works
/// alone, exactly as without this section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS; empty: no Redis.
    pub url: String,
    /// PEM file of the CA that signed the Redis server's certificate, for `rediss://`
    /// with a private CA; empty: the system's trusted roots.
    pub tls_ca_file: String,
    /// Prefix of every key Floodgate uses, so several shops can share one Redis.
    pub key_prefix: String,
    /// Longest wait for Redis on any operation, milliseconds.
    pub timeout_ms: u64,
    /// Purges kept in the stream (approximately); a node cut off for longer than that
    /// drops its memory tier when it comes back.
    pub stream_max_len: usize,
    /// Purges kept in memory while Redis is unreachable, published when it returns.
    pub outbox_size: usize,
    /// Share cached pages through Redis too (the second tier), not only purges.
    pub shared_cache: bool,
    /// Larger bodies (as stored, gzipped) stay in this node's memory only.
    pub shared_max_object_bytes: usize,
    /// Cross-node coalescing: a node about to fetch a page nobody has takes a short lock
    /// in Redis; the others wait up to `coalesce_wait_ms` for the shared copy instead of
    /// fetching it too.
    pub coalesce: bool,
    pub coalesce_wait_ms: u64,
    /// One origin budget for every node on this Redis: together they keep at most
    /// `limits.max_inflight` requests in flight at each origin server (a lease per
    /// request in Redis; without Redis each node keeps to its fallback share).
    pub shared_limit: bool,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            tls_ca_file: String::new(),
            key_prefix: "floodgate:".into(),
            timeout_ms: 100,
            stream_max_len: 100_000,
            outbox_size: 10_000,
            shared_cache: true,
            shared_max_object_bytes: 1 << 20,
            coalesce: true,
            coalesce_wait_ms: 10000,
            shared_limit: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Log filter (`error`, `warn`, `info`, `debug`, or tracing directives such as
    /// `info,floodgate=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// `text` for people, `json` for log shippers.
    pub format: LogFormat,
    /// One line per client request (target `floodgate::access`), like varnishncsa.
    pub access: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            access: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeSection {
    /// Clients allowed to send PURGE: addresses or CIDR networks.
    pub allow: Vec<String>,
    /// Expire instead of remove: the next visitor gets the page stale while one refresh
    /// runs. A request can ask for it with `X-Floodgate-Purge: soft`.
    pub soft: bool,
    /// A hard purge keeps the old copy this long as a last resort, served only where the
    /// alternative is Floodgate's own 503 (the origin is down, failing, or the limiter
    /// sheds the request), never while the origin can answer. 0: removed at once.
    pub keep_purged_secs: u32,
    /// A visitor whose page has a kept copy waits at most this long for a slot at the
    /// origin, then gets the copy while the fresh page is re-warmed for the next ones.
    pub keep_purged_wait_ms: u64,
}

impl Default for PurgeSection {
    fn default() -> Self {
        Self {
            allow: vec!["127.0.0.1".into(), "::1".into()],
            soft: false,
            keep_purged_secs: 0,
            keep_purged_wait_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WarmSection {
    /// Re-fetch purged pages that visitors requested recently.
    pub enabled: bool,
    /// Re-warm fetches per second at most.
    pub rate_per_sec: f64,
    /// Re-warm fetches in flight at most.
    pub concurrency: usize,
    /// Pages waiting at most; beyond it the coldest are dropped.
    pub queue_size: usize,
    /// A page served within this many seconds before its purge counts as hot.
    pub hot_window_secs: u64,
}

impl Default for WarmSection {
    fn default() -> Self {
        Self {
            enabled: true,
            rate_per_sec: 20.0,
            concurrency: 4,
            queue_size: 10_000,
            hot_window_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Addresses the proxy listens on for client traffic.
    pub listen: Vec<String>,
    /// Admin listener (`/metrics`, `/health`); empty disables it. Keep it private.
    pub admin_listen: String,
    /// Worker threads for the proxy service; 0 means one per CPU core.
    pub threads: usize,
    /// Where Pingora keeps its pid file and upgrade socket (for graceful binary upgrades).
    pub runtime_dir: String,
    /// Proxies in front of Floodgate (a TLS terminator, a load balancer): addresses or
    /// CIDR networks whose `X-Forwarded-For` (and PROXY protocol header) is believed.
    /// Everyone else is the client, whatever it claims.
    pub trusted_proxies: Vec<String>,
    /// Client listeners that expect a PROXY protocol header (v1 or v2) first, from a
    /// peer in `trusted_proxies` (haproxy `send-proxy`, nginx `proxy_protocol on`).
    pub proxy_protocol_listen: Vec<String>,
    /// A file holding the admin API's token; empty: no token. When set, every admin
    /// request but `/metrics` and the health checks must carry `Authorization: Bearer`.
    pub admin_token_file: String,
    /// `Host` values the admin API answers besides its own address and `localhost`
    /// (a browser led there by DNS rebinding sends a foreign one).
    pub admin_hosts: Vec<String>,
    /// Client listeners that terminate TLS (HTTP/2 and HTTP/1.1 by ALPN), with the
    /// certificates of `[[tls.certificates]]`. Once set, Floodgate is the front door: on
    /// the plain listeners a client-sent SSL-offload header is removed unless the peer is
    /// a trusted proxy.
    pub tls_listen: Vec<String>,
    /// Answers plain-HTTP page requests with a 301 to the same URL over HTTPS (PURGE
    /// and requests a trusted proxy marked as HTTPS are not redirected).
    pub redirect_http_to_https: bool,
    /// `Strict-Transport-Security: max-age=N` on every HTTPS response; 0 sends none.
    pub hsts_max_age_secs: u64,
    /// An HTTP/1 request's whole header block must arrive within this many seconds of its
    /// first byte (of the connection, for its first request), however it trickles in;
    /// else the connection is closed (nginx's `client_header_timeout`).
    pub header_timeout_secs: u64,
    /// A TLS client must send its ClientHello, and an HTTP/2 client its connection
    /// preface, within this many seconds of connecting (of the TLS handshake, for the
    /// preface); else the connection is closed.
    pub handshake_timeout_secs: u64,
    /// An HTTP/2 connection with no request open for this many seconds is closed
    /// (HTTP/1 keep-alive connections: Pingora's 60 s). Applies after a restart.
    pub h2_idle_timeout_secs: u64,
    /// A client that takes no byte of its response for this many seconds is dropped
    /// (nginx's `send_timeout`), and with it what its response held.
    pub send_timeout_secs: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:6081".into()],
            admin_listen: "127.0.0.1:6085".into(),
            threads: 0,
            runtime_dir: "/tmp".into(),
            // A TLS terminator on the same host (the usual layout) is believed; nobody
            // else is, so a visitor it relays is not 127.0.0.1 to the purge ACL.
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
            proxy_protocol_listen: Vec::new(),
            admin_token_file: String::new(),
            admin_hosts: Vec::new(),
            tls_listen: Vec::new(),
            redirect_http_to_https: false,
            hsts_max_age_secs: 0,
            header_timeout_secs: 10,
            handshake_timeout_secs: 10,
            h2_idle_timeout_secs: 60,
            send_timeout_secs: 60,
        }
    }
}

/// The certificates of `server.tls_listen`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// Each a certificate chain and its key (PEM), chosen by SNI among the names the
    /// certificate holds; the first is the default, for clients that send no SNI or a
    /// name no certificate holds. Re-read on every reload.
    pub certificates: Vec<CertificateFiles>,
    /// Offer HTTP/2 by ALPN (else HTTP/1.1 only).
    pub http2: bool,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            certificates: Vec::new(),
            http2: true,
        }
    }
}

/// One certificate: its chain (leaf first) and its private key, PEM files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert_file: String,
    pub key_file: String,
}

/// One entry of `origin.addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginEntry {
    /// An address, used as it is.
    Address(SocketAddr),
    /// A DNS name and the port its addresses serve on.
    Name(String, u16),
}

impl OriginEntry {
    /// Reads `host:port` (`[v6]:port` for an IPv6 address).
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(OriginEntry::Address(addr));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` is not host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63)
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Err(format!("`{host}` is neither an IP address nor a DNS name"));
        }
        Ok(OriginEntry::Name(host.to_ascii_lowercase(), port))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OriginSection {
    /// Magento web servers (nginx or Apache in front of PHP-FPM), round-robin: each
    /// `ip:port`, or `name:port` for every address the name resolves to (re-resolved).
    pub addresses: Vec<String>,
    /// Names in `addresses` are resolved again this often, seconds (sooner when their
    /// records' TTL is shorter).
    pub resolve_secs: u64,
    /// DNS servers to resolve them with (`ip` or `ip:port`); empty: `/etc/resolv.conf`.
    pub dns_servers: Vec<String>,
    /// Connect timeout towards the origin, seconds.
    pub connect_timeout_secs: u64,
    /// Time to wait for the origin's first byte, seconds (Magento's VCL: 600 s).
    pub first_byte_timeout_secs: u64,
    /// Health probe URL, fetched with GET from every origin.
    pub health_check_url: String,
    /// Seconds between probes.
    pub health_check_interval_secs: u64,
    /// Probe timeout, seconds.
    pub health_check_timeout_secs: u64,
    /// Probes remembered per origin.
    pub health_window: u32,
    /// Successful probes (of the window) needed to call an origin healthy.
    pub health_threshold: u32,
    /// An origin `502` or `504` (nginx's own error while PHP-FPM is away) becomes the
    /// stale copy if one is kept, else Floodgate's busy page (`503` + `Retry-After`).
    /// Magento's own `503` (maintenance mode) passes unchanged.
    pub hide_gateway_errors: bool,
}

impl Default for OriginSection {
    fn default() -> Self {
        Self {
            addresses: vec!["127.0.0.1:8080".into()],
            resolve_secs: 10,
            dns_servers: Vec::new(),
            connect_timeout_secs: 5,
            first_byte_timeout_secs: 600,
            health_check_url: "/health_check.php".into(),
            health_check_interval_secs: 5,
            health_check_timeout_secs: 2,
            health_window: 10,
            health_threshold: 5,
            hide_gateway_errors: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Memory budget for cached objects (bodies + headers), bytes.
    pub memory_bytes: u64,
    /// Directory of the disk tier, which keeps pages across restarts and holds more than
    /// memory; `""` (the default) keeps pages in memory only.
    pub disk_dir: String,
    /// Budget of the disk tier: bytes of stored objects (the file can be larger).
    pub disk_bytes: u64,
    /// Largest body that is stored, bytes; larger responses are passed through uncached.
    pub max_object_bytes: usize,
    /// TTL when the origin sends neither s-maxage, max-age nor Expires, seconds.
    pub default_ttl_secs: u64,
    /// After expiry, serve stale while one background refresh runs (healthy origin), seconds.
    pub grace_secs: u32,
    /// How long past its TTL an object is kept to be served while the origin is down, seconds.
    pub keep_secs: u32,
    /// Hit-for-miss duration after an uncacheable response (no-cache, 404, 5xx …), seconds.
    pub uncacheable_ttl_secs: u64,
    /// Hit-for-miss duration after a `Cache-Control: private` response, seconds.
    pub private_uncacheable_ttl_secs: u64,
    /// How long a request waits for another request's fetch of the same page before
    /// going to the origin itself, seconds.
    pub coalesce_wait_secs: u64,
    /// Ask the origin for gzip and compress compressible bodies before storing them.
    pub store_gzip: bool,
    /// Variants stored per page at most when the origin's `Vary` names a request header
    /// (other than Cookie and Authorization, which are never stored shared).
    pub max_variants: usize,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            disk_dir: String::new(),
            disk_bytes: 10 << 30,
            max_object_bytes: 16 << 20,
            default_ttl_secs: 120,
            grace_secs: 300,
            keep_secs: 3 * 86_400,
            uncacheable_ttl_secs: 120,
            private_uncacheable_ttl_secs: 86_400,
            coalesce_wait_secs: 30,
            store_gzip: true,
            max_variants: 32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MagentoSection {
    /// Header set by the TLS terminator; its value is part of the cache key.
    pub ssl_offload_header: String,
    /// Query parameters removed before lookup; a trailing `*` matches a prefix.
    /// Names are case-sensitive, as in Magento's VCL.
    pub marketing_params: Vec<String>,
    /// Extra regular expressions on the URL (path and query) that always pass.
    pub pass_url_patterns: Vec<String>,
    /// User-Agent regex -> value; the first match becomes part of the cache key.
    pub design_exceptions: Vec<DesignException>,
    /// Request headers removed before lookup and forwarding: they would change what the
    /// origin answers (URL rewriting, method override, host override) without being part
    /// of the cache key.
    pub strip_request_headers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DesignException {
    pub user_agent: String,
    pub value: String,
}

/// Headers that let a client change the origin's answer behind the key's back: PHP
/// frameworks honour the URL-rewrite and method-override ones, and Magento builds
/// absolute URLs from the host ones.
pub const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-host",
    "forwarded",
];

/// The marketing parameters of Magento 2.4's generated VCL.
pub const MAGENTO_MARKETING_PARAMS: &[&str] = &[
    "utm_*",
    "gclid",
    "fbclid",
    "gbraid",
    "wbraid",
    "msclkid",
    "dclid",
    "gclsrc",
    "srsltid",
    "_ga",
    "_gl",
    "_ke",
    "_kx",
    "gad_*",
    "mc_*",
    "_bta_*",
    "hsa_*",
    "trk_*",
    "mtm_*",
    "matomo_*",
    "pk_*",
    "piwik_*",
    "campid",
    "cof",
    "cx",
    "customid",
    "dm_i",
    "ef_id",
    "epik",
    "igshid",
    "pcrid",
    "s_kwcid",
    "siteurl",
    "tduid",
    "zanpid",
    "ScCid",
    "clickId",
    "ceneo_cid",
    "_branch_match_id",
    "sb_referer_host",
    "snrai_*",
    "yclid",
    "ttclid",
    "twclid",
    "li_fat_id",
    "rb_clickid",
    "irclickid",
    "_hsenc",
    "_hsmi",
    "mkt_tok",
    "oly_anon_id",
    "oly_enc_id",
    "vero_id",
    "wickedid",
    "ml_subscriber",
    "ml_subscriber_hash",
];

impl Default for MagentoSection {
    fn default() -> Self {
        Self {
            ssl_offload_header: "X-Forwarded-Proto".into(),
            marketing_params: MAGENTO_MARKETING_PARAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            pass_url_patterns: Vec::new(),
            design_exceptions: Vec::new(),
            strip_request_headers: STRIPPED_REQUEST_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// How much work Floodgate lets reach PHP-FPM, in what order, and what it answers when
/// the origin is full.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Requests in flight to each origin server at most: its PHP-FPM `pm.max_children`.
    pub max_inflight: usize,
    /// Requests waiting for a free slot at most, all classes together. When it is full a
    /// newcomer displaces the newest waiter of a lower class, or is shed.
    pub queue_size: usize,
    /// Longest wait in the queue, milliseconds, for classes without their own.
    pub max_wait_ms: u64,
    /// `Retry-After` on the 503s Floodgate answers itself, seconds.
    pub retry_after_secs: u32,
    /// HTML file sent with 503s when shedding; empty means the built-in page.
    pub busy_page: String,
    /// HTML file sent in maintenance mode; empty means the built-in page.
    pub maintenance_page: String,
    /// Move each origin's limit between `min_inflight` and `max_inflight` from its
    /// response times: slower answers shrink it, fast ones grow it back.
    pub adaptive: bool,
    /// The adaptive limit's floor.
    pub min_inflight: usize,
    /// An origin answer slower than this (to its headers), or failed, counts as the origin
    /// being overloaded, milliseconds.
    pub slow_response_ms: u64,
    /// Origin slots one client address holds at most (its other requests queue or are
    /// shed like any others), so one scraper or POST flood cannot take the pool; 0: no cap.
    pub max_inflight_per_client: usize,
    /// Request bodies up to this size are read whole before an origin slot is taken
    /// (at most 65536, Pingora's replay buffer).
    pub request_body_buffer_bytes: usize,
    /// A request body must have arrived within this many seconds of the request, or the
    /// client gets `408`.
    pub request_body_timeout_secs: u64,
    /// Bytes all responses in flight may hold for what is done to them on the way out
    /// (a stored gzip page inflated for a client without gzip: 64 KiB each, however large
    /// the page or slow the client); a response that would pass it gets 503.
    pub response_buffer_bytes: usize,
    /// The class of requests that match none below.
    pub default_class: String,
    /// Priority classes, highest first. A request belongs to the first class any of
    /// whose rules match it. The re-warmer and background refreshes come after all.
    #[serde(rename = "class")]
    pub classes: Vec<PriorityClass>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PriorityClass {
    pub name: String,
    /// Request methods, exactly (`POST`).
    pub methods: Vec<String>,
    /// Regular expressions on the path and query.
    pub paths: Vec<String>,
    /// Regular expressions on the User-Agent.
    pub user_agents: Vec<String>,
    /// This class's longest wait in the queue, milliseconds; 0 means `max_wait_ms`.
    pub max_wait_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_inflight: 32,
            queue_size: 1024,
            max_wait_ms: 5000,
            retry_after_secs: 5,
            busy_page: String::new(),
            maintenance_page: String::new(),
            adaptive: false,
            min_inflight: 4,
            slow_response_ms: 3000,
            max_inflight_per_client: 8,
            request_body_buffer_bytes: 65_536,
            request_body_timeout_secs: 30,
            response_buffer_bytes: 128 << 20,
            default_class: "pages".into(),
            classes: vec![
                PriorityClass {
                    name: "checkout".into(),
                    methods: ["POST", "PUT", "PATCH", "DELETE"].map(String::from).to_vec(),
                    paths: vec![
                        "(^|/)(checkout|customer|sales|wishlist|multishipping|paypal|braintree)(/|\\?|$)"
                            .into(),
                    ],
                    user_agents: Vec::new(),
                    max_wait_ms: 10_000,
                },
                PriorityClass {
                    name: "pages".into(),
                    ..PriorityClass::default()
                },
                PriorityClass {
                    name: "crawlers".into(),
                    user_agents: vec![
                        "(?i)(bot|crawl|spider|slurp|bingpreview|facebookexternalhit|ahrefs|semrush|yandex|baidu|python-requests|scrapy|headlesschrome)"
                            .into(),
                    ],
                    max_wait_ms: 2000,
                    ..PriorityClass::default()
                },
            ],
        }
    }
}

#[cfg(test)]
mod origin_entry_tests {
    use super::*;

    #[test]
    fn entries_are_addresses_or_names() {
        assert_eq!(
            OriginEntry::parse("127.0.0.1:8080"),
            Ok(OriginEntry::Address("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            OriginEntry::parse("[::1]:80"),
            Ok(OriginEntry::Address("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            OriginEntry::parse("App.Internal:8080"),
            Ok(OriginEntry::Name("app.internal".into(), 8080))
        );
        for bad in [
            "app.internal",
            "app:http",
            ":80",
            "a..b:80",
            "a b:80",
            "ex_ample:80",
        ] {
            assert!(OriginEntry::parse(bad).is_err(), "{bad}");
        }
    }
}
