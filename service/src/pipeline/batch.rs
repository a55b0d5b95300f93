//! One parsed batch: features, scores, decisions, and every output message
//! queued; the committer waits for the acknowledgements and commits.

use super::commit::{Delivery, Output, Sent};
use super::parse::ParsedBatch;
use super::{PipelineContext, PipelineError, ScoringState, Shadow};
use crate::alerts::{self, Source};
use crate::detector::DetectError;
use crate::dlq;
use crate::input::Columns;
use crate::kafka::{RecordBatch, RecordRef};
use crate::score::RowScore;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Output of the scoring step, computed on a blocking thread.
struct ScoredBatch {
    scores: Vec<RowScore>,
    matrix: Vec<f32>,
    z: Vec<f32>,
    alerts: Vec<bool>,
    shadow_alerts: u64,
    /// The shadow model's id, scores and decisions, when one scored.
    shadow: Option<(String, Vec<RowScore>, Vec<bool>)>,
}

/// Scores and publishes one parsed batch; the returned [`Sent`] is
/// finished (acknowledged, committed, counted) by the committer.
pub(super) async fn process(
    ctx: &PipelineContext,
    state_slot: &mut Option<Box<ScoringState>>,
    shadow_slot: &mut Option<Shadow>,
    parsed: ParsedBatch,
    recycle: impl FnOnce(RecordBatch, Columns),
) -> Result<Sent, PipelineError> {
    let name = &ctx.config.name;
    let topic = ctx.config.input_topic.as_str();
    ctx.metrics
        .records_in
        .fetch_add(parsed.records.len() as u64, Relaxed);
    let mut state = state_slot
        .take()
        .expect("scoring state is returned after every batch");
    let parsed = parsed.for_fields(state.detector.pipeline().wanted(), ctx.max_message_bytes);
    let ParsedBatch {
        records: batch,
        columns,
        accepted,
        rejected,
        flushed_at: started,
        parse_time,
        next_offsets,
        moves,
        ..
    } = parsed;
    let wanted = state.detector.pipeline().wanted().clone();
    let key_field = state
        .model()
        .feature_spec
        .as_ref()
        .map(|s| s.key_field.clone())
        .unwrap_or_default();

    let parsed_at = Instant::now();
    // Score on a blocking thread: the GPU readback or the CPU loop must not
    // stall the runtime.
    let mut shadow = shadow_slot.take();
    let metrics = ctx.metrics.clone();
    let pipeline = name.clone();
    let (state_back, shadow_back, scored, columns) = tokio::task::spawn_blocking(move || {
        if let Err(source) = move_state(&mut state, moves, &metrics, &pipeline) {
            return (state, shadow, Err(source), columns);
        }
        let result = score(&mut state, shadow.as_mut(), &columns);
        (state, shadow, result, columns)
    })
    .await
    .expect("scoring does not panic");
    state = state_back;
    *shadow_slot = shadow_back;
    let scored = match scored {
        Ok(s) => s,
        Err(source) => {
            *state_slot = Some(state);
            return Err(PipelineError::Detect {
                pipeline: name.clone(),
                source,
            });
        }
    };

    let scored_at = Instant::now();
    // Queue every output message; the committer awaits the deliveries.
    let dims = state.detector.pipeline().dims();
    let nz = state.detector.pipeline().z_names().len();
    let mut deliveries = Vec::new();
    let mut alert_count = 0u64;
    let mut alert_texts = Vec::new();
    let live_id = crate::model::reference::model_id(state.model());
    let key_column = wanted.keys.iter().position(|k| *k == key_field);
    let shadow_topic = ctx.config.shadow_scores_topic.as_str();
    let scores_topic = ctx.config.scores_topic.as_str();
    let every_row = !shadow_topic.is_empty() || !scores_topic.is_empty();
    // Shares of the alerting rows, computed together: sixteen rows per walk
    // on the vector walk, and tree by tree, each tree read once for all.
    let alerting_rows: Vec<f32> = (0..accepted.len())
        .filter(|&r| scored.alerts[r])
        .flat_map(|r| &scored.matrix[r * dims..(r + 1) * dims])
        .copied()
        .collect();
    let shares = match state.attribution() {
        Some(attribution) => attribution.rows(&alerting_rows),
        None => vec![0.0; alerting_rows.len()],
    };
    let mut shares = shares.chunks_exact(dims.max(1));
    // Every message is built first and queued after, in one burst: queued
    // within a fraction of a millisecond, a batch's messages leave in one
    // produce request. Built between sends, they spread over two or more,
    // each one work for the broker.
    let mut outgoing: Vec<(Output, usize, String, Vec<u8>)> = Vec::new();
    for (row, &i) in accepted.iter().enumerate() {
        if !(every_row || scored.alerts[row]) {
            continue;
        }
        let record = batch.get(i);
        let value = record.value.unwrap_or_default();
        let source = Source {
            topic,
            partition: record.partition,
            offset: record.offset,
        };
        let key = entity_key(&columns, key_column, row, &key_field, record);
        let event_time = match wanted.time {
            Some(_) => columns.time[row],
            None => record.timestamp_ms.map_or(0.0, |ms| ms as f64 / 1e3),
        };
        if scored.alerts[row] {
            alert_count += 1;
            let alert = alerts::build(
                state.model(),
                state.detector.pipeline(),
                &alerts::Scored {
                    source: source.clone(),
                    key: &key,
                    event_time,
                    score: scored.scores[row].score,
                    features: &scored.matrix[row * dims..(row + 1) * dims],
                    z: &scored.z[row * nz..(row + 1) * nz],
                    shares: shares.next().expect("one row of shares per alert"),
                    record: value,
                },
            );
            let payload = serde_json::to_vec(&alert).expect("alert serializes");
            alert_texts.push(String::from_utf8(payload.clone()).expect("JSON is UTF-8"));
            outgoing.push((Output::Alerts, i, key.clone(), payload));
        }
        if let (false, Some((model, scores, alerts))) = (shadow_topic.is_empty(), &scored.shadow) {
            // `alert` is what the shadow would have decided, never published
            // as an alert.
            let payload = score_message(&source, &key, model, scores[row].score, alerts[row], true);
            outgoing.push((Output::ShadowScores, i, key.clone(), payload));
        }
        if !scores_topic.is_empty() {
            let (score, alert) = (scored.scores[row].score, scored.alerts[row]);
            let payload = score_message(&source, &key, &live_id, score, alert, false);
            outgoing.push((Output::Scores, i, key, payload));
        }
    }
    // A message the client refuses for good (too large, unknown topic, not
    // authorised) is never retried: its record goes to the DLQ instead.
    let mut dead: Vec<(usize, dlq::Rejection)> = rejected;
    for (output, i, key, payload) in &outgoing {
        let record = batch.get(*i);
        let at = (record.partition, record.offset);
        match send(ctx, *output, key.as_bytes(), payload, None).await {
            Ok(future) => deliveries.push(Delivery {
                output: *output,
                record: at,
                future,
            }),
            Err(e) => {
                let topic = output.topic(&ctx.config);
                tracing::warn!(pipeline = %name, topic, partition = at.0, offset = at.1, error = %e, "output refused; record goes to the DLQ");
                if !dead.iter().any(|(d, _)| d == i) {
                    dead.push((
                        *i,
                        dlq::Rejection {
                            class: dlq::UNDELIVERABLE,
                            reason: format!("{} for topic '{topic}' refused: {e}", output.kind()),
                        },
                    ));
                }
            }
        }
    }
    for (i, rejection) in &dead {
        let record = batch.get(*i);
        let header_bytes = record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 8)
            .sum();
        let copy = dlq::bounded(
            record.key.unwrap_or_default(),
            record.value.unwrap_or_default(),
            header_bytes,
            ctx.produce_limit,
        );
        let headers = dlq::headers_of_copy(
            record.headers.iter(),
            rejection,
            (topic, record.partition, record.offset),
            copy.truncated_from,
            copy.keep_headers,
        );
        let at = (record.partition, record.offset);
        match send(ctx, Output::Dlq, copy.key, copy.value, Some(headers)).await {
            Ok(future) => deliveries.push(Delivery {
                output: Output::Dlq,
                record: at,
                future,
            }),
            Err(e) => {
                // Nowhere left to put the record: stop before its offset
                // is committed, naming it.
                *state_slot = Some(state);
                return Err(PipelineError::Delivery {
                    pipeline: name.clone(),
                    topic: ctx.config.dlq_topic.clone(),
                    message: format!("record {topic}/{}@{}: {e}", at.0, at.1),
                });
            }
        }
    }
    let published_at = Instant::now();
    let sent = Sent {
        deliveries,
        next_offsets,
        alert_texts,
        dlq: dead.iter().map(|(_, r)| r.class).collect(),
        records: batch.len(),
        scored: accepted.len(),
        alerts: alert_count,
        shadow_alerts: scored.shadow_alerts,
        evictions: state.detector.evictions(),
        state_fill: state.detector.state_fill(),
        oldest_ms: batch.iter().filter_map(|r| r.timestamp_ms).min(),
        started,
        published_at,
        phases: [parse_time, scored_at - parsed_at, published_at - scored_at],
    };
    *state_slot = Some(state);
    recycle(batch, columns);
    Ok(sent)
}

