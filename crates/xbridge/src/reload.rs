//! Reloading the configuration file while the bridge runs (SIGHUP): the same
//! file, read by the same loader with the same environment overrides, and
//! applied to the channels only.
//!
//! Only `[[channels]]` change live: [`LiveChannels`] is what both sides
//! follow channel by channel, so adding, changing or removing one touches no
//! other. The other sections (the broker, the store, the servers, the retry
//! bounds) are read once by the parts they configure; a reload that changes
//! them applies its channels and warns, naming the sections that wait for a
//! restart. They are compared with what the process started with, so the
//! warning repeats on every reload until the restart.
//!
//! A reload is all or nothing. A file that does not load (unreadable, not
//! TOML, any invalid field), that names a channel like one the CRM created,
//! names (`user_id`) an account a CRM channel serves, or would make the file's
//! and the CRM's channels more than `amqp.max_channels`, is refused as a whole,
//! every reason logged, and the bridge runs on as it was: half a reload would
//! serve a configuration nobody wrote.
//!
//! A file channel may hide a CRM channel of its name stored before (the file
//! wins at start). When a reload removes the file's, the store's is read again
//! and served.
//!
//! A secret read from a file (`{ file = "…" }`, a mounted Kubernetes secret)
//! changes without anyone sending a signal: Kubernetes swaps the files of a
//! secret volume when the secret is rotated. The files are looked at every
//! [`SECRET_FILE_POLL`] and a change of one is a reload like a SIGHUP.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret as _;

use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use xbridge_control::StoredChannels;
use xbridge_core::config::{ChannelSettings, ConfigError, Loaded, Settings};
use xbridge_core::live_channels::{Delta, LiveChannel, LiveChannels, Origin};

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or is invalid: every reason, each naming its
    /// field and never a secret (the loader's errors never hold one).
    #[error("the configuration file is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// Channels of the file have the names of channels the CRM created: the
    /// CRM's would be overwritten by the file's.
    #[error("channels of the file have the names of channels the CRM created: {} (rename them in the file, or remove the CRM's)", .0.join(", "))]
    NamedLikeCrm(Vec<String>),
    /// The file's channels and the CRM's together are more than
    /// `amqp.max_channels` (of the running configuration: `[amqp]` waits for a
    /// restart).
    #[error(
        "the file's {file} channels and the CRM's {crm} are more than amqp.max_channels ({max})"
    )]
    TooManyChannels {
        /// The file's channels.
        file: usize,
        /// The CRM's channels served.
        crm: usize,
        /// The bound.
        max: usize,
    },
    /// Channels of the file name (`user_id`) an X account a CRM channel serves
    /// (one account has one channel), or hold another `consumer_secret` for the X
    /// App of a CRM channel (one App has one secret). Each sentence names both
    /// channels, never a credential.
    #[error("{}", .0.join("; "))]
    ClashesWithCrm(Vec<String>),
}

impl From<ConfigError> for ReloadError {
    fn from(error: ConfigError) -> ReloadError {
        match error {
            ConfigError::Read(reason) => ReloadError::Invalid(vec![reason]),
            ConfigError::Invalid(reasons) => ReloadError::Invalid(reasons),
        }
    }
}

/// What an applied reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Channels served from now on.
    pub added: Vec<String>,
    /// Channels with new settings or credentials.
    pub changed: Vec<String>,
    /// Channels no longer served.
    pub removed: Vec<String>,
    /// Sections other than `[[channels]]` that differ from what the process
    /// started with: not applied, a restart does.
    pub restart_needed: Vec<&'static str>,
    /// The file's warnings (a secret file every user can read).
    pub warnings: Vec<String>,
}

/// How often the secret files are looked at: Kubernetes takes up to a
/// minute or so to show a rotated secret in a pod, so this adds little.
pub const SECRET_FILE_POLL: Duration = Duration::from_secs(10);

/// Reloads one configuration file into the running bridge's channels.
pub struct Reloader {
    path: PathBuf,
    /// The configuration the process started with: what its other sections
    /// run on.
    running: Loaded,
    live: Arc<LiveChannels>,
    /// The secret files of the last configuration applied, each as it was
    /// before that configuration was read. Held while a reload runs, so a
    /// SIGHUP and a rotated file never apply two reads in the wrong order.
    secret_files: Mutex<Vec<(PathBuf, Option<Stamp>)>>,
    /// The store's CRM channels, when the bridge has a store key.
    stored: Option<StoredChannels>,
}

