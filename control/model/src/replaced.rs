//! Finding what changed between two versions of a map whose values are
//! shared (`Arc`): a new version keeps the allocation of every value it
//! leaves equal (a [`crate::World`], a gateway snapshot), so what a change
//! touched is what is not the very same allocation.

use std::collections::BTreeSet;
use std::sync::Arc;

/// The keys whose objects are not the very same allocation before and
/// after, including keys on one side only: one walk over both sides in key
/// order. Most of a map is shared between two versions, so this finds what
/// a change touched without looking each key up. Sides out of order would
/// only report more keys, never fewer.
pub fn replaced<'a, K: Ord + 'a, V: 'a>(
    before: impl IntoIterator<Item = (&'a K, &'a Arc<V>)>,
    after: impl IntoIterator<Item = (&'a K, &'a Arc<V>)>,
) -> BTreeSet<&'a K> {
    let mut keys = BTreeSet::new();
    let mut before = before.into_iter().peekable();
    for (key, object) in after {
        // The same allocation is the same object under its own key: most
        // steps cost a pointer comparison, no key comparison.
        if before.next_if(|(_, old)| Arc::ptr_eq(old, object)).is_some() {
            continue;
        }
        while let Some((gone, _)) = before.next_if(|(old, _)| *old < key) {
            keys.insert(gone);
        }
        if before.next_if(|(old, _)| *old == key).is_none_or(|(_, old)| !Arc::ptr_eq(old, object)) {
            keys.insert(key);
        }
    }
    keys.extend(before.map(|(gone, _)| gone));
    keys
}
