//! `wukong serve`: opens the store, re-attaches to running VMs, serves the API.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api;
use crate::backend::{LocalBackend, LocalOptions};
use crate::daemon::{Daemon, host_limits};
use crate::paths::{Home, check_socket_path, owner_only};
use crate::store::Store;

/// Where the API listens besides its unix socket.
#[derive(Clone, Debug)]
pub struct TcpListen {
    /// A loopback address.
    pub addr: SocketAddr,
    /// The bearer token clients must send.
    pub token: String,
}

/// Fewest characters a bearer token may have (`openssl rand -hex 16` gives 32).
pub const MIN_TOKEN_LEN: usize = 32;

/// Reads the bearer token for the TCP listener from `path`: a file only its owner may read,
/// holding at least [`MIN_TOKEN_LEN`] characters (surrounding whitespace ignored).
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} is readable or writable by others (mode {mode:03o}): chmod 600 it"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "{shown} holds a token of {} characters, at least {MIN_TOKEN_LEN} are required",
            token.len()
        ));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{shown}: the token must be one word of printable characters"
        ));
    }
    Ok(token.to_string())
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another daemon answers on the socket.
    #[error("a wukong daemon already serves {0}")]
    AlreadyRunning(String),
    /// TCP on anything but loopback is refused.
    #[error("--listen {0}: only loopback addresses are allowed (the API has no TLS)")]
    NotLoopback(SocketAddr),
    /// Files, sockets.
    #[error("{0}")]
    Io(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The daemon, ready to serve.
pub struct Server {
    /// Shared state.
    pub daemon: Arc<Daemon>,
    unix: tokio::net::UnixListener,
    tcp: Option<(tokio::net::TcpListener, String)>,
}

fn io(e: impl std::fmt::Display) -> ServeError {
    ServeError::Io(e.to_string())
}

impl Server {
    /// Opens the state in `home`, binds the API socket (0600) and resumes every VM's worker.
    pub async fn bind(
        home: Home,
        options: LocalOptions,
        tcp: Option<TcpListen>,
    ) -> Result<Server, ServeError> {
        home.ensure().map_err(io)?;
        let sock = home.api_socket();
        check_socket_path(&sock).map_err(ServeError::Io)?;
        if sock.exists() {
            if tokio::net::UnixStream::connect(&sock).await.is_ok() {
                return Err(ServeError::AlreadyRunning(sock.display().to_string()));
            }
            std::fs::remove_file(&sock).map_err(io)?;
        }
        let store = Arc::new(Store::open_with(&home.database(), options.event_history)?);
        let backend = Arc::new(LocalBackend::new(home.clone(), store, options));
        let daemon = Daemon::new(backend, host_limits());
        let unix = tokio::net::UnixListener::bind(&sock).map_err(io)?;
        owner_only(&sock).map_err(io)?;
        let tcp = match tcp {
            Some(t) if !t.addr.ip().is_loopback() => return Err(ServeError::NotLoopback(t.addr)),
            Some(t) => Some((
                tokio::net::TcpListener::bind(t.addr).await.map_err(io)?,
                t.token,
            )),
            None => None,
        };
        daemon.resume_all()?;
        Ok(Server { daemon, unix, tcp })
    }

    /// Serves until `shutdown` completes. VMs keep running after the daemon exits.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let router = api::router(self.daemon.clone());
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = Vec::new();
        if let Some((listener, token)) = self.tcp {
            let app = api::with_token(router.clone(), token);
            let mut rx = tx.subscribe();
            tasks.push(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.recv().await;
                    })
                    .await
            }));
        }
        let mut rx = tx.subscribe();
        tasks.push(tokio::spawn(async move {
            axum::serve(self.unix, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.recv().await;
                })
                .await
        }));
        shutdown.await;
        let _ = tx.send(());
        for t in tasks {
            t.await.map_err(io)?.map_err(io)?;
        }
        Ok(())
    }
}
