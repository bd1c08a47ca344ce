//! One delivery attempt per target. The callback client is hand-wired on hyper's HTTP/1
//! connection API rather than a pooled client: every attempt resolves and checks the host
//! itself ([`super::allow`]), connects to exactly the checked addresses, and never follows a
//! redirect (hyper's connection API has no notion of one).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::allow::{self, Target};
use super::{Attempt, Events};

/// POSTs `body` to `url`, signed; the whole attempt (resolve, connect, TLS, request, response
/// head) is bounded by the callback timeout.
pub(super) async fn post(
    events: &Events,
    url: &str,
    event_id: &str,
    event_type: &str,
    body: &str,
) -> Attempt {
    let cfg = &events.inner.cfg;
    // Checked again at delivery: the allow-list may have changed since the event was recorded.
    let target = match allow::check_url(cfg, url) {
        Ok(t) => t,
        Err(why) => return Attempt::Refused(why),
    };
    let Some(secret) = cfg.callback_secret.as_ref() else {
        return Attempt::Refused("no FACEGROUP_CALLBACK_SECRET configured".into());
    };
    let addrs = match tokio::time::timeout(cfg.timeout(), allow::resolve(cfg, &target)).await {
        Err(_) => return Attempt::Retry(format!("resolving {} timed out", target.host)),
        Ok(Err(allow::ResolveError::Refused(why))) => return Attempt::Refused(why),
        Ok(Err(allow::ResolveError::Failed(why))) => return Attempt::Retry(why),
        Ok(Ok(a)) => a,
    };
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let request = http::Request::post(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "facegroup-worker")
        .header("x-facegroup-event-id", event_id)
        .header("x-facegroup-event-type", event_type)
        .header("x-facegroup-timestamp", ts.to_string())
        .header(
            "x-facegroup-signature",
            super::signature(secret.expose(), ts, body.as_bytes()),
        )
        .body(Full::new(Bytes::from(body.to_string())));
    let request = match request {
        Ok(r) => r,
        Err(e) => return Attempt::Dead(format!("cannot build the request: {e}")),
    };
    let sent = tokio::time::timeout(cfg.timeout(), send(events, &target, &addrs, request)).await;
    match sent {
        Err(_) => Attempt::Retry(format!("no answer within {:?}", cfg.timeout())),
        Ok(Err(e)) => Attempt::Retry(e),
        Ok(Ok(code)) => classify(code),
    }
}

/// What an HTTP status means for the event.
fn classify(code: http::StatusCode) -> Attempt {
    if code.is_success() {
        Attempt::Delivered
    } else if code.is_redirection() {
        Attempt::Dead(format!(
            "callback answered {code}; redirects are not followed"
        ))
    } else if code.is_server_error()
        || code == http::StatusCode::REQUEST_TIMEOUT
        || code == http::StatusCode::TOO_MANY_REQUESTS
    {
        Attempt::Retry(format!("callback answered {code}"))
    } else {
        Attempt::Dead(format!("callback answered {code}"))
    }
}

/// Connects to the first reachable checked address and sends the request.
async fn send(
    events: &Events,
    target: &Target,
    addrs: &[std::net::SocketAddr],
    request: http::Request<Full<Bytes>>,
) -> Result<http::StatusCode, String> {
    let mut last = String::from("no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect {a}: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    if target.https {
        let tls = events.tls_config()?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("TLS name {}: {e}", target.host))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.host))?;
        exchange(stream, request).await
    } else {
        exchange(stream, request).await
    }
}

async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
) -> Result<http::StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let answer = sender.send_request(request).await;
    // Only the status matters; the body is not read, and the connection closes with the task.
    conn.abort();
    answer
        .map(|r| r.status())
        .map_err(|e| format!("HTTP request: {e}"))
}

impl Events {
    /// The rustls client configuration with the system's root certificates, built on first use.
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.inner
            .tls
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err("no system root certificates for TLS callbacks".into());
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                    .map_err(|e| format!("TLS configuration: {e}"))
            })
            .clone()
    }
}

/// Publishes to the SNS topic (message attribute `event_type`).
pub(super) async fn sns(
    client: &aws_sdk_sns::Client,
    topic: &str,
    event_type: &str,
    body: &str,
) -> Attempt {
    let attr = aws_sdk_sns::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(event_type)
        .build();
    let attr = match attr {
        Ok(a) => a,
        Err(e) => return Attempt::Dead(format!("SNS attribute: {e}")),
    };
    match client
        .publish()
        .topic_arn(topic)
        .message(body)
        .message_attributes("event_type", attr)
        .send()
        .await
    {
        Ok(_) => Attempt::Delivered,
        Err(e) => Attempt::Retry(format!(
            "SNS publish: {}",
            aws_sdk_sns::error::DisplayErrorContext(&e)
        )),
    }
}

/// Puts one entry on the EventBridge bus (source `facegroup`, detail-type the event type).
pub(super) async fn eventbridge(
    client: &aws_sdk_eventbridge::Client,
    bus: &str,
    event_type: &str,
    body: &str,
) -> Attempt {
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .event_bus_name(bus)
        .source("facegroup")
        .detail_type(event_type)
        .detail(body)
        .build();
    match client.put_events().entries(entry).send().await {
        Ok(out) if out.failed_entry_count() == 0 => Attempt::Delivered,
        Ok(out) => {
            let why = out
                .entries()
                .iter()
                .find_map(|e| e.error_message().map(str::to_string))
                .unwrap_or_else(|| "entry rejected".into());
            Attempt::Retry(format!("EventBridge PutEvents: {why}"))
        }
        Err(e) => Attempt::Retry(format!(
            "EventBridge PutEvents: {}",
            aws_sdk_eventbridge::error::DisplayErrorContext(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        use http::StatusCode as S;
        assert!(matches!(classify(S::OK), Attempt::Delivered));
        assert!(matches!(classify(S::NO_CONTENT), Attempt::Delivered));
        assert!(matches!(
            classify(S::INTERNAL_SERVER_ERROR),
            Attempt::Retry(_)
        ));
        assert!(matches!(classify(S::TOO_MANY_REQUESTS), Attempt::Retry(_)));
        assert!(matches!(classify(S::FOUND), Attempt::Dead(_)));
        assert!(matches!(classify(S::BAD_REQUEST), Attempt::Dead(_)));
    }
}
