// SPDX-License-Identifier: GPL-2.0

//! VFIO migration v2: device states, single arcs and the migration data stream.
//!
//! C header: [`include/uapi/linux/vfio.h`](srctree/include/uapi/linux/vfio.h)
//!
//! This module is bus independent and pure logic: it calls no VFIO symbol, so it is always built
//! (and unit tested with KUnit). The device side, which runs the arcs and owns the data files, is
//! in [`super::pci`].
//!
//! # States and arcs
//!
//! The VFIO core splits a requested transition into single arcs (`vfio_mig_get_next_state()`);
//! a driver implements each arc. [`Arc::classify`] tells what a single arc means for the data
//! transfer session: the arc into the saving group (`RUNNING -> PRE_COPY`,
//! `RUNNING_P2P -> PRE_COPY_P2P`, `STOP -> STOP_COPY`) opens a saving file, arcs inside the group
//! keep it, the arc out of the group ends it; `STOP -> RESUMING` opens a resuming file and
//! `RESUMING -> STOP` completes it.
//!
//! # The stream
//!
//! The stream format is documented in
//! [`Documentation/driver-api/vfio-rust-migration-stream.rst`]: records with a 24-byte header
//! (type, flags, length, session), a HEADER record first (magic, version, device identity), an
//! END record last. [`StreamWriter`] frames the saving side, [`StreamReader`] parses and validates
//! the resuming side as bytes arrive, without ever buffering more than one record.
//!
//! [`Documentation/driver-api/vfio-rust-migration-stream.rst`]:
//!     srctree/Documentation/driver-api/vfio-rust-migration-stream.rst

use crate::{
    alloc::{
        flags::GFP_KERNEL,
        KVVec,
        KVec, //
    },
    bindings,
    prelude::*, //
};

/// A VFIO device migration state (`enum vfio_device_mig_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MigState {
    /// `VFIO_DEVICE_STATE_ERROR`: a failed transition left the device in an unknown state; only a
    /// reset leaves it.
    Error = bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR,
    /// `VFIO_DEVICE_STATE_STOP`.
    Stop = bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP,
    /// `VFIO_DEVICE_STATE_RUNNING`.
    Running = bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
    /// `VFIO_DEVICE_STATE_STOP_COPY`.
    StopCopy = bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY,
    /// `VFIO_DEVICE_STATE_RESUMING`.
    Resuming = bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING,
    /// `VFIO_DEVICE_STATE_RUNNING_P2P`.
    RunningP2p = bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
    /// `VFIO_DEVICE_STATE_PRE_COPY`.
    PreCopy = bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY,
    /// `VFIO_DEVICE_STATE_PRE_COPY_P2P`.
    PreCopyP2p = bindings::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P,
}

impl MigState {
    /// All states, in `enum vfio_device_mig_state` order.
    pub const ALL: [MigState; 8] = [
        Self::Error,
        Self::Stop,
        Self::Running,
        Self::StopCopy,
        Self::Resuming,
        Self::RunningP2p,
        Self::PreCopy,
        Self::PreCopyP2p,
    ];

    /// Converts a raw `enum vfio_device_mig_state` value.
    pub fn from_raw(raw: u32) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_raw() == raw)
            .ok_or(EINVAL)
    }

    /// Returns the raw `enum vfio_device_mig_state` value.
    #[inline]
    pub const fn as_raw(self) -> u32 {
        self as u32
    }

    /// Returns `true` for the states of the saving group (PRE_COPY, PRE_COPY_P2P, STOP_COPY),
    /// which share one saving file.
    #[inline]
    pub const fn is_saving(self) -> bool {
        matches!(self, Self::PreCopy | Self::PreCopyP2p | Self::StopCopy)
    }

    /// Returns `true` for the states in which the device runs (may change its state by itself or
    /// through its user): RUNNING, RUNNING_P2P, PRE_COPY and PRE_COPY_P2P.
    #[inline]
    pub const fn is_running(self) -> bool {
        matches!(
            self,
            Self::Running | Self::RunningP2p | Self::PreCopy | Self::PreCopyP2p
        )
    }
}

