//! `drover keys`: create keys and a trust document, show them, and sign payloads offline.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use drover_protocol::keyfile::read_signing_key;
use drover_protocol::trust::RoleKeys;
use drover_protocol::{
    Envelope, MANIFEST_PAYLOAD_TYPE, SigningKey, TRUST_PAYLOAD_TYPE, Timestamp, Trust, TrustDocument,
};
use serde_json::json;

use crate::cli::args::{InitArgs, Output, ShowArgs, SignArgs};
use crate::error::Error;
use crate::keydir::{MANIFEST_KEY_FILE, TRUST_FILE, create_key_dir, io, root_key_file};

/// Largest payload or envelope `keys sign` reads from stdin.
const MAX_SIGN_INPUT: u64 = 16 * 1024 * 1024;

/// `drover keys init`.
pub fn init(args: &InitArgs, now: Timestamp, out: &mut dyn Write) -> Result<(), Error> {
    let document = create_key_dir(&args.dir, args.root_keys, args.root_threshold, args.expires_in, now)?;

    let rows = key_rows(&args.dir, Some(&document))?;
    match args.output {
        Output::Json => print_json(out, &summary_json(&args.dir, &rows, &document))?,
        Output::Table => {
            show_table(out, &args.dir, &rows, Some((&document, now)))?;
            writeln!(out).map_err(stdout_error)?;
            writeln!(
                out,
                "Root keys sign trust documents only: move {} to offline storage now.\nThe coordinator needs {} and {}.",
                (1..=args.root_keys).map(root_key_file).collect::<Vec<_>>().join(", "),
                MANIFEST_KEY_FILE,
                TRUST_FILE
            )
            .map_err(stdout_error)?;
        }
    }
    Ok(())
}

/// One private key file and what the trust document says it is.
struct KeyRow {
    file: String,
    key_id: String,
    roles: Vec<&'static str>,
}

fn key_rows(dir: &Path, document: Option<&TrustDocument>) -> Result<Vec<KeyRow>, Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "key"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let key = read_signing_key(path)?;
            let listed = |role: &RoleKeys| role.keys.iter().any(|listed| &listed.keyid == key.key_id());
            let mut roles = Vec::new();
            if let Some(document) = document {
                if listed(&document.root) {
                    roles.push("root");
                }
                if listed(&document.manifest) {
                    roles.push("manifest");
                }
            }
            Ok(KeyRow {
                file: path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                key_id: key.key_id().to_string(),
                roles,
            })
        })
        .collect()
}

