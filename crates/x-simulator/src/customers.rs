//! The X users who write to the company's accounts. They have no credentials: they only exist so
//! their DMs can be injected ([`crate::Simulator::customer_dm`]) and looked up
//! (`GET /2/users/:id`, `expansions=sender_id`, the `users` of webhook payloads).

use rand::distr::{Alphanumeric, SampleString as _};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::accounts::{Account, AccountRegistry};

/// X's default avatar, which accounts (which have no avatar field) are shown with.
pub(crate) const DEFAULT_PROFILE_IMAGE_URL: &str =
    "https://abs.twimg.com/sticky/default_profile_images/default_profile_normal.png";

/// A customer: an X user who DMs one of the company's accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// X's numeric user id, as a string.
    pub user_id: String,
    /// The @handle (`username` in v2, `screen_name` in webhook payloads).
    pub username: String,
    /// The display name.
    pub name: String,
    /// The avatar (`profile_image_url` in v2, `profile_image_url_https` in webhook payloads).
    pub profile_image_url: String,
}

impl Customer {
    /// A customer with a random 18 or 19-digit user id, a display name derived from the handle and
    /// an avatar URL shaped like X's.
    pub fn generate(username: &str) -> Customer {
        let mut rng = rand::rng();
        let user_id = rng
            .random_range(100_000_000_000_000_000u64..10_000_000_000_000_000_000u64)
            .to_string();
        let image_id: u64 = rng.random_range(1_000_000_000_000_000_000..u64::MAX);
        let image_name = Alphanumeric.sample_string(&mut rng, 8);
        Customer {
            profile_image_url: format!(
                "https://pbs.twimg.com/profile_images/{image_id}/{image_name}_normal.jpg"
            ),
            name: display_name(username),
            username: username.to_string(),
            user_id,
        }
    }
}

/// `jane_doe` → `Jane Doe`.
fn display_name(username: &str) -> String {
    username
        .split(['_', '.', '-'])
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The customers the simulator has seen, by user id.
#[derive(Debug, Default)]
pub(crate) struct CustomerRegistry {
    customers: Vec<Customer>,
}

impl CustomerRegistry {
    /// Remembers a customer, replacing an earlier one with the same id (they renamed themselves).
    pub(crate) fn upsert(&mut self, customer: Customer) {
        self.customers
            .retain(|known| known.user_id != customer.user_id);
        self.customers.push(customer);
    }

    pub(crate) fn by_user_id(&self, user_id: &str) -> Option<&Customer> {
        self.customers.iter().find(|c| c.user_id == user_id)
    }

    pub(crate) fn all(&self) -> Vec<Customer> {
        self.customers.clone()
    }
}

/// Any X user the simulator can describe: one of its accounts or a customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserView {
    pub id: String,
    pub name: String,
    pub username: String,
    pub profile_image_url: String,
}

impl From<&Account> for UserView {
    fn from(account: &Account) -> Self {
        UserView {
            id: account.user_id.clone(),
            name: account.name.clone(),
            username: account.username.clone(),
            profile_image_url: DEFAULT_PROFILE_IMAGE_URL.to_string(),
        }
    }
}

impl From<&Customer> for UserView {
    fn from(customer: &Customer) -> Self {
        UserView {
            id: customer.user_id.clone(),
            name: customer.name.clone(),
            username: customer.username.clone(),
            profile_image_url: customer.profile_image_url.clone(),
        }
    }
}

/// The user with that id, account first (an account id is never a customer's).
pub(crate) fn find_user(
    accounts: &AccountRegistry,
    customers: &CustomerRegistry,
    user_id: &str,
) -> Option<UserView> {
    accounts
        .by_user_id(user_id)
        .map(UserView::from)
        .or_else(|| customers.by_user_id(user_id).map(UserView::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_customers_look_like_x_users() {
        let customer = Customer::generate("jane_doe");
        assert!(matches!(customer.user_id.len(), 18 | 19));
        assert_eq!(customer.name, "Jane Doe");
        assert_eq!(customer.username, "jane_doe");
        assert!(customer
            .profile_image_url
            .starts_with("https://pbs.twimg.com/profile_images/"));
        assert_ne!(Customer::generate("a").user_id, customer.user_id);
    }
}