/// What a single arc means for the device and its data transfer session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arc {
    /// The device stops or starts peer-to-peer activity (RUNNING <-> RUNNING_P2P, and the same
    /// inside the saving group: PRE_COPY <-> PRE_COPY_P2P); `true` means quiesced.
    P2p(bool),
    /// The device stops (RUNNING_P2P -> STOP, or RUNNING -> STOP without P2P support) or starts
    /// again (`false`).
    Stop(bool),
    /// A saving session starts and returns the saving file; `precopy` is `false` for
    /// STOP -> STOP_COPY.
    SaveOpen {
        /// The session starts in PRE_COPY or PRE_COPY_P2P.
        precopy: bool,
    },
    /// PRE_COPY_P2P -> STOP_COPY (or PRE_COPY -> STOP_COPY without P2P support): the device stops
    /// and the session continues with the final data.
    SaveStopCopy,
    /// The saving session ends (PRE_COPY -> RUNNING, PRE_COPY_P2P -> RUNNING_P2P,
    /// STOP_COPY -> STOP).
    SaveClose,
    /// STOP -> RESUMING: a resuming session starts and returns the resuming file.
    ResumeOpen,
    /// RESUMING -> STOP: the received state is applied; fails if it is incomplete.
    ResumeFinish,
}

impl Arc {
    /// Classifies the single arc `from -> to`.
    ///
    /// Returns `EINVAL` for anything that is not a single arc of the VFIO migration FSM,
    /// including any arc from or to ERROR (only a reset leaves ERROR).
    pub fn classify(from: MigState, to: MigState) -> Result<Self> {
        use MigState::*;
        Ok(match (from, to) {
            (Running, RunningP2p) | (PreCopy, PreCopyP2p) => Arc::P2p(true),
            (RunningP2p, Running) | (PreCopyP2p, PreCopy) => Arc::P2p(false),
            (RunningP2p, Stop) | (Running, Stop) => Arc::Stop(true),
            (Stop, RunningP2p) | (Stop, Running) => Arc::Stop(false),
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => Arc::SaveOpen { precopy: true },
            (Stop, StopCopy) => Arc::SaveOpen { precopy: false },
            (PreCopyP2p, StopCopy) | (PreCopy, StopCopy) => Arc::SaveStopCopy,
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) | (StopCopy, Stop) => Arc::SaveClose,
            (Stop, Resuming) => Arc::ResumeOpen,
            (Resuming, Stop) => Arc::ResumeFinish,
            _ => return Err(EINVAL),
        })
    }

    /// Returns `true` if this arc returns a new data file.
    #[inline]
    pub const fn opens_file(self) -> bool {
        matches!(self, Arc::SaveOpen { .. } | Arc::ResumeOpen)
    }
}

/// The phase of a saving session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavePhase {
    /// PRE_COPY or PRE_COPY_P2P: the device runs; the stream carries what is ready and reading
    /// returns `ENOMSG` when nothing is.
    PreCopy,
    /// STOP_COPY: the device is stopped; the stream carries the rest, then END, then EOF.
    StopCopy,
}

/// The stream magic, in the HEADER record.
pub const STREAM_MAGIC: [u8; 8] = *b"RVFIOMIG";
/// The stream format version, in the HEADER record.
pub const STREAM_VERSION: u32 = 1;
/// Size of a record header.
pub const RECORD_HEADER_SIZE: usize = 24;
/// The largest record payload a reader accepts.
pub const MAX_RECORD_PAYLOAD: usize = (1 << 20) + 64;
/// The most driver data one record carries, leaving room for a small per-record prefix (such as
/// an offset) within [`MAX_RECORD_PAYLOAD`].
pub const MAX_RECORD_DATA: usize = 1 << 20;
/// Record type of the HEADER record.
pub const RECORD_HEADER: u32 = 1;
/// Record type of the END record.
pub const RECORD_END: u32 = 2;
/// The first record type available to drivers.
pub const RECORD_DRIVER_BASE: u32 = 0x100;
/// Record flag: a reader that does not know the record type skips the record.
pub const RECORD_OPTIONAL: u32 = 1;
/// Size of the prefix of a *direct* record: the little-endian 64-bit offset of its data in the
/// memory it belongs to. The rest of the payload is the data, which the reader does not buffer
/// (see [`StreamReader::new`]).
pub const DIRECT_PREFIX: usize = 8;

