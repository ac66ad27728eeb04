//! PostgreSQL values (binary or text wire format) → Arrow builders.
//!
//! Binary values come from `COPY ... (FORMAT binary)` and from pgoutput in binary mode;
//! text values from pgoutput in text mode. Each kind has one decoder per format and
//! both append into the same builder, so the two paths cannot disagree on types.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::ArrayRef;
use arrow_buffer::{NullBufferBuilder, OffsetBuffer};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

use super::schema::ColumnKind;

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One value as it arrives on the wire.
#[derive(Debug, Clone, Copy)]
pub enum Datum<'a> {
    /// SQL NULL.
    Null,
    /// Text output format.
    Text(&'a [u8]),
    /// Binary send format.
    Binary(&'a [u8]),
    /// A TOASTed value the UPDATE did not change (pgoutput sends no value).
    Unchanged,
}

impl Datum<'_> {
    /// Bytes on the wire, for size accounting.
    pub fn len(&self) -> usize {
        match self {
            Datum::Text(b) | Datum::Binary(b) => b.len(),
            Datum::Null | Datum::Unchanged => 0,
        }
    }

    /// True for NULL and unchanged values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A value that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    /// Bytes that do not match the type's wire format: a bug or a type mismatch; stop.
    #[error("malformed {format} value: {detail}")]
    Malformed {
        /// "binary" or "text"
        format: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A valid PostgreSQL value the Parquet type cannot hold (e.g. `infinity`); stored as NULL.
    #[error("{0} cannot be stored in this column's Parquet type; stored as NULL")]
    Unrepresentable(&'static str),
}

fn bad_bin(detail: impl Into<String>) -> ValueError {
    ValueError::Malformed {
        format: "binary",
        detail: detail.into(),
    }
}

fn bad_text(detail: impl Into<String>) -> ValueError {
    ValueError::Malformed {
        format: "text",
        detail: detail.into(),
    }
}

/// An Arrow builder for one column.
pub enum ColumnBuilder {
    /// BOOLEAN
    Bool(BooleanBuilder),
    /// INT16
    Int16(Int16Builder),
    /// INT32
    Int32(Int32Builder),
    /// INT64
    Int64(Int64Builder),
    /// FLOAT
    Float32(Float32Builder),
    /// DOUBLE
    Float64(Float64Builder),
    /// DECIMAL(p,s)
    Decimal(Decimal128Builder, i8),
    /// STRING
    Utf8(StringBuilder),
    /// BINARY
    Binary(BinaryBuilder),
    /// DATE
    Date(Date32Builder),
    /// TIMESTAMP(MICROS)
    Timestamp(TimestampMicrosecondBuilder),
    /// LIST of one element kind
    List(Box<ListColumn>),
}

/// A LIST column: element values, offsets and validity.
pub struct ListColumn {
    elem: ColumnKind,
    values: ColumnBuilder,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl ListColumn {
    fn push_end(&mut self, valid: bool) {
        let end = i32::try_from(self.values.len()).unwrap_or(i32::MAX);
        self.offsets.push(end);
        self.nulls.append(valid);
    }
}

impl ColumnBuilder {
    /// An empty builder for `kind`.
    pub fn new(kind: ColumnKind, capacity: usize) -> Self {
        match kind {
            ColumnKind::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnKind::Int16 => Self::Int16(Int16Builder::with_capacity(capacity)),
            ColumnKind::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            ColumnKind::Int64 | ColumnKind::Oid => {
                Self::Int64(Int64Builder::with_capacity(capacity))
            }
            ColumnKind::Float32 => Self::Float32(Float32Builder::with_capacity(capacity)),
            ColumnKind::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            ColumnKind::Decimal { precision, scale } => Self::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(precision, scale)
                    // precision 1..=38 and 0 <= scale <= precision are checked by ColumnKind::of.
                    .unwrap_or_else(|_| Decimal128Builder::with_capacity(capacity)),
                scale,
            ),
            ColumnKind::NumericText
            | ColumnKind::Text
            | ColumnKind::Jsonb
            | ColumnKind::Uuid
            | ColumnKind::Time
            | ColumnKind::TimeTz
            | ColumnKind::Interval
            | ColumnKind::Bits
            | ColumnKind::Inet
            | ColumnKind::MacAddr
            | ColumnKind::Other => {
                Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnKind::Money => Self::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(19, 2)
                    .unwrap_or_else(|_| Decimal128Builder::with_capacity(capacity)),
                2,
            ),
            ColumnKind::List(elem) => Self::List(Box::new(ListColumn {
                elem: *elem,
                values: ColumnBuilder::new(*elem, capacity),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(capacity),
            })),
            ColumnKind::Bytea => {
                Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnKind::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            ColumnKind::Timestamp => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            ColumnKind::TimestampTz => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
        }
    }

    /// Appends NULL.
    pub fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b, _) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
            Self::List(l) => l.push_end(false),
        }
    }

    /// Values appended so far.
    pub fn len(&self) -> usize {
        use arrow_array::builder::ArrayBuilder;
        match self {
            Self::Bool(b) => b.len(),
            Self::Int16(b) => b.len(),
            Self::Int32(b) => b.len(),
            Self::Int64(b) => b.len(),
            Self::Float32(b) => b.len(),
            Self::Float64(b) => b.len(),
            Self::Decimal(b, _) => b.len(),
            Self::Utf8(b) => b.len(),
            Self::Binary(b) => b.len(),
            Self::Date(b) => b.len(),
            Self::Timestamp(b) => b.len(),
            Self::List(l) => l.offsets.len() - 1,
        }
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes one non-null value of `kind` and appends it; on error nothing is appended.
    pub fn append(&mut self, kind: ColumnKind, datum: Datum<'_>) -> Result<(), ValueError> {
        match datum {
            Datum::Null | Datum::Unchanged => {
                self.append_null();
                Ok(())
            }
            Datum::Binary(raw) => self.append_binary(kind, raw),
            Datum::Text(raw) => self.append_text(kind, raw),
        }
    }

    fn append_binary(&mut self, kind: ColumnKind, raw: &[u8]) -> Result<(), ValueError> {
        match (self, kind) {
            (Self::Decimal(b, _), ColumnKind::Money) => {
                b.append_value(i128::from(i64::from_be_bytes(fixed(raw)?)))
            }
            (Self::Utf8(b), ColumnKind::TimeTz) => {
                let micros = i64::from_be_bytes(fixed(&raw[..8.min(raw.len())])?);
                let zone = i32::from_be_bytes(fixed(raw.get(8..).unwrap_or_default())?);
                b.append_value(format_timetz(micros, zone))
            }
            (Self::Utf8(b), ColumnKind::Interval) => {
                let micros = i64::from_be_bytes(fixed(raw.get(..8).unwrap_or_default())?);
                let days = i32::from_be_bytes(fixed(raw.get(8..12).unwrap_or_default())?);
                let months = i32::from_be_bytes(fixed(raw.get(12..).unwrap_or_default())?);
                b.append_value(format_interval(months, days, micros))
            }
            (Self::Utf8(b), ColumnKind::Bits) => b.append_value(format_bits(raw)?),
            (Self::Utf8(b), ColumnKind::Inet) => b.append_value(format_inet(raw)?),
            (Self::Utf8(b), ColumnKind::MacAddr) => {
                // Written straight into the builder; the empty append ends the value.
                for (i, x) in raw.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ":" };
                    let _ = std::fmt::Write::write_fmt(b, format_args!("{sep}{x:02x}"));
                }
                b.append_value("")
            }
            (Self::Utf8(b), ColumnKind::Time) => {
                b.append_value(format_time(i64::from_be_bytes(fixed(raw)?)))
            }
            (Self::List(l), _) => return l.append_binary(raw),
            (Self::Bool(b), _) => b.append_value(fixed::<1>(raw)?[0] != 0),
            (Self::Int16(b), _) => b.append_value(i16::from_be_bytes(fixed(raw)?)),
            (Self::Int32(b), _) => b.append_value(i32::from_be_bytes(fixed(raw)?)),
            (Self::Int64(b), ColumnKind::Oid) => {
                b.append_value(i64::from(u32::from_be_bytes(fixed(raw)?)))
            }
            (Self::Int64(b), _) => b.append_value(i64::from_be_bytes(fixed(raw)?)),
            (Self::Float32(b), _) => b.append_value(f32::from_be_bytes(fixed(raw)?)),
            (Self::Float64(b), _) => b.append_value(f64::from_be_bytes(fixed(raw)?)),
            (Self::Decimal(b, scale), _) => {
                b.append_value(Numeric::parse_binary(raw)?.to_scaled(*scale)?)
            }
            (Self::Utf8(b), ColumnKind::NumericText) => {
                b.append_value(Numeric::parse_binary(raw)?.to_string())
            }
            (Self::Utf8(b), ColumnKind::Uuid) => b.append_value(format_uuid(fixed(raw)?)),
            (Self::Utf8(b), ColumnKind::Jsonb) => match raw.split_first() {
                Some((1, json)) => b.append_value(utf8(json)?),
                _ => return Err(bad_bin("jsonb without version byte 1")),
            },
            (Self::Utf8(_), ColumnKind::Other) => {
                return Err(bad_bin(
                    "a type without a binary decoder arrived in binary format; set [source] binary = \"off\"",
                ));
            }
            (Self::Utf8(b), _) => b.append_value(utf8(raw)?),
            (Self::Binary(b), _) => b.append_value(raw),
            (Self::Date(b), _) => {
                b.append_value(date_from_pg_days(i32::from_be_bytes(fixed(raw)?))?)
            }
            (Self::Timestamp(b), _) => {
                b.append_value(micros_from_pg(i64::from_be_bytes(fixed(raw)?))?)
            }
        }
        Ok(())
    }

    fn append_text(&mut self, kind: ColumnKind, raw: &[u8]) -> Result<(), ValueError> {
        let s = utf8(raw)?;
        match self {
            Self::Decimal(b, scale) if kind == ColumnKind::Money => {
                b.append_value(Numeric::parse_text(&money_digits(s))?.to_scaled(*scale)?)
            }
            Self::List(l) => return l.append_text(s),
            Self::Bool(b) => b.append_value(match s {
                "t" | "true" => true,
                "f" | "false" => false,
                _ => return Err(bad_text(format!("{s:?} is not a boolean"))),
            }),
            Self::Int16(b) => b.append_value(parse_text(s)?),
            Self::Int32(b) => b.append_value(parse_text(s)?),
            Self::Int64(b) => b.append_value(parse_text(s)?),
            Self::Float32(b) => b.append_value(parse_float(s)? as f32),
            Self::Float64(b) => b.append_value(parse_float(s)?),
            Self::Decimal(b, scale) => b.append_value(Numeric::parse_text(s)?.to_scaled(*scale)?),
            Self::Utf8(b) => b.append_value(s),
            Self::Binary(b) => b.append_value(parse_bytea_text(s)?),
            Self::Date(b) => b.append_value(parse_date_text(s)?),
            Self::Timestamp(b) => {
                b.append_value(parse_timestamp_text(s, kind == ColumnKind::TimestampTz)?)
            }
        }
        Ok(())
    }

    /// Finishes the column into an array and resets the builder.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal(b, _) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::List(l) => {
                let values = l.values.finish();
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                let field = Arc::new(arrow_schema::Field::new(
                    "element",
                    l.elem.data_type(),
                    true,
                ));
                Arc::new(arrow_array::ListArray::new(
                    field,
                    OffsetBuffer::new(offsets.into()),
                    values,
                    l.nulls.finish(),
                ))
            }
        }
    }
}

