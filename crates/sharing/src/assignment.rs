//! Which replica serves which channel: a pure function of the live replicas
//! and the channels, so every replica that reads the same rows computes the
//! same answer without talking to the others.
//!
//! Rendezvous hashing with exact loads: each replica may take
//! `channels / replicas` channels, rounded down or (for as many replicas as
//! the division leaves over, chosen by a hash of their ids) up, and each
//! channel ranks the replicas by a hash of (channel, replica) and goes to
//! the first one in its ranking with room left. Polled channels are placed
//! first, with rooms of their own counted the same way, so the polls (X's
//! read budget, a lease each) spread as evenly as the reply consumers: no
//! replica serves more than one channel (or polled channel) more than
//! another. A replica joining or leaving moves few channels: most keep their
//! first choice. The hash is FNV-1a with a final mix, written out here so
//! that replicas of different builds agree (std's hasher may change between
//! Rust versions).

use std::collections::BTreeMap;

/// One channel to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel<'a> {
    /// Its name.
    pub name: &'a str,
    /// Whether it polls X (its lease goes with it).
    pub polled: bool,
}

/// Each channel's replica, by channel name; empty without replicas.
/// `replicas` need not be sorted or unique.
pub fn assign<'a>(replicas: &[String], channels: &[Channel<'a>]) -> BTreeMap<&'a str, String> {
    let mut replicas: Vec<&str> = replicas.iter().map(String::as_str).collect();
    replicas.sort_unstable();
    replicas.dedup();
    let mut placed = BTreeMap::new();
    if replicas.is_empty() {
        return placed;
    }
    let mut sorted: Vec<&Channel<'a>> = channels.iter().collect();
    sorted.sort_by_key(|c| (c.name, c.polled));
    sorted.dedup_by(|a, b| a.name == b.name);
    sorted.sort_by_key(|c| (!c.polled, c.name));
    let polled = sorted.iter().filter(|c| c.polled).count();
    let mut room = rooms(sorted.len(), &replicas);
    let mut polled_room = rooms(polled, &replicas);
    for channel in sorted {
        let mut ranking: Vec<usize> = (0..replicas.len()).collect();
        ranking.sort_by_key(|&r| std::cmp::Reverse((score(channel.name, replicas[r]), r)));
        // There is always room: the rooms add up to the channels, the polled
        // ones (placed first) likewise, and a replica given a polled room
        // rounded up is given a room rounded up too.
        let chosen = ranking
            .iter()
            .copied()
            .find(|&r| room[r] > 0 && (!channel.polled || polled_room[r] > 0))
            .unwrap_or(ranking[0]);
        room[chosen] = room[chosen].saturating_sub(1);
        if channel.polled {
            polled_room[chosen] = polled_room[chosen].saturating_sub(1);
        }
        placed.insert(channel.name, replicas[chosen].to_owned());
    }
    placed
}

/// How many of `count` channels each of `replicas` (sorted) takes: the
/// quotient, and one more for the first `count % replicas` in the order of
/// their own hash, the same for every count, so a replica that takes one
/// more polled channel also takes one more channel.
fn rooms(count: usize, replicas: &[&str]) -> Vec<usize> {
    let n = replicas.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&r| (score("", replicas[r]), r));
    let mut rooms = vec![count / n; n];
    for &r in order.iter().take(count % n) {
        rooms[r] += 1;
    }
    rooms
}

/// The channels `replica` serves under [`assign`].
pub fn share_of<'a>(replica: &str, replicas: &[String], channels: &[Channel<'a>]) -> Vec<&'a str> {
    assign(replicas, channels)
        .into_iter()
        .filter(|(_, r)| r == replica)
        .map(|(c, _)| c)
        .collect()
}