/// Size of the fixed part of the HEADER payload: magic, version, identity length.
const HEADER_FIXED: usize = 16;
/// Size of the END payload: record count, byte count.
const END_PAYLOAD: usize = 16;

/// The header of a stream record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The record type.
    pub ty: u32,
    /// The record flags ([`RECORD_OPTIONAL`]).
    pub flags: u32,
    /// The payload length.
    pub len: u64,
    /// The saving session the record belongs to.
    pub session: u64,
}

impl RecordHeader {
    /// Encodes the header (little-endian).
    pub fn encode(&self) -> [u8; RECORD_HEADER_SIZE] {
        let mut b = [0u8; RECORD_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..24].copy_from_slice(&self.session.to_le_bytes());
        b
    }

    /// Decodes a header.
    pub fn decode(b: &[u8; RECORD_HEADER_SIZE]) -> Self {
        Self {
            ty: le32(&b[0..4]),
            flags: le32(&b[4..8]),
            len: le64(&b[8..16]),
            session: le64(&b[16..24]),
        }
    }
}

/// Reads a little-endian `u32` from a 4-byte slice.
fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Reads a little-endian `u64` from an 8-byte slice.
fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Returns the stream size of a record with `payload` bytes of payload.
#[inline]
pub const fn record_size(payload: usize) -> usize {
    RECORD_HEADER_SIZE + payload
}

/// Returns the stream size of the HEADER record for an identity of `identity_len` bytes.
#[inline]
pub const fn header_record_size(identity_len: usize) -> usize {
    record_size(HEADER_FIXED + identity_len)
}

/// Stream size of the END record.
pub const END_RECORD_SIZE: usize = record_size(END_PAYLOAD);

/// Frames the records of one saving session.
///
/// Records are appended to a caller-provided buffer, which the saving file then copies to
/// userspace; the writer keeps the counts that END carries.
pub struct StreamWriter {
    session: u64,
    records: u64,
    bytes: u64,
    ended: bool,
}

impl StreamWriter {
    /// Creates the writer of session `session`, which must not be zero.
    pub fn new(session: u64) -> Result<Self> {
        if session == 0 {
            return Err(EINVAL);
        }
        Ok(Self {
            session,
            records: 0,
            bytes: 0,
            ended: false,
        })
    }

    /// Returns the session id.
    #[inline]
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Returns `true` once END was appended.
    #[inline]
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Appends a record of type `ty` with `len` payload bytes that `fill` writes.
    ///
    /// On error `buf` is left as it was.
    pub fn append(
        &mut self,
        buf: &mut KVVec<u8>,
        ty: u32,
        flags: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result,
    ) -> Result {
        let start = buf.len();
        self.append_head(buf, ty, flags, len, &[])?;
        if let Err(e) = buf.resize(start + record_size(len), 0, GFP_KERNEL) {
            self.unappend(buf, start, len);
            return Err(e.into());
        }
        if let Err(e) = fill(&mut buf[start + RECORD_HEADER_SIZE..]) {
            self.unappend(buf, start, len);
            return Err(e);
        }
        Ok(())
    }

    /// Appends the header of a record of type `ty` with `len` payload bytes, and the first
    /// `head.len()` of them; the caller delivers the other `len - head.len()` bytes right after
    /// these, before anything else of the stream.
    ///
    /// On error `buf` is left as it was.
    pub fn append_head(
        &mut self,
        buf: &mut KVVec<u8>,
        ty: u32,
        flags: u32,
        len: usize,
        head: &[u8],
    ) -> Result {
        if self.ended || len > MAX_RECORD_PAYLOAD || head.len() > len {
            return Err(EINVAL);
        }
        let hdr = RecordHeader {
            ty,
            flags,
            len: len as u64,
            session: self.session,
        };
        // Both appends below fit in the reserved space, so they cannot fail half-way.
        buf.reserve(RECORD_HEADER_SIZE + head.len(), GFP_KERNEL)?;
        buf.extend_from_slice(&hdr.encode(), GFP_KERNEL)?;
        buf.extend_from_slice(head, GFP_KERNEL)?;
        self.records += 1;
        self.bytes += record_size(len) as u64;
        Ok(())
    }