impl ListColumn {
    /// PostgreSQL's binary array: ndim, has-null flag, element OID, (length, lower
    /// bound) per dimension, then (length, bytes) per element. Several dimensions are
    /// flattened in row-major order.
    fn append_binary(&mut self, raw: &[u8]) -> Result<(), ValueError> {
        let int = |at: usize| -> Result<i32, ValueError> {
            Ok(i32::from_be_bytes(fixed(
                raw.get(at..at + 4).unwrap_or_default(),
            )?))
        };
        let ndim = int(0)?;
        let mut at = 12;
        let mut count: i64 = if ndim == 0 { 0 } else { 1 };
        for _ in 0..ndim {
            count *= i64::from(int(at)?);
            at += 8;
        }
        // Builders cannot drop values: a failed element leaves the row unusable, and the
        // caller stops at the error before anything else is appended.
        for _ in 0..count {
            let len = int(at)?;
            at += 4;
            if len < 0 {
                self.values.append_null();
                continue;
            }
            let end = at + len as usize;
            let item = raw
                .get(at..end)
                .ok_or_else(|| bad_bin("array element past the end"))?;
            self.values.append(self.elem, Datum::Binary(item))?;
            at = end;
        }
        self.push_end(true);
        Ok(())
    }

    /// PostgreSQL's array text form: `{1,2,NULL,"a b","q\"uote"}`.
    fn append_text(&mut self, s: &str) -> Result<(), ValueError> {
        // An explicit lower bound (`[0:2]={...}`) is dropped; values keep their order.
        let s = match s.find("={") {
            Some(i) if s.starts_with('[') => &s[i + 1..],
            _ => s,
        };
        for item in parse_array_text(s)? {
            match item {
                None => self.values.append_null(),
                Some(v) => self.values.append(self.elem, Datum::Text(v.as_bytes()))?,
            }
        }
        self.push_end(true);
        Ok(())
    }
}

