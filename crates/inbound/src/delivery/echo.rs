//! Telling a customer's DM from the company's own.
//!
//! X delivers every DM of a subscribed account's conversations, including the ones the
//! account sent, and among those the replies the bridge itself sent through the API.
//! Publishing those back to the CRM as customer messages would make the CRM answer its
//! own replies.

use xbridge_core::contract::DirectMessage;
use xbridge_x_api::{DmEventId, UserId};

/// Where a DM came from, as far as the channel is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageOrigin {
    /// Someone else wrote to the channel's account: publish `message.received`.
    Received,
    /// The bridge sent it (a CRM reply coming back): drop it, the CRM already has it
    /// and got `message.sent` for it.
    OwnSendEcho,
    /// The channel's account sent it, but not through the bridge (someone answered in
    /// X's own app): publish `message.echo` if the channel wants echoes, so the CRM sees
    /// the whole conversation.
    CompanyEcho,
}

/// Classifies `message` for the channel whose X user id is `own_user_id` (the
/// webhook's `for_user_id`).
///
/// `sent_by_bridge` answers whether a DM event id is one the bridge sent (backed by the
/// state store's record of sent replies). It is asked only about the account's own DMs.
/// A caller that also trusts `source_app_id` can fold it in:
/// `&|id| store.sent(id) || message.source_app_id.as_deref() == Some(app_id)`, which
/// also covers a reply whose record was not written yet when its echo arrived.
pub fn classify(
    message: &DirectMessage,
    own_user_id: &UserId,
    sent_by_bridge: &dyn Fn(&DmEventId) -> bool,
) -> MessageOrigin {
    if message.sender.id != *own_user_id {
        MessageOrigin::Received
    } else if sent_by_bridge(&message.event_id) {
        MessageOrigin::OwnSendEcho
    } else {
        MessageOrigin::CompanyEcho
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use chrono::DateTime;

    use super::*;
    use xbridge_core::contract::{ReceivedVia, Sender};

    const OWN: &str = "4337869213";
    const CUSTOMER: &str = "3001969357";

    fn dm(event_id: &str, sender: &str, recipient: &str) -> DirectMessage {
        DirectMessage {
            event_id: event_id.into(),
            conversation_id: format!("{CUSTOMER}-{OWN}").into(),
            sender: Sender {
                id: sender.into(),
                username: None,
                name: None,
                avatar_url: None,
            },
            recipient_id: recipient.into(),
            text: "Hi".into(),
            attachments: vec![],
            created_at: DateTime::from_timestamp_millis(1516403560557).unwrap(),
            received_via: ReceivedVia::Webhook,
            source_app_id: None,
        }
    }

    #[test]
    fn a_customers_dm_is_received_without_asking_the_store() {
        let asked = RefCell::new(Vec::new());
        let sent_by_bridge = |id: &DmEventId| {
            asked.borrow_mut().push(id.to_owned());
            true
        };
        assert_eq!(
            classify(&dm("1", CUSTOMER, OWN), &OWN.into(), &sent_by_bridge),
            MessageOrigin::Received
        );
        assert!(asked.borrow().is_empty());
    }

    #[test]
    fn the_bridges_own_reply_is_dropped() {
        let sent = ["954491830116155396"];
        let sent_by_bridge = |id: &DmEventId| sent.contains(&id.as_str());
        assert_eq!(
            classify(
                &dm("954491830116155396", OWN, CUSTOMER),
                &OWN.into(),
                &sent_by_bridge
            ),
            MessageOrigin::OwnSendEcho
        );
    }

    #[test]
    fn a_dm_the_company_sent_elsewhere_is_an_echo() {
        let sent = ["954491830116155396"];
        let sent_by_bridge = |id: &DmEventId| sent.contains(&id.as_str());
        assert_eq!(
            classify(
                &dm("954491830116155397", OWN, CUSTOMER),
                &OWN.into(),
                &sent_by_bridge
            ),
            MessageOrigin::CompanyEcho
        );
    }

    #[test]
    fn the_same_dm_is_received_by_one_channel_and_an_echo_for_the_other() {
        // Two configured accounts writing to each other: each gets the event.
        let other_channel = "906948460078698496";
        let message = dm("1", OWN, other_channel);
        let never = |_: &DmEventId| false;
        assert_eq!(
            classify(&message, &other_channel.into(), &never),
            MessageOrigin::Received
        );
        assert_eq!(
            classify(&message, &OWN.into(), &never),
            MessageOrigin::CompanyEcho
        );
    }

    #[test]
    fn source_app_id_can_be_folded_into_the_predicate() {
        let mut message = dm("2", OWN, CUSTOMER);
        message.source_app_id = Some("13090192".into());
        let store_knows = |_: &DmEventId| false;
        let sent_by_bridge = |id: &DmEventId| {
            store_knows(id) || message.source_app_id.as_deref() == Some("13090192")
        };
        assert_eq!(
            classify(&message, &OWN.into(), &sent_by_bridge),
            MessageOrigin::OwnSendEcho
        );
    }
}
