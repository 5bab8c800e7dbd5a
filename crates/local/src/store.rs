//! The embedded database (redb): VM records (desired spec, status, the definition QEMU runs
//! with), events and the operation journal, with optimistic concurrency on resourceVersion.
//!
//! Schema version 2 (table `meta`, key `schema`): tables `meta`, `vms` (key `ns/name`, JSON
//! [`VmRecord`]), `events` (key: global sequence, JSON [`StoredEvent`]), `vm_events` (key
//! `(ns/name, sequence)`: each VM's events, in order) and `vm_event_count` (key `ns/name`).
//! Each VM keeps its newest events only (a bounded history, [`DEFAULT_EVENT_HISTORY`] unless
//! told otherwise), and reading them costs the same whatever the rest of the history holds.
//! Opening a database written by a newer schema is refused; older ones are migrated in
//! [`Store::open_with`] (version 1 had no per-VM index: it is built and the history bounded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use wukong_api::{Pinned, VmConfig, Wukong};
use wukong_engine::{Event, VmRef};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u64 = 2;

/// Events kept per VM unless told otherwise.
pub const DEFAULT_EVENT_HISTORY: usize = 1000;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const VM_EVENTS: TableDefinition<(&str, u64), ()> = TableDefinition::new("vm_events");
const VM_EVENT_COUNT: TableDefinition<&str, u64> = TableDefinition::new("vm_event_count");

/// Everything the local backend keeps about one VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    /// Metadata, the complete desired spec, and status.
    pub object: Wukong,
    /// Values fixed at creation.
    pub pinned: Pinned,
    /// The configuration QEMU runs with (or will boot with), updated after each live step.
    pub definition: VmConfig,
    /// Memory at the last boot: the floor of a live shrink.
    pub boot_memory: u64,
    /// vCPUs created during this QEMU's life (under TCG each uses a `maxcpus` slot for good).
    #[serde(default)]
    pub vcpu_creations: u32,
    /// Root ports of the running machine, and the device on each (device id -> port id).
    #[serde(default)]
    pub ports: BTreeMap<String, String>,
    /// Number of root ports the running machine was started with.
    #[serde(default)]
    pub ports_total: u32,
    /// Whether the user asked it to stop (runStrategy Manual/Halted/RerunOnFailure bookkeeping).
    #[serde(default)]
    pub stopped_by_user: bool,
    /// The last spec the VM fully converged to, and its generation (for `wukong rollback`).
    #[serde(default)]
    pub last_converged: Option<(i64, wukong_api::WukongSpec)>,
    /// Whether the delete in progress (`metadata.deletionTimestamp` set) removes the disk
    /// images too.
    #[serde(default)]
    pub delete_disks: bool,
}

/// An event as stored, with its VM and time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    /// Sequence number (global, increasing).
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// The VM.
    pub vm: VmRef,
    /// What happened.
    pub event: Event,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    /// A record does not decode.
    #[error("corrupt record {0}: {1}")]
    Corrupt(String, String),
    /// resourceVersion mismatch.
    #[error("conflict: {0} was modified (resourceVersion {1}, yours {2}); get it again and retry")]
    Conflict(String, String, String),
    /// Already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// Not found.
    #[error("{0} not found")]
    NotFound(String),
    /// Written by a newer schema.
    #[error("the database has schema {0}, newer than this wukong's {SCHEMA_VERSION}")]
    NewerSchema(u64),
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// The database.
pub struct Store {
    /// `None` once a failed write closed it (it is opened again on the next call).
    db: RwLock<Option<redb::Database>>,
    path: PathBuf,
    /// Set when a call met an I/O error: redb refuses every later call (`PreviousIo`) until
    /// the database is opened again, so the next call does that first. A full filesystem that
    /// refused one commit thus costs that commit, not the daemon's store.
    broken: AtomicBool,
    /// Events kept per VM.
    keep: usize,
}

/// The open database, for the length of one call.
struct Db<'a>(RwLockReadGuard<'a, Option<redb::Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = redb::Database;
    fn deref(&self) -> &redb::Database {
        self.0
            .as_ref()
            .expect("Store::db hands out an open database")
    }
}

