//! The blocking publish/play webhook (like nginx-rtmp's `on_publish`): before
//! a publish (and, if asked, a play) goes ahead, the node POSTs what it knows
//! to an HTTP service and waits for its answer, up to a timeout. 2xx allows;
//! any other status refuses, with the response body (its first line, up to
//! 200 bytes) as the reason the client sees. A 2xx answer to a publish may
//! carry JSON `{"push": ["rtmp://...", ...]}`: more push targets for that
//! stream (as SRS's `on_forward` backend answers). When the service cannot be
//! reached in time, `fail_closed` decides. The HTTP client (hyper) runs on a
//! control-plane thread of its own; shards wait on a oneshot with their own
//! timer and never block.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Action;

/// Requests queued to the webhook thread; more wait (they are rare).
const QUEUE: usize = 1024;
/// The largest allowing answer read for push targets.
const MAX_ANSWER: usize = 16 * 1024;
/// The most push targets one answer may name.
const MAX_PUSHES: usize = 64;
/// The longest reason passed on to the client.
const MAX_REASON: usize = 200;

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub timeout: Duration,
    pub fail_closed: bool,
    pub on_play: bool,
    pub node_id: String,
}

/// What the service is asked about.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookQuery {
    pub action: &'static str,
    pub app: String,
    /// The stream name without its query.
    pub stream: String,
    /// The query string after `?` (tokens, session ids), as sent.
    pub query: String,
    pub client_ip: String,
    pub node: String,
}

/// What an allowing answer carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookAnswer {
    /// Push targets for the stream (URLs, checked by the caller).
    pub push: Vec<String>,
}

#[derive(serde::Deserialize)]
struct AnswerBody {
    #[serde(default)]
    push: Vec<String>,
}

/// Why the webhook refuses: the service said no (its reason), or it could
/// not be asked and `fail_closed` is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HookRefusal(pub String);

/// Why one call to the service got no answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("{0}")]
    Send(#[from] hyper_util::client::legacy::Error),
}

struct Job {
    query: HookQuery,
    reply: oneshot::Sender<Result<HookAnswer, HookRefusal>>,
}

/// The shards' way to the webhook thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Webhook {
    jobs: mpsc::Sender<Job>,
    settings: std::sync::Arc<WebhookSettings>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("query", &self.query).finish()
    }
}

impl Webhook {
    /// Starts the webhook thread.
    pub fn start(settings: WebhookSettings) -> std::io::Result<Webhook> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let settings = std::sync::Arc::new(settings);
        let s = settings.clone();
        crate::control_thread::spawn("tributary-webhook", move || serve(s, rx))?;
        Ok(Webhook { jobs, settings })
    }

    pub fn applies_to(&self, action: Action) -> bool {
        action == Action::Publish || self.settings.on_play
    }

    /// Asks the service (from a shard). Err is the reason to refuse.
    pub async fn ask(
        &self,
        action: Action,
        key: &crate::stream::StreamKey,
        query: &str,
        client_ip: &str,
    ) -> Result<HookAnswer, HookRefusal> {
        let query = HookQuery {
            action: action.as_str(),
            app: key.app().to_owned(),
            stream: key.name().to_owned(),
            query: query.to_owned(),
            client_ip: client_ip.to_owned(),
            node: self.settings.node_id.clone(),
        };
        let (reply, rx) = oneshot::channel();
        let asked = futures_lite::future::or(
            async {
                self.jobs.send(Job { query, reply }).await.ok()?;
                rx.await.ok()
            },
            async {
                // A little beyond the HTTP timeout: the thread answers first.
                glommio::timer::sleep(self.settings.timeout + Duration::from_millis(500)).await;
                None
            },
        )
        .await;
        match asked {
            Some(answer) => answer,
            None => self.unreachable("the auth service did not answer in time"),
        }
    }

    fn unreachable(&self, why: &str) -> Result<HookAnswer, HookRefusal> {
        unreachable(&self.settings, why)
    }
}

/// What an allowing answer to a publish carries: its push targets, when
/// its body is JSON with a `push` list; nothing otherwise (an empty body,
/// text, JSON without the field). A list past [`MAX_PUSHES`] is cut.
async fn allowing(action: &str, body: hyper::body::Incoming) -> HookAnswer {
    if action != Action::Publish.as_str() {
        return HookAnswer::default();
    }
    let Ok(body) = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
    else {
        tracing::warn!("webhook: an allowing answer longer than {MAX_ANSWER} bytes: its push targets are ignored");
        return HookAnswer::default();
    };
    let body = body.to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return HookAnswer::default();
    }
    match serde_json::from_slice::<AnswerBody>(&body) {
        Ok(mut a) => {
            if a.push.len() > MAX_PUSHES {
                tracing::warn!(
                    "webhook: {} push targets in an answer; the first {MAX_PUSHES} are used",
                    a.push.len()
                );
                a.push.truncate(MAX_PUSHES);
            }
            HookAnswer { push: a.push }
        }
        Err(_) => HookAnswer::default(),
    }
}

async fn serve(settings: std::sync::Arc<WebhookSettings>, mut jobs: mpsc::Receiver<Job>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    while let Some(job) = jobs.recv().await {
        let (client, settings) = (client.clone(), settings.clone());
        tokio::spawn(async move {
            let answer =
                tokio::time::timeout(settings.timeout, call(&client, &settings.url, &job.query))
                    .await;
            let result = match answer {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => unreachable(&settings, &format!("the auth service failed: {e}")),
                Err(_) => unreachable(&settings, "the auth service did not answer in time"),
            };
            let _ = job.reply.send(result);
        });
    }
}

fn unreachable(settings: &WebhookSettings, why: &str) -> Result<HookAnswer, HookRefusal> {
    if settings.fail_closed {
        Err(HookRefusal(why.to_owned()))
    } else {
        tracing::warn!("webhook: {why}; allowing (fail_closed = false)");
        Ok(HookAnswer::default())
    }
}

/// One POST; Ok(Ok) = allowed, Ok(Err(reason)) = refused, Err = no answer.
async fn call(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    query: &HookQuery,
) -> Result<Result<HookAnswer, HookRefusal>, CallError> {
    let body = serde_json::to_vec(query)?;
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("tributary/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    let status = response.status();
    if status.is_success() {
        return Ok(Ok(allowing(query.action, response.into_body()).await));
    }
    // The reason: the first line of a short body, else the status.
    let body = http_body_util::Limited::new(response.into_body(), 4096)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let line = text.lines().next().unwrap_or("").trim();
    let mut reason: String = if line.is_empty() {
        format!("refused by the auth service ({status})")
    } else {
        line.to_owned()
    };
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Ok(Err(HookRefusal(reason)))
}
