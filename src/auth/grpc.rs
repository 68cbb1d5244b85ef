//! The tower service in front of `caskade.v1.Kv` (client and admin
//! methods; the node-to-node `Replication` service is not behind it, mTLS
//! guards that one): every request's `authorization` metadata is checked
//! before the method runs.
//!
//! Invariants:
//! - failed logins count against the peer's address, and a locked address
//!   is refused `UNAUTHENTICATED` ("too many failed authentication
//!   attempts, retry in Ns") before its credentials are checked
//!   ([`super::limiter`]);
//! - no or unverifiable credentials: `UNAUTHENTICATED`; a user without the
//!   method's permission ([`super::permissions::grpc`]):
//!   `PERMISSION_DENIED`; both before the request body is decoded and
//!   before the method runs, with `caskade-reason` set;
//! - every refusal is reported to the `on_refusal` hook, if set, with the
//!   method's name (the server counts it in the method's request figures,
//!   src/server/metrics.rs);
//! - the method runs inside [`super::with_caller`], so a request it
//!   forwards carries the same credentials;
//! - with authentication off the inner service is called as is.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower_service::Service;

use super::{AuthError, Authenticator};

/// Told of each refused request: the method's name, why, and how long
/// the check took (a password hash when the credentials were not cached).
pub type OnRefusal = Arc<dyn Fn(&str, &AuthError, std::time::Duration) + Send + Sync>;

/// `S` behind the credential check.
#[derive(Clone)]
pub struct Guarded<S> {
    /// The service.
    inner: S,
    /// `None` when authentication is off.
    auth: Option<Arc<Authenticator>>,
    /// Told of every refusal.
    on_refusal: Option<OnRefusal>,
}

impl<S> Guarded<S> {
    /// `inner` checked by `auth` (`None`: not checked).
    pub fn new(inner: S, auth: Option<Arc<Authenticator>>) -> Self {
        Guarded {
            inner,
            auth,
            on_refusal: None,
        }
    }

    /// Calls `hook` for every refused request.
    pub fn on_refusal(mut self, hook: OnRefusal) -> Self {
        self.on_refusal = Some(hook);
        self
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Guarded<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(auth) = self.auth.clone() else {
            return Box::pin(self.inner.call(req));
        };
        // The service that was polled ready serves this request.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let on_refusal = self.on_refusal.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let method = req.uri().path().rsplit('/').next().unwrap_or("");
            let need = super::permissions::grpc(method);
            let header = req.headers().get(http::header::AUTHORIZATION);
            // Inserted by `server::limits::RequestLayer` (plain and TLS).
            let peer = req
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .map(|a| a.ip());
            let checked = match header {
                None => Err(AuthError::Missing),
                Some(h) => match auth.verify_basic(peer, h.as_bytes()).await {
                    Ok(p) => p
                        .check(need, method)
                        .map(|()| h.to_str().ok().map(Arc::from)),
                    Err(e) => Err(e),
                },
            };
            match checked {
                Ok(caller) => super::with_caller(caller, inner.call(req)).await,
                Err(e) => {
                    tracing::debug!(method, "request refused: {e}");
                    if let Some(hook) = &on_refusal {
                        hook(method, &e, started.elapsed());
                    }
                    Ok(e.to_status().into_http())
                }
            }
        })
    }
}
