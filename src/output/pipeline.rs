//! Exec pipelines and hooks, sans-IO: a pipeline's command (a program and
//! its arguments, with `{input}`, `{output}`, `{app}`, `{name}`, `{node}`
//! placeholders) checked once when it is configured and expanded per
//! stream, the rendition a pipeline publishes back (`APP/NAME_PIPELINE`),
//! and the internal credential the node's own pipelines play and publish
//! with. Their supervision (start, restart with backoff, stop) is the
//! push targets' [`Lifecycle`](super::push::Lifecycle), run by the node's
//! exec thread (`crate::exec`).

use crate::stream::StreamKey;

/// The query parameter a pipeline's `{input}` and `{output}` URLs carry:
/// the auth rules let a play or publish with this process's
/// [`internal_secret`] through.
pub const INTERNAL_PARAM: &str = "tributary_internal";

/// The longest argument list a pipeline may have.
pub const MAX_ARGS: usize = 256;

/// This process's internal credential: 128 bits from the kernel's random
/// source, drawn once, never shown by the API, and cut out of what the
/// node logs of its children (only the pipelines' own URLs carry it).
pub fn internal_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        let mut bytes = [0u8; 16];
        // /dev/urandom: the same source getrandom(2) reads, readable in
        // any sandbox the node runs in; without it no credential would
        // be safe, and pipelines cannot run.
        let read = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        if let Err(e) = read {
            tracing::error!("no random source for the pipelines' credential: {e}");
            // An empty credential matches nothing (`is_internal`).
            return String::new();
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Whether a play or publish `query` carries this process's credential
/// (compared in constant time).
pub fn is_internal(query: &str) -> bool {
    let secret = internal_secret().as_bytes();
    if secret.is_empty() {
        return false;
    }
    query
        .trim_start_matches('?')
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .any(|(k, v)| {
            k == INTERNAL_PARAM
                && v.len() == secret.len()
                && v.bytes().zip(secret).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        })
}

/// `text` with this process's credential cut out (a child's stderr may
/// print its URLs).
pub fn without_secret(text: &str) -> String {
    let secret = internal_secret();
    match secret.is_empty() {
        true => text.to_owned(),
        false => text.replace(secret, "…"),
    }
}

/// Why a pipeline is refused at config load; the message names the part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("the name must be 1 to 32 letters, digits or '-' (a '_' would make rendition names ambiguous)")]
    Name,
    #[error("the command is empty")]
    Empty,
    #[error("more than {MAX_ARGS} arguments")]
    TooLong,
    #[error(
        "unknown placeholder {{{0}}}: use {{input}}, {{output}}, {{app}}, {{name}} or {{node}}"
    )]
    Placeholder(String),
    #[error("unbalanced braces in {0:?}")]
    Braces(String),
}

/// What a stream's pipeline is run with.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    pub key: &'a StreamKey,
    /// The node's RTMP address for its own pipelines (`127.0.0.1:1935`).
    pub rtmp: &'a str,
    pub node: &'a str,
    /// The pipeline's name (its rendition's suffix).
    pub pipeline: &'a str,
}

impl Vars<'_> {
    /// The stream, played from this node with the internal credential.
    pub fn input(&self) -> String {
        format!(
            "rtmp://{}/{}/{}?{INTERNAL_PARAM}={}",
            self.rtmp,
            self.key.app(),
            self.key.name(),
            internal_secret()
        )
    }

    /// Where the pipeline publishes its rendition: `APP/NAME_PIPELINE`.
    pub fn output(&self) -> String {
        format!(
            "rtmp://{}/{}/{}?{INTERNAL_PARAM}={}",
            self.rtmp,
            self.key.app(),
            rendition_name(self.key.name(), self.pipeline),
            internal_secret()
        )
    }
}

/// The name of `name`'s rendition by `pipeline`.
pub fn rendition_name(name: &str, pipeline: &str) -> String {
    format!("{name}_{pipeline}")
}

/// The stream `rendition` is `pipeline`'s rendition of, if it is one (the
/// inverse of [`rendition_name`]; pipeline names hold no `_`).
pub fn rendition_of<'a>(rendition: &'a str, pipeline: &str) -> Option<&'a str> {
    rendition.strip_suffix(pipeline)?.strip_suffix('_')
}

/// A configured pipeline: its name and its checked command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub name: String,
    args: Vec<String>,
}

impl Pipeline {
    pub fn new(name: &str, args: &[String]) -> Result<Pipeline, PipelineError> {
        // No '_': `NAME_PIPELINE` must name one stream and one pipeline.
        let name_ok = (1..=32).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !name_ok {
            return Err(PipelineError::Name);
        }
        if args.is_empty() || args[0].is_empty() {
            return Err(PipelineError::Empty);
        }
        if args.len() > MAX_ARGS {
            return Err(PipelineError::TooLong);
        }
        for arg in args {
            placeholders(arg)?;
        }
        Ok(Pipeline {
            name: name.to_owned(),
            args: args.to_vec(),
        })
    }

