//! The partition key of a row and the file name of a Parquet file: each has one place
//! that renders it, so retries and readers agree on every path.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use crate::lsn::Lsn;

/// Hive's name for a partition whose value is NULL; Athena, Trino and Spark read it as NULL.
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Which `year=/month=/day=` folder a row goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartitionKey {
    /// `processing_year=/processing_month=/processing_day=` of the flush.
    Processing(NaiveDate),
    /// `year=/month=/day=` of a column's value, in days since 1970-01-01 (a date is only
    /// built to render the path); `None` when NULL or unknown (a DELETE without the
    /// column in its replica identity).
    Column(Option<i32>),
}

impl PartitionKey {
    /// The folder path below the table, e.g. `year=2025/month=01/day=15`.
    pub fn path(&self) -> String {
        match self {
            Self::Processing(d) => format!(
                "processing_year={:04}/processing_month={:02}/processing_day={:02}",
                d.year(),
                d.month(),
                d.day()
            ),
            Self::Column(Some(days)) => match NaiveDate::from_epoch_days(*days) {
                Some(d) => format!(
                    "year={:04}/month={:02}/day={:02}",
                    d.year(),
                    d.month(),
                    d.day()
                ),
                None => Self::Column(None).path(),
            },
            Self::Column(None) => format!("year={HIVE_NULL}/month={HIVE_NULL}/day={HIVE_NULL}"),
        }
    }

    /// The partition's day, in days since 1970-01-01 (`None`: NULL).
    pub fn epoch_day(&self) -> Option<i32> {
        match self {
            Self::Processing(d) => Some(d.to_epoch_days()),
            Self::Column(days) => *days,
        }
    }

    /// Partition column names, in path order.
    pub fn column_names(&self) -> [&'static str; 3] {
        match self {
            Self::Processing(_) => ["processing_year", "processing_month", "processing_day"],
            Self::Column(_) => ["year", "month", "day"],
        }
    }
}

/// The name of one Parquet file: `<table>_<YYYYMMDD>_<HHMMSS>_<lsn>_<seq>.parquet`.
///
/// Date and time are the flush's (as in the seed's names); `lsn` is the flush's cut (or
/// the snapshot's consistent point) and `seq` numbers the files of one partition in one
/// flush. A retried flush reuses the same time, LSN and sequence, hence the same names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// Table folder name.
    pub table: String,
    /// Flush time.
    pub processed_at: DateTime<Utc>,
    /// Flush cut or snapshot point.
    pub lsn: Lsn,
    /// Sequence within the partition.
    pub seq: u32,
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}_{}_{:016X}_",
            self.table,
            self.processed_at.format("%Y%m%d_%H%M%S"),
            self.lsn.0,
        )?;
        write!(f, "{:04}.parquet", self.seq)
    }
}

impl FileName {
    /// The LSN in a data file's name (`<table>_<date>_<time>_<LSN>_<seq>.parquet`);
    /// `None` for compacted files, which hold only committed rows.
    pub fn lsn_of(key: &str) -> Option<Lsn> {
        let name = key.rsplit('/').next()?.strip_suffix(".parquet")?;
        let mut parts = name.rsplit('_');
        parts.next()?;
        let lsn = parts.next()?;
        u64::from_str_radix(lsn, 16).ok().map(Lsn)
    }
}

impl PartitionKey {
    /// The partition of a row: its partition column's date, or the flush's date.
    ///
    /// `value` is the row's partition-column value (ignored for `processing_date` tables).
    pub fn for_row(
        schema: &crate::decode::TableSchema,
        processing_date: NaiveDate,
        value: Option<crate::decode::Datum<'_>>,
    ) -> Result<Self, crate::decode::DecodeError> {
        let Some(idx) = schema.partition_column else {
            return Ok(Self::Processing(processing_date));
        };
        let kind = schema.columns[idx].kind;
        let datum = value.unwrap_or(crate::decode::Datum::Null);
        crate::decode::value::datum_epoch_day(kind, datum)
            .map(Self::Column)
            .map_err(|source| crate::decode::DecodeError::Value {
                table: schema.qualified_name(),
                column: schema.columns[idx].name.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn renders_the_seed_layout() {
        let d = NaiveDate::from_ymd_opt(2025, 7, 24).expect("date");
        assert_eq!(
            PartitionKey::Processing(d).path(),
            "processing_year=2025/processing_month=07/processing_day=24"
        );
        assert_eq!(
            PartitionKey::Column(Some(d.to_epoch_days())).path(),
            "year=2025/month=07/day=24"
        );
        let name = FileName {
            table: "orders".into(),
            processed_at: Utc
                .with_ymd_and_hms(2025, 7, 25, 1, 0, 0)
                .single()
                .expect("time"),
            lsn: Lsn(0x16B3748),
            seq: 3,
        };
        assert_eq!(
            name.to_string(),
            "orders_20250725_010000_00000000016B3748_0003.parquet"
        );
        assert_eq!(
            FileName::lsn_of(&format!("t/p=1/{name}")),
            Some(Lsn(0x16B3748))
        );
        // A snapshot worker's file, and a compacted one (only committed rows, no LSN).
        assert_eq!(
            FileName::lsn_of("t/p=1/orders_20250725_010000_00000000016B3748_w01-0003.parquet"),
            Some(Lsn(0x16B3748))
        );
        assert_eq!(
            FileName::lsn_of("t/p=1/orders_20250725_010000_compacted_0003.parquet"),
            None
        );
    }
}
