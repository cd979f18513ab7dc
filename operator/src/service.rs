//! The Portcullis AdminService as the operator uses it: an authenticated,
//! lazily connected client, and the classification of its errors into the
//! condition reasons users see.

use std::time::Duration;

use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_proto::v1::diagnostics_service_client::DiagnosticsServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;
pub type Diagnostics = DiagnosticsServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
pub struct Service {
    pub admin: Admin,
    pub diagnostics: Diagnostics,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Portcullis endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("the API key must be printable ASCII")]
    Token,
}

impl Service {
    /// Connects lazily: the operator starts (and reports ServiceUnavailable)
    /// while the service is down.
    pub fn connect_lazy(endpoint: &str, token: Option<&str>) -> Result<Service, ConnectError> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| ConnectError::Endpoint(endpoint.into(), e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        let bearer = Bearer(match token {
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| ConnectError::Token)?,
            ),
            None => None,
        });
        Ok(Service {
            admin: AdminServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            diagnostics: DiagnosticsServiceClient::with_interceptor(channel, bearer),
        })
    }
}

/// Whether a failed call means the service could not be reached (retry
/// with backoff) rather than that it refused the request.
pub fn unreachable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted
    )
}
