//! HTTP/2 rules of the hyper path: shaping requests for HTTP/2 upstreams, and answering gRPC
//! clients in gRPC's terms. Which version goes upstream depends on the cluster, not on the
//! client ([`crate::net::forward::UpstreamProtocol`]); HTTP/2 client connections are served
//! by [`crate::serve::http::serve_h2`].

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};

use crate::serve::ctx::ResponseBody;

/// The request as an HTTP/2 upstream should see it: an absolute URI, from which hyper sends
/// `:scheme` and `:authority` (`http://` plus the destination's `Host` when the client sent
/// origin form), no `Host` header to disagree with `:authority`, no connection-specific headers
/// except `te: trailers`, which HTTP/2 allows (RFC 9113 8.2.2) and gRPC servers require, and
/// with this proxy's `via` added. `None` when `authority` is not a valid URI authority.
pub(crate) fn to_upstream<B>(
    req: Request<B>,
    authority: &HeaderValue,
    via: &crate::base::loop_guard::Via,
) -> Option<Request<B>> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(Authority::try_from(authority.as_bytes()).ok()?);
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).ok()?;
    }
    let trailers = parts.headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
    });
    crate::serve::ctx::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // After stripping: `Connection: via` must not remove the hop marker.
    via.append(&mut parts.headers, parts.version);
    parts.version = Version::HTTP_2;
    Some(Request::from_parts(parts, body))
}

/// Whether a request is gRPC (or gRPC-Web): its content type is `application/grpc...`.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .get(..GRPC.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(GRPC))
    })
}

/// A gRPC client reads the outcome of a call from `grpc-status`, not from the HTTP status, so
/// the proxy's own error responses to it become Trailers-Only responses as Envoy sends them:
/// HTTP 200, `grpc-status` and a percent-encoded `grpc-message` with the reason, no body.
/// Upstream responses (whatever their status) and successes pass unchanged.
pub(crate) async fn grpc_reply(resp: Response<ResponseBody>) -> Response<ResponseBody> {
    if resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let local = match body {
        Either::Left(upstream) => return Response::from_parts(parts, Either::Left(upstream)),
        Either::Right(local) => local,
    };
    // A `Full` body is one frame that is already there: this does not wait.
    let reason = match local.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let code = grpc_status(parts.status);
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(HeaderName::from_static("grpc-status"), HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_bytes(&grpc_message(reason.trim_ascii())) {
        headers.insert(HeaderName::from_static("grpc-message"), message);
    }
    Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
}

/// The gRPC status for one of the proxy's own HTTP errors: UNAVAILABLE (14) when no upstream
/// could be reached (503), DEADLINE_EXCEEDED (4) when it did not answer in time (504), and
/// INTERNAL (13) for everything else (bad requests, refusals, broken upstream exchanges).
fn grpc_status(status: StatusCode) -> u16 {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::GATEWAY_TIMEOUT => 4,
        _ => 13,
    }
}