/// Releases the state of partitions given up, then takes back the state of
/// partitions gained.
fn move_state(
    state: &mut ScoringState,
    moves: super::changelog::StateMoves,
    metrics: &crate::metrics::PipelineMetrics,
    pipeline: &str,
) -> Result<(), DetectError> {
    if !moves.released.is_empty() {
        let keys = state.detector.release_partitions(&moves.released);
        metrics.state_released.fetch_add(keys as u64, Relaxed);
        tracing::info!(
            pipeline = %pipeline,
            partitions = ?moves.released,
            keys,
            "per-key state of partitions given up is released"
        );
    }
    let detector = &mut state.detector;
    let layout_of = super::changelog::layouts(detector);
    for partition in &moves.restored {
        let records = partition.records(&layout_of);
        let stale = partition.keys.len() - records.len();
        let taken = detector.restore_state(&records)?;
        tracing::info!(pipeline = %pipeline, partition = partition.partition, keys = taken, stale, "per-key state restored");
    }
    Ok(())
}

fn score(
    state: &mut ScoringState,
    shadow: Option<&mut Shadow>,
    columns: &Columns,
) -> Result<ScoredBatch, DetectError> {
    let scored = state.detector.score(columns)?;
    let mut shadow_alerts = 0;
    let mut shadow_scored = None;
    if let Some(shadow) = shadow {
        // Activation refuses a shadow with another feature spec; one that
        // predates the live model's change scores nothing until replaced.
        let model = shadow.detector.model().clone();
        if model.feature_spec == state.model().feature_spec && !scored.scores.is_empty() {
            let judged = shadow
                .detector
                .score_features(scored.matrix.clone(), Some(columns))?;
            shadow_alerts = judged.alerts.iter().filter(|&&a| a).count() as u64;
            shadow_scored = Some((
                crate::model::reference::model_id(&model),
                judged.scores,
                judged.alerts,
            ));
        }
    }
    Ok(ScoredBatch {
        scores: scored.scores,
        matrix: scored.matrix,
        z: scored.z,
        alerts: scored.alerts,
        shadow_alerts,
        shadow: shadow_scored,
    })
}

