//! A notes service guarded by Portcullis: every request is checked by
//! `portcullis_client::layer::CheckLayer` before a handler runs.
//!
//! With Portcullis serving and `examples/acme.yaml` applied:
//!
//! ```sh
//! cargo run --example guarded_notes -- --portcullis http://127.0.0.1:50051
//! curl -i -H 'x-user: carol' localhost:8080/notes/design.md   # 200
//! curl -i -H 'x-user: nobody' localhost:8080/notes/design.md  # 403
//! curl -i localhost:8080/notes/design.md                      # 401
//! ```
//!
//! `GET /notes/{id}` needs `documents:read` on `document:{id}`, `PUT`
//! needs `documents:write`, in tenant `acme/eng/platform`'s vault `docs`.
//! The subject is the `x-user` header: a stand-in for the identity a real
//! service takes from a verified token.

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::{Extension, Router};
use clap::Parser;
use portcullis_client::layer::{CheckLayer, Permission};
use portcullis_client::{Client, Config, Decision};

pub const TENANT: &str = "acme/eng/platform";
pub const VAULT: &str = "docs";

/// The permission a request asks for; `None` (refused as
/// unauthenticated) without a user.
pub fn permission(req: &http::Request<Body>) -> Option<Permission> {
    let user = req.headers().get("x-user")?.to_str().ok()?;
    let action = match *req.method() {
        http::Method::GET | http::Method::HEAD => "documents:read",
        _ => "documents:write",
    };
    let id = req.uri().path().strip_prefix("/notes/")?;
    Some(Permission::new(
        TENANT,
        VAULT,
        format!("user:{user}"),
        action,
        format!("document:{id}"),
    ))
}

/// The service: handlers only ever see allowed requests.
pub fn app(portcullis: Client) -> Router {
    Router::new()
        .route("/notes/{*id}", get(read).put(write))
        .layer(CheckLayer::new(portcullis, permission))
}

async fn read(Path(id): Path<String>, Extension(d): Extension<Decision>) -> String {
    format!("note {id} (allowed at {})\n", d.checked_at)
}

async fn write(Path(id): Path<String>) -> String {
    format!("saved {id}\n")
}

#[derive(Parser)]
struct Args {
    /// Where Portcullis serves gRPC.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    portcullis: String,
    /// An API key with the "check" scope (none for a loopback server
    /// without keys).
    #[arg(long, env = "PORTCULLIS_TOKEN")]
    token: Option<String>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Config::new(args.portcullis).optional_token(args.token).connect_lazy()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("notes on http://{}", listener.local_addr()?);
    axum::serve(listener, app(client)).await?;
    Ok(())
}