/// `drover keys show`.
pub fn show(args: &ShowArgs, now: Timestamp, out: &mut dyn Write) -> Result<(), Error> {
    if !args.dir.is_dir() {
        return Err(Error::NotFound {
            path: args.dir.clone(),
            hint: " (create keys with `drover keys init --dir DIR`)",
        });
    }
    let trust_path = args.dir.join(TRUST_FILE);
    let document = match fs::read(&trust_path) {
        // Signatures are checked as a host would; expiry is shown, not enforced, so an
        // operator can inspect an expired document.
        Ok(bytes) => Some(
            Trust::bootstrap(&bytes, Timestamp::EPOCH)
                .map_err(|rejection| Error::Trust {
                    path: trust_path.clone(),
                    rejection,
                })?
                .document()
                .clone(),
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(io("reading", &trust_path)(error)),
    };
    let rows = key_rows(&args.dir, document.as_ref())?;
    match args.output {
        Output::Json => {
            let mut value = document.as_ref().map_or_else(
                || json!({ "trust": null, "keys": rows_json(&rows) }),
                |d| summary_json(&args.dir, &rows, d),
            );
            value["trust_expired"] = json!(document.as_ref().map(|document| document.expires_at <= now));
            print_json(out, &value)
        }
        Output::Table => show_table(out, &args.dir, &rows, document.as_ref().map(|document| (document, now))),
    }
}

fn rows_json(rows: &[KeyRow]) -> serde_json::Value {
    rows.iter()
        .map(|row| json!({ "file": row.file, "keyid": row.key_id, "roles": row.roles }))
        .collect()
}

fn summary_json(dir: &Path, rows: &[KeyRow], document: &TrustDocument) -> serde_json::Value {
    json!({ "dir": dir, "keys": rows_json(rows), "trust": document })
}

fn show_table(
    out: &mut dyn Write,
    dir: &Path,
    rows: &[KeyRow],
    trust: Option<(&TrustDocument, Timestamp)>,
) -> Result<(), Error> {
    let width = rows
        .iter()
        .map(|row| row.file.len())
        .max()
        .unwrap_or(0)
        .max("KEY FILE".len());
    let mut text = format!("{:width$}  {:64}  ROLE\n", "KEY FILE", "KEY ID");
    for row in rows {
        let roles = if row.roles.is_empty() {
            "not in trust.json".to_owned()
        } else {
            row.roles.join(",")
        };
        text.push_str(&format!("{:width$}  {:64}  {roles}\n", row.file, row.key_id));
    }
    match trust {
        None => text.push_str(&format!("\n{}: no {TRUST_FILE}\n", dir.display())),
        Some((document, now)) => {
            let state = if document.expires_at <= now { "EXPIRED" } else { "valid" };
            text.push_str(&format!(
                "\n{TRUST_FILE}: version {}, expires {} ({state})\n  root keys:     {} of {} must sign a new trust document\n  manifest keys: {} of {} must sign a manifest\n",
                document.version,
                document.expires_at,
                document.root.threshold,
                document.root.keys.len(),
                document.manifest.threshold,
                document.manifest.keys.len(),
            ));
        }
    }
    out.write_all(text.as_bytes()).map_err(stdout_error)
}

/// The full media type for a `--type` value (`manifest` and `trust` are shorthands).
fn payload_type(text: &str) -> &str {
    match text {
        "manifest" => MANIFEST_PAYLOAD_TYPE,
        "trust" => TRUST_PAYLOAD_TYPE,
        other => other,
    }
}

/// `drover keys sign`.
pub fn sign(args: &SignArgs, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    let keys = args
        .keys
        .iter()
        .map(|path| read_signing_key(path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut bytes = Vec::new();
    input
        .take(MAX_SIGN_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(io("reading", Path::new("stdin")))?;
    if bytes.len() as u64 > MAX_SIGN_INPUT {
        return Err(Error::Input(format!(
            "stdin is over the limit of {MAX_SIGN_INPUT} bytes"
        )));
    }
    let envelope = if args.append {
        let mut envelope: Envelope = serde_json::from_slice(&bytes)
            .map_err(|error| Error::Input(format!("--append: stdin is not a DSSE envelope: {error}")))?;
        if let Some(wanted) = args.payload_type.as_deref().map(payload_type)
            && wanted != envelope.payload_type
        {
            return Err(Error::Input(format!(
                "--type {wanted} does not match the envelope's payload type {}",
                envelope.payload_type
            )));
        }
        for key in &keys {
            envelope
                .add_signature(key)
                .map_err(|error| Error::Input(format!("--append: the envelope's payload is not base64: {error}")))?;
        }
        envelope
    } else {
        let Some(wanted) = args.payload_type.as_deref() else {
            return Err(Error::Input(
                "--type is required when signing a payload (manifest, trust, or a media type)".into(),
            ));
        };
        let key_refs: Vec<&SigningKey> = keys.iter().collect();
        Envelope::sign(payload_type(wanted), &bytes, &key_refs)
    };
    out.write_all(&envelope.to_json()).map_err(stdout_error)?;
    out.write_all(b"\n").map_err(stdout_error)
}

fn print_json(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), Error> {
    let mut text = serde_json::to_vec_pretty(value).expect("JSON values serialize");
    text.push(b'\n');
    out.write_all(&text).map_err(stdout_error)
}

fn stdout_error(source: std::io::Error) -> Error {
    Error::Io {
        operation: "writing",
        path: PathBuf::from("stdout"),
        source,
    }
}
