//! The printed table: one row per measurement.

pub(crate) type Rows = Vec<[String; 5]>;

pub(crate) fn row(
    rows: &mut Rows,
    what: String,
    perch: String,
    base: String,
    ratio: String,
    note: String,
) {
    rows.push([what, perch, base, ratio, note]);
}
