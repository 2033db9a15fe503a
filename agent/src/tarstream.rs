//! The decompressed tar stream as both unpackers read it (release tarballs in
//! [`crate::unpack`], OCI layers in [`crate::oci::layer`]): the metadata meter that stops a
//! hostile stream of headers, long names and pax records, the end-of-archive check, and
//! the stream errors both report in their own error types (through
//! `From<TarStreamError>`).

use std::cell::Cell;
use std::io::{self, Read};

use crate::unpack::{BLOCK, MAX_METADATA_BETWEEN_ENTRIES, METADATA_PER_ENTRY, quote};

/// A stream problem, before the unpacker names it in its own error type.
#[derive(Debug)]
pub(crate) enum TarStreamError {
    /// Headers, long names or pax records beyond the metadata limit.
    MetadataTooLarge { context: String },
    /// The stream is truncated, corrupt, not a tar, or has data after its end.
    Corrupt { context: String, detail: String },
}

/// Counts the decompressed bytes the tar reader consumes outside file data: at most
/// `MAX_METADATA_BETWEEN_ENTRIES` between two entries, and in all no more than that per
/// stream plus `METADATA_PER_ENTRY` per entry. One meter may span several streams (the
/// layers of one image).
#[derive(Debug, Default)]
pub(crate) struct MetadataMeter {
    streams: Cell<u64>,
    entries: Cell<u64>,
    /// Set while file data is being copied.
    in_data: Cell<bool>,
    total: Cell<u64>,
    since_entry: Cell<u64>,
    exceeded: Cell<bool>,
}

impl MetadataMeter {
    /// A new stream (archive or layer) starts.
    pub(crate) fn stream_started(&self) {
        self.streams.set(self.streams.get() + 1);
        self.since_entry.set(0);
        self.exceeded.set(false);
    }

    /// The tar reader produced an entry.
    pub(crate) fn entry_started(&self) {
        self.entries.set(self.entries.get() + 1);
        self.since_entry.set(0);
    }

    /// Whether reads are file data (not counted) from now on.
    pub(crate) fn set_in_data(&self, in_data: bool) {
        self.in_data.set(in_data);
    }

    fn count(&self, bytes: usize) -> io::Result<()> {
        if self.in_data.get() {
            return Ok(());
        }
        let total = self.total.get() + bytes as u64;
        let since_entry = self.since_entry.get() + bytes as u64;
        self.total.set(total);
        self.since_entry.set(since_entry);
        let allowed_total = MAX_METADATA_BETWEEN_ENTRIES
            .saturating_mul(self.streams.get())
            .saturating_add(self.entries.get().saturating_mul(METADATA_PER_ENTRY));
        if since_entry > MAX_METADATA_BETWEEN_ENTRIES || total > allowed_total {
            self.exceeded.set(true);
            return Err(io::Error::other("tar metadata over the limit"));
        }
        Ok(())
    }
}

/// The decompressed stream as the tar reader sees it, metered.
pub(crate) struct Metered<'m, R> {
    pub(crate) inner: R,
    pub(crate) meter: &'m MetadataMeter,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.meter.count(count)?;
        Ok(count)
    }
}

/// An error from the decompressed stream: over the metadata limit, or truncated/corrupt
/// compression or tar.
pub(crate) fn stream_error(meter: &MetadataMeter, context: String, error: io::Error) -> TarStreamError {
    if meter.exceeded.get() {
        TarStreamError::MetadataTooLarge { context }
    } else {
        TarStreamError::Corrupt {
            context,
            detail: quote(error.to_string().as_bytes()),
        }
    }
}

/// Where in the stream an error happened.
pub(crate) fn position(last_entry: Option<&str>) -> String {
    match last_entry {
        Some(name) => format!("after entry '{name}'"),
        None => "before its first entry".to_owned(),
    }
}

/// A header field that does not parse.
pub(crate) fn corrupt_header(name: &str, error: &io::Error) -> TarStreamError {
    TarStreamError::Corrupt {
        context: format!("in the header of entry '{name}'"),
        detail: quote(error.to_string().as_bytes()),
    }
}

/// The entry's mode as its header gives it.
pub(crate) fn header_mode<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<u32, TarStreamError> {
    entry.header().mode().map_err(|error| corrupt_header(name, &error))
}

/// Reads what follows the tar end-of-archive block to the end of the stream, which makes
/// a gzip decoder check the CRC and length of every member: the rest of the end marker (a
/// complete archive ends with two zero blocks; the tar crate stops after the first) and
/// record padding, all zeros. Anything else is refused, as another extractor might read
/// it as more entries.
pub(crate) fn check_end(
    mut rest: impl Read,
    buffer: &mut [u8],
    meter: &MetadataMeter,
    context: String,
) -> Result<(), TarStreamError> {
    let mut trailing = 0u64;
    loop {
        let count = match rest.read(buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(stream_error(meter, context, error)),
        };
        if buffer[..count].iter().any(|&byte| byte != 0) {
            return Err(TarStreamError::Corrupt {
                context,
                detail: "data follows the end-of-archive marker".into(),
            });
        }
        trailing += count as u64;
    }
    if trailing < BLOCK {
        return Err(TarStreamError::Corrupt {
            context,
            detail: "the tar archive ends without its end-of-archive marker".into(),
        });
    }
    Ok(())
}