/// Splits a one- or many-dimensional array literal into its elements (flattened).
fn parse_array_text(s: &str) -> Result<Vec<Option<String>>, ValueError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    let mut depth = 0;
    while let Some(c) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' | ' ' => {}
            '"' => {
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => v.extend(chars.next()),
                        Some('"') => break,
                        Some(x) => v.push(x),
                        None => return Err(bad_text("unterminated quoted array element")),
                    }
                }
                out.push(Some(v));
            }
            _ => {
                let mut v = String::from(c);
                while let Some(&x) = chars.peek() {
                    if x == ',' || x == '}' {
                        break;
                    }
                    v.push(x);
                    chars.next();
                }
                let v = v.trim_end().to_string();
                out.push(if v == "NULL" { None } else { Some(v) });
            }
        }
    }
    if depth != 0 {
        return Err(bad_text("unbalanced braces in array"));
    }
    Ok(out)
}

/// `money`'s text form (`$1,234.56`, `-$1,234.56`) → a plain decimal.
fn money_digits(s: &str) -> String {
    let negative = s.contains('-') || s.starts_with('(');
    let digits: String = s
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    if negative {
        format!("-{digits}")
    } else {
        digits
    }
}

/// Seconds with the fraction PostgreSQL prints (trailing zeros dropped).
fn seconds(micros_of_minute: i64) -> String {
    let (sec, frac) = (micros_of_minute / 1_000_000, micros_of_minute % 1_000_000);
    if frac == 0 {
        format!("{sec:02}")
    } else {
        let f = format!("{frac:06}");
        format!("{sec:02}.{}", f.trim_end_matches('0'))
    }
}

