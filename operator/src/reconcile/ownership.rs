//! Which resource owns a Portcullis object.
//!
//! Every object the operator writes is labelled with the resource that
//! owns it (kind, namespace, name, uid). A second resource claiming an
//! object whose owner still exists gets `Ready=False`, reason `Conflict`;
//! an object whose owner is gone (or that carries no owner) is adopted. On
//! deletion only an owned object is deleted.

use std::collections::HashMap;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use portcullis::engine::model::Labels;

use super::outcome::publish_deleted;
use super::{Ctx, Error, Kind};
use crate::crd::{Role, Tenant, Vault};

pub const OWNER_KIND: &str = "portcullis.dev/owner-kind";
pub const OWNER_NAMESPACE: &str = "portcullis.dev/owner-namespace";
pub const OWNER_NAME: &str = "portcullis.dev/owner-name";
pub const OWNER_UID: &str = "portcullis.dev/owner-uid";
pub const MANAGED_BY: &str = "portcullis.dev/managed-by";

/// The labels of an object `obj` owns.
pub fn owner_labels<K: Kind>(obj: &K) -> Labels {
    let mut l = Labels::new();
    l.insert(OWNER_KIND.into(), K::KIND.into());
    l.insert(OWNER_NAMESPACE.into(), obj.namespace().unwrap_or_default());
    l.insert(OWNER_NAME.into(), obj.name_any());
    l.insert(OWNER_UID.into(), obj.uid().unwrap_or_default());
    l.insert(MANAGED_BY.into(), "portcullis-operator".into());
    l
}

/// The owner the labels name, unless it is `me`: (kind, namespace, name).
pub fn other_owner<'a, K: Kind>(me: &K, labels: &'a HashMap<String, String>) -> Option<(&'a str, &'a str, &'a str)> {
    let uid = labels.get(OWNER_UID)?;
    if Some(uid.as_str()) == me.uid().as_deref() {
        return None;
    }
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
    Some((get(OWNER_KIND), get(OWNER_NAMESPACE), get(OWNER_NAME)))
}

/// Whether the service object with `labels` belongs to another live
/// resource; returns that resource's description.
pub async fn claimed_by_other<K: Kind>(
    ctx: &Ctx,
    me: &K,
    labels: &HashMap<String, String>,
) -> Result<Option<String>, Error> {
    let Some((kind, ns, name)) = other_owner(me, labels) else {
        return Ok(None);
    };
    let live_uid = match kind {
        "Tenant" => Api::<Tenant>::all(ctx.client.clone())
            .get_opt(name)
            .await?
            .and_then(|o| o.uid()),
        "Vault" => Api::<Vault>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?
            .and_then(|o| o.uid()),
        "Role" => Api::<Role>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?
            .and_then(|o| o.uid()),
        _ => None,
    };
    Ok((live_uid.as_deref() == labels.get(OWNER_UID).map(String::as_str)).then(|| format!("{kind} {ns}/{name}")))
}

/// On a resource's deletion, deletes its Portcullis object if the resource
/// owns it (an object another live resource owns is left alone), then
/// records the deletion. `labels` is the object's, `None` when it is gone.
pub async fn delete_if_owned<K: Kind, F: std::future::Future<Output = Result<(), portcullis_client::Error>>>(
    ctx: &Ctx,
    obj: &K,
    what: String,
    labels: Result<Option<HashMap<String, String>>, portcullis_client::Error>,
    delete: impl FnOnce() -> F,
) -> Result<Action, Error> {
    let owned = match labels {
        Ok(Some(l)) => claimed_by_other(ctx, obj, &l).await?.is_none(),
        Ok(None) => false,
        // A name the service cannot even hold was never written.
        Err(e) if e.code() == tonic::Code::InvalidArgument => false,
        Err(e) => return Err(Error::Waiting(format!("cannot delete {what}: {}", e.message()))),
    };
    if owned {
        match delete().await {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(Error::Waiting(format!("cannot delete {what}: {}", e.message()))),
        }
    }
    publish_deleted(ctx, obj, format!("{what} deleted from Portcullis")).await;
    Ok(Action::await_change())
}