/// `grpc-message` is percent-encoded UTF-8: bytes outside printable ASCII, and `%` itself,
/// become `%XX` (gRPC over HTTP/2, "Responses").
fn grpc_message(text: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri).version(Version::HTTP_11);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn via() -> crate::base::loop_guard::Via {
        crate::base::loop_guard::Via::random()
    }

    #[test]
    fn origin_form_gets_an_absolute_uri_from_host() {
        let req = request(
            "/pkg.Svc/Call?x=1",
            &[("host", "api.example.com:8080"), ("x-kept", "1")],
        );
        let up = to_upstream(req, &HeaderValue::from_static("api.example.com:8080"), &via()).unwrap();
        assert_eq!(up.uri(), "http://api.example.com:8080/pkg.Svc/Call?x=1");
        assert_eq!(up.version(), Version::HTTP_2);
        assert!(
            up.headers().get(header::HOST).is_none(),
            "Host would conflict with :authority"
        );
        assert_eq!(up.headers()["x-kept"], "1");
    }

    #[test]
    fn absolute_uris_are_kept() {
        let req = request("http://api.example.com/a", &[("host", "api.example.com")]);
        let up = to_upstream(req, &HeaderValue::from_static("api.example.com"), &via()).unwrap();
        assert_eq!(up.uri(), "http://api.example.com/a");
        assert!(up.headers().get(header::HOST).is_none());
    }

    #[test]
    fn te_trailers_survives_and_other_hop_by_hop_headers_do_not() {
        let req = request(
            "/",
            &[
                ("te", "trailers, deflate"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "5"),
                ("upgrade", "h2c"),
                ("content-type", "application/grpc"),
            ],
        );
        let up = to_upstream(req, &HeaderValue::from_static("a.com"), &via()).unwrap();
        let mut names: Vec<&str> = up.headers().keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["content-type", "te", "via"]);
        assert_eq!(up.headers()["te"], "trailers");

        let up = to_upstream(
            request("/", &[("te", "gzip")]),
            &HeaderValue::from_static("a.com"),
            &via(),
        )
        .unwrap();
        assert!(up.headers().get(header::TE).is_none());
    }

    #[test]
    fn the_via_marker_is_added_after_the_clients_and_connection_cannot_remove_it() {
        let via = via();
        let req = request("/", &[("via", "1.1 front"), ("connection", "via")]);
        let up = to_upstream(req, &HeaderValue::from_static("a.com"), &via).unwrap();
        let all: Vec<_> = up.headers().get_all(header::VIA).iter().collect();
        assert_eq!(all, [via.value(Version::HTTP_11)]);
        assert!(via.is_in_headers(up.headers()));
        let req = request("/", &[("via", "1.0 front")]);
        let up = to_upstream(req, &HeaderValue::from_static("a.com"), &via).unwrap();
        let all: Vec<_> = up.headers().get_all(header::VIA).iter().collect();
        assert_eq!(all[0], "1.0 front");
        assert_eq!(all[1], via.value(Version::HTTP_11));
    }

    #[test]
    fn an_invalid_authority_is_refused() {
        let up = to_upstream(request("/", &[]), &HeaderValue::from_static("a b.com"), &via());
        assert!(up.is_none());
    }

    #[test]
    fn grpc_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC-web+proto", true),
            ("application/json", false),
            ("application/grp", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
    }

    #[test]
    fn grpc_status_for_proxy_errors() {
        assert_eq!(grpc_status(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(grpc_status(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(grpc_status(StatusCode::BAD_GATEWAY), 13);
        assert_eq!(grpc_status(StatusCode::BAD_REQUEST), 13);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message(b"no route: 100% down"), b"no route: 100%25 down");
        assert_eq!(grpc_message("caf\u{e9}\n".as_bytes()), b"caf%C3%A9%0A");
    }

    #[tokio::test]
    async fn proxy_errors_become_trailers_only_grpc_responses() {
        let mut resp = crate::serve::ctx::local(StatusCode::SERVICE_UNAVAILABLE, "meshentry: a.com:80 is down");
        resp.headers_mut()
            .insert("x-meshentry-response-flags", HeaderValue::from_static("UF"));
        let resp = grpc_reply(resp).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "meshentry: a.com:80 is down");
        assert_eq!(resp.headers()["x-meshentry-response-flags"], "UF");
        assert!(resp.body().is_end_stream(), "Trailers-Only: no body");

        let resp = grpc_reply(crate::serve::ctx::local(StatusCode::GATEWAY_TIMEOUT, "slow")).await;
        assert_eq!(resp.headers()["grpc-status"], "4");
    }

    #[tokio::test]
    async fn successes_pass_unchanged() {
        let mut ok = crate::serve::ctx::local(StatusCode::OK, "");
        ok.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let resp = grpc_reply(ok).await;
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert!(resp.headers().get("grpc-status").is_none());
    }
}