/// `time` as PostgreSQL prints it: `12:34:56`, `12:34:56.5`, `24:00:00`.
fn format_time(micros: i64) -> String {
    let (h, m) = (micros / 3_600_000_000, micros / 60_000_000 % 60);
    format!("{h:02}:{m:02}:{}", seconds(micros % 60_000_000))
}

/// `timetz` as PostgreSQL prints it: `12:34:56.5+02`, `01:02:03-03:30`.
fn format_timetz(micros: i64, zone_west_secs: i32) -> String {
    let (h, m) = (micros / 3_600_000_000, micros / 60_000_000 % 60);
    let offset = -zone_west_secs;
    let sign = if offset < 0 { '-' } else { '+' };
    let o = offset.unsigned_abs();
    let mut tz = format!("{sign}{:02}", o / 3600);
    if o % 3600 != 0 {
        tz.push_str(&format!(":{:02}", o / 60 % 60));
        if o % 60 != 0 {
            tz.push_str(&format!(":{:02}", o % 60));
        }
    }
    format!("{h:02}:{m:02}:{}{tz}", seconds(micros % 60_000_000))
}

/// `interval` as PostgreSQL prints it with `IntervalStyle = postgres`.
fn format_interval(months: i32, days: i32, micros: i64) -> String {
    let mut out = String::new();
    let mut before_negative = false;
    let mut zero = true;
    for (v, unit) in [
        (i64::from(months / 12), "year"),
        (i64::from(months % 12), "mon"),
        (i64::from(days), "day"),
    ] {
        if v != 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            let plus = if before_negative && v > 0 { "+" } else { "" };
            out.push_str(&format!(
                "{plus}{v} {unit}{}",
                if v == 1 { "" } else { "s" }
            ));
            before_negative = v < 0;
            zero = false;
        }
    }
    if zero || micros != 0 {
        if !out.is_empty() {
            out.push(' ');
        }
        let sign = if micros < 0 {
            "-"
        } else if before_negative {
            "+"
        } else {
            ""
        };
        let a = micros.unsigned_abs() as i64;
        out.push_str(&format!(
            "{sign}{:02}:{:02}:{}",
            a / 3_600_000_000,
            a / 60_000_000 % 60,
            seconds(a % 60_000_000)
        ));
    }
    out
}

/// `bit`/`varbit` binary (bit count, then bytes) → `0101…`.
fn format_bits(raw: &[u8]) -> Result<String, ValueError> {
    let n = usize::try_from(i32::from_be_bytes(fixed(raw.get(..4).unwrap_or_default())?))
        .map_err(|_| bad_bin("negative bit length"))?;
    let bytes = raw.get(4..).unwrap_or_default();
    if bytes.len() * 8 < n {
        return Err(bad_bin("bit string shorter than its length"));
    }
    Ok((0..n)
        .map(|i| {
            if bytes[i / 8] & (0x80 >> (i % 8)) != 0 {
                '1'
            } else {
                '0'
            }
        })
        .collect())
}

/// `inet`/`cidr` binary (family, bits, is_cidr, length, address) → their text form.
fn format_inet(raw: &[u8]) -> Result<String, ValueError> {
    let [family, bits, is_cidr, n] = fixed::<4>(raw.get(..4).unwrap_or_default())?;
    let addr = raw
        .get(4..4 + usize::from(n))
        .ok_or_else(|| bad_bin("short inet"))?;
    let (text, max) = match family {
        2 => {
            let a: [u8; 4] = fixed(addr)?;
            (std::net::Ipv4Addr::from(a).to_string(), 32)
        }
        3 => {
            let a: [u8; 16] = fixed(addr)?;
            (std::net::Ipv6Addr::from(a).to_string(), 128)
        }
        _ => return Err(bad_bin("unknown inet family")),
    };
    Ok(if is_cidr != 0 || bits != max {
        format!("{text}/{bits}")
    } else {
        text
    })
}

