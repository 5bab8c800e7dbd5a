//! The simulator's view of the cluster: plain REST calls through a kube client, as any
//! controller makes them (no shortcut into a server's storage).

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Error};
use serde_json::Value;

/// A resource the simulator reads or writes.
#[derive(Clone, Copy, Debug)]
pub struct Res {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
}

macro_rules! res {
    ($name:ident, $g:literal, $v:literal, $k:literal, $p:literal, $ns:literal) => {
        pub const $name: Res = Res {
            group: $g,
            version: $v,
            kind: $k,
            plural: $p,
            namespaced: $ns,
        };
    };
}

res!(
    VM,
    "kubevirt.io",
    "v1",
    "VirtualMachine",
    "virtualmachines",
    true
);
res!(
    VMI,
    "kubevirt.io",
    "v1",
    "VirtualMachineInstance",
    "virtualmachineinstances",
    true
);
res!(KUBEVIRT, "kubevirt.io", "v1", "KubeVirt", "kubevirts", true);
res!(
    PVC,
    "",
    "v1",
    "PersistentVolumeClaim",
    "persistentvolumeclaims",
    true
);
res!(POD, "", "v1", "Pod", "pods", true);
res!(
    DV,
    "cdi.kubevirt.io",
    "v1beta1",
    "DataVolume",
    "datavolumes",
    true
);
res!(NODE_RES, "", "v1", "Node", "nodes", false);
res!(SERVICE, "", "v1", "Service", "services", true);
res!(NAMESPACE, "", "v1", "Namespace", "namespaces", false);
res!(
    STORAGE_CLASS,
    "storage.k8s.io",
    "v1",
    "StorageClass",
    "storageclasses",
    false
);
res!(
    API_SERVICE,
    "apiregistration.k8s.io",
    "v1",
    "APIService",
    "apiservices",
    false
);

impl Res {
    /// The kube-rs description of this resource.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Its kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Its plural resource name.
    pub fn plural(&self) -> &'static str {
        self.plural
    }
}

/// REST access to the cluster.
#[derive(Clone)]
pub struct Objects {
    client: Client,
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

fn from_value(v: Value) -> Result<DynamicObject, Error> {
    serde_json::from_value(v).map_err(Error::SerdeError)
}

/// Whether `e` is the server's 404.
pub fn not_found(e: &Error) -> bool {
    matches!(e, Error::Api(s) if s.code == 404)
}

impl Objects {
    /// Access through `client`.
    pub fn new(client: Client) -> Objects {
        Objects { client }
    }

    /// The API of `res` in `ns` (ignored for cluster-scoped resources).
    pub fn api(&self, res: Res, ns: &str) -> Api<DynamicObject> {
        let ar = res.api_resource();
        if res.namespaced && !ns.is_empty() {
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        }
    }

    /// The object, or `None` when the server says it does not exist.
    pub async fn get(&self, res: Res, ns: &str, name: &str) -> Result<Option<Value>, Error> {
        match self.api(res, ns).get(name).await {
            Ok(o) => Ok(Some(to_value(o))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object of `res` in the cluster.
    pub async fn list(&self, res: Res) -> Result<Vec<Value>, Error> {
        let list = self.api(res, "").list(&ListParams::default()).await?;
        Ok(list.items.into_iter().map(to_value).collect())
    }

    /// Creates `object` (its `apiVersion` and `kind` are filled in).
    pub async fn create(&self, res: Res, ns: &str, mut object: Value) -> Result<Value, Error> {
        object["apiVersion"] = res.api_version().into();
        object["kind"] = res.kind.into();
        let o = from_value(object)?;
        Ok(to_value(
            self.api(res, ns).create(&PostParams::default(), &o).await?,
        ))
    }

    /// Replaces the object (optimistically: a changed resourceVersion is a 409).
    pub async fn replace(
        &self,
        res: Res,
        ns: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, Error> {
        let o = from_value(object)?;
        Ok(to_value(
            self.api(res, ns)
                .replace(name, &PostParams::default(), &o)
                .await?,
        ))
    }

    /// Replaces the object's status through its `/status` subresource.
    pub async fn replace_status(
        &self,
        res: Res,
        ns: &str,
        name: &str,
        object: &Value,
    ) -> Result<Value, Error> {
        let o = from_value(object.clone())?;
        Ok(to_value(
            self.api(res, ns)
                .replace_status(name, &PostParams::default(), &o)
                .await?,
        ))
    }

    /// Deletes the object with no grace period (what a kubelet does once a pod's containers
    /// stopped); one already gone is not an error.
    pub async fn delete_now(&self, res: Res, ns: &str, name: &str) -> Result<(), Error> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match self.api(res, ns).delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object; one already gone is not an error.
    pub async fn delete(&self, res: Res, ns: &str, name: &str) -> Result<(), Error> {
        match self
            .api(res, ns)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