    /// Takes back the record of `len` payload bytes appended at `start` of `buf`.
    fn unappend(&mut self, buf: &mut KVVec<u8>, start: usize, len: usize) {
        buf.truncate(start);
        self.records -= 1;
        self.bytes -= record_size(len) as u64;
    }

    /// Appends the HEADER record, which carries the device identity.
    pub fn append_header(&mut self, buf: &mut KVVec<u8>, identity: &[u8]) -> Result {
        if self.records != 0 {
            return Err(EINVAL);
        }
        let id_len = u32::try_from(identity.len()).map_err(|_| EINVAL)?;
        self.append(buf, RECORD_HEADER, 0, HEADER_FIXED + identity.len(), |p| {
            p[0..8].copy_from_slice(&STREAM_MAGIC);
            p[8..12].copy_from_slice(&STREAM_VERSION.to_le_bytes());
            p[12..16].copy_from_slice(&id_len.to_le_bytes());
            p[16..].copy_from_slice(identity);
            Ok(())
        })
    }

    /// Appends the END record; nothing can be appended after it.
    pub fn append_end(&mut self, buf: &mut KVVec<u8>) -> Result {
        let (records, bytes) = (self.records, self.bytes);
        self.append(buf, RECORD_END, 0, END_PAYLOAD, |p| {
            p[0..8].copy_from_slice(&records.to_le_bytes());
            p[8..16].copy_from_slice(&bytes.to_le_bytes());
            Ok(())
        })?;
        self.ended = true;
        Ok(())
    }
}

/// A complete driver record delivered by [`StreamReader::advance`].
pub struct Record<'a> {
    /// The record type (at least [`RECORD_DRIVER_BASE`]).
    pub ty: u32,
    /// The record flags.
    pub flags: u32,
    /// The payload; only its [`DIRECT_PREFIX`] bytes for a direct record.
    pub payload: &'a [u8],
}

/// Where the next bytes of a resumed stream go, as told by [`StreamReader::input`].
pub enum Input<'a> {
    /// Into this buffer, which is never empty.
    Buffer(&'a mut [u8]),
    /// They are data of a direct record, which the caller moves itself (for example to device
    /// memory at `offset + at`).
    Direct {
        /// The record type.
        ty: u32,
        /// The offset in the record's prefix.
        offset: u64,
        /// How much of the record's data came before.
        at: u64,
        /// The size of the record's data; `total - at` bytes of it are still to come (at least
        /// one).
        total: u64,
    },
}

/// Parses and validates the stream of one resuming session as it arrives.
///
/// The caller asks [`StreamReader::input`] where the incoming bytes go, moves them there and
/// reports them with [`StreamReader::advance`], which returns each complete driver record. Any
/// fault puts the reader in an error state that every later call reports.
///
/// # Invariants
///
/// - `hdr_fill <= RECORD_HEADER_SIZE`; while `cur` is `Some(h)`, `h.len <= MAX_RECORD_PAYLOAD`,
///   `payload_fill <= h.len` and `payload.len()` is `h.len`, or [`DIRECT_PREFIX`] (at most
///   `h.len`) if `h.ty` is in `direct`.
pub struct StreamReader {
    identity: KVec<u8>,
    direct: KVec<u32>,
    hdr: [u8; RECORD_HEADER_SIZE],
    hdr_fill: usize,
    cur: Option<RecordHeader>,
    payload: KVVec<u8>,
    payload_fill: usize,
    session: u64,
    records: u64,
    bytes: u64,
    ended: bool,
    error: Option<Error>,
}

