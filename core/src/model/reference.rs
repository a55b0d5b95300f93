//! How models are named: `name@version` in logs, messages, the registry
//! topic and its cache's file names, and how a pipeline's `model` setting
//! (a file, or a registry name) finds its model. Apart from the registry so
//! that what names models needs nothing of what stores them.

use super::{pb, ModelError};
use std::path::Path;

/// Splits `name` or `name@version`.
pub fn parse_id(id: &str) -> Result<(String, Option<u32>), String> {
    match id.rsplit_once('@') {
        None => Ok((id.to_owned(), None)),
        Some((name, v)) => {
            let version = v
                .parse()
                .map_err(|_| format!("'{id}': version '{v}' is not a number"))?;
            Ok((name.to_owned(), Some(version)))
        }
    }
}

/// Loads the model a pipeline names: a model file, or else a registry name
/// (`name` for its newest version, or `name@version`) looked up in the
/// registry's cache folder `dir`.
pub fn resolve_model(spec: &Path, dir: &Path) -> Result<pb::Model, ModelError> {
    if spec.is_file() {
        return super::load(spec);
    }
    let text = spec.display().to_string();
    if let Ok((name, version)) = parse_id(&text) {
        if check_name(&name).is_ok() {
            let cached = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let file = e.ok()?.file_name().into_string().ok()?;
                    let (n, v) = parse_id(file.strip_suffix(".isoflow")?).ok()?;
                    (n == name && version.is_none_or(|want| v == Some(want))).then_some((v?, file))
                })
                .max();
            if let Some((_, file)) = cached {
                return super::load(&dir.join(file));
            }
        }
    }
    Err(ModelError::Read {
        path: text.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no such file, and no model '{text}' in the registry cache {} (put one with `isoflow model put`)",
                dir.display()
            ),
        ),
    })
}

/// Checks a model name: non-empty, letters, digits, `_`, `-`, `.` (a name
/// is part of file names: nothing else may pass).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "model name '{name}': use 1 to 128 letters, digits, '_', '-' or '.'"
        ))
    }
}

/// `name@version`: how a model version is named in logs, messages, the
/// registry topic and its file names.
pub fn version_id(name: &str, version: u32) -> String {
    format!("{name}@{version}")
}

/// [`version_id`] of `model`.
pub fn model_id(model: &pb::Model) -> String {
    version_id(&model.name, model.version)
}
