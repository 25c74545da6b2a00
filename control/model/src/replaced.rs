//! Walking sorted maps side by side, without looking keys up: what changed
//! between two versions of a map, [`replaced`] for maps whose values are
//! shared (`Arc`): a new version keeps the allocation of every value it
//! leaves equal (a [`crate::World`], a gateway snapshot), so what a change
//! touched is what is not the very same allocation; [`differing`] for plain
//! values, compared by value; and [`ordered_lookup`], a map's values for
//! keys asked in ascending order.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
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

/// What differs between two versions of a map.
#[derive(Debug, PartialEq, Eq)]
pub struct Differing<'before, 'after, K, A> {
    /// Keys only the old version has, in order.
    pub gone: Vec<&'before K>,
    /// Entries of the new version that the old one lacks or holds with
    /// another value, in order.
    pub changed: Vec<(&'after K, A)>,
}

/// The entries that differ between `before` and `after` (the new version's
/// entries in key order: a map, or values computed on the way): one walk
/// over both, two key comparisons per entry, where looking each key of one
/// up in the other costs a search.
pub fn differing<'before, 'after, K: Ord + 'after, V: PartialEq, A: Borrow<V>>(
    before: &'before BTreeMap<K, V>,
    after: impl IntoIterator<Item = (&'after K, A)>,
) -> Differing<'before, 'after, K, A> {
    let mut differing = Differing { gone: Vec::new(), changed: Vec::new() };
    let mut before = before.iter().peekable();
    for (key, value) in after {
        while let Some((gone, _)) = before.next_if(|(old, _)| *old < key) {
            differing.gone.push(gone);
        }
        match before.next_if(|(old, _)| *old == key) {
            Some((_, old)) if old == value.borrow() => {}
            _ => differing.changed.push((key, value)),
        }
    }
    differing.gone.extend(before.map(|(gone, _)| gone));
    differing
}

/// Looks keys up in `map` in one walk, for keys asked in ascending order:
/// each lookup moves past the smaller keys. A key asked out of order reads
/// as absent.
pub fn ordered_lookup<'a, K: Ord, V>(map: &'a BTreeMap<K, V>) -> impl FnMut(&K) -> Option<&'a V> {
    let mut entries = map.iter().peekable();
    move |key| {
        while entries.next_if(|(other, _)| *other < key).is_some() {}
        entries.next_if(|(other, _)| *other == key).map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_finds_gone_new_and_changed_entries_in_order() {
        let before = BTreeMap::from([(1, "a"), (2, "b"), (4, "d"), (6, "f")]);
        let after = BTreeMap::from([(2, "b"), (3, "c"), (4, "D"), (7, "g")]);
        let found = differing(&before, &after);
        assert_eq!(found.gone, vec![&1, &6]);
        assert_eq!(found.changed, vec![(&3, &"c"), (&4, &"D"), (&7, &"g")]);

        let same = differing(&before, &before);
        assert!(same.gone.is_empty() && same.changed.is_empty());
        let nothing: BTreeMap<i32, &str> = BTreeMap::new();
        let from_nothing = differing(&nothing, &after);
        assert_eq!((from_nothing.gone.len(), from_nothing.changed.len()), (0, 4));
        let to_nothing = differing(&before, &nothing);
        assert_eq!((to_nothing.gone.len(), to_nothing.changed.len()), (4, 0));
    }

    #[test]
    fn differing_takes_values_computed_on_the_way() {
        let before = BTreeMap::from([(1, 10), (2, 20), (3, 30)]);
        let keys = [1, 3];
        let found = differing(&before, keys.iter().map(|k| (k, k * 10 + u32::from(*k == 3))));
        assert_eq!(found, Differing { gone: vec![&2], changed: vec![(&3, 31)] });
    }

    #[test]
    fn ordered_lookup_finds_keys_asked_in_order() {
        let map = BTreeMap::from([(2, "b"), (4, "d"), (6, "f")]);
        let mut lookup = ordered_lookup(&map);
        let found: Vec<Option<&&str>> = [1, 2, 3, 4, 7].iter().map(&mut lookup).collect();
        assert_eq!(found, vec![None, Some(&"b"), None, Some(&"d"), None]);
    }

    #[test]
    fn replaced_compares_allocations_not_values() {
        let (a, b) = (Arc::new("a"), Arc::new("b"));
        let before = BTreeMap::from([(1, a.clone()), (2, b.clone()), (3, Arc::new("c"))]);
        let after = BTreeMap::from([(1, a), (2, Arc::new("b")), (4, b)]);
        assert_eq!(replaced(&before, &after), BTreeSet::from([&2, &3, &4]));
    }
}
