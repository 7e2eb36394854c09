//! The control socket (a Unix socket, one request line, one JSON answer) and the JSON and
//! Prometheus renderings of the speaker's state.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::daemon::Event;
use crate::speaker::{Outcome, PeerStatus, RibRow, Speaker};
use crate::wire::attribute::Origin;

/// Serves the control socket at `path` (replacing a stale one), readable and writable by its
/// owner only (0600): it can reload the configuration and disable sessions.
pub fn serve(path: &Path, events: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    pause = Duration::from_millis(10);
                    stream
                }
                // Out of file descriptors and the like: wait and try again (never spin,
                // never stop serving).
                Err(err) => {
                    tracing::warn!(error = %err, "control socket accept failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let events = events.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let request = line.trim();
                if request == "rib" || request.starts_with("rib ") {
                    let query = request.trim_start_matches("rib").to_string();
                    let _ = serve_rib(&events, query, &mut write).await;
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

/// Prefixes per chunk of a `rib` listing: each chunk is one event for the driver, so a
/// million-prefix table is listed in about a thousand short turns between other work.
pub const RIB_CHUNK: usize = 1024;

/// Streams a `rib` listing: the driver names the prefixes (one cheap pass), this task sorts
/// them, then asks for their rows a chunk at a time and writes each as it comes. The driver
/// never renders more than [`RIB_CHUNK`] prefixes in one turn.
async fn serve_rib(
    events: &mpsc::UnboundedSender<Event>,
    query: String,
    write: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<()> {
    let (reply, answer) = oneshot::channel();
    if events.send(Event::RibPrefixes(query, reply)).is_err() {
        return Ok(());
    }
    let Ok(listing) = answer.await else {
        return Ok(());
    };
    let (query, mut prefixes) = match listing {
        Ok(found) => found,
        Err(error) => {
            let text = json!({ "error": error }).to_string();
            write.write_all(text.as_bytes()).await?;
            return write.write_all(b"\n").await;
        }
    };
    let prefixes = tokio::task::spawn_blocking(move || {
        prefixes.sort_unstable();
        prefixes
    })
    .await
    .unwrap_or_default();
    write.write_all(b"[").await?;
    let mut first = true;
    for chunk in prefixes.chunks(RIB_CHUNK) {
        let (reply, answer) = oneshot::channel();
        if events
            .send(Event::RibRows(query, chunk.to_vec(), reply))
            .is_err()
        {
            return Ok(());
        }
        let Ok(rows) = answer.await else {
            return Ok(());
        };
        if rows.is_empty() {
            continue;
        }
        if !first {
            write.write_all(b",").await?;
        }
        first = false;
        write.write_all(rows.as_bytes()).await?;
    }
    write.write_all(b"]\n").await
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
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
pub fn peers_json(
    peers: &[PeerStatus],
    descriptions: &std::collections::BTreeMap<std::net::IpAddr, String>,
) -> String {
    let list: Vec<Value> = peers
        .iter()
        .map(|p| {
            json!({
                "address": p.address.to_string(),
                "description": descriptions.get(&p.address),
                "remote_asn": p.remote_as,
                "state": p.state,
                "uptime_s": p.uptime_s,
                "received": p.received,
                "accepted": p.accepted,
                "advertised": p.advertised,
                "last_error": p.last_error,
                "disabled": p.disabled,
                "updates_in": p.updates_in,
                "updates_out": p.updates_out,
                "treat_as_withdraw": p.treat_as_withdraw,
                "attribute_discard": p.attribute_discard,
            })
        })
        .collect();
    Value::Array(list).to_string()
}

/// `twillctl bgp rib -o json`, one chunk: the rows' objects separated by commas (the
/// listing's brackets are the caller's).
pub fn rib_rows_json(rows: &[RibRow]) -> String {
    let mut out = String::new();
    for row in rows {
        let a = &row.attributes;
        let origin = match a.origin {
            Some(Origin::Igp) => "igp",
            Some(Origin::Egp) => "egp",
            _ => "incomplete",
        };
        let object = json!({
            "prefix": row.prefix.to_string(),
            "path_id": row.path_id,
            "next_hop": row.next_hop.to_string(),
            "as_path": a.as_path.as_ref().map(|p| p.asns().collect::<Vec<u32>>()).unwrap_or_default(),
            "origin": origin,
            "med": a.med,
            "local_pref": a.local_pref,
            "communities": a.communities.iter().map(|c| format!("{}:{}", c >> 16, c & 0xffff)).collect::<Vec<_>>(),
            "large_communities": a.large_communities.iter().map(|(x, y, z)| format!("{x}:{y}:{z}")).collect::<Vec<_>>(),
            "from": row.from.map_or_else(|| "local".to_string(), |p| p.to_string()),
            "best": row.best,
            "stale": row.stale,
            "refreshing": row.refreshing,
        });
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&object.to_string());
    }
    out
}

/// Labels of a metric sample.
type Labels = Vec<(&'static str, String)>;

/// The OpenMetrics text exposition (through prometheus-client), built from the sessions'
/// status; `kernel` when routes go to the kernel: the writes it acknowledged, and those
/// waiting for it; `read_pauses`: the times a
/// connection paused its reading for the speaker and for the kernel (flow control).
pub fn metrics(
    peers: &[PeerStatus],
    speaker: &Speaker,
    uptime: Duration,
    kernel: Option<(u64, u64)>,
    read_pauses: [u64; 2],
) -> String {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    let mut registry = Registry::default();
    let sessions = Family::<Labels, Gauge>::default();
    for state in [
        "Idle",
        "Connect",
        "Active",
        "OpenSent",
        "OpenConfirm",
        "Established",
    ] {
        let count = peers.iter().filter(|p| p.state == state).count();
        sessions
            .get_or_create(&vec![("state", state.to_string())])
            .set(count as i64);
    }
    registry.register("twill_bgp_sessions", "Sessions by state", sessions);
    let per_peer = |value: fn(&PeerStatus) -> u64| {
        let family = Family::<Labels, Gauge>::default();
        for peer in peers {
            family
                .get_or_create(&vec![("peer", peer.address.to_string())])
                .set(value(peer) as i64);
        }
        family
    };
    let per_peer_total = |value: fn(&PeerStatus) -> u64| {
        let family = Family::<Labels, Counter>::default();
        for peer in peers {
            family
                .get_or_create(&vec![("peer", peer.address.to_string())])
                .inc_by(value(peer));
        }
        family
    };
    registry.register(
        "twill_bgp_prefixes_received",
        "Prefixes a neighbour announces",
        per_peer(|p| p.received as u64),
    );
    registry.register(
        "twill_bgp_prefixes_accepted",
        "Prefixes accepted by import policy",
        per_peer(|p| p.accepted as u64),
    );
    registry.register(
        "twill_bgp_prefixes_advertised",
        "Prefixes announced to a neighbour",
        per_peer(|p| p.advertised as u64),
    );
    registry.register(
        "twill_bgp_updates_received",
        "UPDATE messages received",
        per_peer_total(|p| p.updates_in),
    );
    registry.register(
        "twill_bgp_updates_sent",
        "UPDATE messages sent",
        per_peer_total(|p| p.updates_out),
    );
    let outcomes = Family::<Labels, Counter>::default();
    for peer in peers {
        for (outcome, count) in [
            (Outcome::TreatAsWithdraw, peer.treat_as_withdraw),
            (Outcome::AttributeDiscard, peer.attribute_discard),
        ] {
            outcomes
                .get_or_create(&vec![
                    ("peer", peer.address.to_string()),
                    ("outcome", outcome.label().to_string()),
                ])
                .inc_by(count);
        }
    }
    registry.register(
        "twill_bgp_rfc7606_updates",
        "Malformed UPDATEs handled by RFC 7606, by outcome",
        outcomes,
    );
    let rib = Gauge::<i64>::default();
    rib.set(speaker.rib().len() as i64);
    registry.register("twill_bgp_rib_prefixes", "Prefixes in the Loc-RIB", rib);
    let up = Gauge::<i64>::default();
    up.set(uptime.as_secs() as i64);
    registry.register("twill_bgp_uptime_seconds", "Seconds since start", up);
    let pauses = Family::<Labels, Counter>::default();
    for (reason, count) in ["speaker", "kernel"].into_iter().zip(read_pauses) {
        pauses
            .get_or_create(&vec![("behind", reason.to_string())])
            .inc_by(count);
    }
    registry.register(
        "twill_bgp_read_pauses",
        "Times a connection stopped reading because the speaker or the kernel was behind",
        pauses,
    );
    if let Some((writes, waiting)) = kernel {
        let counter = Counter::<u64>::default();
        counter.inc_by(writes);
        registry.register(
            "twill_bgp_kernel_writes",
            "Route writes the kernel acknowledged",
            counter,
        );
        let backlog = Gauge::<i64>::default();
        backlog.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        registry.register(
            "twill_bgp_kernel_backlog",
            "Route writes waiting for the kernel",
            backlog,
        );
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::attribute::{AsPath, PathAttributes};

    #[test]
    fn rib_chunks_join_into_one_json_array() {
        let row = |prefix: &str, from: Option<&str>| RibRow {
            prefix: prefix.parse().unwrap(),
            path_id: 0,
            next_hop: "198.18.0.2".parse().unwrap(),
            attributes: std::sync::Arc::new(PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence(vec![65002])),
                communities: vec![(65002 << 16) | 7],
                ..PathAttributes::default()
            }),
            from: from.map(|f| f.parse().unwrap()),
            best: true,
            stale: false,
            refreshing: false,
        };
        let first = rib_rows_json(&[
            row("10.1.0.0/24", Some("198.18.0.2")),
            row("10.2.0.0/24", None),
        ]);
        let second = rib_rows_json(&[row("10.3.0.0/24", Some("198.18.0.2"))]);
        let joined: Value = serde_json::from_str(&format!("[{first},{second}]")).unwrap();
        let rows = joined.as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["as_path"], json!([65002]));
        assert_eq!(rows[0]["communities"], json!(["65002:7"]));
        assert_eq!(rows[1]["from"], "local");
        assert_eq!(rows[2]["prefix"], "10.3.0.0/24");
        assert_eq!(rib_rows_json(&[]), "");
    }

    #[test]
    fn metrics_count_rfc_7606_outcomes_per_peer() {
        let speaker = Speaker::new(crate::speaker::SpeakerConfig {
            local_as: 65001,
            router_id: "198.18.0.1".parse().unwrap(),
            cluster_id: None,
            max_paths: 1,
            always_compare_med: false,
        });
        let peer = PeerStatus {
            address: "198.18.0.2".parse().unwrap(),
            remote_as: 65002,
            state: "Established",
            uptime_s: 1,
            received: 0,
            accepted: 0,
            advertised: 0,
            last_error: None,
            disabled: false,
            updates_in: 5,
            updates_out: 0,
            treat_as_withdraw: 3,
            attribute_discard: 1,
        };
        let text = metrics(
            &[peer],
            &speaker,
            Duration::from_secs(1),
            Some((7, 3)),
            [2, 4],
        );
        // OpenMetrics: a counter's family is named without `_total`, its samples with it.
        assert!(text.contains("# TYPE twill_bgp_rfc7606_updates counter"));
        assert!(text.contains("twill_bgp_sessions{state=\"Established\"} 1"));
        assert!(text.contains("twill_bgp_updates_received_total{peer=\"198.18.0.2\"} 5"));
        assert!(text.contains("twill_bgp_kernel_writes_total 7"));
        assert!(text.contains("twill_bgp_kernel_backlog 3"));
        assert!(text.contains("twill_bgp_read_pauses_total{behind=\"speaker\"} 2"));
        assert!(text.contains("twill_bgp_read_pauses_total{behind=\"kernel\"} 4"));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains(
            "twill_bgp_rfc7606_updates_total{peer=\"198.18.0.2\",outcome=\"treat-as-withdraw\"} 3"
        ));
        assert!(text.contains(
            "twill_bgp_rfc7606_updates_total{peer=\"198.18.0.2\",outcome=\"attribute-discard\"} 1"
        ));
    }
}
