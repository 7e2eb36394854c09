//! `twillctl bgp peers|rib|reload|refresh`: asks twill-bgpd over its control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::{Failure, Output};

/// Sends one request line and returns the JSON answer.
fn ask(control: &Path, request: &str) -> Result<Value, Failure> {
    let mut stream = UnixStream::connect(control).with_context(|| {
        format!(
            "cannot reach twill-bgpd at {} (is it running? --control PATH)",
            control.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("twill-bgpd did not answer")?;
    let value: Value =
        serde_json::from_str(&line).with_context(|| format!("twill-bgpd answered {line:?}"))?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(anyhow::anyhow!("{error}").into());
    }
    Ok(value)
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut all = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    all.extend(rows);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| all.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in all {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `bgp peers`.
pub fn peers(control: &Path, output: Output) -> Result<(), Failure> {
    let peers = ask(control, "peers")?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    let rows = peers
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            [
                "address",
                "remote_asn",
                "state",
                "uptime_s",
                "received",
                "accepted",
                "advertised",
                "last_error",
            ]
            .iter()
            .map(|k| cell(&p[*k]))
            .collect()
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NEIGHBOR",
                "ASN",
                "STATE",
                "UPTIME(S)",
                "RECEIVED",
                "ACCEPTED",
                "ADVERTISED",
                "LAST ERROR"
            ],
            rows
        )
    );
    Ok(())
}

/// The control request for `bgp rib [TARGET] [--peer P --in|--out]`.
pub fn rib_request(target: Option<&str>, peer: Option<&str>, received: bool, sent: bool) -> String {
    let mut request = String::from("rib");
    if let Some(target) = target {
        request.push(' ');
        request.push_str(target);
    }
    if let Some(peer) = peer {
        request.push_str(" --peer ");
        request.push_str(peer);
        if received {
            request.push_str(" --in");
        } else if sent {
            request.push_str(" --out");
        }
    }
    request
}

/// `bgp rib`.
pub fn rib(control: &Path, request: &str, output: Output) -> Result<(), Failure> {
    let paths = ask(control, request)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&paths)?);
        return Ok(());
    }
    let rows = paths
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let best = if p["best"] == Value::Bool(true) {
                "*"
            } else {
                ""
            };
            vec![
                format!("{best}{}", cell(&p["prefix"])),
                cell(&p["next_hop"]),
                cell(&p["as_path"]),
                cell(&p["origin"]),
                cell(&p["local_pref"]),
                cell(&p["med"]),
                cell(&p["communities"]),
                cell(&p["large_communities"]),
                cell(&p["from"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "PREFIX",
                "NEXT HOP",
                "AS PATH",
                "ORIGIN",
                "LOCAL PREF",
                "MED",
                "COMMUNITIES",
                "LARGE",
                "FROM"
            ],
            rows
        )
    );
    Ok(())
}

/// `bgp reload`, `bgp refresh ADDRESS`, `bgp disable|enable ADDRESS`.
pub fn command(control: &Path, request: &str) -> Result<(), Failure> {
    ask(control, request)?;
    println!("ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rib_requests_carry_the_target_and_the_view() {
        assert_eq!(rib_request(None, None, false, false), "rib");
        assert_eq!(
            rib_request(Some("10.1.2.3"), None, false, false),
            "rib 10.1.2.3"
        );
        assert_eq!(
            rib_request(Some("10.0.0.0/8"), Some("198.18.0.2"), true, false),
            "rib 10.0.0.0/8 --peer 198.18.0.2 --in"
        );
        assert_eq!(
            rib_request(None, Some("198.18.0.2"), false, true),
            "rib --peer 198.18.0.2 --out"
        );
    }
}
