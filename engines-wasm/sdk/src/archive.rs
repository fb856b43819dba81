//! The image archive handed to [`Engine::image_load`](crate::Engine::image_load).

use std::io;

use crate::bindings::wasi::io::streams::{InputStream, StreamError};
use crate::{EngineError, Result};

/// Size of one read from the host.
const CHUNK: u64 = 64 * 1024;

/// A `docker save` / OCI image archive (tar, already decompressed by the host), fed by the
/// host as it reads it (a download is spooled to disk and checked first): a
/// `wasi:io/streams@0.2.12` input stream.
///
/// Either send it on as an HTTP request body with
/// [`http::Request::stream_body`](crate::http::Request::stream_body) (the host copies it
/// without it passing through the engine's memory), or read it piece by piece through
/// [`Archive::read_chunk`] or [`std::io::Read`]. Never collect it whole: it can be
/// gigabytes and the engine's memory is capped.
pub struct Archive {
    stream: InputStream,
    /// Bytes read through this wrapper so far.
    read: u64,
}

impl Archive {
    /// Wraps the stream the host passed.
    pub fn new(stream: InputStream) -> Self {
        Archive { stream, read: 0 }
    }

    /// The next piece of the archive (at most 64 KiB), blocking until one is available;
    /// `None` at the end. An error means the host could not go on feeding it (a read or
    /// gzip error, or `context-engines/max-archive-mb` passed): it is a
    /// [`EngineError::BadArchive`].
    pub fn read_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            match self.stream.blocking_read(CHUNK) {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => {
                    self.read += bytes.len() as u64;
                    return Ok(Some(bytes));
                }
                Err(StreamError::Closed) => return Ok(None),
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(EngineError::BadArchive(format!(
                        "reading the image archive failed after {} bytes: {}",
                        self.read,
                        e.to_debug_string()
                    )));
                }
            }
        }
    }

    /// Reads the archive to its end, keeping nothing; returns its size in bytes.
    pub fn discard(&mut self) -> Result<u64> {
        while self.read_chunk()?.is_some() {}
        Ok(self.read)
    }

    /// Bytes read through this wrapper so far ([`read_chunk`](Archive::read_chunk),
    /// [`std::io::Read`], [`discard`](Archive::discard)).
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The underlying stream, for raw WASI calls.
    pub fn into_stream(self) -> InputStream {
        self.stream
    }
}

impl io::Read for Archive {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.stream.blocking_read(buf.len().min(CHUNK as usize) as u64) {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    self.read += bytes.len() as u64;
                    return Ok(bytes.len());
                }
                Err(StreamError::Closed) => return Ok(0),
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(io::Error::other(e.to_debug_string()));
                }
            }
        }
    }
}

impl From<Archive> for InputStream {
    fn from(archive: Archive) -> InputStream {
        archive.stream
    }
}
