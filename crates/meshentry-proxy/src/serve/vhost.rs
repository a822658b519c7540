//! A Gateway's HTTP request: routed by the virtual hosts of the server whose listener (and
//! TLS) the connection came through.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::base::flags::Flags;
use crate::model::gateway::GatewayConn;
use crate::net::forward::Original;
use crate::obs::telemetry::note;
use crate::route::split_host_port;
use crate::serve::ctx::{ConnCtx, Reply, ResponseBody, local};

/// An HTTP request on a gateway listener (F3): `httpsRedirect`, then the virtual host named
/// by the request's `Host` (404 when none), then its rules.
pub(crate) async fn forward(req: Request<Incoming>, ctx: &Arc<ConnCtx>, g: &GatewayConn) -> Response<ResponseBody> {
    // The connection's own snapshot: the server index is the one the connection was
    // accepted (and its TLS terminated) under.
    let Some(server) = ctx
        .snapshot
        .gateway
        .as_ref()
        .and_then(|gw| gw.listener(&g.listener))
        .and_then(|l| l.servers.get(g.server))
    else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "meshentry: the gateway no longer has this port",
        );
    };
    let host_header = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| req.headers().get(header::HOST).cloned());
    let Some(host_header) = host_header else {
        ctx.shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        note(|o| o.fail(Flags::DPE, "missing_host_header"));
        return local(StatusCode::BAD_REQUEST, "meshentry: the request has no Host header");
    };
    let text = String::from_utf8_lossy(host_header.as_bytes()).into_owned();
    let Some((host, _)) = split_host_port(&text, g.port) else {
        ctx.shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        note(|o| o.fail(Flags::DPE, "invalid_host_header"));
        return local(StatusCode::BAD_REQUEST, "meshentry: the Host header is not host[:port]");
    };
    if server.https_redirect && !g.tls {
        note(|o| o.fail(Flags::NONE, "direct_response"));
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut resp = local(StatusCode::MOVED_PERMANENTLY, "");
        if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{path}")) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    // Only the virtual hosts of the server that terminated the TLS: Istio gives each HTTPS
    // server its own route configuration, so a Host (or an absolute-form target) of another
    // server on the port finds no virtual host there and Envoy answers 404 NR. Not 421:
    // neither Istio nor Envoy sends one (istio/istio#13589 and envoyproxy/envoy#6767, both
    // open), and clients that see a 404 today would see another status.
    let Some(routes) = server.routes.http(host) else {
        note(|o| o.fail(Flags::NR, "route_not_found"));
        let gw = ctx.snapshot.gateway.as_ref().map_or("", |g| g.name.as_str());
        let bound_to = if g.tls {
            format!("servers[{}] (whose TLS this connection came through)", server.index)
        } else {
            "it".to_string()
        };
        let reason = format!(
            "meshentry: gateway {gw} port {}: no VirtualService bound to {bound_to} routes host {host}",
            g.port
        );
        return Reply::new(StatusCode::NOT_FOUND, reason).flagged("NR").response();
    };
    let original = Original { host, port: g.port };
    crate::serve::routed::handle(ctx, routes, req, host_header.clone(), &original, g.port).await
}