    /// The program and its arguments for one stream. Each placeholder is
    /// replaced inside its argument: no shell reads them.
    pub fn command(&self, vars: &Vars<'_>) -> Vec<String> {
        self.args.iter().map(|a| expand(a, vars)).collect()
    }

    /// Whether the command reads the stream (`{input}`) and publishes a
    /// rendition (`{output}`), or is a plain program (a hook).
    pub fn publishes(&self) -> bool {
        self.args.iter().any(|a| a.contains("{output}"))
    }
}

fn placeholders(arg: &str) -> Result<(), PipelineError> {
    let mut rest = arg;
    while let Some(at) = rest.find(['{', '}']) {
        if rest.as_bytes()[at] == b'}' {
            return Err(PipelineError::Braces(arg.to_owned()));
        }
        let close = rest[at..]
            .find('}')
            .ok_or_else(|| PipelineError::Braces(arg.to_owned()))?
            + at;
        let inner = &rest[at + 1..close];
        if !matches!(inner, "input" | "output" | "app" | "name" | "node") {
            return Err(PipelineError::Placeholder(inner.to_owned()));
        }
        rest = &rest[close + 1..];
    }
    Ok(())
}

/// One pass over `arg` (checked by `placeholders`): a value put in is
/// never read again, so a stream name holding `{node}` stays as it is.
fn expand(arg: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let Some(len) = rest[at..].find('}') else {
            break;
        };
        match &rest[at + 1..at + len] {
            "input" => out.push_str(&vars.input()),
            "output" => out.push_str(&vars.output()),
            "app" => out.push_str(vars.key.app()),
            "name" => out.push_str(vars.key.name()),
            "node" => out.push_str(vars.node),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &rest[at + len + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_command_is_checked_once_and_expanded_per_stream_without_a_shell() {
        let p = Pipeline::new(
            "360p",
            &args(&[
                "ffmpeg",
                "-i",
                "{input}",
                "-metadata",
                "title={app}/{name} on {node}",
                "{output}",
            ]),
        )
        .unwrap();
        assert!(p.publishes());
        let key = StreamKey::new("live", "cam").unwrap();
        let vars = Vars {
            key: &key,
            rtmp: "127.0.0.1:1935",
            node: "n1",
            pipeline: "360p",
        };
        let cmd = p.command(&vars);
        let secret = internal_secret();
        assert_eq!(cmd[0], "ffmpeg");
        assert_eq!(
            cmd[2],
            format!("rtmp://127.0.0.1:1935/live/cam?tributary_internal={secret}")
        );
        assert_eq!(cmd[4], "title=live/cam on n1");
        assert_eq!(
            cmd[5],
            format!("rtmp://127.0.0.1:1935/live/cam_360p?tributary_internal={secret}")
        );
        assert_eq!(
            rendition_of(&rendition_name("cam", "360p"), "360p"),
            Some("cam")
        );
        assert_eq!(rendition_of("cam360p", "360p"), None);
        let odd = StreamKey::new("live", "a{node}").unwrap();
        let vars = Vars { key: &odd, ..vars };
        assert_eq!(p.command(&vars)[4], "title=live/a{node} on n1");
        assert!(is_internal(&format!("a=1&tributary_internal={secret}")));
        assert!(!is_internal("tributary_internal=guess"));
        assert!(!is_internal(""));
        assert!(!is_internal(&format!(
            "tributary_internal={}",
            &secret[..31]
        )));
        assert_eq!(
            without_secret(&format!(
                "Error opening input rtmp://h/a/b?tributary_internal={secret}"
            )),
            "Error opening input rtmp://h/a/b?tributary_internal=…"
        );
        assert_eq!(secret.len(), 32);
    }

    #[test]
    fn bad_pipelines_are_refused_naming_the_part() {
        use PipelineError::*;
        for (name, a, e) in [
            ("", args(&["ffmpeg"]), Name),
            ("a b", args(&["ffmpeg"]), Name),
            ("x/y", args(&["ffmpeg"]), Name),
            ("hd_360p", args(&["ffmpeg"]), Name),
            ("ok", args(&[]), Empty),
            ("ok", args(&[""]), Empty),
            (
                "ok",
                args(&["ffmpeg", "{inptu}"]),
                Placeholder("inptu".into()),
            ),
            ("ok", args(&["ffmpeg", "{input"]), Braces("{input".into())),
            ("ok", args(&["ffmpeg", "input}"]), Braces("input}".into())),
        ] {
            assert_eq!(Pipeline::new(name, &a), Err(e), "{name:?} {a:?}");
        }
        let many = vec!["x".to_string(); MAX_ARGS + 1];
        assert_eq!(Pipeline::new("ok", &many), Err(TooLong));
        assert!(!Pipeline::new("hook", &args(&["/bin/true"]))
            .unwrap()
            .publishes());
    }
}
