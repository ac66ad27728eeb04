//! Types beyond the built-in ones: domains (stored as their base type), enums (text),
//! arrays (LIST of their element type) and text-like extension types such as citext,
//! resolved from `pg_type`.

use std::collections::HashMap;

use super::schema::ColumnKind;

/// One row of `pg_type` that matters for mapping.
#[derive(Debug, Clone)]
pub struct PgType {
    /// `typtype`: b base, d domain, e enum, r range, c composite, …
    pub typtype: char,
    /// Base type of a domain.
    pub base: u32,
    /// Type modifier of a domain's base type.
    pub base_typmod: i32,
    /// Element type of an array.
    pub elem: u32,
    /// `typcategory` (A = array).
    pub category: char,
    /// The binary send function, e.g. `textsend`.
    pub send: String,
}

/// User and array types of a database.
#[derive(Debug, Clone, Default)]
pub struct TypeCatalog {
    types: HashMap<u32, PgType>,
}

/// Send functions whose binary form is the text itself.
const TEXT_SEND: [&str; 5] = [
    "textsend",
    "varcharsend",
    "bpcharsend",
    "citextsend",
    "xml_send",
];

impl TypeCatalog {
    /// A catalog from `(oid, type)` rows.
    pub fn new(types: impl IntoIterator<Item = (u32, PgType)>) -> Self {
        Self {
            types: types.into_iter().collect(),
        }
    }

    /// How a column of type `oid` with `typmod` is decoded and stored.
    pub fn resolve(&self, oid: u32, typmod: i32) -> ColumnKind {
        self.resolve_depth(oid, typmod, 0)
    }

    fn resolve_depth(&self, oid: u32, typmod: i32, depth: u8) -> ColumnKind {
        let builtin = ColumnKind::of(oid, typmod);
        if builtin != ColumnKind::Other || depth > 8 {
            return builtin;
        }
        let Some(t) = self.types.get(&oid) else {
            return ColumnKind::Other;
        };
        match t.typtype {
            'd' => {
                let m = if typmod >= 0 { typmod } else { t.base_typmod };
                self.resolve_depth(t.base, m, depth + 1)
            }
            'e' => ColumnKind::Text,
            _ if t.category == 'A' && t.elem != 0 => {
                match self.resolve_depth(t.elem, typmod, depth + 1) {
                    ColumnKind::Other | ColumnKind::List(_) => ColumnKind::Other,
                    e => ColumnKind::list_of(e),
                }
            }
            'b' if TEXT_SEND.contains(&t.send.as_str()) => ColumnKind::Text,
            _ => ColumnKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::schema::oid;

    fn t(typtype: char, base: u32, elem: u32, category: char, send: &str) -> PgType {
        PgType {
            typtype,
            base,
            base_typmod: -1,
            elem,
            category,
            send: send.into(),
        }
    }

    #[test]
    fn resolves_domains_enums_arrays_and_text_like_types() {
        let cat = TypeCatalog::new([
            (90_000, t('d', oid::INT4, 0, 'N', "int4send")),
            (90_001, t('e', 0, 0, 'E', "enum_send")),
            (1007, t('b', 0, oid::INT4, 'A', "array_send")),
            (90_002, t('b', 0, 90_001, 'A', "array_send")),
            (90_003, t('b', 0, 0, 'S', "citextsend")),
            (90_004, t('r', 0, 0, 'R', "range_send")),
        ]);
        assert_eq!(cat.resolve(90_000, -1), ColumnKind::Int32);
        assert_eq!(cat.resolve(90_001, -1), ColumnKind::Text);
        assert_eq!(
            cat.resolve(1007, -1),
            ColumnKind::list_of(ColumnKind::Int32)
        );
        assert_eq!(
            cat.resolve(90_002, -1),
            ColumnKind::list_of(ColumnKind::Text)
        );
        assert_eq!(cat.resolve(90_003, -1), ColumnKind::Text);
        assert_eq!(cat.resolve(90_004, -1), ColumnKind::Other);
        assert_eq!(cat.resolve(123_456, -1), ColumnKind::Other);
    }
}
