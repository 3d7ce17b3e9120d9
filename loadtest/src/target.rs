//! Where connections go: `rtmp://host[:port]/app[/key]` URLs,
//! `rtmpt://` for RTMP tunnelled in HTTP (publishers and players), and for
//! players `http://host[:port]/app[/key]`, which makes them HTTP-FLV
//! viewers (`GET /app/key.flv`); `srt://host[:port]/app` for MPEG-TS over
//! SRT (publishers and players). A host name
//! stands for every A record it resolves to, and connections take the
//! resolved addresses round-robin, the way clients behind DNS round-robin
//! spread over nodes. The tcUrl keeps the name as the user wrote it.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};

pub const DEFAULT_RTMP_PORT: u16 = 1935;
pub const DEFAULT_HTTP_PORT: u16 = 80;
pub const DEFAULT_SRT_PORT: u16 = 8890;

/// One parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    pub app: String,
    /// The stream key part, if the URL has one.
    pub key: Option<String>,
    /// An `http://` URL: players are HTTP-FLV viewers.
    pub http: bool,
    /// An `rtmpt://` URL: RTMP tunnelled in HTTP.
    pub tunnel: bool,
    /// An `srt://host:port/app` URL: MPEG-TS over SRT, the stream named
    /// in the stream id (`#!::r=app/key,m=publish` or `m=request`).
    pub srt: bool,
}

impl RtmpUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (rest, http, tunnel, srt) = if let Some(r) = url.strip_prefix("rtmp://") {
            (r, false, false, false)
        } else if let Some(r) = url.strip_prefix("rtmpt://") {
            (r, false, true, false)
        } else if let Some(r) = url.strip_prefix("http://") {
            (r, true, false, false)
        } else if let Some(r) = url.strip_prefix("srt://") {
            (r, false, false, true)
        } else {
            bail!("{url}: only rtmp://, rtmpt://, http:// and srt:// URLs are supported");
        };
        let default_port = if http || tunnel {
            DEFAULT_HTTP_PORT
        } else if srt {
            DEFAULT_SRT_PORT
        } else {
            DEFAULT_RTMP_PORT
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (
                h.to_owned(),
                p.parse()
                    .with_context(|| format!("{url}: bad port {p:?}"))?,
            ),
            _ => (authority.to_owned(), default_port),
        };
        if host.is_empty() {
            bail!("{url}: no host");
        }
        let (app, key) = match path.split_once('/') {
            Some((a, k)) if !k.is_empty() => (a.to_owned(), Some(k.to_owned())),
            Some((a, _)) => (a.to_owned(), None),
            None => (path.to_owned(), None),
        };
        if app.is_empty() {
            bail!("{url}: no application (rtmp://host/app/...)");
        }
        Ok(Self {
            host,
            port,
            app,
            key,
            http,
            tunnel,
            srt,
        })
    }

    /// The tcUrl a client sends in connect.
    pub fn tc_url(&self) -> String {
        let scheme = if self.tunnel { "rtmpt" } else { "rtmp" };
        format!("{scheme}://{}:{}/{}", self.host, self.port, self.app)
    }
}

/// One address to connect to, with the URL it came from.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub url: RtmpUrl,
    pub tc_url: String,
}

/// Resolves every URL; a name yields one target per IPv4 address (IPv6
/// only when it has no IPv4 one). Order is kept, so round-robin over the
/// result spreads over URLs and, within a name, over its records.
pub fn resolve(urls: &[String]) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::new();
    for raw in urls {
        let url = RtmpUrl::parse(raw)?;
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .with_context(|| format!("{raw}: cannot resolve {}", url.host))?
            .collect();
        let v4: Vec<SocketAddr> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
        let chosen = if v4.is_empty() { addrs } else { v4 };
        if chosen.is_empty() {
            bail!("{raw}: {} has no address", url.host);
        }
        let tc_url = url.tc_url();
        for addr in chosen {
            targets.push(Target {
                addr,
                url: url.clone(),
                tc_url: tc_url.clone(),
            });
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_like_obs_and_ffmpeg_split_them() {
        let u = RtmpUrl::parse("rtmp://127.0.0.1:1940/live/cam?token=1").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 1940);
        assert_eq!(u.app, "live");
        assert_eq!(u.key.as_deref(), Some("cam?token=1"));
        let u = RtmpUrl::parse("rtmp://localhost/live").unwrap();
        assert_eq!((u.port, u.key), (1935, None));
        let t = RtmpUrl::parse("rtmpt://x/live/cam").unwrap();
        assert!(t.tunnel && !t.http && t.port == 80);
        assert_eq!(t.tc_url(), "rtmpt://x:80/live");
        let s = RtmpUrl::parse("srt://x/live").unwrap();
        assert!(s.srt && !s.http && !s.tunnel && s.port == 8890);
        let h = RtmpUrl::parse("http://x/live/cam").unwrap();
        assert!(h.http && h.port == 80 && h.key.as_deref() == Some("cam"));
        assert!(RtmpUrl::parse("https://x/live").is_err());
        assert!(RtmpUrl::parse("rtmp://x").is_err());
        assert!(RtmpUrl::parse("rtmp://x:notaport/live").is_err());
    }

    #[test]
    fn a_name_resolves_to_its_addresses() {
        let t = resolve(&["rtmp://localhost:1999/live".into()]).unwrap();
        assert!(!t.is_empty());
        assert!(t
            .iter()
            .all(|t| t.addr.port() == 1999 && t.addr.ip().is_loopback()));
        assert_eq!(t[0].tc_url, "rtmp://localhost:1999/live");
    }
}
