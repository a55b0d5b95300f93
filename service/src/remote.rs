//! `isoflow model put|list|get|activate|delete` and `isoflow score --grpc`:
//! thin gRPC calls against a running `isoflow run`.

use crate::{ModelCommand, Remote};
use anyhow::Context;
use isoflow::api::client;
use isoflow::pb;
use std::io::{BufRead, Write};

/// Records per `Score` call when streaming a file through the API.
const CHUNK: usize = 10_000;

/// Runs one registry command and prints its result.
pub async fn model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Inspect { .. } => unreachable!("inspect is local"),
        ModelCommand::Put { file, name, remote } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Refused here, with the same message the server would give, so a
            // bad file never costs an upload.
            isoflow::model::decode(&bytes).map_err(|source| {
                isoflow::model::ModelError::InFile {
                    path: file.display().to_string(),
                    source: Box::new(source),
                }
            })?;
            let (mut models, _) = connect(&remote).await?;
            let r = models
                .put_model(pb::PutModelRequest {
                    source: Some(pb::put_model_request::Source::ModelBytes(bytes)),
                    name,
                })
                .await
                .context("PutModel")?
                .into_inner();
            println!("{}", isoflow::registry::version_id(&r.name, r.version));
        }
        ModelCommand::List { name, remote } => {
            let (mut models, _) = connect(&remote).await?;
            let r = models
                .list_models(pb::ListModelsRequest { name })
                .await
                .context("ListModels")?
                .into_inner();
            for m in r.models {
                let used: Vec<String> = m
                    .used_by
                    .iter()
                    .map(|u| format!("{}:{}", u.pipeline, mode_name(u.mode)))
                    .collect();
                println!(
                    "{}\ttrees={}\tfeatures={}\tthreshold={:.4}\t{}",
                    isoflow::registry::version_id(&m.name, m.version),
                    m.trees,
                    m.features,
                    m.threshold,
                    used.join(",")
                );
            }
        }
        ModelCommand::Get { model, remote } => {
            let (name, version) =
                isoflow::registry::parse_id(&model).map_err(anyhow::Error::msg)?;
            let (mut models, _) = connect(&remote).await?;
            let r = models
                .get_model(pb::GetModelRequest {
                    name,
                    version: version.unwrap_or(0),
                    include_model: false,
                })
                .await
                .context("GetModel")?
                .into_inner();
            let json: serde_json::Value = serde_json::from_str(&r.metadata_json)?;
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        ModelCommand::Activate {
            model,
            pipeline,
            shadow,
            clear_shadow,
            remote,
        } => {
            let (name, version) = match &model {
                Some(m) => isoflow::registry::parse_id(m).map_err(anyhow::Error::msg)?,
                None => (String::new(), None),
            };
            let (mut models, _) = connect(&remote).await?;
            let mode = if shadow || clear_shadow {
                pb::Mode::Shadow
            } else {
                pb::Mode::Live
            };
            let r = models
                .activate_model(pb::ActivateModelRequest {
                    name,
                    version: version.unwrap_or(0),
                    pipeline,
                    mode: mode as i32,
                    clear: clear_shadow,
                })
                .await
                .context("ActivateModel")?
                .into_inner();
            let shown = |s: &str| {
                if s.is_empty() {
                    "none".to_owned()
                } else {
                    s.to_owned()
                }
            };
            println!(
                "{} {}: {} (was {})",
                r.pipeline,
                mode_name(r.mode),
                shown(&r.model),
                shown(&r.previous)
            );
        }
        ModelCommand::Delete { model, remote } => {
            let (name, version) =
                isoflow::registry::parse_id(&model).map_err(anyhow::Error::msg)?;
            let version = version.context("delete needs name@version")?;
            let (mut models, _) = connect(&remote).await?;
            models
                .delete_model(pb::DeleteModelRequest {
                    name: name.clone(),
                    version,
                })
                .await
                .context("DeleteModel")?;
            println!("deleted {}", isoflow::registry::version_id(&name, version));
        }
    }
    Ok(())
}

/// Scores a JSON-lines or CSV file (or stdin) through the API; writes
/// `score,alert`. CSV rows go as JSON objects keyed by the header's column
/// names (numbers as numbers), the form a model trained from CSV reads.
pub async fn score(
    address: &str,
    token: Option<&str>,
    model: &str,
    pipeline: &str,
    input: &str,
    output: &str,
) -> anyhow::Result<()> {
    let (_, mut scoring) = client::connect(address, token).await?;
    let mut reader: Box<dyn BufRead> = if input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input).with_context(|| format!("cannot read {input}"))?,
        ))
    };
    let first = reader
        .fill_buf()?
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace());
    let mut records: Box<dyn Iterator<Item = anyhow::Result<Vec<u8>>>> =
        match isoflow::input::Format::detect(input, first) {
            isoflow::input::Format::JsonLines => Box::new(
                reader
                    .lines()
                    .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                    .map(|l| Ok(l?.into_bytes())),
            ),
            isoflow::input::Format::Csv => csv_as_json(reader)?,
        };
    let sink = isoflow::scores_csv::create(output.as_ref())
        .with_context(|| format!("cannot write {output}"))?;
    let mut sink = std::io::BufWriter::new(sink);
    writeln!(sink, "score,alert")?;
    let (mut rows, mut alerts) = (0usize, 0usize);
    loop {
        let chunk: Vec<Vec<u8>> = records
            .by_ref()
            .take(CHUNK)
            .collect::<anyhow::Result<_>>()?;
        if chunk.is_empty() {
            break;
        }
        let r = scoring
            .score(pb::ScoreRequest {
                model: model.to_owned(),
                pipeline: pipeline.to_owned(),
                records: chunk,
                ..Default::default()
            })
            .await
            .with_context(|| format!("Score (records {} and on)", rows + 1))?
            .into_inner();
        for s in &r.results {
            writeln!(sink, "{},{}", s.score, u8::from(s.alert))?;
            alerts += usize::from(s.alert);
        }
        rows += r.results.len();
    }
    sink.flush()?;
    if output != "-" {
        eprintln!("scored {rows} records through {address}: {alerts} alerts -> {output}");
    }
    Ok(())
}

/// CSV rows as JSON objects keyed by the header's column names; a field
/// that reads as a finite number goes as a number, anything else as text.
fn csv_as_json(
    reader: Box<dyn BufRead>,
) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Vec<u8>>>>> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let names: Vec<String> = csv
        .headers()
        .context("cannot read the CSV header")?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    Ok(Box::new(csv.into_records().enumerate().map(
        move |(i, row)| {
            let row = row.with_context(|| format!("CSV row {}", i + 1))?;
            let object: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(row.iter())
                .map(|(name, field)| {
                    let value = match field.trim().parse::<f64>() {
                        Ok(x) if x.is_finite() => serde_json::json!(x),
                        _ => serde_json::Value::String(field.to_owned()),
                    };
                    (name.clone(), value)
                })
                .collect();
            Ok(serde_json::to_vec(&object)?)
        },
    )))
}

async fn connect(
    remote: &Remote,
) -> anyhow::Result<(
    pb::model_service_client::ModelServiceClient<client::Authed>,
    pb::scoring_service_client::ScoringServiceClient<client::Authed>,
)> {
    Ok(client::connect(&remote.grpc, remote.token.as_deref()).await?)
}

fn mode_name(mode: i32) -> &'static str {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Shadow) => "shadow",
        _ => "live",
    }
}
