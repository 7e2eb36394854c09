//! The control socket (a Unix socket, one request line, one JSON answer) and the JSON and
//! Prometheus renderings of the speaker's state.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::daemon::Event;
use crate::speaker::{PeerStatus, Speaker};
use crate::wire::attribute::Origin;

/// Serves the control socket at `path` (replacing a stale one).
pub fn serve(path: &Path, events: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let (reply, answer) = oneshot::channel();
                if events.send(Event::Control(line, reply)).is_err() {
                    return;
                }
                if let Ok(text) = answer.await {
                    let _ = write.write_all(text.as_bytes()).await;
                    let _ = write.write_all(b"\n").await;
                }
            });
        }
    });
    Ok(())
}

/// Serves Prometheus metrics over HTTP at `address` (any path answers the metrics).
pub async fn serve_metrics(
    address: std::net::SocketAddr,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut request_line = String::new();
                if BufReader::new(read)
                    .read_line(&mut request_line)
                    .await
                    .is_err()
                {
                    return;
                }
                let (reply, answer) = oneshot::channel();
                if events
                    .send(Event::Control("metrics".into(), reply))
                    .is_err()
                {
                    return;
                }
                let Ok(body) = answer.await else { return };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = write.write_all(head.as_bytes()).await;
                let _ = write.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// `twillctl bgp peers -o json`: one object per neighbour, with the BRIEF's fields.
pub fn peers_json(peers: &[PeerStatus]) -> String {
    let list: Vec<Value> = peers
        .iter()
        .map(|p| {
            json!({
                "address": p.address.to_string(),
                "remote_asn": p.remote_as,
                "state": p.state,
                "uptime_s": p.uptime_s,
                "received": p.received,
                "accepted": p.accepted,
                "advertised": p.advertised,
                "last_error": p.last_error,
                "updates_in": p.updates_in,
                "updates_out": p.updates_out,
            })
        })
        .collect();
    Value::Array(list).to_string()
}

/// `twillctl bgp rib -o json`: one object per path.
pub fn rib_json(speaker: &Speaker) -> String {
    let mut rows: Vec<(String, Value)> = Vec::new();
    for (prefix, paths) in speaker.rib().iter() {
        let best = speaker.rib().best(&prefix);
        for path in paths {
            let a = path.attributes();
            let origin = match a.origin {
                Some(Origin::Igp) => "igp",
                Some(Origin::Egp) => "egp",
                _ => "incomplete",
            };
            let from = speaker
                .peer_address(path.peer())
                .map_or_else(|| "local".to_string(), |p| p.to_string());
            rows.push((
                prefix.to_string(),
                json!({
                    "prefix": prefix.to_string(),
                    "next_hop": path.next_hop().to_string(),
                    "as_path": a.as_path.as_ref().map(|p| p.asns().collect::<Vec<u32>>()).unwrap_or_default(),
                    "origin": origin,
                    "med": a.med,
                    "local_pref": a.local_pref,
                    "communities": a.communities.iter().map(|c| format!("{}:{}", c >> 16, c & 0xffff)).collect::<Vec<_>>(),
                    "large_communities": a.large_communities.iter().map(|(x, y, z)| format!("{x}:{y}:{z}")).collect::<Vec<_>>(),
                    "from": from,
                    "best": best.iter().any(|b| b == path),
                    "stale": path.stale(),
                    "refreshing": path.refreshing(),
                }),
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Array(rows.into_iter().map(|(_, v)| v).collect()).to_string()
}

/// Prometheus text exposition.
pub fn metrics(peers: &[PeerStatus], speaker: &Speaker, uptime: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP twill_bgp_sessions Sessions by state.\n# TYPE twill_bgp_sessions gauge"
    );
    for state in [
        "Idle",
        "Connect",
        "Active",
        "OpenSent",
        "OpenConfirm",
        "Established",
    ] {
        let count = peers.iter().filter(|p| p.state == state).count();
        let _ = writeln!(out, "twill_bgp_sessions{{state=\"{state}\"}} {count}");
    }
    for (name, help, value) in [
        (
            "twill_bgp_prefixes_received",
            "Prefixes a neighbour announces.",
            (|p: &PeerStatus| p.received as u64) as fn(&PeerStatus) -> u64,
        ),
        (
            "twill_bgp_prefixes_accepted",
            "Prefixes accepted by import policy.",
            |p| p.accepted as u64,
        ),
        (
            "twill_bgp_prefixes_advertised",
            "Prefixes announced to a neighbour.",
            |p| p.advertised as u64,
        ),
        (
            "twill_bgp_updates_received_total",
            "UPDATE messages received.",
            |p| p.updates_in,
        ),
        (
            "twill_bgp_updates_sent_total",
            "UPDATE messages sent.",
            |p| p.updates_out,
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for peer in peers {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", peer.address, value(peer));
        }
    }
    let _ = writeln!(out, "# HELP twill_bgp_rib_prefixes Prefixes in the Loc-RIB.\n# TYPE twill_bgp_rib_prefixes gauge");
    let _ = writeln!(out, "twill_bgp_rib_prefixes {}", speaker.rib().len());
    let _ = writeln!(out, "# HELP twill_bgp_uptime_seconds Seconds since start.\n# TYPE twill_bgp_uptime_seconds gauge");
    let _ = writeln!(out, "twill_bgp_uptime_seconds {}", uptime.as_secs());
    out
}
