//! The CLI's side of the API: HTTP/1.1 over the daemon's unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A client of one daemon.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon answers.
    #[error("no wukong daemon answers on {0}: {1}")]
    Unreachable(String, String),
    /// The daemon answered with an error `Status`.
    #[error("{message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// Kubernetes-style reason (`Invalid`, `NotAllowed`, `Conflict`, `NotFound`…).
        reason: String,
        /// The message.
        message: String,
    },
    /// The conversation broke.
    #[error("API: {0}")]
    Protocol(String),
}

/// A streaming response, line by line.
pub struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Lines {
    /// The next line, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
            }
            match self.body.frame().await? {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Err(_) => return None,
            }
        }
    }
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, hyper::HeaderMap, hyper::body::Incoming), ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Unreachable(self.socket.display().to_string(), e.to_string())
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "wukong")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        Ok((parts.status, parts.headers, body))
    }

    /// A JSON request; returns the JSON answer and the event sequence the daemon had reached.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, u64), ClientError> {
        let (status, headers, body) = self.send(method, path, body).await?;
        let bytes = body
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        let seq = headers
            .get("x-wukong-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok((value, seq))
        } else {
            Err(ClientError::Api {
                code: status.as_u16(),
                reason: value["reason"].as_str().unwrap_or("Error").to_string(),
                message: value["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string()),
            })
        }
    }

    /// A streaming GET (watch), line by line.
    pub async fn stream(&self, path: &str) -> Result<Lines, ClientError> {
        let (status, _, body) = self.send(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(ClientError::Api {
                code: status.as_u16(),
                reason: "Error".into(),
                message: format!("watch {path}: HTTP {status}"),
            });
        }
        Ok(Lines {
            body,
            buf: Vec::new(),
        })
    }

    /// Whether a daemon answers.
    pub async fn alive(&self) -> bool {
        self.call(Method::GET, "/healthz", None).await.is_ok()
    }
}
