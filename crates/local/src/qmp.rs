//! A QMP connection (QEMU's monitor) on a unix socket: typed commands from `qapi`, every call
//! bounded by a timeout, events broadcast to whoever waits for one.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use qapi::qmp;
use serde::Serialize;
use tokio::sync::broadcast;
use wukong_engine::BackendError;

/// How long one monitor command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

type Service = qapi::futures::QapiService<
    qapi::futures::QmpStreamTokio<tokio::io::WriteHalf<tokio::net::UnixStream>>,
>;

/// An open, negotiated QMP connection.
pub struct Qmp {
    service: Service,
    events: broadcast::Sender<qmp::Event>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Commands the typed schema spells awkwardly (tagged unions), sent with JSON arguments.
macro_rules! raw_command {
    ($ty:ident, $name:literal) => {
        #[doc = concat!("`", $name, "` with JSON arguments.")]
        #[derive(Serialize)]
        #[serde(transparent)]
        pub struct $ty(pub serde_json::Value);
        impl qapi::Command for $ty {
            type Ok = qapi::Empty;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
        impl qmp::QmpCommand for $ty {}
    };
}

raw_command!(BlockdevAdd, "blockdev-add");
raw_command!(NetdevAdd, "netdev_add");
raw_command!(SnapshotInternal, "blockdev-snapshot-internal-sync");

fn unreachable(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Unreachable(format!("QMP {what}: {e}"))
}

impl Qmp {
    /// Connects and negotiates capabilities, within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, BackendError> {
        let open = async {
            let negotiation = qapi::futures::QmpStreamTokio::open_uds(path).await?;
            negotiation.negotiate().await
        };
        let stream = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| BackendError::Timeout {
                what: format!("QMP at {}", path.display()),
                after: timeout,
            })?
            .map_err(|e| unreachable("connect", e))?;
        let (service, mut events) = stream.into_parts();
        let (tx, _) = broadcast::channel(256);
        let sender = tx.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                let _ = sender.send(event);
            }
        });
        Ok(Qmp {
            service,
            events: tx,
            reader,
        })
    }

    /// Runs one command within [`COMMAND_TIMEOUT`].
    pub async fn run<C>(&self, command: C) -> Result<C::Ok, BackendError>
    where
        C: qmp::QmpCommand + 'static,
    {
        let name = C::NAME;
        match tokio::time::timeout(COMMAND_TIMEOUT, self.service.execute(command)).await {
            Err(_) => Err(BackendError::Timeout {
                what: format!("QMP {name}"),
                after: COMMAND_TIMEOUT,
            }),
            Ok(Err(qapi::ExecuteError::Qapi(e))) => {
                Err(BackendError::Failed(format!("QMP {name}: {}", e.desc)))
            }
            Ok(Err(qapi::ExecuteError::Io(e))) => Err(unreachable(name, e)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<qmp::Event> {
        self.events.subscribe()
    }

    /// QEMU's version.
    pub async fn version(&self) -> Result<(u32, u32), BackendError> {
        let v = self.run(qmp::query_version {}).await?;
        Ok((v.qemu.major as u32, v.qemu.minor as u32))
    }

    /// `qom-get` of one property.
    pub async fn qom_get(
        &self,
        path: &str,
        property: &str,
    ) -> Result<serde_json::Value, BackendError> {
        let v = self
            .run(qmp::qom_get {
                path: path.into(),
                property: property.into(),
            })
            .await?;
        Ok(serde_json::to_value(v).unwrap_or_default())
    }

    /// `qom-set` of one property.
    pub async fn qom_set(
        &self,
        path: &str,
        property: &str,
        value: serde_json::Value,
    ) -> Result<(), BackendError> {
        self.run(qmp::qom_set {
            path: path.into(),
            property: property.into(),
            value: serde_json::from_value(value)
                .map_err(|e| BackendError::Failed(e.to_string()))?,
        })
        .await?;
        Ok(())
    }

    /// Ids of the user-created devices (`/machine/peripheral`).
    pub async fn peripherals(&self) -> Result<Vec<String>, BackendError> {
        let list = self
            .run(qmp::qom_list {
                path: "/machine/peripheral".into(),
            })
            .await?;
        Ok(list
            .into_iter()
            .filter(|p| p.type_.starts_with("child<"))
            .map(|p| p.name)
            .collect())
    }

    /// `device_add` with extra properties.
    pub async fn device_add(
        &self,
        driver: &str,
        id: &str,
        bus: Option<&str>,
        props: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), BackendError> {
        self.run(qmp::device_add {
            driver: driver.into(),
            id: Some(id.into()),
            bus: bus.map(Into::into),
            arguments: props.into_iter().collect(),
        })
        .await?;
        Ok(())
    }

    /// `device_del`, then waits for the guest to release it (`DEVICE_DELETED`), within
    /// `timeout`.
    pub async fn device_del(&self, id: &str, timeout: Duration) -> Result<(), BackendError> {
        let mut events = self.subscribe();
        self.run(qmp::device_del { id: id.into() }).await?;
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(qmp::Event::DEVICE_DELETED { data, .. })
                        if data.device.as_deref() == Some(id) =>
                    {
                        return Ok(());
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(unreachable("events", "connection closed"));
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| BackendError::Timeout {
                what: format!("the guest to release device {id}"),
                after: timeout,
            })?
    }

    /// A human monitor command (`info network`…), for diagnostics and tests.
    pub async fn hmp(&self, command: &str) -> Result<String, BackendError> {
        self.run(qmp::human_monitor_command {
            command_line: command.into(),
            cpu_index: None,
        })
        .await
    }

    /// `quit`: QEMU exits at once.
    pub async fn quit(&self) -> Result<(), BackendError> {
        // QEMU may close the socket before answering.
        match self.run(qmp::quit {}).await {
            Ok(_) | Err(BackendError::Unreachable(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