fn key(vm: &VmRef) -> String {
    format!("{}/{}", vm.namespace, vm.name)
}

impl Store {
    /// Opens (creating if needed) the database at `path`, migrating older schemas, keeping
    /// [`DEFAULT_EVENT_HISTORY`] events per VM.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, DEFAULT_EVENT_HISTORY)
    }

    /// Like [`Store::open`], keeping the newest `keep` events of each VM (at least 1).
    pub fn open_with(path: &Path, keep: usize) -> Result<Store, StoreError> {
        let keep = keep.max(1);
        let db = redb::Database::create(path).map_err(dberr)?;
        let txn = db.begin_write().map_err(dberr)?;
        {
            let mut meta = txn.open_table(META).map_err(dberr)?;
            let version = meta.get("schema").map_err(dberr)?.map(|v| v.value());
            txn.open_table(VMS).map_err(dberr)?;
            txn.open_table(EVENTS).map_err(dberr)?;
            txn.open_table(VM_EVENTS).map_err(dberr)?;
            txn.open_table(VM_EVENT_COUNT).map_err(dberr)?;
            match version {
                None => {}
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::NewerSchema(v)),
                Some(1) => index_events(&txn)?,
                Some(_) => {}
            }
            meta.insert("schema", SCHEMA_VERSION).map_err(dberr)?;
        }
        let store = Store {
            db: RwLock::new(None),
            path: path.to_path_buf(),
            broken: AtomicBool::new(false),
            keep,
        };
        // A smaller bound than the last run's applies at once.
        let vms: Vec<String> = {
            let counts = txn.open_table(VM_EVENT_COUNT).map_err(dberr)?;
            let mut over = Vec::new();
            for row in counts.iter().map_err(dberr)? {
                let (k, n) = row.map_err(dberr)?;
                if n.value() as usize > keep {
                    over.push(k.value().to_string());
                }
            }
            over
        };
        for vm in vms {
            store.prune(&txn, &vm)?;
        }
        txn.commit().map_err(dberr)?;
        *store.db.write().expect("store") = Some(db);
        Ok(store)
    }

    /// The database, opened again first if a failed call closed it.
    fn db(&self) -> Result<Db<'_>, StoreError> {
        loop {
            {
                let g = self.db.read().expect("store");
                if g.is_some() && !self.broken.load(Ordering::SeqCst) {
                    return Ok(Db(g));
                }
            }
            let mut w = self.db.write().expect("store");
            if self.broken.swap(false, Ordering::SeqCst) || w.is_none() {
                // The old handle must be gone before the file can be opened again.
                *w = None;
                match redb::Database::create(&self.path) {
                    Ok(db) => *w = Some(db),
                    Err(e) => {
                        self.broken.store(true, Ordering::SeqCst);
                        return Err(dberr(e));
                    }
                }
            }
        }
    }

    /// `e` as a store error; an I/O error marks the database to be opened again.
    fn fail<E: Into<redb::Error>>(&self, e: E) -> StoreError {
        let e = e.into();
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.broken.store(true, Ordering::SeqCst);
        }
        StoreError::Db(e)
    }

    /// Drops `vm`'s oldest events beyond the bound (in `txn`).
    fn prune(&self, txn: &redb::WriteTransaction, vm: &str) -> Result<(), StoreError> {
        let mut idx = txn.open_table(VM_EVENTS).map_err(|e| self.fail(e))?;
        let mut events = txn.open_table(EVENTS).map_err(|e| self.fail(e))?;
        let mut counts = txn.open_table(VM_EVENT_COUNT).map_err(|e| self.fail(e))?;
        let mut n = counts
            .get(vm)
            .map_err(|e| self.fail(e))?
            .map(|v| v.value())
            .unwrap_or(0) as usize;
        if n <= self.keep {
            return Ok(());
        }
        let old: Vec<u64> = idx
            .range((vm, 0)..=(vm, u64::MAX))
            .map_err(|e| self.fail(e))?
            .take(n - self.keep)
            .filter_map(|r| r.ok().map(|(k, _)| k.value().1))
            .collect();
        for seq in old {
            idx.remove((vm, seq)).map_err(|e| self.fail(e))?;
            events.remove(seq).map_err(|e| self.fail(e))?;
            n -= 1;
        }
        counts.insert(vm, n as u64).map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// One VM's record.
    pub fn get(&self, vm: &VmRef) -> Result<Option<VmRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(VMS).map_err(|e| self.fail(e))?;
        let value = table.get(key(vm).as_str()).map_err(|e| self.fail(e))?;
        value.map(|v| decode(&key(vm), v.value())).transpose()
    }

    /// Every VM, optionally in one namespace, ordered by namespace and name.
    pub fn list(&self, namespace: Option<&str>) -> Result<Vec<VmRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(VMS).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.fail(e))? {
            let (k, v) = row.map_err(|e| self.fail(e))?;
            let k = k.value().to_string();
            if namespace.is_none_or(|ns| k.split('/').next() == Some(ns)) {
                out.push(decode(&k, v.value())?);
            }
        }
        Ok(out)
    }

    /// Creates a record; fails if it exists. Sets its resourceVersion.
    pub fn create(&self, mut record: VmRecord) -> Result<VmRecord, StoreError> {
        let vm = record_ref(&record);
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut table = txn.open_table(VMS).map_err(|e| self.fail(e))?;
            if table
                .get(key(&vm).as_str())
                .map_err(|e| self.fail(e))?
                .is_some()
            {
                return Err(StoreError::Exists(key(&vm)));
            }
            let rv = self.next_version(&txn)?;
            record.object.metadata.resource_version = Some(rv.to_string());
            table
                .insert(key(&vm).as_str(), encode(&record).as_slice())
                .map_err(|e| self.fail(e))?;
        }
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(record)
    }

    /// Read-modify-write of one record in one transaction. With `expect` set, the stored
    /// resourceVersion must equal it (optimistic concurrency). `f` may refuse by returning an
    /// error, which leaves the record untouched.
    pub fn update<E: From<StoreError>>(
        &self,
        vm: &VmRef,
        expect: Option<&str>,
        f: impl FnOnce(&mut VmRecord) -> Result<(), E>,
    ) -> Result<VmRecord, E> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.fail(e))?;
        let record = {
            let mut table = txn.open_table(VMS).map_err(|e| self.fail(e))?;
            let mut record = match table.get(key(vm).as_str()).map_err(|e| self.fail(e))? {
                Some(v) => decode(&key(vm), v.value())?,
                None => return Err(StoreError::NotFound(key(vm)).into()),
            };
            let current = record
                .object
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default();
            if let Some(expect) = expect
                && expect != current
            {
                return Err(StoreError::Conflict(key(vm), current, expect.to_string()).into());
            }
            f(&mut record)?;
            let rv = self.next_version(&txn)?;
            record.object.metadata.resource_version = Some(rv.to_string());
            table
                .insert(key(vm).as_str(), encode(&record).as_slice())
                .map_err(|e| self.fail(e))?;
            record
        };
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(record)
    }

    /// Removes a record (and keeps its events as history).
    pub fn delete(&self, vm: &VmRef) -> Result<bool, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.fail(e))?;
        let existed = {
            let mut table = txn.open_table(VMS).map_err(|e| self.fail(e))?;
            table
                .remove(key(vm).as_str())
                .map_err(|e| self.fail(e))?
                .is_some()
        };
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(existed)
    }

    /// Appends an event durably and applies `f` to the VM's record (if it exists) in the same
    /// transaction: the journal and the status it implies are written together. Returns the
    /// event with its sequence number.
    pub fn append_event(
        &self,
        vm: &VmRef,
        event: &Event,
        f: impl FnOnce(&mut VmRecord),
    ) -> Result<StoredEvent, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut table = txn.open_table(VMS).map_err(|e| self.fail(e))?;
            let current = table
                .get(key(vm).as_str())
                .map_err(|e| self.fail(e))?
                .map(|v| decode(&key(vm), v.value()))
                .transpose()?;
            if let Some(mut record) = current {
                f(&mut record);
                let rv = self.next_version(&txn)?;
                record.object.metadata.resource_version = Some(rv.to_string());
                table
                    .insert(key(vm).as_str(), encode(&record).as_slice())
                    .map_err(|e| self.fail(e))?;
            }
        }
        let stored = {
            let mut table = txn.open_table(EVENTS).map_err(|e| self.fail(e))?;
            let seq = table
                .last()
                .map_err(|e| self.fail(e))?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            let stored = StoredEvent {
                seq,
                time: jiff::Timestamp::now().to_string(),
                vm: vm.clone(),
                event: event.clone(),
            };
            let bytes = serde_json::to_vec(&stored).expect("events serialize");
            table
                .insert(seq, bytes.as_slice())
                .map_err(|e| self.fail(e))?;
            let k = key(vm);
            let mut idx = txn.open_table(VM_EVENTS).map_err(|e| self.fail(e))?;
            idx.insert((k.as_str(), seq), ())
                .map_err(|e| self.fail(e))?;
            let mut counts = txn.open_table(VM_EVENT_COUNT).map_err(|e| self.fail(e))?;
            let n = counts
                .get(k.as_str())
                .map_err(|e| self.fail(e))?
                .map(|v| v.value())
                .unwrap_or(0);
            counts.insert(k.as_str(), n + 1).map_err(|e| self.fail(e))?;
            stored
        };
        self.prune(&txn, &key(vm))?;
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(stored)
    }

    /// Events of one VM (or all) after `since`, oldest first, at most `limit`, newest kept.
    pub fn events(
        &self,
        vm: Option<&VmRef>,
        since: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.fail(e))?;
        // Only the newest `limit` are read, newest first, then put in order.
        let mut seqs: Vec<u64> = match vm {
            Some(vm) => {
                let k = key(vm);
                let idx = txn.open_table(VM_EVENTS).map_err(|e| self.fail(e))?;
                idx.range((k.as_str(), since.saturating_add(1))..=(k.as_str(), u64::MAX))
                    .map_err(|e| self.fail(e))?
                    .rev()
                    .take(limit)
                    .map(|r| r.map(|(k, _)| k.value().1).map_err(|e| self.fail(e)))
                    .collect::<Result<_, _>>()?
            }
            None => table
                .range(since.saturating_add(1)..)
                .map_err(|e| self.fail(e))?
                .rev()
                .take(limit)
                .map(|r| r.map(|(k, _)| k.value()).map_err(|e| self.fail(e)))
                .collect::<Result<_, _>>()?,
        };
        seqs.reverse();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let Some(v) = table.get(seq).map_err(|e| self.fail(e))? else {
                continue;
            };
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt(format!("event {seq}"), e.to_string()))?,
            );
        }
        Ok(out)
    }

    fn next_version(&self, txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
        let mut meta = txn.open_table(META).map_err(|e| self.fail(e))?;
        let next = meta
            .get("resource_version")
            .map_err(|e| self.fail(e))?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        meta.insert("resource_version", next)
            .map_err(|e| self.fail(e))?;
        Ok(next)
    }
}

/// Schema 1 → 2: each VM's index and count, from the events themselves.
fn index_events(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let events = txn.open_table(EVENTS).map_err(dberr)?;
    let mut idx = txn.open_table(VM_EVENTS).map_err(dberr)?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for row in events.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        let e: StoredEvent = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Corrupt(format!("event {}", k.value()), e.to_string()))?;
        let vm = key(&e.vm);
        idx.insert((vm.as_str(), k.value()), ()).map_err(dberr)?;
        *counts.entry(vm).or_default() += 1;
    }
    let mut table = txn.open_table(VM_EVENT_COUNT).map_err(dberr)?;
    for (vm, n) in counts {
        table.insert(vm.as_str(), n).map_err(dberr)?;
    }
    Ok(())
}

/// The VM a record describes.
pub fn record_ref(r: &VmRecord) -> VmRef {
    VmRef::new(
        r.object.metadata.namespace.as_deref().unwrap_or("default"),
        r.object.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn encode(r: &VmRecord) -> Vec<u8> {
    serde_json::to_vec(r).expect("records serialize")
}

fn decode(k: &str, bytes: &[u8]) -> Result<VmRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(k.to_string(), e.to_string()))
}
