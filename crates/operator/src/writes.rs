//! How the operator writes its objects: with strict field validation, so a field the server
//! does not know (a misspelling, a field of a newer KubeVirt) is a 400 naming it instead of
//! being dropped with a warning (a real server's default). kube's `PostParams` has no
//! `fieldValidation`, so creates add it to the request themselves.

use kube::api::{DynamicObject, PatchParams};
use kube::core::ApiResource;
use kube::{Client, Resource};

/// Patch parameters of every operator patch.
pub fn strict() -> PatchParams {
    PatchParams::default().validation_strict()
}

/// Creates `obj` (of resource `ar`) in namespace `ns`, strictly validated.
pub async fn create(
    client: &Client,
    ar: &ApiResource,
    ns: &str,
    obj: &DynamicObject,
) -> Result<DynamicObject, kube::Error> {
    let body = serde_json::to_vec(obj).map_err(kube::Error::SerdeError)?;
    let uri = with_strict(&format!("{}?", DynamicObject::url_path(ar, Some(ns))));
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
    client.request(req).await
}

/// `uri` with `fieldValidation=Strict` among its query parameters.
fn with_strict(uri: &str) -> String {
    let sep = match uri.split_once('?') {
        None => "?",
        Some((_, "")) => "",
        Some(_) => "&",
    };
    format!("{uri}{sep}fieldValidation=Strict")
}

#[cfg(test)]
mod tests {
    use super::with_strict;

    #[test]
    fn the_parameter_joins_whatever_query_there_is() {
        assert_eq!(with_strict("/a/b"), "/a/b?fieldValidation=Strict");
        assert_eq!(with_strict("/a/b?"), "/a/b?fieldValidation=Strict");
        assert_eq!(
            with_strict("/a/b?dryRun=All"),
            "/a/b?dryRun=All&fieldValidation=Strict"
        );
    }
}