/// The rendezvous score of `replica` for `channel`.
fn score(channel: &str, replica: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in channel.bytes().chain([0xff]).chain(replica.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV alone leaves the high bits of similar
    // names (r1, r2) too alike to rank them fairly.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn channels(names: &[String], polled_every: usize) -> Vec<Channel<'_>> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Channel {
                name,
                polled: polled_every > 0 && i % polled_every == 0,
            })
            .collect()
    }

    #[test]
    fn twelve_channels_over_four_replicas_are_three_each_and_the_polled_ones_spread() {
        let replicas = names(4, "replica-");
        let names = names(12, "channel-");
        let channels = channels(&names, 2);
        let placed = assign(&replicas, &channels);
        assert_eq!(placed.len(), 12);
        for replica in &replicas {
            let mine: Vec<_> = channels
                .iter()
                .filter(|c| placed[c.name] == *replica)
                .collect();
            assert_eq!(mine.len(), 3, "{replica}: {mine:?}");
            let polled = mine.iter().filter(|c| c.polled).count();
            assert!((1..=2).contains(&polled), "{replica} polls {polled}");
        }
    }

    #[test]
    fn shares_differ_by_one_channel_at_most() {
        for n in 1..6 {
            let replicas = names(n, "r");
            for count in 0..20 {
                let names = names(count, "c");
                let channels = channels(&names, 3);
                let placed = assign(&replicas, &channels);
                let loads: Vec<(usize, usize)> = replicas
                    .iter()
                    .map(|r| {
                        let mine: Vec<_> =
                            channels.iter().filter(|c| placed[c.name] == *r).collect();
                        (mine.len(), mine.iter().filter(|c| c.polled).count())
                    })
                    .collect();
                let spread = |f: fn(&(usize, usize)) -> usize| {
                    let values: Vec<usize> = loads.iter().map(f).collect();
                    values.iter().max().unwrap() - values.iter().min().unwrap()
                };
                assert!(
                    spread(|l| l.0) <= 1,
                    "{n} replicas, {count} channels: {loads:?}"
                );
                assert!(
                    spread(|l| l.1) <= 1,
                    "{n} replicas, {count} channels: {loads:?}"
                );
            }
        }
    }

    #[test]
    fn a_replica_joining_takes_only_its_share_from_the_others() {
        let names = names(12, "channel-");
        let channels = channels(&names, 0);
        let three = assign(&names_of(3), &channels);
        let four = assign(&names_of(4), &channels);
        let moved = channels
            .iter()
            .filter(|c| three[c.name] != four[c.name])
            .count();
        // The newcomer's 3, and perhaps a few more as the rooms shrink.
        assert!((3..=6).contains(&moved), "{moved} moved");
    }

    fn names_of(n: usize) -> Vec<String> {
        names(n, "replica-")
    }

    #[test]
    fn no_replica_places_nothing() {
        let names = names(3, "c");
        assert!(assign(&[], &channels(&names, 1)).is_empty());
    }

    proptest! {
        /// Every replica computes the same answer from the same rows, whatever
        /// order it read them in; every channel is placed once; no replica
        /// holds more than its room, of all channels or of the polled ones.
        #[test]
        fn every_channel_is_placed_once_within_the_rooms(
            replicas in proptest::collection::vec("[a-z0-9-]{1,12}", 1..8),
            channels in proptest::collection::vec(("[a-z0-9_]{1,16}", any::<bool>()), 0..60),
        ) {
            let list: Vec<Channel<'_>> = channels
                .iter()
                .map(|(name, polled)| Channel { name, polled: *polled })
                .collect();
            let placed = assign(&replicas, &list);
            let mut reversed = replicas.clone();
            reversed.reverse();
            let mut shuffled = list.clone();
            shuffled.reverse();
            prop_assert_eq!(&placed, &assign(&reversed, &shuffled));
            let mut unique: Vec<&str> = list.iter().map(|c| c.name).collect();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(placed.len(), unique.len());
            let mut distinct = replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let room = unique.len().div_ceil(distinct.len());
            for replica in &distinct {
                let held = placed.values().filter(|r| *r == replica).count();
                prop_assert!(held <= room && held + 1 >= room);
            }
        }
    }
}