/// Queues one message for `output`; the delivery resolves once the broker
/// acknowledges it. A full local queue is the producer pushing back: wait
/// and retry. Any other refusal is final for this message.
async fn send(
    ctx: &PipelineContext,
    output: Output,
    key: &[u8],
    payload: &[u8],
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    let mut record = FutureRecord::to(output.topic(&ctx.config))
        .key(key)
        .payload(payload);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    loop {
        match ctx.producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                tracing::debug!("producer queue full; waiting");
                tokio::time::sleep(Duration::from_millis(5)).await;
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// A scores-topic message: `{source, key, model, score, alert}`, with
/// `"shadow": true` for a shadow model's.
fn score_message(
    source: &Source,
    key: &str,
    model: &str,
    score: f32,
    alert: bool,
    shadow: bool,
) -> Vec<u8> {
    let mut line = serde_json::json!({
        "source": source,
        "key": key,
        "score": score,
        "alert": alert,
        "model": model,
    });
    if shadow {
        line["shadow"] = true.into();
    }
    serde_json::to_vec(&line).expect("score serializes")
}

/// The alert and score key of accepted row `row`: the spec's key field,
/// else the Kafka message key.
fn entity_key(
    columns: &Columns,
    key_column: Option<usize>,
    row: usize,
    key_field: &str,
    raw: RecordRef,
) -> String {
    if let Some(k) = key_column {
        return columns.keys[k].get(row).to_owned();
    }
    if !key_field.is_empty() {
        if let Some(k) = crate::input::key_of(raw.value.unwrap_or_default(), key_field) {
            return k;
        }
    }
    raw.key
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default()
}
