//! `drover-agent verify`: run the protocol's acceptance function on a file, as the agent
//! does before acting, and say what it decided.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use drover_protocol::manifest::MAX_MANIFEST_BYTES;
use drover_protocol::trust::MAX_TRUST_BYTES;
use drover_protocol::{DocumentKind, LastAccepted, Rejection, Timestamp, Trust, accept};

use crate::cli::{VerifyArgs, VerifyTrustArgs};
use crate::error::Error;

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        operation,
        path,
        source,
    }
}

/// Reads at most `limit + 1` bytes, so an oversized input is detected without being
/// read whole; returns the bytes and the full size when it is known to be larger.
fn read_bounded(reader: &mut dyn Read, path: &Path, limit: usize) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io("reading", path))?;
    Ok(bytes)
}

fn too_large(kind: DocumentKind, path: &Path, read: usize, limit: usize) -> Rejection {
    let size = std::fs::metadata(path)
        .ok()
        .and_then(|m| usize::try_from(m.len()).ok())
        .unwrap_or(read)
        .max(read);
    Rejection::TooLarge { kind, size, limit }
}

/// Reads a trust envelope, refusing an oversized one without reading it whole.
fn read_trust_file(path: &Path) -> Result<Vec<u8>, Error> {
    let mut file = File::open(path).map_err(io("opening trust document", path))?;
    let bytes = read_bounded(&mut file, path, MAX_TRUST_BYTES)?;
    if bytes.len() > MAX_TRUST_BYTES {
        let rejection = too_large(DocumentKind::Trust, path, bytes.len(), MAX_TRUST_BYTES);
        return Err(Error::Trust {
            path: path.to_path_buf(),
            rejection,
        });
    }
    Ok(bytes)
}

/// Loads and checks a trust document from a file.
pub fn load_trust(path: &Path, now: Timestamp) -> Result<Trust, Error> {
    let bytes = read_trust_file(path)?;
    Trust::bootstrap(&bytes, now).map_err(|rejection| Error::Trust {
        path: path.to_path_buf(),
        rejection,
    })
}

/// `drover-agent verify-trust`.
pub fn verify_trust(
    args: &VerifyTrustArgs,
    now: Timestamp,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), Error> {
    let current = load_trust(&args.trust, now)?;
    let chain = args
        .files
        .iter()
        .map(|path| read_trust_file(path))
        .collect::<Result<Vec<_>, _>>()?;
    let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    let last = args.files.last().expect("clap requires at least one file");
    let rotated = current.rotate_chain(&chain, now).map_err(|rejection| Error::Trust {
        path: last.clone(),
        rejection,
    })?;
    let mut document = serde_json::to_vec_pretty(rotated.document()).expect("a trust document serializes");
    document.push(b'\n');
    out.write_all(&document).map_err(io("writing", Path::new("stdout")))?;
    let summary = format!(
        "accepted: trust document version {} replaces version {} ({} rotation(s)), expires {}\n",
        rotated.version(),
        current.version(),
        chain.len(),
        rotated.expires_at(),
    );
    err.write_all(summary.as_bytes())
        .map_err(io("writing", Path::new("stderr")))
}

/// `drover-agent verify`.
pub fn verify(
    args: &VerifyArgs,
    now: Timestamp,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), Error> {
    let trust = load_trust(&args.trust, now)?;
    let bytes = if args.file.as_os_str() == "-" {
        read_bounded(stdin, Path::new("stdin"), MAX_MANIFEST_BYTES)?
    } else {
        let mut file = File::open(&args.file).map_err(io("opening manifest", &args.file))?;
        read_bounded(&mut file, &args.file, MAX_MANIFEST_BYTES)?
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(Error::Manifest(too_large(
            DocumentKind::Manifest,
            &args.file,
            bytes.len(),
            MAX_MANIFEST_BYTES,
        )));
    }
    let last = args.last_serial.map(|serial| LastAccepted {
        serial,
        issued_at: args.last_issued_at.unwrap_or(Timestamp::EPOCH),
    });
    let verified = accept(&bytes, &trust, &args.host, last, now).map_err(Error::Manifest)?;

    let manifest = verified.manifest();
    let mut payload = if args.raw {
        verified.payload().to_vec()
    } else {
        serde_json::to_vec_pretty(manifest).expect("a manifest serializes")
    };
    payload.push(b'\n');
    let write = |out: &mut dyn Write, bytes: &[u8]| out.write_all(bytes).map_err(io("writing", Path::new("stdout")));
    write(out, &payload)?;
    let summary = format!(
        "accepted: manifest serial {} for host {}, {} app(s){}, issued {}, expires {}, trust version {}\n",
        manifest.serial,
        manifest.host,
        manifest.apps.len(),
        if manifest.hold { ", HOLD" } else { "" },
        manifest.issued_at,
        manifest.expires_at,
        trust.version(),
    );
    write(err, summary.as_bytes())
}