impl Reloader {
    /// A reloader of `path` for a bridge started with `running`, serving `live`.
    /// The secret files are taken as they are now: a rotation between the
    /// start's reading of them and now is applied by the next SIGHUP or
    /// change.
    pub fn new(path: PathBuf, running: Loaded, live: Arc<LiveChannels>) -> Reloader {
        Reloader {
            path,
            secret_files: Mutex::new(stamps(&running.secret_files)),
            running,
            live,
            stored: None,
        }
    }

    /// Reads the store's CRM channel of a name a reload takes from the file
    /// (hidden by the file's until then) and serves it again.
    pub fn with_stored(mut self, stored: Option<StoredChannels>) -> Reloader {
        self.stored = stored;
        self
    }

    /// Reads the file again and applies its channels, or changes nothing.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut secret_files = self
            .secret_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // As the files are before they are read: a change from now on is
        // one this reload may not have seen, and makes another.
        let before = stamps(secret_files.iter().map(|(file, _)| file));
        let result = self.apply();
        if let Ok((reloaded, _)) = &result {
            self.reread(&reloaded.removed);
        }
        *secret_files = match &result {
            Ok((_, files)) => stamps(files)
                .into_iter()
                .map(
                    |(file, now)| match before.iter().find(|(f, _)| *f == file) {
                        Some(seen) => seen.clone(),
                        None => (file, now),
                    },
                )
                .collect(),
            // The refused version is not tried again until it changes.
            Err(_) => before,
        };
        result.map(|(reloaded, _)| reloaded)
    }

    /// Loads the file and applies its channels; what changed, and the files
    /// its secrets come from.
    fn apply(&self) -> Result<(Reloaded, Vec<PathBuf>), ReloadError> {
        let loaded = Settings::load_with_sections(&self.path)?;
        let file = &loaded.settings.channels;
        let max = self.running.settings.amqp.max_channels;
        let deltas = self
            .live
            .try_replace_file_channels_if(file, |served| against_crm(served, file, max))?;
        let mut reloaded = Reloaded {
            restart_needed: loaded.restart_sections(&self.running),
            warnings: loaded.settings.warnings,
            ..Reloaded::default()
        };
        for delta in deltas {
            match delta {
                Delta::Added(name) => reloaded.added.push(name),
                Delta::Changed(name) => reloaded.changed.push(name),
                Delta::Removed(name) => reloaded.removed.push(name),
                // The file does not pause: only the CRM's channels are paused.
                Delta::Paused(..) => {}
            }
        }
        Ok((reloaded, loaded.secret_files))
    }

    /// Reads again, in the background, the store's CRM channels named like the
    /// file channels a reload removed: the file's hid them (`stored` is `None`
    /// without a store key: there is nothing to read).
    fn reread(&self, removed: &[String]) {
        let (Some(stored), false) = (self.stored.clone(), removed.is_empty()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let names = removed.to_vec();
        runtime.spawn(async move { stored.reread(&names).await });
    }

    /// [`Reloader::reload`], told in the log: each channel changed, or each
    /// reason for the refusal, then one line with the outcome.
    pub fn reload_and_log(&self) -> Result<Reloaded, ReloadError> {
        let path = self.path.display().to_string();
        let result = self.reload();
        match &result {
            Ok(reloaded) => log_reloaded(&path, reloaded),
            Err(error) => log_refused(&path, error),
        }
        result
    }

    /// Reloads on each SIGHUP in `hangups`, and when one of the secret files
    /// changes (looked at every `poll`), until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        hangups: Signal,
        poll: Duration,
        shutdown: CancellationToken,
    ) {
        tokio::join!(
            self.reload_on_hangup(hangups, shutdown.clone()),
            self.watch_secret_files(poll, shutdown),
        );
    }

    /// Reloads when a file a secret is read from (`{ file = "…" }`) changes:
    /// its modification time, size or inode, which a Kubernetes secret
    /// rotation (a new file behind the same path) changes.
    pub async fn watch_secret_files(&self, poll: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let changed = self.changed_secret_files();
            if !changed.is_empty() {
                tracing::info!(files = %changed.join(", "), "a secret file changed: reloading the configuration");
                let _ = self.reload_and_log();
            }
        }
    }

    /// The secret files that are not as the last reload (or the start) saw them.
    fn changed_secret_files(&self) -> Vec<String> {
        let seen = self
            .secret_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        stamps(seen.iter().map(|(file, _)| file))
            .into_iter()
            .filter(|now| !seen.contains(now))
            .map(|(file, _)| file.display().to_string())
            .collect()
    }

    /// Reloads on each SIGHUP in `hangups` until `shutdown`.
    async fn reload_on_hangup(&self, mut hangups: Signal, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!(signal = "SIGHUP", path = %self.path.display(), "reloading the configuration");
                    let _ = self.reload_and_log();
                }
            }
        }
    }
}

