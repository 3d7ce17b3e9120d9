//! `/api/streams/APP/KEY/pushes`: the push targets of a stream published on
//! this node. `GET` lists them with their state, `POST {"url": "rtmp://..."}`
//! adds one (201 with its id), `DELETE .../pushes/ID` removes one. The
//! request goes to the shard that publishes the stream; a stream published
//! on another node of the cluster is answered 404 with that node's name.
//!
//! A `POST` must say `Content-Type: application/json`: a web page can send a
//! form or `text/plain` to the admin address without the browser asking
//! first (no CORS preflight), never JSON, so a page the operator visits
//! cannot add a target that restreams to its author.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};

use crate::output::push::PushUrl;
use crate::stream::{PushCommand, ShardCommand, StreamKey};

use super::{bad_name, json, AdminState, Reply};

/// The largest request body a POST may carry.
const MAX_BODY: usize = 8 * 1024;

/// The pushes route `path` names (after `/api/streams/`), if it is one:
/// the stream, and the target's id for `.../pushes/ID`. A stream whose own
/// name ends in `/pushes` is reached by its other routes only.
pub(super) fn parse<'a>(path: &'a str, method: &Method) -> Option<(&'a str, Option<&'a str>)> {
    if let Some(stream) = path.strip_suffix("/pushes") {
        return (method == Method::GET || method == Method::POST).then_some((stream, None));
    }
    let (rest, id) = path.rsplit_once('/')?;
    let stream = rest.strip_suffix("/pushes")?;
    (method == Method::DELETE && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .then_some((stream, Some(id)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPush {
    url: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
}

pub(super) async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    state: &AdminState,
    stream: &str,
    id: Option<&str>,
) -> Reply {
    let key = match StreamKey::from_url_path(stream) {
        Ok(key) => key,
        Err(e) => return bad_name(e),
    };
    let Some(shard) = state
        .directory
        .snapshot()
        .into_iter()
        .find(|l| l.key == key && !l.relayed)
        .map(|l| l.shard)
    else {
        return not_here(state, &key).await;
    };
    let Some(tx) = state.commands.get(shard) else {
        return not_here(state, &key).await;
    };
    match (req.method().clone(), id) {
        (Method::DELETE, Some(id)) => {
            let Ok(id) = id.parse::<u64>() else {
                return error(StatusCode::NOT_FOUND, "no such push target");
            };
            let (reply, rx) = tokio::sync::oneshot::channel();
            let cmd = ShardCommand::Push(PushCommand::Remove { key, id, reply });
            match tx.send(cmd).await.is_ok() && rx.await.unwrap_or(false) {
                true => json(StatusCode::OK, &serde_json::json!({ "removed": id })),
                false => error(StatusCode::NOT_FOUND, "no such push target"),
            }
        }
        (Method::POST, None) => {
            let url = match new_push(req).await {
                Ok(url) => url,
                Err(refusal) => return refusal,
            };
            let shown = url.redacted();
            let (reply, rx) = tokio::sync::oneshot::channel();
            let cmd = ShardCommand::Push(PushCommand::Add { key, url, reply });
            if tx.send(cmd).await.is_err() {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the shard is not answering",
                );
            }
            match rx.await {
                Ok(Ok(id)) => json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "id": id, "url": shown }),
                ),
                // The stream left meanwhile, or the target is refused.
                Ok(Err(e)) if e == crate::node::PUSH_NOT_LIVE => error(StatusCode::NOT_FOUND, e),
                Ok(Err(e)) => error(StatusCode::CONFLICT, e),
                Err(_) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the shard is not answering",
                ),
            }
        }
        _ => {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let cmd = ShardCommand::Push(PushCommand::List { key, reply });
            match tx
                .send(cmd)
                .await
                .is_ok()
                .then_some(rx.await.ok().flatten())
            {
                Some(Some(list)) => json(StatusCode::OK, &serde_json::json!({ "pushes": list })),
                _ => error(
                    StatusCode::NOT_FOUND,
                    "the stream is not published on this node",
                ),
            }
        }
    }
}

/// The checked URL of a POST's body, or the answer that refuses it.
async fn new_push(req: hyper::Request<hyper::body::Incoming>) -> Result<PushUrl, Reply> {
    if !super::is_json(&req) {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    let body: Bytes = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes, or was cut"),
            ))
        }
    };
    let new: NewPush = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    PushUrl::parse(&new.url).map_err(|e| error(StatusCode::BAD_REQUEST, format!("url: {e}")))
}

/// 404 for a stream not published here, naming its node when the cluster
/// knows it.
pub(super) async fn not_here(state: &AdminState, key: &StreamKey) -> Reply {
    if let Some(cluster) = &state.cluster {
        let listed = cluster.list().await.unwrap_or_default();
        if let Some((_, reg)) = listed.into_iter().find(|(k, _)| k == key) {
            let node = reg.node;
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({
                    "error": "the stream is published on another node: ask that node",
                    "node": node,
                }),
            );
        }
    }
    error(
        StatusCode::NOT_FOUND,
        "the stream is not published on this node",
    )
}
