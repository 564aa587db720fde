//! Who sent a DM: the user tables X ships alongside events, read into the contract's
//! [`Sender`].

use std::collections::HashMap;

use serde_json::Value;
use xbridge_core::contract::Sender;
use xbridge_x_api::UserId;

use crate::x::json::{self, Object};

/// A user table: profiles by user id, read leniently (a profile that cannot be read is
/// simply missing, since the message is still worth delivering without it).
#[derive(Debug, Default)]
pub(crate) struct Profiles(HashMap<String, Profile>);

#[derive(Debug, Clone, Default)]
struct Profile {
    username: Option<String>,
    name: Option<String>,
    avatar_url: Option<String>,
}

impl Profiles {
    /// The `users` map of a webhook body: `{"<id>": {screen_name, name,
    /// profile_image_url_https}}` (Account Activity) or `{"<id>": {"data": {username,
    /// name, profile_image_url}}}` (X Activity).
    pub(crate) fn from_map(users: Option<&Value>) -> Profiles {
        let mut profiles = HashMap::new();
        if let Some(Value::Object(users)) = users {
            for (id, user) in users {
                if let Some(profile) = Profile::read(user) {
                    profiles.insert(id.clone(), profile);
                }
            }
        }
        Profiles(profiles)
    }

    /// `includes.users` of a v2 lookup: `[{id, username, name, profile_image_url}]`.
    pub(crate) fn from_list(users: Option<&Value>) -> Profiles {
        let mut profiles = HashMap::new();
        if let Some(Value::Array(users)) = users {
            for user in users {
                let id = user
                    .as_object()
                    .and_then(|u| json::optional_id::<String>(u, "id"));
                if let (Some(id), Some(profile)) = (id, Profile::read(user)) {
                    profiles.insert(id, profile);
                }
            }
        }
        Profiles(profiles)
    }

    /// The sender `id`, with its profile when the table has it.
    pub(crate) fn sender(&self, id: UserId) -> Sender {
        let profile = self.0.get(id.as_str()).cloned().unwrap_or_default();
        Sender {
            id,
            username: profile.username,
            name: profile.name,
            avatar_url: profile.avatar_url,
        }
    }
}

impl Profile {
    fn read(user: &Value) -> Option<Profile> {
        let user: &Object = match user.get("data") {
            Some(Value::Object(data)) => data,
            _ => user.as_object()?,
        };
        Some(Profile {
            username: json::optional_str(user, "screen_name")
                .or_else(|| json::optional_str(user, "username")),
            name: json::optional_str(user, "name"),
            avatar_url: json::optional_str(user, "profile_image_url_https")
                .or_else(|| json::optional_str(user, "profile_image_url")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn all_three_user_table_shapes_give_the_same_sender() {
        let aaa = json!({"7":{"id":"7","screen_name":"jo","name":"Jo","profile_image_url":"http://a/x.jpg","profile_image_url_https":"https://a/x.jpg"}});
        let xaa = json!({"7":{"data":{"id":"7","username":"jo","name":"Jo","profile_image_url":"https://a/x.jpg"}}});
        let v2 =
            json!([{"id":"7","username":"jo","name":"Jo","profile_image_url":"https://a/x.jpg"}]);
        let expected = Sender {
            id: "7".into(),
            username: Some("jo".into()),
            name: Some("Jo".into()),
            avatar_url: Some("https://a/x.jpg".into()),
        };
        assert_eq!(Profiles::from_map(Some(&aaa)).sender("7".into()), expected);
        assert_eq!(Profiles::from_map(Some(&xaa)).sender("7".into()), expected);
        assert_eq!(Profiles::from_list(Some(&v2)).sender("7".into()), expected);
    }

    #[test]
    fn unknown_users_and_odd_tables_leave_the_profile_empty() {
        let odd = json!({"7":"not a user","8":{"name":5}});
        let profiles = Profiles::from_map(Some(&odd));
        for id in ["7", "8", "9"] {
            let sender = profiles.sender(id.into());
            assert_eq!(sender.id, id);
            assert_eq!(
                (sender.username, sender.name, sender.avatar_url),
                (None, None, None)
            );
        }
        assert!(Profiles::from_list(Some(&json!({"not":"a list"})))
            .sender("7".into())
            .name
            .is_none());
    }
}