impl StreamReader {
    /// Creates a reader that accepts streams of devices with identity `identity`.
    ///
    /// Records of the types in `direct` are *direct* records: their payload starts with a
    /// [`DIRECT_PREFIX`], which the reader buffers, and the rest is data, which the reader never
    /// buffers but hands to the caller as [`Input::Direct`].
    pub fn new(identity: &[u8], direct: impl IntoIterator<Item = u32>) -> Result<Self> {
        let mut id = KVec::with_capacity(identity.len(), GFP_KERNEL)?;
        id.extend_from_slice(identity, GFP_KERNEL)?;
        let mut types = KVec::new();
        for ty in direct {
            types.push(ty, GFP_KERNEL)?;
        }
        Ok(Self {
            identity: id,
            direct: types,
            hdr: [0; RECORD_HEADER_SIZE],
            hdr_fill: 0,
            cur: None,
            payload: KVVec::new(),
            payload_fill: 0,
            session: 0,
            records: 0,
            bytes: 0,
            ended: false,
            error: None,
        })
    }

    /// Returns the error the reader is stuck in, if any.
    #[inline]
    pub fn error(&self) -> Option<Error> {
        self.error
    }

    /// Puts the reader in an error state (for example when the driver rejects a record) and
    /// returns `e`.
    pub fn fail(&mut self, e: Error) -> Error {
        if self.error.is_none() {
            self.error = Some(e);
        }
        self.error.unwrap_or(e)
    }

