//! A stand-in for the bridge's webhook endpoint: answers CRC checks keyed with a chosen secret,
//! checks each POST's signature as the bridge will (401 if it does not verify), answers the
//! statuses a test queues, and hands every POST to the test.
//!
//! The HMACs here are computed with the `hmac` and `sha2` crates directly, not with the
//! simulator's code, so a signing mistake there cannot cancel out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::promptly;

/// `base64(HMAC-SHA256(secret, message))`.
pub(super) fn hmac_sha256(secret: &str, message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// One POST the receiver got.
#[derive(Debug)]
pub(super) struct Received {
    pub body: String,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    /// What the receiver answered.
    pub answered: u16,
}

impl Received {
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

struct Control {
    crc_secret: String,
    signing_secret: String,
    statuses: VecDeque<u16>,
    crc_tokens: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    control: Arc<Mutex<Control>>,
    posts: mpsc::UnboundedSender<Received>,
}

pub(super) struct Receiver {
    /// The URL to register, e.g. `http://127.0.0.1:41234/webhooks/x`.
    pub url: String,
    control: Arc<Mutex<Control>>,
    posts: mpsc::UnboundedReceiver<Received>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// Listens on a free loopback port; CRCs and signatures are keyed with `secret`.
    pub(super) async fn start(secret: &str) -> Receiver {
        let control = Arc::new(Mutex::new(Control {
            crc_secret: secret.to_string(),
            signing_secret: secret.to_string(),
            statuses: VecDeque::new(),
            crc_tokens: Vec::new(),
        }));
        let (sender, posts) = mpsc::unbounded_channel();
        let shared = Shared {
            control: control.clone(),
            posts: sender,
        };
        let app = Router::new()
            .route("/webhooks/x", get(crc).post(event))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/x", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
                .unwrap();
        });
        Receiver {
            url,
            control,
            posts,
            stop,
        }
    }

    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap()
    }

    /// From now on, answer CRCs keyed with this (perhaps wrong) secret.
    pub(super) fn answer_crc_with(&self, secret: &str) {
        self.control().crc_secret = secret.to_string();
    }

    /// Answer the next POSTs with these statuses (a correctly signed POST gets 200 after them).
    pub(super) fn answer_posts_with(&self, statuses: &[u16]) {
        self.control().statuses.extend(statuses);
    }

    /// The `crc_token`s received so far.
    pub(super) fn crc_tokens(&self) -> Vec<String> {
        self.control().crc_tokens.clone()
    }

    /// The next POST; fails the test if none comes promptly.
    pub(super) async fn next_post(&mut self) -> Received {
        promptly(self.posts.recv())
            .await
            .expect("the receiver runs")
    }
}

async fn crc(
    State(shared): State<Shared>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(token) = query.get("crc_token") else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut control = shared.control.lock().unwrap();
    control.crc_tokens.push(token.clone());
    let response_token = format!(
        "sha256={}",
        hmac_sha256(&control.crc_secret, token.as_bytes())
    );
    Json(serde_json::json!({ "response_token": response_token })).into_response()
}

async fn event(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signature = header("x-twitter-webhooks-signature");
    let answered = {
        let mut control = shared.control.lock().unwrap();
        let expected = format!("sha256={}", hmac_sha256(&control.signing_secret, &body));
        if signature.as_deref() != Some(expected.as_str()) {
            401
        } else {
            control.statuses.pop_front().unwrap_or(200)
        }
    };
    let _ = shared.posts.send(Received {
        body: String::from_utf8(body.to_vec()).unwrap(),
        signature,
        content_type: header("content-type"),
        answered,
    });
    StatusCode::from_u16(answered).unwrap().into_response()
}
