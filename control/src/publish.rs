//! Small helpers shared by the tasks that own state and publish it to
//! readers through `watch` channels.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Publishes `value` unless it equals what readers have, so they wake only
/// for real changes.
pub fn replace_if_changed<T: PartialEq>(tx: &watch::Sender<Arc<T>>, value: impl Into<Arc<T>>) {
    let value = value.into();
    tx.send_if_modified(|current| {
        let changed = !Arc::ptr_eq(current, &value) && **current != *value;
        if changed {
            *current = value;
        }
        changed
    });
}

/// Seconds since the Unix epoch, as stored timestamps record them (0 if the
/// clock is before the epoch).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
