//! Writing scores as CSV: `score,alert[,z_<name>...]`, one line per input row.

use crate::score::RowScore;
use std::io::Write;

/// Writes the header and one line per row. `z` is row-major with
/// `z_names.len()` values per row; `alerts[row]` is the decision.
pub fn write_scores(
    out: &mut impl Write,
    scores: &[RowScore],
    alerts: &[bool],
    z_names: &[String],
    z: &[f32],
) -> std::io::Result<()> {
    out.write_all(b"score,alert")?;
    for name in z_names {
        write!(out, ",z_{name}")?;
    }
    out.write_all(b"\n")?;
    let nz = z_names.len();
    let mut buf = ryu::Buffer::new();
    for (row, (s, &alert)) in scores.iter().zip(alerts).enumerate() {
        out.write_all(buf.format(s.score).as_bytes())?;
        out.write_all(if alert { b",1" } else { b",0" })?;
        for &value in &z[row * nz..(row + 1) * nz] {
            out.write_all(b",")?;
            out.write_all(buf.format(value).as_bytes())?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_header_scores_alerts_and_z_columns() {
        let scores = [
            RowScore {
                score: 0.5,
                mean_path: 1.0,
            },
            RowScore {
                score: 0.75,
                mean_path: 2.0,
            },
        ];
        let mut out = Vec::new();
        write_scores(
            &mut out,
            &scores,
            &[false, true],
            &["v".into()],
            &[0.0, f32::INFINITY],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "score,alert,z_v\n0.5,0,0.0\n0.75,1,inf\n"
        );
    }
}
