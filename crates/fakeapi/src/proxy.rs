//! What a real API server passes on instead of serving itself: aggregated APIs (an
//! `APIService` names a Service; an `ExternalName` Service names the host) and pod exec (to
//! the kubelet of the pod's Node, at the address and port in the Node's status), both over
//! HTTPS, the exec as a WebSocket upgrade relayed byte for byte.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::store::{ApiError, Kind, Store};

/// Accepts any server certificate: what an `APIService` with `insecureSkipTLSVerify` and a
/// kube-apiserver without `--kubelet-certificate-authority` do.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", message)
}

/// An HTTP/1.1 connection over TLS to `host:port`, ready for requests (and upgrades).
async fn connect(
    host: &str,
    port: u16,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| unavailable(format!("dial tcp {host}:{port}: {e}")))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| unavailable(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| unavailable(format!("tls to {host}:{port}: {e}")))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}

/// Where the `APIService` for `group`/`version` sends its requests.
fn aggregated_backend(
    store: &Store,
    group: &str,
    version: &str,
) -> Result<(String, u16), ApiError> {
    let missing = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let svc = store
        .get(
            Kind::named("apiregistration.k8s.io", "APIService"),
            "",
            &format!("{version}.{group}"),
        )
        .ok_or_else(missing)?;
    let spec = &svc["spec"];
    if spec["insecureSkipTLSVerify"] != true {
        return Err(unavailable(
            "this fake API server only reaches APIServices with insecureSkipTLSVerify".into(),
        ));
    }
    let (ns, name) = (
        spec["service"]["namespace"].as_str().unwrap_or_default(),
        spec["service"]["name"].as_str().unwrap_or_default(),
    );
    let service = store
        .get(Kind::named("", "Service"), ns, name)
        .ok_or_else(|| unavailable(format!("service \"{ns}/{name}\" not found")))?;
    let port = spec["service"]["port"].as_u64().unwrap_or(443) as u16;
    match service["spec"]["externalName"].as_str() {
        Some(host) if service["spec"]["type"] == "ExternalName" => Ok((host.to_string(), port)),
        _ => Err(unavailable(format!(
            "service \"{ns}/{name}\" has no address this server can reach (no service network: use an ExternalName)"
        ))),
    }
}

fn response_of(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response {
    let mut r = Response::builder().status(status);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        r = r.header(header::CONTENT_TYPE, ct);
    }
    r.body(Body::from(body)).unwrap_or_default()
}

/// Passes a request for an aggregated API (`/apis/GROUP/VERSION/…`) to its server.
pub async fn aggregated(
    store: &Store,
    group: &str,
    version: &str,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (host, port) = aggregated_backend(store, group, version)?;
    let mut send = connect(&host, port).await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::HOST, format!("{host}:{port}"));
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| unavailable(e.to_string()))?;
    let res = send
        .send_request(req)
        .await
        .map_err(|e| unavailable(format!("{host}:{port}: {e}")))?;
    let (parts, body) = res.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    Ok(response_of(parts.status, &parts.headers, bytes))
}

/// The kubelet of `pod`'s Node: host and port.
fn kubelet(store: &Store, pod: &Value) -> Result<(String, u16), ApiError> {
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "pod {} does not have a host assigned",
                pod["metadata"]["name"].as_str().unwrap_or_default()
            ),
        ));
    }
    let node = store
        .get(Kind::named("", "Node"), "", node_name)
        .ok_or_else(|| {
            ApiError::new(404, "NotFound", format!("nodes \"{node_name}\" not found"))
        })?;
    let address = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| unavailable(format!("node {node_name} has no InternalIP address")))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(10250) as u16;
    Ok((address.to_string(), port))
}

/// Passes a pod exec (a WebSocket upgrade) to the kubelet of the pod's Node and relays the
/// upgraded connection.
pub async fn exec(
    store: &Store,
    ns: &str,
    pod_name: &str,
    query: &[(String, String)],
    mut request: Request<Body>,
) -> Result<Response, ApiError> {
    let pod = store.fetch(Kind::named("", "Pod"), ns, pod_name)?;
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match query.iter().find(|(k, _)| k == "container") {
        Some((_, c)) => c.clone(),
        None if containers.len() == 1 => containers[0].to_string(),
        None => {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "a container name must be specified for pod {pod_name}, choose one of: {containers:?}"
                ),
            ));
        }
    };
    if !containers.contains(&container.as_str()) {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!("container {container} is not valid for pod {pod_name}"),
        ));
    }
    let (host, port) = kubelet(store, &pod)?;
    let rest: Vec<String> = query
        .iter()
        .filter(|(k, _)| k != "container")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let uri = format!("/exec/{ns}/{pod_name}/{container}?{}", rest.join("&"));
    let mut send = connect(&host, port).await?;
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(&uri)
        .header(header::HOST, format!("{host}:{port}"));
    for h in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        if let Some(v) = request.headers().get(&h) {
            req = req.header(h, v);
        }
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| unavailable(e.to_string()))?;
    let mut res = send
        .send_request(req)
        .await
        .map_err(|e| unavailable(format!("kubelet {host}:{port}: {e}")))?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = res.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Ok(response_of(parts.status, &parts.headers, bytes));
    }
    let mut reply = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in res.headers() {
        reply = reply.header(k, v);
    }
    let client_side = hyper::upgrade::on(&mut request);
    let kubelet_side = hyper::upgrade::on(&mut res);
    tokio::spawn(async move {
        if let (Ok(c), Ok(k)) = (client_side.await, kubelet_side.await) {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(k)).await;
        }
    });
    reply
        .body(Body::empty())
        .map_err(|e| unavailable(e.to_string()))
}

/// Percent-encodes a query key or value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
