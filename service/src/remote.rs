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
            let (mut models, _) = connect(&remote).await?;
            let r = models
                .put_model(pb::PutModelRequest {
                    source: Some(pb::put_model_request::Source::ModelBytes(bytes)),
                    name,
                })
                .await
                .context("PutModel")?
                .into_inner();
            println!("{}@{}", r.name, r.version);
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
                    "{}@{}\ttrees={}\tfeatures={}\tthreshold={:.4}\t{}",
                    m.name,
                    m.version,
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
            println!("deleted {name}@{version}");
        }
    }
    Ok(())
}

/// Scores a JSON-lines file (or stdin) through the API; writes `score,alert`.
pub async fn score(
    address: &str,
    token: Option<&str>,
    model: &str,
    pipeline: &str,
    input: &str,
    output: &str,
) -> anyhow::Result<()> {
    let (_, mut scoring) = client::connect(address, token).await?;
    let reader: Box<dyn BufRead> = if input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input).with_context(|| format!("cannot read {input}"))?,
        ))
    };
    let sink: Box<dyn Write> = if output == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(output).with_context(|| format!("cannot write {output}"))?)
    };
    let mut sink = std::io::BufWriter::new(sink);
    writeln!(sink, "score,alert")?;
    let mut lines = reader.lines();
    let (mut rows, mut alerts) = (0usize, 0usize);
    loop {
        let mut records = Vec::with_capacity(CHUNK);
        for line in lines.by_ref() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            records.push(line.into_bytes());
            if records.len() == CHUNK {
                break;
            }
        }
        if records.is_empty() {
            break;
        }
        let r = scoring
            .score(pb::ScoreRequest {
                model: model.to_owned(),
                pipeline: pipeline.to_owned(),
                records,
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