/// The day (since 1970-01-01) of a date-like value, for `year=/month=/day=` partitions
/// (timestamptz: in UTC).
pub fn datum_epoch_day(kind: ColumnKind, datum: Datum<'_>) -> Result<Option<i32>, ValueError> {
    const FIRST: i32 = NaiveDate::MIN.to_epoch_days();
    const LAST: i32 = NaiveDate::MAX.to_epoch_days();
    let days = match (kind, datum) {
        (_, Datum::Null | Datum::Unchanged) => return Ok(None),
        (ColumnKind::Date, Datum::Binary(raw)) => {
            date_from_pg_days(i32::from_be_bytes(fixed(raw)?))
        }
        (ColumnKind::Date, Datum::Text(raw)) => parse_date_text(utf8(raw)?),
        (_, Datum::Binary(raw)) => micros_from_pg(i64::from_be_bytes(fixed(raw)?))
            .map(|us| us.div_euclid(86_400_000_000) as i32),
        (_, Datum::Text(raw)) => parse_timestamp_text(utf8(raw)?, kind == ColumnKind::TimestampTz)
            .map(|us| us.div_euclid(86_400_000_000) as i32),
    };
    match days {
        // Dates beyond chrono's range cannot be rendered as a partition path.
        Ok(d) => Ok((FIRST..=LAST).contains(&d).then_some(d)),
        // Infinite dates have no partition; the caller files them under the default partition.
        Err(ValueError::Unrepresentable(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], ValueError> {
    raw.try_into()
        .map_err(|_| bad_bin(format!("expected {N} bytes, got {}", raw.len())))
}

fn utf8(raw: &[u8]) -> Result<&str, ValueError> {
    std::str::from_utf8(raw).map_err(|e| ValueError::Malformed {
        format: "text",
        detail: format!("not valid UTF-8: {e}"),
    })
}

fn parse_text<T: std::str::FromStr>(s: &str) -> Result<T, ValueError> {
    s.parse()
        .map_err(|_| bad_text(format!("{s:?} is not a number")))
}

fn parse_float(s: &str) -> Result<f64, ValueError> {
    match s {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => parse_text(s),
    }
}

/// `date 'infinity'`: 9999-12-31, the last day every reader (Athena, Spark, Trino,
/// DuckDB, pyarrow) supports, in days since 1970-01-01.
pub const DATE_INFINITY: i32 = 2_932_896;
/// `date '-infinity'`: 0001-01-01.
pub const DATE_NEG_INFINITY: i32 = -719_162;
/// `timestamp 'infinity'`: 9999-12-31 23:59:59.999999, in microseconds since 1970.
pub const TIMESTAMP_INFINITY: i64 = 253_402_300_799_999_999;
/// `timestamp '-infinity'`: 0001-01-02 00:00:00, the earliest instant PySpark converts
/// (it turns 0001-01-01 into year 0 and fails).
pub const TIMESTAMP_NEG_INFINITY: i64 = -62_135_510_400_000_000;

fn date_from_pg_days(days: i32) -> Result<i32, ValueError> {
    match days {
        // ±infinity: the extremes every reader can hold (Spark cannot hold DuckDB's
        // ±(2^31 - 1) days), so comparisons with real dates keep their result.
        i32::MAX => Ok(DATE_INFINITY),
        i32::MIN => Ok(DATE_NEG_INFINITY),
        d => d
            .checked_add(PG_EPOCH_DAYS)
            .ok_or(ValueError::Unrepresentable("date out of range")),
    }
}

fn micros_from_pg(us: i64) -> Result<i64, ValueError> {
    match us {
        i64::MAX => Ok(TIMESTAMP_INFINITY),
        i64::MIN => Ok(TIMESTAMP_NEG_INFINITY),
        us => us
            .checked_add(PG_EPOCH_MICROS)
            .ok_or(ValueError::Unrepresentable("timestamp out of range")),
    }
}

fn format_uuid(b: [u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 0xF)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn parse_bytea_text(s: &str) -> Result<Vec<u8>, ValueError> {
    if let Some(hex) = s.strip_prefix("\\x") {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(bad_text("bytea hex digit expected")),
        };
        let h = hex.as_bytes();
        if h.len() % 2 != 0 {
            return Err(bad_text("odd number of hex digits in bytea"));
        }
        return h
            .chunks(2)
            .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
            .collect();
    }
    // bytea_output = 'escape': backslash-escaped octets.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = b
                .get(i + 1..i + 4)
                .ok_or_else(|| bad_text("truncated bytea escape"))?;
            let v = oct.iter().try_fold(0u16, |acc, c| match c {
                b'0'..=b'7' => Ok(acc * 8 + u16::from(c - b'0')),
                _ => Err(bad_text("bad bytea octal escape")),
            })?;
            out.push(u8::try_from(v).map_err(|_| bad_text("bytea escape out of range"))?);
            i += 4;
        }
    }
    Ok(out)
}

fn split_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

fn parse_naive_date(s: &str) -> Result<NaiveDate, ValueError> {
    let (s, bc) = split_bc(s);
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| bad_text(format!("{s:?} is not an ISO date")))?;
    if bc {
        use chrono::Datelike;
        // 1 BC is year 0 in the proleptic Gregorian calendar.
        d.with_year(1 - d.year())
            .ok_or(ValueError::Unrepresentable("date out of range"))
    } else {
        Ok(d)
    }
}

