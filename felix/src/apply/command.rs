//! Running the iptables and ipset programs.

use std::io::{ErrorKind, Write as _};
use std::process::{Command, Stdio};

use super::ApplyError;

/// Run `program args`, with `input` on its standard input; its standard output on success.
///
/// The child inherits the calling thread's namespaces, so a thread that has entered a
/// network namespace programs that namespace.
#[allow(
    clippy::disallowed_methods,
    reason = "the apply edge runs iptables-save/-restore and ipset"
)]
pub(super) fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, ApplyError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_error = |source| ApplyError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A program that fails early closes its input; its exit status and stderr say why.
        match stdin.write_all(text.as_bytes()) {
            Err(error) if error.kind() != ErrorKind::BrokenPipe => return Err(spawn_error(error)),
            _ => {}
        }
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let line = input.and_then(|text| failed_line(&stderr, text));
    Err(ApplyError::Failed {
        command,
        status: output.status,
        stderr,
        line,
    })
}

/// The script line an error message names (`line 3 failed`, `Error in line 3:`,
/// `Error occurred at line: 3`).
pub(super) fn failed_line(stderr: &str, script: &str) -> Option<String> {
    let (_, after) = stderr
        .split_once("line ")
        .or_else(|| stderr.split_once("line: "))?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let number: usize = digits.parse().ok()?;
    script
        .lines()
        .nth(number.checked_sub(1)?)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_line_is_found_in_both_dialects() {
        let script = "*filter\n-A nochain -j RETURN\nCOMMIT\n";
        let line = Some("-A nochain -j RETURN".to_owned());
        assert_eq!(failed_line("iptables-restore: line 2 failed", script), line);
        let ipset = "ipset v7.17: Error in line 2: The set with the given name does not exist";
        assert_eq!(failed_line(ipset, script), line);
        let nft = "iptables-nft-restore v1.8.9 (nf_tables): chain name too long\nError occurred at line: 2";
        assert_eq!(failed_line(nft, script), line);
        assert_eq!(failed_line("something else", script), None);
        assert_eq!(failed_line("line 0 failed", script), None);
    }
}
