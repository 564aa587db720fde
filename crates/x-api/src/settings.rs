//! The client's inputs from xbridge's configuration: every part of the bridge
//! that talks to X (both directions, `xbridge check`, `xbridge webhook`)
//! builds its clients the same way.

use xbridge_core::config::{ChannelSettings, XSettings};

use crate::{UserCredentials, XClientConfig};

impl From<&XSettings> for XClientConfig {
    fn from(x: &XSettings) -> XClientConfig {
        XClientConfig {
            base_url: x.api_base_url.clone(),
            request_timeout: x.request_timeout,
            ..XClientConfig::default()
        }
    }
}

impl From<&ChannelSettings> for UserCredentials {
    fn from(channel: &ChannelSettings) -> UserCredentials {
        UserCredentials {
            consumer_key: channel.consumer_key.clone(),
            consumer_secret: channel.consumer_secret.clone(),
            access_token: channel.access_token.clone(),
            access_token_secret: channel.access_token_secret.clone(),
        }
    }
}
