//! Which lake rows one pgoutput UPDATE becomes: a decision on the tuples alone, so every
//! case (key change, TOASTed key, keyless table) is a unit test without a database.
//!
//! pgoutput sends an UPDATE's old tuple only when the lake needs it: `K` (the replica
//! identity columns, the others NULL) when the key changed or a key column is stored
//! out of line, `O` (the whole old row) under `REPLICA IDENTITY FULL`. The new tuple
//! marks TOASTed values the UPDATE left alone as unchanged (`u`) instead of sending them.

use pg_walstream::{ColumnData, TupleData};

/// The rows an UPDATE writes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRows {
    /// A DELETE of the old version, written before the new one: the key changed (the old
    /// key must not stay alive in the latest state), or the table has no key (every
    /// column identifies the row, so the old version is a different row).
    pub delete_old: Option<TupleData>,
    /// The new version; columns still unchanged are ones no tuple carried.
    pub new: TupleData,
    /// The key changed while a value stayed unchanged: that value lives only in the old
    /// key's history, so readers cannot resolve it under the new key.
    pub unresolvable: bool,
}

/// The old tuple of an UPDATE, as pgoutput tagged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: the replica identity columns only.
    Key,
    /// `O`: the whole row (REPLICA IDENTITY FULL).
    Full,
}

/// Decides the rows of an UPDATE; `is_key[i]` says whether column `i` is part of the
/// table's key (empty for a keyless table).
pub fn update_rows(
    is_key: &[bool],
    old: Option<(OldKind, TupleData)>,
    new: TupleData,
) -> UpdateRows {
    let keyless = !is_key.iter().any(|k| *k);
    let mut new = new;
    if let Some((kind, old)) = &old {
        for (i, c) in new.columns.iter_mut().enumerate() {
            if !c.is_unchanged() {
                continue;
            }
            // A `K` tuple's other columns are NULL placeholders, not values.
            let usable = *kind == OldKind::Full || is_key.get(i).copied().unwrap_or(false);
            if let Some(o) = old.columns.get(i).filter(|o| usable && !o.is_unchanged()) {
                *c = o.clone();
            }
        }
    }
    let delete_old = match old {
        Some((_, old)) if keyless || key_changed(is_key, &old, &new) => Some(old),
        _ => None,
    };
    let unresolvable =
        !keyless && delete_old.is_some() && new.columns.iter().any(ColumnData::is_unchanged);
    UpdateRows {
        delete_old,
        new,
        unresolvable,
    }
}

/// Whether a key column's value differs between the old and the new tuple. Values are
/// compared as sent: the same value is sent as the same bytes in one format.
fn key_changed(is_key: &[bool], old: &TupleData, new: &TupleData) -> bool {
    is_key
        .iter()
        .enumerate()
        .filter(|(_, k)| **k)
        .any(|(i, _)| old.columns.get(i) != new.columns.get(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &str) -> ColumnData {
        ColumnData::text(v.as_bytes().to_vec())
    }
    fn n() -> ColumnData {
        ColumnData::null()
    }
    fn u() -> ColumnData {
        ColumnData::unchanged()
    }
    fn tup(cols: Vec<ColumnData>) -> TupleData {
        TupleData::new(cols)
    }

    #[test]
    fn updates_become_the_rows_the_latest_state_needs() {
        const PK: &[bool] = &[true, false, false];
        let big = || t("big");
        struct Case {
            name: &'static str,
            is_key: &'static [bool],
            old: Option<(OldKind, TupleData)>,
            new: TupleData,
            delete_old: Option<TupleData>,
            written: TupleData,
            unresolvable: bool,
        }
        let cases = vec![
            Case {
                name: "no old tuple: a plain update",
                is_key: PK,
                old: None,
                new: tup(vec![t("1"), t("a"), big()]),
                delete_old: None,
                written: tup(vec![t("1"), t("a"), big()]),
                unresolvable: false,
            },
            Case {
                name: "key changed: the old key is deleted first",
                is_key: PK,
                old: Some((OldKind::Key, tup(vec![t("1"), n(), n()]))),
                new: tup(vec![t("101"), t("a"), big()]),
                delete_old: Some(tup(vec![t("1"), n(), n()])),
                written: tup(vec![t("101"), t("a"), big()]),
                unresolvable: false,
            },
            Case {
                name: "TOASTed key left unchanged: taken from K, nothing deleted",
                is_key: PK,
                old: Some((OldKind::Key, tup(vec![t("k"), n(), n()]))),
                new: tup(vec![u(), t("a"), t("x")]),
                delete_old: None,
                written: tup(vec![t("k"), t("a"), t("x")]),
                unresolvable: false,
            },
            Case {
                name: "K's NULL placeholders never replace an unchanged value",
                is_key: PK,
                old: Some((OldKind::Key, tup(vec![t("k"), n(), n()]))),
                new: tup(vec![u(), t("a"), u()]),
                delete_old: None,
                written: tup(vec![t("k"), t("a"), u()]),
                unresolvable: false,
            },
            Case {
                name: "key changed with an unchanged TOAST value: reported",
                is_key: PK,
                old: Some((OldKind::Key, tup(vec![t("1"), n(), n()]))),
                new: tup(vec![t("2"), t("a"), u()]),
                delete_old: Some(tup(vec![t("1"), n(), n()])),
                written: tup(vec![t("2"), t("a"), u()]),
                unresolvable: true,
            },
            Case {
                name: "FULL identity with a key: unchanged values from the old row",
                is_key: PK,
                old: Some((OldKind::Full, tup(vec![t("1"), t("a"), big()]))),
                new: tup(vec![t("1"), t("b"), u()]),
                delete_old: None,
                written: tup(vec![t("1"), t("b"), big()]),
                unresolvable: false,
            },
            Case {
                name: "FULL identity, key changed: the whole old row is deleted",
                is_key: PK,
                old: Some((OldKind::Full, tup(vec![t("1"), t("a"), big()]))),
                new: tup(vec![t("2"), t("a"), u()]),
                delete_old: Some(tup(vec![t("1"), t("a"), big()])),
                written: tup(vec![t("2"), t("a"), big()]),
                unresolvable: false,
            },
            Case {
                name: "keyless: the old version is always deleted",
                is_key: &[false, false],
                old: Some((OldKind::Full, tup(vec![t("1"), t("x")]))),
                new: tup(vec![t("1"), t("x")]),
                delete_old: Some(tup(vec![t("1"), t("x")])),
                written: tup(vec![t("1"), t("x")]),
                unresolvable: false,
            },
            Case {
                name: "composite key, one part changed",
                is_key: &[true, true, false],
                old: Some((OldKind::Key, tup(vec![t("1"), t("k"), n()]))),
                new: tup(vec![t("1"), u(), t("z")]),
                delete_old: None,
                written: tup(vec![t("1"), t("k"), t("z")]),
                unresolvable: false,
            },
            Case {
                name: "composite key with a TOASTed part, other part changed",
                is_key: &[true, true, false],
                old: Some((OldKind::Key, tup(vec![t("1"), t("k"), n()]))),
                new: tup(vec![t("2"), u(), t("z")]),
                delete_old: Some(tup(vec![t("1"), t("k"), n()])),
                written: tup(vec![t("2"), t("k"), t("z")]),
                unresolvable: false,
            },
        ];
        for c in cases {
            let got = update_rows(c.is_key, c.old, c.new);
            assert_eq!(got.delete_old, c.delete_old, "{}", c.name);
            assert_eq!(got.new, c.written, "{}", c.name);
            assert_eq!(got.unresolvable, c.unresolvable, "{}", c.name);
        }
    }
}