    /// Returns where the next bytes of the stream go.
    ///
    /// Fails if the reader is in an error state or the stream already ended (data after END).
    pub fn input(&mut self) -> Result<Input<'_>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.ended {
            return Err(self.fail(EINVAL));
        }
        match self.cur {
            None => Ok(Input::Buffer(&mut self.hdr[self.hdr_fill..])),
            // A record completes in `advance` once `payload_fill == h.len`, so neither the rest
            // of the payload buffer nor the rest of the direct data is empty here.
            Some(_) if self.payload_fill < self.payload.len() => {
                Ok(Input::Buffer(&mut self.payload[self.payload_fill..]))
            }
            Some(h) => Ok(Input::Direct {
                ty: h.ty,
                offset: le64(&self.payload[..DIRECT_PREFIX]),
                at: (self.payload_fill - DIRECT_PREFIX) as u64,
                total: h.len - DIRECT_PREFIX as u64,
            }),
        }
    }

    /// Accounts `n` bytes moved where [`StreamReader::input`] said.
    ///
    /// Returns a complete driver record, if these bytes completed one; HEADER and END are
    /// handled here. `n` must not exceed the length of the last buffer returned, or the data
    /// still to come of a direct record.
    pub fn advance(&mut self, n: usize) -> Result<Option<Record<'_>>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.cur {
            None => {
                if n > RECORD_HEADER_SIZE - self.hdr_fill {
                    return Err(self.fail(EINVAL));
                }
                self.hdr_fill += n;
                if self.hdr_fill < RECORD_HEADER_SIZE {
                    return Ok(None);
                }
                self.hdr_fill = 0;
                let h = RecordHeader::decode(&self.hdr);
                self.start_record(h)?;
                if h.len != 0 {
                    return Ok(None);
                }
            }
            Some(h) => {
                // `payload.len() <= h.len <= MAX_RECORD_PAYLOAD` by the type invariants.
                let room = if self.payload_fill < self.payload.len() {
                    self.payload.len() - self.payload_fill
                } else {
                    h.len as usize - self.payload_fill
                };
                if n > room {
                    return Err(self.fail(EINVAL));
                }
                self.payload_fill += n;
                if self.payload_fill < h.len as usize {
                    return Ok(None);
                }
            }
        }
        self.complete_record()
    }

    /// Validates a record header and prepares for its payload.
    fn start_record(&mut self, h: RecordHeader) -> Result {
        if h.flags & !RECORD_OPTIONAL != 0 {
            return Err(self.fail(EINVAL));
        }
        if h.len > MAX_RECORD_PAYLOAD as u64 {
            return Err(self.fail(EMSGSIZE));
        }
        if self.session == 0 {
            if h.ty != RECORD_HEADER || h.session == 0 {
                return Err(self.fail(EINVAL));
            }
        } else if h.ty == RECORD_HEADER || h.session != self.session {
            // A second HEADER, or a record of another saving session.
            return Err(self.fail(EINVAL));
        }
        // CAST: `h.len <= MAX_RECORD_PAYLOAD` fits in `usize`.
        let mut len = h.len as usize;
        if self.direct.contains(&h.ty) {
            if len < DIRECT_PREFIX {
                return Err(self.fail(EINVAL));
            }
            len = DIRECT_PREFIX;
        }
        if self.payload.capacity() < len {
            self.payload =
                KVVec::with_capacity(len, GFP_KERNEL).map_err(|e| self.fail(e.into()))?;
        }
        self.payload.clear();
        self.payload
            .resize(len, 0, GFP_KERNEL)
            .map_err(|e| self.fail(e.into()))?;
        self.payload_fill = 0;
        // INVARIANT: `h.len <= MAX_RECORD_PAYLOAD`; `payload.len()` is `h.len` or, for a direct
        // record, `DIRECT_PREFIX <= h.len`.
        self.cur = Some(h);
        Ok(())
    }

    /// Handles a complete record.
    fn complete_record(&mut self) -> Result<Option<Record<'_>>> {
        let Some(h) = self.cur.take() else {
            return Err(self.fail(EINVAL));
        };
        let (records, bytes) = (self.records, self.bytes);
        self.records += 1;
        self.bytes += record_size(h.len as usize) as u64;
        match h.ty {
            RECORD_HEADER => {
                let p = &self.payload[..];
                let ok = p.len() >= HEADER_FIXED
                    && p[0..8] == STREAM_MAGIC
                    && le32(&p[8..12]) == STREAM_VERSION
                    && le32(&p[12..16]) as usize == p.len() - HEADER_FIXED
                    && p[HEADER_FIXED..] == self.identity[..];
                if !ok {
                    return Err(self.fail(EINVAL));
                }
                self.session = h.session;
                Ok(None)
            }
            RECORD_END => {
                let p = &self.payload[..];
                if p.len() != END_PAYLOAD || le64(&p[0..8]) != records || le64(&p[8..16]) != bytes {
                    return Err(self.fail(EINVAL));
                }
                self.ended = true;
                Ok(None)
            }
            ty if ty < RECORD_DRIVER_BASE => {
                if h.flags & RECORD_OPTIONAL != 0 {
                    Ok(None)
                } else {
                    Err(self.fail(EINVAL))
                }
            }
            ty => Ok(Some(Record {
                ty,
                flags: h.flags,
                payload: &self.payload[..],
            })),
        }
    }

    /// Checks that the stream is complete: HEADER and END were received, nothing is pending and
    /// no error occurred.
    pub fn finish(&self) -> Result {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.ended || self.cur.is_some() || self.hdr_fill != 0 {
            return Err(EINVAL);
        }
        Ok(())
    }
}

#[macros::kunit_tests(rust_vfio_migration)]
mod tests {
    use super::*;

    const ID: &[u8] = b"\xf4\x1a\x10\x11\0\0\0\0\0\0\0\x04\0\0\0\0";

    /// Builds a complete stream with the given driver records.
    fn stream(session: u64, records: &[(u32, u32, &[u8])]) -> Result<KVVec<u8>> {
        let mut w = StreamWriter::new(session)?;
        let mut buf = KVVec::new();
        w.append_header(&mut buf, ID)?;
        for (ty, flags, data) in records {
            w.append(&mut buf, *ty, *flags, data.len(), |p| {
                p.copy_from_slice(data);
                Ok(())
            })?;
        }
        w.append_end(&mut buf)?;
        Ok(buf)
    }