/// Why the file's channels cannot be served beside the CRM's `served` now: a
/// name of a CRM channel, more than `max` channels together, an account a CRM
/// channel serves.
fn against_crm(
    served: &BTreeMap<String, LiveChannel>,
    file: &[ChannelSettings],
    max: usize,
) -> Result<(), ReloadError> {
    let crm: Vec<&LiveChannel> = served
        .values()
        .filter(|c| c.origin == Origin::Crm)
        .collect();
    let named: Vec<String> = file
        .iter()
        .filter(|f| crm.iter().any(|c| c.name() == f.name))
        .map(|f| f.name.clone())
        .collect();
    if !named.is_empty() {
        return Err(ReloadError::NamedLikeCrm(named));
    }
    if file.len() + crm.len() > max {
        let (file, crm) = (file.len(), crm.len());
        return Err(ReloadError::TooManyChannels { file, crm, max });
    }
    let clashes: Vec<String> = file
        .iter()
        .flat_map(|f| crm.iter().filter_map(move |c| clash(f, c)))
        .collect();
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(ReloadError::ClashesWithCrm(clashes))
    }
}

/// What forbids serving the file's `f` beside the CRM's `c`: one account, or one
/// X App with two secrets.
fn clash(f: &ChannelSettings, c: &LiveChannel) -> Option<String> {
    let crm = &c.settings;
    if f.user_id.is_some() && f.user_id == crm.user_id {
        return Some(format!(
            "channel {}: user_id {} is served by the CRM's channel {} (one account has one channel)",
            f.name,
            f.user_id.as_deref().unwrap_or_default(),
            c.name()
        ));
    }
    let same_app = f.consumer_key.expose_secret() == crm.consumer_key.expose_secret();
    (same_app && f.consumer_secret.expose_secret() != crm.consumer_secret.expose_secret()).then(|| {
        format!(
            "channel {}: consumer_secret differs from the CRM's channel {}, which has the same consumer_key (one X App has one secret)",
            f.name,
            c.name()
        )
    })
}

/// Each file with what tells a new version of it (`None` when it cannot be
/// looked at: a reload reports why).
fn stamps<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> Vec<(PathBuf, Option<Stamp>)> {
    files
        .into_iter()
        .map(|file| {
            let stamp = std::fs::metadata(file).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            });
            (file.clone(), stamp)
        })
        .collect()
}

/// What tells one version of a file from the next.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn log_reloaded(path: &str, reloaded: &Reloaded) {
    for warning in &reloaded.warnings {
        tracing::warn!(%warning, "configuration warning");
    }
    for (names, change) in [
        (&reloaded.added, "added"),
        (&reloaded.changed, "changed"),
        (&reloaded.removed, "removed"),
    ] {
        for channel in names {
            tracing::info!(%channel, change, "channel {change} by the reload");
        }
    }
    if !reloaded.restart_needed.is_empty() {
        tracing::warn!(
            %path,
            sections = %reloaded.restart_needed.join(", "),
            "configuration sections changed that only a restart applies; they keep their values until then"
        );
    }
    tracing::info!(
        %path,
        added = reloaded.added.len(),
        changed = reloaded.changed.len(),
        removed = reloaded.removed.len(),
        "configuration reloaded"
    );
}

fn log_refused(path: &str, error: &ReloadError) {
    match error {
        ReloadError::Invalid(reasons) => {
            for reason in reasons {
                tracing::error!(%path, %reason, "configuration reload refused: invalid");
            }
        }
        ReloadError::NamedLikeCrm(names) => {
            for channel in names {
                tracing::error!(%path, %channel, "configuration reload refused: a channel the CRM created has this name");
            }
        }
        ReloadError::TooManyChannels { .. } => {
            tracing::error!(%path, reason = %error, "configuration reload refused: too many channels");
        }
        ReloadError::ClashesWithCrm(reasons) => {
            for reason in reasons {
                tracing::error!(%path, %reason, "configuration reload refused: it clashes with a CRM channel");
            }
        }
    }
    tracing::error!(
        %path,
        "configuration reload refused as a whole; the bridge runs on the configuration it had"
    );
}
