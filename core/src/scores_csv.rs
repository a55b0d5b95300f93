//! Writing scores as CSV: `score,alert[,z_<name>...]`, one line per input row.

use crate::score::RowScore;
use std::io::Write;

/// Where a command's output goes: standard output for `-`, else a new file
/// at `path`.
pub fn create(path: &std::path::Path) -> std::io::Result<Box<dyn Write>> {
    Ok(if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(path)?)
    })
}

/// Rows formatted per parallel work item.
const FORMAT_ROWS: usize = 1 << 16;

/// Writes the header and one line per row. `z` is row-major with
/// `z_names.len()` values per row; `alerts[row]` is the decision. Parts of a
/// big output are formatted on all cores and written in order.
pub fn write_scores(
    out: &mut impl Write,
    scores: &[RowScore],
    alerts: &[bool],
    z_names: &[String],
    z: &[f32],
) -> std::io::Result<()> {
    use rayon::prelude::*;
    out.write_all(b"score,alert")?;
    for name in z_names {
        write!(out, ",z_{name}")?;
    }
    out.write_all(b"\n")?;
    let nz = z_names.len();
    let parts: Vec<Vec<u8>> = scores
        .par_chunks(FORMAT_ROWS)
        .zip(alerts.par_chunks(FORMAT_ROWS))
        .enumerate()
        .map(|(part, (scores, alerts))| {
            let first = part * FORMAT_ROWS;
            let mut text = Vec::with_capacity(scores.len() * (14 + 12 * nz));
            let mut buf = ryu::Buffer::new();
            for (i, (s, &alert)) in scores.iter().zip(alerts).enumerate() {
                let row = first + i;
                text.extend_from_slice(buf.format(s.score).as_bytes());
                text.extend_from_slice(if alert { b",1" } else { b",0" });
                for &value in &z[row * nz..(row + 1) * nz] {
                    text.push(b',');
                    text.extend_from_slice(buf.format(value).as_bytes());
                }
                text.push(b'\n');
            }
            text
        })
        .collect();
    for part in parts {
        out.write_all(&part)?;
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