    /// Feeds `data` to `r` in chunks of at most `chunk` bytes; returns the driver records seen
    /// as (type, payload length) pairs, or the first error.
    fn feed(r: &mut StreamReader, data: &[u8], chunk: usize) -> Result<KVec<(u32, usize)>> {
        let mut seen = KVec::new();
        let mut off = 0;
        while off < data.len() {
            let n = match r.input()? {
                Input::Buffer(buf) => {
                    let n = buf.len().min(chunk).min(data.len() - off);
                    buf[..n].copy_from_slice(&data[off..off + n]);
                    n
                }
                // CAST: Test data is small.
                Input::Direct { at, total, .. } => {
                    ((total - at) as usize).min(chunk).min(data.len() - off)
                }
            };
            off += n;
            if let Some(rec) = r.advance(n)? {
                seen.push((rec.ty, rec.payload.len()), GFP_KERNEL)?;
            }
        }
        Ok(seen)
    }

    #[test]
    fn state_raw_roundtrip() -> Result {
        for s in MigState::ALL {
            assert_eq!(MigState::from_raw(s.as_raw())?, s);
        }
        assert!(MigState::from_raw(8).is_err());
        Ok(())
    }

    #[test]
    fn arcs() {
        use MigState::*;
        assert_eq!(
            Arc::classify(Running, PreCopy),
            Ok(Arc::SaveOpen { precopy: true })
        );
        assert_eq!(
            Arc::classify(Stop, StopCopy),
            Ok(Arc::SaveOpen { precopy: false })
        );
        assert_eq!(Arc::classify(PreCopyP2p, StopCopy), Ok(Arc::SaveStopCopy));
        assert_eq!(Arc::classify(PreCopy, PreCopyP2p), Ok(Arc::P2p(true)));
        assert_eq!(Arc::classify(StopCopy, Stop), Ok(Arc::SaveClose));
        assert_eq!(Arc::classify(Resuming, Stop), Ok(Arc::ResumeFinish));
        // Saving-group states are never interior: no arc leaves STOP_COPY for PRE_COPY*.
        assert!(Arc::classify(StopCopy, PreCopy).is_err());
        assert!(Arc::classify(StopCopy, PreCopyP2p).is_err());
        assert!(Arc::classify(Resuming, StopCopy).is_err());
        // ERROR is never part of an arc.
        for s in MigState::ALL {
            assert!(Arc::classify(Error, s).is_err());
            assert!(Arc::classify(s, Error).is_err());
        }
        // Every arc that opens a file ends in RESUMING or a saving state.
        let mut opening = 0;
        for a in MigState::ALL {
            for b in MigState::ALL {
                if let Ok(arc) = Arc::classify(a, b) {
                    if arc.opens_file() {
                        opening += 1;
                        assert!(b.is_saving() || b == Resuming);
                        assert!(!a.is_saving());
                    }
                }
            }
        }
        assert_eq!(opening, 4);
    }

    #[test]
    fn roundtrip_any_chunking() -> Result {
        let data = [0x5au8; 3000];
        let s = stream(
            7,
            &[(0x100, 0, &data), (0x101, 0, &[1, 2, 3, 4, 5, 6, 7, 8])],
        )?;
        for chunk in [1, 7, 24, 25, 4096] {
            let mut r = StreamReader::new(ID, [])?;
            let seen = feed(&mut r, &s, chunk)?;
            assert_eq!(&seen[..], &[(0x100, 3000), (0x101, 8)]);
            r.finish()?;
        }
        Ok(())
    }

