//! Recordings over the admin API.
//!
//! - `POST /api/streams/APP/KEY/recording` starts recording a stream
//!   published on this node (201; 200 if it already was),
//!   `DELETE .../recording` stops it, `GET .../recording` shows its state
//!   (recording, failed with the error, stopped; the file being written,
//!   bytes, files, gaps). A stream published on another node is answered
//!   404 with that node's name. A `POST` must say `Content-Type:
//!   application/json` (its body, if any, `{}`): a web page can send a form
//!   to the admin address without a CORS preflight, never JSON.
//! - `GET /api/recordings?stream=APP/KEY` lists the stream's files on this
//!   node (start, duration, bytes, whether one is being written) and, in a
//!   cluster, every other node's finished files of it from the cluster's
//!   index (each names its node); `GET /api/recordings` this node's
//!   recorded streams with their totals.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};

use crate::container::record::format_rfc3339;
use crate::stream::{RecordCommand, ShardCommand, StreamKey};

use super::pushes::not_here;
use super::{bad_name, json, AdminState, Reply};

/// The stream a `.../recording` route names (after `/api/streams/`).
pub(super) fn parse<'a>(path: &'a str, method: &Method) -> Option<&'a str> {
    let stream = path.strip_suffix("/recording")?;
    matches!(*method, Method::GET | Method::POST | Method::DELETE).then_some(stream)
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
}

pub(super) async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    state: &AdminState,
    stream: &str,
) -> Reply {
    let key = match StreamKey::from_url_path(stream) {
        Ok(key) => key,
        Err(e) => return bad_name(e),
    };
    if state.recordings.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "recording is off on this node (record.path is empty)",
        );
    }
    let method = req.method().clone();
    if method == Method::POST {
        if let Err(refusal) = empty_json(req).await {
            return refusal;
        }
    }
    let Some(tx) = state
        .directory
        .snapshot()
        .into_iter()
        .find(|l| l.key == key && !l.relayed)
        .and_then(|l| state.commands.get(l.shard))
    else {
        return not_here(state, &key).await;
    };
    let unanswered = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the shard is not answering",
        )
    };
    match method {
        Method::POST => {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let cmd = ShardCommand::Record(RecordCommand::Start { key, reply });
            if tx.send(cmd).await.is_err() {
                return unanswered();
            }
            match rx.await {
                Ok(Ok(true)) => json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "recording": true }),
                ),
                Ok(Ok(false)) => json(StatusCode::OK, &serde_json::json!({ "recording": true })),
                Ok(Err(e)) if e == crate::node::RECORD_NOT_LIVE => error(StatusCode::NOT_FOUND, e),
                Ok(Err(e)) => error(StatusCode::CONFLICT, e),
                Err(_) => unanswered(),
            }
        }
        Method::DELETE => {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let cmd = ShardCommand::Record(RecordCommand::Stop { key, reply });
            if tx.send(cmd).await.is_err() {
                return unanswered();
            }
            match rx.await {
                Ok(true) => json(StatusCode::OK, &serde_json::json!({ "recording": false })),
                Ok(false) => error(StatusCode::NOT_FOUND, "the stream is not being recorded"),
                Err(_) => unanswered(),
            }
        }
        _ => {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let cmd = ShardCommand::Record(RecordCommand::Status { key, reply });
            if tx.send(cmd).await.is_err() {
                return unanswered();
            }
            match rx.await {
                Ok(Some(status)) => json(StatusCode::OK, &status),
                Ok(None) => error(StatusCode::NOT_FOUND, crate::node::RECORD_NOT_LIVE),
                Err(_) => unanswered(),
            }
        }
    }
}

/// Refuses a POST that is not JSON, or whose body is anything but `{}`.
async fn empty_json(req: hyper::Request<hyper::body::Incoming>) -> Result<(), Reply> {
    if !super::is_json(&req) {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request must be JSON (Content-Type: application/json)",
        ));
    }
    let body: Bytes = match http_body_util::Limited::new(req.into_body(), 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is too large",
            ))
        }
    };
    let trimmed = std::str::from_utf8(&body).unwrap_or("x").trim();
    let empty = trimmed.is_empty()
        || serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(trimmed)
            .is_ok_and(|m| m.is_empty());
    if !empty {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the body must be {} or empty",
        ));
    }
    Ok(())
}

/// GET /api/recordings[?stream=APP/KEY].
pub(super) async fn list(state: &AdminState, query: &str) -> Reply {
    let library = state.recordings.as_ref();
    let stream = query
        .split('&')
        .find_map(|p| p.strip_prefix("stream="))
        .map(StreamKey::from_url_path);
    match stream {
        Some(Err(e)) => bad_name(e),
        Some(Ok(key)) => {
            let local = library.map(|l| l.list(&key)).unwrap_or_default();
            let mut files: Vec<serde_json::Value> = local
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "file": s.file,
                        "node": state.node_id,
                        "start": format_rfc3339(s.start_ms),
                        "duration": s.duration_ms as f64 / 1000.0,
                        "bytes": s.bytes,
                        "open": s.open,
                    })
                })
                .collect();
            let mut index_error = None;
            if let Some(cluster) = &state.cluster {
                match cluster.recordings(&key).await {
                    Ok(nodes) => {
                        for (node, listed) in nodes.into_iter().filter(|n| n.0 != state.node_id) {
                            files.extend(listed.iter().map(|s| {
                                serde_json::json!({
                                    "file": s.file,
                                    "node": node,
                                    "start": format_rfc3339(s.start_ms),
                                    "duration": s.duration_ms as f64 / 1000.0,
                                    "bytes": s.bytes,
                                    "open": false,
                                })
                            }));
                        }
                    }
                    Err(e) => index_error = Some(e.to_string()),
                }
            }
            // In time order across nodes (a stream that moved between
            // nodes reads as one recording); the RFC 3339 form sorts as time.
            files.sort_by(|x, y| {
                let k = |v: &serde_json::Value| (v["start"].to_string(), v["node"].to_string());
                k(x).cmp(&k(y))
            });
            let mut body = serde_json::json!({ "stream": key.to_string(), "recordings": files });
            if let Some(e) = index_error {
                // This node's own files are listed all the same.
                body["index_error"] = serde_json::Value::String(e);
            }
            json(StatusCode::OK, &body)
        }
        None => {
            let Some(library) = library else {
                return error(
                    StatusCode::NOT_FOUND,
                    "recording is off on this node (record.path is empty)",
                );
            };
            let streams: Vec<serde_json::Value> = library
                .all()
                .iter()
                .map(|(key, files)| {
                    serde_json::json!({
                        "stream": key.to_string(),
                        "node": state.node_id,
                        "files": files.len(),
                        "bytes": files.iter().map(|s| s.bytes).sum::<u64>(),
                        "first": files.first().map(|s| format_rfc3339(s.start_ms)),
                        "duration": files.iter().map(|s| s.duration_ms).sum::<u64>() as f64 / 1000.0,
                    })
                })
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "streams": streams }))
        }
    }
}