fn parse_date_text(s: &str) -> Result<i32, ValueError> {
    match s {
        "infinity" => Ok(DATE_INFINITY),
        "-infinity" => Ok(DATE_NEG_INFINITY),
        _ => Ok(parse_naive_date(s)?.to_epoch_days()),
    }
}

fn parse_timestamp_text(s: &str, with_zone: bool) -> Result<i64, ValueError> {
    match s {
        "infinity" => return Ok(TIMESTAMP_INFINITY),
        "-infinity" => return Ok(TIMESTAMP_NEG_INFINITY),
        _ => {}
    }
    let (body, bc) = split_bc(s);
    let (date, rest) = body
        .split_once(' ')
        .ok_or_else(|| bad_text(format!("{s:?} is not an ISO timestamp")))?;
    let (time, offset_secs) = if with_zone {
        let at = rest
            .rfind(['+', '-'])
            .ok_or_else(|| bad_text(format!("{s:?} has no UTC offset")))?;
        let (time, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut secs = 0i64;
        for (i, part) in off[1..].split(':').enumerate() {
            let v: i64 = parse_text(part)?;
            secs += v * [3600, 60, 1]
                .get(i)
                .copied()
                .ok_or_else(|| bad_text("bad UTC offset"))?;
        }
        (time, sign * secs)
    } else {
        (rest, 0)
    };
    let date = parse_naive_date(&format!("{date}{}", if bc { " BC" } else { "" }))?;
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S%.f")
        .map_err(|_| bad_text(format!("{s:?} has a bad time")))?;
    let micros = NaiveDateTime::new(date, time).and_utc().timestamp_micros();
    Ok(micros - offset_secs * 1_000_000)
}

/// A PostgreSQL `numeric` in base-10000 digits, as sent in binary format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numeric {
    special: Option<&'static str>,
    negative: bool,
    weight: i16,
    dscale: u16,
    digits: Vec<i16>,
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

impl Numeric {
    /// Parses the binary send format.
    pub fn parse_binary(raw: &[u8]) -> Result<Self, ValueError> {
        if raw.len() < 8 {
            return Err(bad_bin("numeric header too short"));
        }
        let u16_at = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
        let ndigits = usize::from(u16_at(0));
        let weight = u16_at(2) as i16;
        let sign = u16_at(4);
        let dscale = u16_at(6);
        if raw.len() != 8 + 2 * ndigits {
            return Err(bad_bin("numeric digit count does not match length"));
        }
        let special = match sign {
            0 | NUMERIC_NEG => None,
            NUMERIC_NAN => Some("NaN"),
            NUMERIC_PINF => Some("Infinity"),
            NUMERIC_NINF => Some("-Infinity"),
            _ => return Err(bad_bin("bad numeric sign")),
        };
        let digits = (0..ndigits).map(|i| u16_at(8 + 2 * i) as i16).collect();
        Ok(Self {
            special,
            negative: sign == NUMERIC_NEG,
            weight,
            dscale,
            digits,
        })
    }

    /// Parses the text output format (`-123.4500`, `NaN`, `Infinity`).
    pub fn parse_text(s: &str) -> Result<Self, ValueError> {
        let special = match s {
            "NaN" => Some("NaN"),
            "Infinity" => Some("Infinity"),
            "-Infinity" => Some("-Infinity"),
            _ => None,
        };
        if special.is_some() {
            return Ok(Self {
                special,
                negative: false,
                weight: 0,
                dscale: 0,
                digits: vec![],
            });
        }
        let (negative, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
        {
            return Err(bad_text(format!("{s:?} is not a numeric")));
        }
        // Regroup decimal digits into base-10000 digits aligned on the decimal point.
        let int_pad = (4 - int.len() % 4) % 4;
        let frac_pad = (4 - frac.len() % 4) % 4;
        let all: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
            .chain(int.bytes())
            .chain(frac.bytes())
            .chain(std::iter::repeat_n(b'0', frac_pad))
            .collect();
        let digits: Vec<i16> = all
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0')))
            .collect();
        let int_groups = (int.len() + int_pad) / 4;
        Ok(Self {
            special: None,
            negative,
            weight: int_groups as i16 - 1,
            dscale: u16::try_from(frac.len()).map_err(|_| bad_text("numeric scale too large"))?,
            digits,
        })
    }

    /// The value times 10^scale as an integer, for DECIMAL(p, scale).
    pub fn to_scaled(&self, scale: i8) -> Result<i128, ValueError> {
        if let Some(s) = self.special {
            return Err(ValueError::Unrepresentable(match s {
                "NaN" => "numeric 'NaN'",
                "Infinity" => "numeric 'Infinity'",
                _ => "numeric '-Infinity'",
            }));
        }
        let mut acc: i128 = 0;
        for (i, &d) in self.digits.iter().enumerate() {
            if d == 0 {
                continue;
            }
            let exp = 4 * (i32::from(self.weight) - i as i32) + i32::from(scale);
            let term = if exp >= 0 {
                pow10(exp).and_then(|p| i128::from(d).checked_mul(p))
            } else {
                let div = pow10(-exp).unwrap_or(i128::MAX);
                if i128::from(d) % div != 0 {
                    return Err(ValueError::Unrepresentable(
                        "numeric with more decimals than the column's scale",
                    ));
                }
                Some(i128::from(d) / div)
            };
            acc = term
                .and_then(|t| acc.checked_add(t))
                .ok_or(ValueError::Unrepresentable(
                    "numeric too large for DECIMAL(38)",
                ))?;
        }
        Ok(if self.negative { -acc } else { acc })
    }
}

fn pow10(exp: i32) -> Option<i128> {
    (exp <= 38).then(|| 10i128.pow(exp as u32))
}

impl std::fmt::Display for Numeric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = self.special {
            return f.write_str(s);
        }
        let digit = |i: i32| -> i16 {
            usize::try_from(i)
                .ok()
                .and_then(|i| self.digits.get(i))
                .copied()
                .unwrap_or(0)
        };
        let mut out = String::new();
        if self.negative {
            out.push('-');
        }
        if self.weight < 0 {
            out.push('0');
        } else {
            for i in 0..=i32::from(self.weight) {
                if i == 0 {
                    out.push_str(&digit(i).to_string());
                } else {
                    out.push_str(&format!("{:04}", digit(i)));
                }
            }
        }
        if self.dscale > 0 {
            out.push('.');
            let mut frac = String::new();
            let mut i = i32::from(self.weight) + 1;
            while frac.len() < usize::from(self.dscale) {
                frac.push_str(&format!("{:04}", digit(i)));
                i += 1;
            }
            frac.truncate(usize::from(self.dscale));
            out.push_str(&frac);
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Decimal128Array, StringArray, TimestampMicrosecondArray};

    fn numeric_bin(weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_binary_and_text_agree() {
        // 12345.67 = [1, 2345, 6700] weight 1
        let bin = Numeric::parse_binary(&numeric_bin(1, 0, 2, &[1, 2345, 6700])).expect("valid");
        assert_eq!(bin.to_string(), "12345.67");
        assert_eq!(bin.to_scaled(2), Ok(1_234_567));
        assert_eq!(bin.to_scaled(4), Ok(123_456_700));
        let text = Numeric::parse_text("12345.67").expect("valid");
        assert_eq!(text.to_scaled(2), Ok(1_234_567));
        let neg = Numeric::parse_binary(&numeric_bin(-1, NUMERIC_NEG, 3, &[10])).expect("valid");
        assert_eq!(neg.to_string(), "-0.001");
        assert_eq!(neg.to_scaled(3), Ok(-1));
        assert_eq!(
            Numeric::parse_text("-0.001").and_then(|n| n.to_scaled(3)),
            Ok(-1)
        );
        assert_eq!(Numeric::parse_text("0").and_then(|n| n.to_scaled(2)), Ok(0));
        let big = "99999999999999999999999999999999999999";
        assert_eq!(
            Numeric::parse_text(big).and_then(|n| n.to_scaled(0)),
            Ok(big.parse::<i128>().expect("fits"))
        );
        assert!(matches!(
            Numeric::parse_text("NaN").and_then(|n| n.to_scaled(2)),
            Err(ValueError::Unrepresentable(_))
        ));
        assert!(matches!(
            Numeric::parse_text("0.125").and_then(|n| n.to_scaled(2)),
            Err(ValueError::Unrepresentable(_))
        ));
    }

    #[test]
    fn decodes_timestamps_both_formats() {
        let mut b = ColumnBuilder::new(ColumnKind::TimestampTz, 2);
        // 2025-07-24 01:05:23 UTC is 806634323 s after 2000-01-01.
        b.append(
            ColumnKind::TimestampTz,
            Datum::Binary(&(806_634_323i64 * 1_000_000).to_be_bytes()),
        )
        .expect("bin");
        b.append(
            ColumnKind::TimestampTz,
            Datum::Text(b"2025-07-24 03:05:23+02"),
        )
        .expect("text");
        let arr = b.finish();
        let arr = arr
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect("ts");
        assert_eq!(arr.value(0), arr.value(1));
        assert_eq!(arr.value(0), 1_753_319_123_000_000);
    }

    #[test]
    fn decimal_and_uuid() {
        let kind = ColumnKind::Decimal {
            precision: 10,
            scale: 2,
        };
        let mut b = ColumnBuilder::new(kind, 1);
        b.append(kind, Datum::Binary(&numeric_bin(0, 0, 2, &[19, 9900])))
            .expect("dec");
        let arr = b.finish();
        assert_eq!(
            arr.as_any()
                .downcast_ref::<Decimal128Array>()
                .expect("dec")
                .value(0),
            1999
        );
        let mut u = ColumnBuilder::new(ColumnKind::Uuid, 1);
        let raw: Vec<u8> = (0u8..16).collect();
        u.append(ColumnKind::Uuid, Datum::Binary(&raw))
            .expect("uuid");
        let arr = u.finish();
        assert_eq!(
            arr.as_any()
                .downcast_ref::<StringArray>()
                .expect("str")
                .value(0),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }

    #[test]
    fn infinity_is_the_readers_extreme_in_both_formats() {
        let mut b = ColumnBuilder::new(ColumnKind::Date, 2);
        b.append(ColumnKind::Date, Datum::Binary(&i32::MAX.to_be_bytes()))
            .expect("bin");
        b.append(ColumnKind::Date, Datum::Text(b"-infinity"))
            .expect("text");
        let arr = b.finish();
        let arr = arr
            .as_any()
            .downcast_ref::<arrow_array::Date32Array>()
            .expect("date");
        assert_eq!(
            (arr.value(0), arr.value(1)),
            (DATE_INFINITY, DATE_NEG_INFINITY)
        );
        let last = chrono::NaiveDate::from_ymd_opt(9999, 12, 31).expect("date");
        let first = chrono::NaiveDate::from_ymd_opt(1, 1, 1).expect("date");
        assert_eq!(last.to_epoch_days(), DATE_INFINITY);
        assert_eq!(first.to_epoch_days(), DATE_NEG_INFINITY);
        let end = last
            .and_hms_micro_opt(23, 59, 59, 999_999)
            .expect("time")
            .and_utc();
        assert_eq!(end.timestamp_micros(), TIMESTAMP_INFINITY);
        let start = chrono::NaiveDate::from_ymd_opt(1, 1, 2)
            .expect("date")
            .and_hms_opt(0, 0, 0)
            .expect("time")
            .and_utc();
        assert_eq!(start.timestamp_micros(), TIMESTAMP_NEG_INFINITY);
        let mut t = ColumnBuilder::new(ColumnKind::Time, 2);
        t.append(
            ColumnKind::Time,
            Datum::Binary(&(45_296_500_000i64).to_be_bytes()),
        )
        .expect("bin");
        t.append(ColumnKind::Time, Datum::Text(b"24:00:00"))
            .expect("text");
        let t = t.finish();
        let t = t
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .expect("string");
        assert_eq!((t.value(0), t.value(1)), ("12:34:56.5", "24:00:00"));
        // A NaN numeric cannot be a DECIMAL: nothing is appended, the caller stores NULL.
        let kind = ColumnKind::Decimal {
            precision: 5,
            scale: 2,
        };
        let mut d = ColumnBuilder::new(kind, 1);
        assert!(matches!(
            d.append(kind, Datum::Text(b"NaN")),
            Err(ValueError::Unrepresentable(_))
        ));
        assert_eq!(d.finish().len(), 0);
    }

    #[test]
    fn formats_like_postgres() {
        assert_eq!(
            format_interval(14, 3, 4 * 3_600_000_000 + 5 * 60_000_000 + 6_500_000),
            "1 year 2 mons 3 days 04:05:06.5"
        );
        assert_eq!(format_interval(0, 0, 0), "00:00:00");
        assert_eq!(format_interval(0, -1, 3_600_000_000), "-1 days +01:00:00");
        assert_eq!(
            format_interval(-13, 0, -1),
            "-1 years -1 mons -00:00:00.000001"
        );
        assert_eq!(
            format_timetz(12 * 3_600_000_000 + 500_000, -7200),
            "12:00:00.5+02"
        );
        assert_eq!(format_timetz(0, 12600), "00:00:00-03:30");
        assert_eq!(
            format_bits(&[0, 0, 0, 5, 0b1010_1000]),
            Ok("10101".to_string())
        );
        assert_eq!(
            format_inet(&[2, 32, 0, 4, 10, 0, 0, 1]),
            Ok("10.0.0.1".to_string())
        );
        assert_eq!(
            format_inet(&[2, 24, 1, 4, 10, 0, 0, 0]),
            Ok("10.0.0.0/24".to_string())
        );
        assert_eq!(
            parse_array_text(r#"{1,NULL,"a b","q\"x",{z}}"#),
            Ok(vec![
                Some("1".into()),
                None,
                Some("a b".into()),
                Some("q\"x".into()),
                Some("z".into())
            ])
        );
    }

    #[test]
    fn bytea_text_forms() {
        assert_eq!(parse_bytea_text("\\x00ff"), Ok(vec![0, 255]));
        assert_eq!(
            parse_bytea_text("a\\\\b\\001"),
            Ok(vec![b'a', b'\\', b'b', 1])
        );
    }
}