    #[test]
    fn direct_records_pass_through() -> Result {
        let mut mem = [0x11u8; 3000];
        mem[..DIRECT_PREFIX].copy_from_slice(&40u64.to_le_bytes());
        let s = stream(
            7,
            &[(0x100, 0, &mem), (0x101, 0, &[1, 2, 3, 4, 5, 6, 7, 8])],
        )?;
        for chunk in [1, 7, 24, 33, 4096] {
            let mut r = StreamReader::new(ID, [0x100])?;
            let (mut off, mut direct) = (0, 0u64);
            let mut seen = KVec::new();
            while off < s.len() {
                let n = match r.input()? {
                    Input::Buffer(buf) => {
                        let n = buf.len().min(chunk).min(s.len() - off);
                        buf[..n].copy_from_slice(&s[off..off + n]);
                        n
                    }
                    Input::Direct {
                        ty,
                        offset,
                        at,
                        total,
                    } => {
                        // The data arrives in order, never buffered, with its prefix decoded.
                        assert_eq!((ty, offset, at, total), (0x100, 40, direct, 2992));
                        // CAST: Test data is small.
                        let n = ((total - at) as usize).min(chunk).min(s.len() - off);
                        direct += n as u64;
                        n
                    }
                };
                off += n;
                if let Some(rec) = r.advance(n)? {
                    seen.push((rec.ty, rec.payload.len()), GFP_KERNEL)?;
                }
            }
            assert_eq!(direct, 2992);
            assert_eq!(&seen[..], &[(0x100, DIRECT_PREFIX), (0x101, 8)]);
            r.finish()?;
        }
        // A direct record too short for its prefix.
        let short = stream(7, &[(0x100, 0, &[0u8; 4])])?;
        let mut r = StreamReader::new(ID, [0x100])?;
        assert!(feed(&mut r, &short, 4096).is_err());
        Ok(())
    }

    #[test]
    fn rejects_bad_streams() -> Result {
        let good = stream(9, &[(0x100, 0, &[0u8; 100])])?;
        let check = |bytes: &[u8]| -> Result<bool> {
            let mut r = StreamReader::new(ID, [])?;
            Ok(feed(&mut r, bytes, 64).is_err() || r.finish().is_err())
        };

        // Intact: accepted.
        assert!(!check(&good)?);
        // Bad magic, bad version, wrong identity.
        for off in [
            RECORD_HEADER_SIZE,
            RECORD_HEADER_SIZE + 8,
            RECORD_HEADER_SIZE + 20,
        ] {
            let mut b = KVVec::new();
            b.extend_from_slice(&good, GFP_KERNEL)?;
            b[off] ^= 0xff;
            assert!(check(&b)?);
        }
        // Truncated anywhere.
        for cut in [1, 23, 24, 60, good.len() - END_RECORD_SIZE, good.len() - 1] {
            assert!(check(&good[..cut])?);
        }
        // Unknown mandatory generic type; unknown optional one is skipped.
        let bad = stream(9, &[(0x42, 0, &[0u8; 4])])?;
        assert!(check(&bad)?);
        let opt = stream(9, &[(0x42, RECORD_OPTIONAL, &[0u8; 4])])?;
        assert!(!check(&opt)?);
        // Unknown flag bits.
        let flags = stream(9, &[(0x100, 2, &[0u8; 4])])?;
        assert!(check(&flags)?);
        // Data after END, a second session spliced on.
        let mut two = KVVec::new();
        two.extend_from_slice(&good, GFP_KERNEL)?;
        two.extend_from_slice(&good, GFP_KERNEL)?;
        assert!(check(&two)?);
        // A record of another session in the middle.
        let other = stream(10, &[(0x100, 0, &[0u8; 100])])?;
        let hdr_len = header_record_size(ID.len());
        let mut spliced = KVVec::new();
        spliced.extend_from_slice(&good[..hdr_len], GFP_KERNEL)?;
        spliced.extend_from_slice(&other[hdr_len..], GFP_KERNEL)?;
        assert!(check(&spliced)?);
        // Oversized length.
        let mut big = KVVec::new();
        big.extend_from_slice(&good, GFP_KERNEL)?;
        big[hdr_len + 8..hdr_len + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let mut r = StreamReader::new(ID, [])?;
        assert_eq!(feed(&mut r, &big, 4096).err(), Some(EMSGSIZE));
        assert!(matches!(r.input(), Err(e) if e == EMSGSIZE));
        // END with a wrong record count.
        let mut end = KVVec::new();
        end.extend_from_slice(&good, GFP_KERNEL)?;
        let at = end.len() - END_PAYLOAD;
        end[at] ^= 1;
        assert!(check(&end)?);
        Ok(())
    }
}
