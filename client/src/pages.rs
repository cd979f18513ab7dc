//! Reading every page of a list.

use std::future::Future;

use futures::{Stream, TryStreamExt};

use crate::check::Consistency;
use crate::{Client, Error, pb};

/// Every page of one list RPC, concatenated.
macro_rules! list_all {
    ($($(#[$doc:meta])* $all:ident: $call:ident($req:ty) -> $items:ident: $item:ty;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $all(&self, mut request: $req) -> Result<Vec<$item>, Error> {
                    let mut out = Vec::new();
                    loop {
                        let page = self.$call(request.clone()).await?;
                        out.extend(page.$items);
                        if page.next_page_token.is_empty() {
                            return Ok(out);
                        }
                        request.page_token = page.next_page_token;
                    }
                }
            )*
        }
    };
}

list_all! {
    /// Every tenant the request selects, all pages.
    list_all_tenants: list_tenants(pb::ListTenantsRequest) -> tenants: pb::Tenant;
    /// Every vault of a tenant, all pages.
    list_all_vaults: list_vaults(pb::ListVaultsRequest) -> vaults: pb::Vault;
    /// Every role the request selects, all pages.
    list_all_roles: list_roles(pb::ListRolesRequest) -> roles: pb::Role;
    /// Every binding the request selects, all pages.
    list_all_bindings: list_bindings(pb::ListBindingsRequest) -> bindings: pb::Binding;
    /// Every membership the request selects, all pages.
    list_all_memberships: list_memberships(pb::ListMembershipsRequest) -> memberships: pb::Membership;
}

/// A paged lookup being built: [`Pages::stream`] reads every page, one
/// at a time, as the caller consumes the items.
#[must_use = "a lookup does nothing until streamed"]
pub struct Pages<'a, R> {
    client: &'a Client,
    request: R,
    consistency: Consistency,
}

impl<'a, R> Pages<'a, R> {
    pub fn consistency(mut self, c: Consistency) -> Self {
        self.consistency = c;
        self
    }
}

/// A request one page of a paged lookup answers.
pub trait PagedRequest: Clone + Send + Sync + 'static {
    type Item: Send + 'static;
    #[doc(hidden)]
    fn tenant(&self) -> &str;
    #[doc(hidden)]
    fn set_page_size(&mut self, n: u32);
    #[doc(hidden)]
    fn set(&mut self, consistency: Option<pb::Consistency>, page_token: String);
    #[doc(hidden)]
    fn page(client: &Client, request: Self) -> impl Future<Output = Result<(Vec<Self::Item>, String), Error>> + Send;
}

/// One page of `$rpc` answers `$items`.
macro_rules! paged {
    ($($req:ty => $rpc:ident -> $item:ty, $items:ident;)*) => {
        $(impl PagedRequest for $req {
            type Item = $item;
            fn tenant(&self) -> &str {
                &self.tenant
            }
            fn set_page_size(&mut self, n: u32) {
                self.page_size = n;
            }
            fn set(&mut self, consistency: Option<pb::Consistency>, page_token: String) {
                self.consistency = consistency;
                self.page_token = page_token;
            }
            async fn page(client: &Client, request: Self) -> Result<(Vec<Self::Item>, String), Error> {
                let r = client
                    .permission_call(&request, None, |mut c, r| async move { c.$rpc(r).await })
                    .await?;
                Ok((r.$items, r.next_page_token))
            }
        })*
    };
}

paged! {
    pb::LookupSubjectsRequest => lookup_subjects -> pb::LookedUpSubject, subjects;
    pb::GetEffectivePermissionsRequest => get_effective_permissions -> pb::EffectiveStatement, statements;
}

impl<'a, R: PagedRequest> Pages<'a, R> {
    /// Items per page (the server caps it; 0 is the server's default).
    pub fn page_size(mut self, n: u32) -> Self {
        self.request.set_page_size(n);
        self
    }

    /// Every item of every page; the stream ends after the last page, or
    /// with the first error.
    pub fn stream(self) -> impl Stream<Item = Result<R::Item, Error>> + Send + 'a {
        let Pages {
            client,
            request,
            consistency,
        } = self;
        let consistency = consistency.to_pb(consistency.floor(client, request.tenant()));
        // The state is the next page's token, None after the last page.
        let pages = futures::stream::try_unfold(Some(String::new()), move |token| {
            let mut request = request.clone();
            request.set(consistency.clone(), token.clone().unwrap_or_default());
            async move {
                if token.is_none() {
                    return Ok::<_, Error>(None);
                }
                let (items, next) = R::page(client, request).await?;
                let next = (!next.is_empty()).then_some(next);
                Ok(Some((futures::stream::iter(items.into_iter().map(Ok)), next)))
            }
        });
        pages.try_flatten()
    }
}

impl Client {
    /// Who may do `action` on `resource`, every page: groups are listed and
    /// expanded to their members, sorted by subject.
    ///
    /// ```no_run
    /// # async fn run(client: portcullis_client::Client) -> Result<(), portcullis_client::Error> {
    /// use futures::TryStreamExt;
    /// let who: Vec<_> = client
    ///     .lookup_subjects("acme", "docs", "documents:read", "document:design.md")
    ///     .stream()
    ///     .try_collect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn lookup_subjects(
        &self,
        tenant: impl Into<String>,
        vault: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Pages<'_, pb::LookupSubjectsRequest> {
        Pages {
            client: self,
            request: pb::LookupSubjectsRequest {
                tenant: tenant.into(),
                vault: vault.into(),
                action: action.into(),
                resource: resource.into(),
                ..Default::default()
            },
            consistency: self.consistency.clone(),
        }
    }

    /// Every statement that reaches `subject` in `tenant`'s `vault`, with its
    /// provenance, every page.
    pub fn effective_permissions(
        &self,
        tenant: impl Into<String>,
        vault: impl Into<String>,
        subject: impl Into<String>,
    ) -> Pages<'_, pb::GetEffectivePermissionsRequest> {
        Pages {
            client: self,
            request: pb::GetEffectivePermissionsRequest {
                tenant: tenant.into(),
                vault: vault.into(),
                subject: subject.into(),
                ..Default::default()
            },
            consistency: self.consistency.clone(),
        }
    }

    /// The committed changes of `tenant` (its own objects and all its
    /// vaults, or one vault) after `after_revision` (empty: from now), as a
    /// stream. Not retried: a broken stream ends with its error, and the
    /// last `revision` seen is where to resume.
    pub async fn watch_changes(
        &self,
        tenant: impl Into<String>,
        vault: impl Into<String>,
        after_revision: impl Into<String>,
    ) -> Result<Changes, Error> {
        let s = self
            .watch
            .clone()
            .watch(pb::WatchRequest {
                tenant: tenant.into(),
                vault: vault.into(),
                after_revision: after_revision.into(),
            })
            .await?
            .into_inner();
        Ok(s.map_err(Error::from as fn(tonic::Status) -> Error))
    }
}

/// The stream [`Client::watch_changes`] answers.
pub type Changes = futures::stream::MapErr<tonic::Streaming<pb::WatchResponse>, fn(tonic::Status) -> Error>;
