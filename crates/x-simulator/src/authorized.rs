//! [`Authorized`]: the extractor every signed X route takes, so a handler reads as only what
//! its endpoint does. It reads the body, checks the signature or token and runs the route's
//! [`Gate`] (revoked tokens, rate limit, faults); a refusal is answered before the handler runs.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::accounts::Account;
use crate::auth::SignedRequest;
use crate::gate::{self, Admitted, Gate};
use crate::reply::Reply;
use crate::state::SimState;

/// A route's choice of [`Gate`], as a type so the extractor knows it.
pub(crate) trait Route: Send + 'static {
    const GATE: Gate;
}

/// Declares a zero-sized [`Route`] type per gate.
macro_rules! routes {
    ($($(#[$doc:meta])* $name:ident => $gate:ident;)*) => {$(
        $(#[$doc])*
        pub(crate) struct $name;
        impl Route for $name {
            const GATE: Gate = gate::$gate;
        }
    )*};
}

routes! {
    /// The two DM send routes.
    DmSend => DM_SEND;
    /// `GET /2/dm_events`.
    DmRead => DM_READ;
    /// The media upload routes.
    MediaUpload => MEDIA_UPLOAD;
    /// `GET /2/users/me`.
    UsersMe => USERS_ME;
    /// `GET /2/users/:id`.
    UserLookup => USER_LOOKUP;
    /// Webhook management and the App-token subscription routes.
    Webhooks => WEBHOOKS;
    /// The subscription routes taking the subscribing account's user token.
    Subscription => SUBSCRIPTION;
    /// The X Activity API subscription routes: a user or the App's token.
    Activity => ACTIVITY;
    /// The TON media URL.
    MediaDownload => MEDIA_DOWNLOAD;
}

/// A request body as a route reads it, and the part of it an OAuth 1.0a signature covers.
pub(crate) trait SignedBody: Sized + Send {
    /// Reads the whole body; `Err` is answered as is, before any check.
    fn read(request: Request) -> impl Future<Output = Result<Self, Response>> + Send;
    /// The bytes whose form parameters the signature covers.
    fn signed(&self) -> &[u8];
}

impl SignedBody for Bytes {
    async fn read(request: Request) -> Result<Self, Response> {
        Bytes::from_request(request, &())
            .await
            .map_err(IntoResponse::into_response)
    }

    fn signed(&self) -> &[u8] {
        self
    }
}

/// A request that passed route `R`'s gate.
pub(crate) struct Authorized<R, B = Bytes> {
    pub state: Arc<SimState>,
    pub account: Account,
    /// The time the checks ran at, for whatever the route records.
    pub now: DateTime<Utc>,
    /// 200 with the account's headers and latency; the route answers through it.
    pub reply: Reply,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: B,
    route: PhantomData<R>,
}

impl<R: Route, B: SignedBody> FromRequest<Arc<SimState>> for Authorized<R, B> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<SimState>) -> Result<Self, Response> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let headers = request.headers().clone();
        let body = B::read(request).await?;
        let now = state.now();
        let signed = SignedRequest {
            method: &method,
            uri: &uri,
            headers: &headers,
            body: body.signed(),
        };
        let admitted = {
            let mut inner = state.lock();
            gate::admit(state, &mut inner, &signed, now, &R::GATE)
        };
        let Admitted { account, reply } = admitted.map_err(IntoResponse::into_response)?;
        Ok(Authorized {
            state: Arc::clone(state),
            account,
            now,
            reply,
            uri,
            headers,
            body,
            route: PhantomData,
        })
    }
}
