// SPDX-License-Identifier: GPL-2.0

//! Live migration (VFIO migration v2) of VFIO PCI variant devices.
//!
//! C header: [`include/linux/vfio.h`](srctree/include/linux/vfio.h)
//!
//! A driver implements [`MigrationOps`] (how to produce and how to consume its state, as
//! records) and names the implementation in [`Driver::Migration`]. Everything else is done here,
//! once for every driver: `struct vfio_migration_ops`, the state machine, the saving and resuming
//! data files with the stream format of [`super::super::migration`], the precopy information
//! ioctl, the stop-copy size, and the interaction with reset and close.
//!
//! # States
//!
//! The VFIO core splits a requested transition into single arcs with
//! `vfio_mig_get_next_state()`; each arc is classified with [`Arc::classify`] and run under the
//! device's migration lock. The arc into the saving group returns the saving file, the arc
//! `STOP -> RESUMING` the resuming file: since the VFIO core never routes a path through a
//! saving-group state, such an arc is always the last one of a request, which is checked. The
//! current state is never ERROR when the core's helper is called: a device in ERROR refuses every
//! transition until it is reset.
//!
//! # Data files
//!
//! The files are anonymous-inode stream files (`lseek()`, `pread()` and `pwrite()` fail with
//! `ESPIPE`); the saving file is read-only, the resuming file write-only. A file is *active*
//! while the device's migration state refers to it; leaving the saving group (or RESUMING), a
//! reset and the last close of the device disable it, after which it answers `ENODEV`. A file
//! holds a reference to the device, so it may outlive the device's last close and the driver's
//! unbind; the driver is only called for an active file, i.e. while the device is open.
//!
//! # Locking
//!
//! - The *migration lock* (a mutex in the device) protects the state and the sessions; it is held
//!   while the driver produces or consumes a record, never across a user copy that may fault
//!   (the user buffer may be an `mmap()` of this very device, whose fault handler takes
//!   `memory_lock`). The bytes of [`MigrationOps::BAR_RECORDS`] are copied under it (and under
//!   `memory_lock`) between the BAR and user pages pinned beforehand, which cannot fault; a
//!   buffer that cannot be pinned goes through a bounce buffer.
//! - Each file has an I/O lock that serialises its readers (or writers) and is held across the
//!   user copy and the pinning; it is taken before the migration lock, and never by reset or
//!   close.
//! - `reset_done` runs with `memory_lock` held for writing, so it must not wait for the migration
//!   lock (whose holder may wait for `memory_lock`): it records a deferred reset and only
//!   try-locks; whoever holds the migration lock performs the reset when releasing it
//!   ([`MigGuard`]), the pattern of the C drivers' `*_state_mutex_unlock()`.
//! - The driver's record callbacks and the BAR copies run with the device's memory decoding
//!   enabled, whatever the user set in the command register, and `memory_lock` held: for reading
//!   when the user enabled decoding, else for writing while decoding is enabled temporarily
//!   (see `Device::with_memory`). A device in a low-power state fails them with `EIO`.

use super::{
    BarIo,
    Device,
    Driver,
    Open, //
};
use crate::{
    alloc::{
        flags::GFP_KERNEL,
        KVVec,
        KVec, //
    },
    bindings,
    error::to_result,
    fs::{
        anon_inode::{
            self,
            poll_mask,
            AnonFile,
            UserBuffer, //
        },
        File,
    },
    ioctl::_IO,
    new_mutex, new_poll_condvar, new_spinlock,
    prelude::*,
    sync::{
        aref::ARef,
        poll::{
            PollCondVar,
            PollTable, //
        },
        Arc,
        ArcBorrow,
        Mutex,
        MutexGuard,
        SpinLock, //
    },
    uaccess::{
        UserPtr,
        UserSlice, //
    },
    vfio::{
        migration::{
            self,
            Arc as MigArc,
            Input,
            MigState,
            Record,
            SavePhase,
            StreamReader,
            StreamWriter,
            DIRECT_PREFIX,
            RECORD_HEADER_SIZE, //
        },
        MigrationFlags,
    },
};
use core::{
    mem::ManuallyDrop,
    ops::{
        Deref,
        DerefMut, //
    },
    ptr,
};

/// `VFIO_MIG_GET_PRECOPY_INFO`.
// CAST: `VFIO_TYPE` is the ASCII code of ';'.
const VFIO_MIG_GET_PRECOPY_INFO: u32 = _IO(bindings::VFIO_TYPE as u32, bindings::VFIO_BASE + 21);

/// Size of `struct vfio_precopy_info`, which is also its minimum `argsz`.
const PRECOPY_INFO_SIZE: usize = core::mem::size_of::<bindings::vfio_precopy_info>();

/// Bytes of records a saving session still has to produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Bytes of the initial image not produced yet.
    pub initial: u64,
    /// Bytes of state that changed after it was produced, not produced again yet.
    pub dirty: u64,
}

/// A driver record type whose records carry bytes of a BAR.
///
/// See [`MigrationOps::BAR_RECORDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRecord {
    /// The record type (at least [`migration::RECORD_DRIVER_BASE`]).
    pub ty: u32,
    /// The BAR.
    pub bar: u32,
}

/// Size of the bounce buffer of a data file whose user buffer cannot be pinned.
const BOUNCE_SIZE: usize = 64 * 1024;

/// A piece of the output of a saving file.
#[derive(Clone, Copy)]
enum Segment {
    /// The next bytes of [`Batch::buf`].
    Bytes(usize),
    /// Bytes of a BAR, copied from the BAR to the reader's buffer when read.
    Bar { bar: u32, off: usize, len: usize },
}

impl Segment {
    fn len(&self) -> usize {
        match *self {
            Self::Bytes(n) => n,
            Self::Bar { len, .. } => len,
        }
    }
}

/// Records produced for a saving file and not read yet: their bytes, except the BAR data of
/// records of [`MigrationOps::BAR_RECORDS`], which stays in the BAR until it is read.
struct Batch {
    buf: KVVec<u8>,
    segs: KVec<Segment>,
}

impl Batch {
    /// Accounts `n` bytes just appended to `buf`; a free slot in `segs` must be reserved.
    fn add_bytes(&mut self, n: usize) {
        if let Some(Segment::Bytes(last)) = self.segs.last_mut() {
            *last += n;
        } else if n > 0 {
            // Cannot fail: the caller reserved the slot.
            let _ = self.segs.push_within_capacity(Segment::Bytes(n));
        }
    }

    /// Returns the number of bytes in the batch.
    fn len(&self) -> usize {
        self.segs.iter().map(Segment::len).sum()
    }
}

/// Appends the records a driver produces to the stream of a saving session.
pub struct RecordSink<'a> {
    writer: &'a mut StreamWriter,
    batch: &'a mut Batch,
    bar_records: &'static [BarRecord],
}

impl RecordSink<'_> {
    /// Appends a record of driver type `ty` (at least [`migration::RECORD_DRIVER_BASE`]) with
    /// `len` payload bytes, which `fill` writes.
    ///
    /// `len` is at most [`migration::MAX_RECORD_PAYLOAD`]; set `optional` for records a reader
    /// that does not know them may skip.
    pub fn push(
        &mut self,
        ty: u32,
        optional: bool,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result,
    ) -> Result {
        // A BAR record type here would be parsed as one by the reader: `push_bar` only.
        if ty < migration::RECORD_DRIVER_BASE || self.bar_records.iter().any(|r| r.ty == ty) {
            return Err(EINVAL);
        }
        let flags = if optional {
            migration::RECORD_OPTIONAL
        } else {
            0
        };
        self.append_with(|w, buf| w.append(buf, ty, flags, len, fill))
    }

    /// Runs `append`, which appends whole records to the batch's buffer, and accounts them.
    fn append_with(
        &mut self,
        append: impl FnOnce(&mut StreamWriter, &mut KVVec<u8>) -> Result,
    ) -> Result {
        self.batch.segs.reserve(1, GFP_KERNEL)?;
        let start = self.batch.buf.len();
        append(self.writer, &mut self.batch.buf)?;
        self.batch.add_bytes(self.batch.buf.len() - start);
        Ok(())
    }

    /// Appends a record of type `ty`, one of [`MigrationOps::BAR_RECORDS`] for `bar`, that carries
    /// the `len` bytes (at most [`migration::MAX_RECORD_DATA`]) of `bar` at `off`.
    ///
    /// The bytes are copied from the BAR when the saving file is read, directly into the reader's
    /// buffer: they are those of that moment, which is later than this call. Fails with `EINVAL`
    /// for a type not registered for `bar` or bytes outside the BAR.
    pub fn push_bar(&mut self, ty: u32, bar: &BarIo<'_>, off: usize, len: usize) -> Result {
        let rec = BarRecord {
            ty,
            bar: bar.index(),
        };
        if !self.bar_records.contains(&rec) || len > migration::MAX_RECORD_DATA {
            return Err(EINVAL);
        }
        match off.checked_add(len) {
            Some(end) if end <= bar.len() => {}
            _ => return Err(EINVAL),
        }
        // CAST: `usize` fits in `u64`.
        let prefix = (off as u64).to_le_bytes();
        self.batch.segs.reserve(2, GFP_KERNEL)?;
        self.writer
            .append_head(&mut self.batch.buf, ty, 0, DIRECT_PREFIX + len, &prefix)?;
        self.batch.add_bytes(RECORD_HEADER_SIZE + DIRECT_PREFIX);
        if len > 0 {
            // Cannot fail: reserved above.
            let _ = self.batch.segs.push_within_capacity(Segment::Bar {
                bar: rec.bar,
                off,
                len,
            });
        }
        Ok(())
    }
}

/// The migration operations of a VFIO PCI variant driver.
///
/// The driver describes its state as records of its own types (see
/// [`Documentation/driver-api/vfio-rust-migration-stream.rst`]); the framing, the files and the
/// state machine are done by the abstraction. Drivers without migration use [`NoMigration`].
///
/// All methods are called with the device's migration lock held, on an open device; the record
/// methods additionally with the device's memory decoding enabled (temporarily, if the user
/// disabled it) and `memory_lock` held.
///
/// [`Documentation/driver-api/vfio-rust-migration-stream.rst`]:
///     srctree/Documentation/driver-api/vfio-rust-migration-stream.rst
pub trait MigrationOps<T: Driver>: 'static {
    /// The migration capabilities (empty: no migration). A device that migrates supports at
    /// least [`MigrationFlags::STOP_COPY`].
    const FLAGS: MigrationFlags;

    /// The state of one saving session.
    type Save: Send + Unpin;

    /// The state of one resuming session.
    type Resume: Send + Unpin;

    /// The record types that carry bytes of a BAR, one BAR each (none by default).
    ///
    /// Such a record is produced with [`RecordSink::push_bar`]. Its payload is the offset in the
    /// BAR (a [`DIRECT_PREFIX`]) followed by the bytes, which the abstraction copies between the
    /// BAR and the user's buffer directly: when the saving file is read, and, when the resuming
    /// file is written, into the BAR after checking that the record's bytes are all inside it.
    /// [`MigrationOps::resume_record`] never sees these records.
    const BAR_RECORDS: &'static [BarRecord] = &[];

    /// Writes the device identity, which the stream header carries and a resuming device must
    /// match byte for byte (device type and configuration, e.g. memory size).
    fn identity(dev: &Device<T, Open>, id: &mut KVec<u8>) -> Result;

    /// The device stops (`true`) or resumes (`false`) peer-to-peer activity. Optional.
    fn set_p2p(_dev: &Device<T, Open>, _quiesced: bool) -> Result {
        Ok(())
    }

    /// The device stops (`true`) or starts (`false`) changing its state. Optional.
    fn set_stopped(_dev: &Device<T, Open>, _stopped: bool) -> Result {
        Ok(())
    }

    /// Starts a saving session, in PRE_COPY (`precopy`) or directly in STOP_COPY.
    fn save_begin(dev: &Device<T, Open>, precopy: bool) -> Result<Self::Save>;

    /// Produces the next record(s) of a saving session into `out`.
    ///
    /// Returns `false` when nothing is ready: in [`SavePhase::PreCopy`] for now, in
    /// [`SavePhase::StopCopy`] for good (the abstraction then ends the stream). Returning `true`
    /// without producing a record is an error (`EIO` for the reader).
    fn save_next(
        dev: &Device<T, Open>,
        save: &mut Self::Save,
        phase: SavePhase,
        out: &mut RecordSink<'_>,
    ) -> Result<bool>;

    /// Returns the bytes of records the session has not produced yet.
    ///
    /// In [`SavePhase::PreCopy`], `initial + dirty` is what an immediate STOP_COPY would produce
    /// besides the final records that only STOP_COPY produces.
    fn save_pending(dev: &Device<T, Open>, save: &Self::Save) -> Pending;

    /// Returns the bytes of driver records that STOP_COPY would still produce
    /// (`VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`, without the stream's HEADER and END).
    ///
    /// For `None`, those of a new session started in STOP_COPY; for an open session, what it
    /// has not produced yet and would produce if STOP_COPY started now (in
    /// [`SavePhase::PreCopy`], [`MigrationOps::save_pending`]'s `initial + dirty` plus the
    /// records that only STOP_COPY produces).
    fn stop_copy_size(dev: &Device<T, Open>, save: Option<&Self::Save>) -> Result<u64>;

    /// Starts a resuming session.
    fn resume_begin(dev: &Device<T, Open>) -> Result<Self::Resume>;

    /// Consumes a driver record of a resuming session; returns `false` for an unknown type.
    ///
    /// Must validate the payload and fail (typically with `EINVAL`) on anything out of range.
    fn resume_record(
        dev: &Device<T, Open>,
        resume: &mut Self::Resume,
        record: &Record<'_>,
    ) -> Result<bool>;

    /// Completes a resuming session whose stream was complete (RESUMING -> STOP).
    fn resume_finish(dev: &Device<T, Open>, resume: Self::Resume) -> Result;
}

/// The [`MigrationOps`] of drivers without migration support.
pub struct NoMigration;

impl<T: Driver> MigrationOps<T> for NoMigration {
    const FLAGS: MigrationFlags = MigrationFlags::empty();
    type Save = ();
    type Resume = ();

    fn identity(_dev: &Device<T, Open>, _id: &mut KVec<u8>) -> Result {
        Err(ENOTTY)
    }

    fn save_begin(_dev: &Device<T, Open>, _precopy: bool) -> Result {
        Err(ENOTTY)
    }

    fn save_next(
        _dev: &Device<T, Open>,
        _save: &mut (),
        _phase: SavePhase,
        _out: &mut RecordSink<'_>,
    ) -> Result<bool> {
        Err(ENOTTY)
    }

    fn save_pending(_dev: &Device<T, Open>, _save: &()) -> Pending {
        Pending::default()
    }

    fn stop_copy_size(_dev: &Device<T, Open>, _save: Option<&()>) -> Result<u64> {
        Err(ENOTTY)
    }

    fn resume_begin(_dev: &Device<T, Open>) -> Result {
        Err(ENOTTY)
    }

    fn resume_record(
        _dev: &Device<T, Open>,
        _resume: &mut (),
        _record: &Record<'_>,
    ) -> Result<bool> {
        Err(ENOTTY)
    }

    fn resume_finish(_dev: &Device<T, Open>, _resume: ()) -> Result {
        Err(ENOTTY)
    }
}

/// The driver's migration operations.
type Ops<T> = <T as Driver>::Migration;

/// A saving session.
struct SaveSession<T: Driver> {
    file: Arc<SaveFile<T>>,
    writer: StreamWriter,
    state: <Ops<T> as MigrationOps<T>>::Save,
    phase: SavePhase,
    /// The identity, until the HEADER record is produced.
    header: Option<KVec<u8>>,
}

/// A resuming session.
struct ResumeSession<T: Driver> {
    file: Arc<ResumeFile<T>>,
    state: Option<<Ops<T> as MigrationOps<T>>::Resume>,
    /// Whether the stream received so far is complete (HEADER to END, nothing pending).
    complete: bool,
}

/// The migration state of a device, protected by the migration lock.
pub(super) struct MigInner<T: Driver> {
    state: MigState,
    save: Option<SaveSession<T>>,
    resume: Option<ResumeSession<T>>,
}

/// The migration part of a [`Device`].
#[pin_data]
pub(super) struct MigCtl<T: Driver> {
    #[pin]
    inner: Mutex<MigInner<T>>,
    /// A reset happened while the migration lock was held by someone else.
    #[pin]
    deferred_reset: SpinLock<bool>,
    /// Where `poll()` on the saving file waits: the device's, so that a driver can wake it from
    /// any context without the migration lock ([`Device::migration_data_ready`]), and so that
    /// disabling a file never frees a wait queue (and waits for an RCU grace period) under
    /// `memory_lock`.
    #[pin]
    wait: PollCondVar,
}

impl<T: Driver> MigCtl<T> {
    /// Returns the initialiser of the migration part of a new device.
    pub(super) fn new() -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            inner <- new_mutex!(MigInner {
                state: MigState::Running,
                save: None,
                resume: None,
            }),
            deferred_reset <- new_spinlock!(false),
            wait <- new_poll_condvar!(),
        })
    }
}

/// The migration lock of a device, held.
///
/// Releasing it performs a reset that was deferred while it was held.
struct MigGuard<'a, T: Driver> {
    dev: &'a Device<T>,
    guard: ManuallyDrop<MutexGuard<'a, MigInner<T>>>,
}

impl<'a, T: Driver> MigGuard<'a, T> {
    fn new(dev: &'a Device<T>, guard: MutexGuard<'a, MigInner<T>>) -> Self {
        Self {
            dev,
            guard: ManuallyDrop::new(guard),
        }
    }
}

impl<T: Driver> Deref for MigGuard<'_, T> {
    type Target = MigInner<T>;

    fn deref(&self) -> &MigInner<T> {
        &self.guard
    }
}

impl<T: Driver> DerefMut for MigGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut MigInner<T> {
        &mut self.guard
    }
}

impl<T: Driver> Drop for MigGuard<'_, T> {
    fn drop(&mut self) {
        loop {
            let mut pending = self.dev.mig.deferred_reset.lock();
            if *pending {
                *pending = false;
                drop(pending);
                reset_locked(&mut self.guard);
                continue;
            }
            // The migration lock is released while the spinlock is held, so that a concurrent
            // `reset_done` either sees it held (and defers to us, which we just checked) or
            // takes it itself.
            //
            // SAFETY: `guard` is not used after this.
            unsafe { ManuallyDrop::drop(&mut self.guard) };
            drop(pending);
            break;
        }
    }
}

/// Returns the device to RUNNING with every data file disabled.
fn reset_locked<T: Driver>(inner: &mut MigInner<T>) {
    inner.state = MigState::Running;
    disable_files(inner);
}

/// Disables the data files: they answer `ENODEV` from now on.
fn disable_files<T: Driver>(inner: &mut MigInner<T>) {
    if let Some(s) = inner.save.take() {
        s.file.dev.mig.wait.notify_all();
    }
    inner.resume = None;
}

impl<T: Driver> Device<T> {
    /// Takes the migration lock.
    fn mig_lock(&self) -> MigGuard<'_, T> {
        MigGuard::new(self, self.mig.inner.lock())
    }

    /// Borrows the device in the [`Open`] context.
    ///
    /// # Safety
    ///
    /// The device must be open for the lifetime of the returned reference, e.g. because a data
    /// file of it is active and the migration lock is held.
    unsafe fn assume_open(&self) -> &Device<T, Open> {
        // CAST: The layout of `Device<T, C>` does not depend on `C`.
        let ptr = ptr::from_ref(self).cast::<Device<T, Open>>();

        // SAFETY: By the safety requirements, the guarantees of `Open` hold.
        unsafe { &*ptr }
    }

    /// Runs `f` on BAR `bar` with the migration lock and `memory_lock` held and memory decoding
    /// enabled, if `active` says (under the migration lock) that the calling data file is
    /// active; fails with `ENODEV` otherwise, `EIO` for a device in a low-power state.
    fn with_active_bar<R>(
        &self,
        active: impl FnOnce(&mut MigInner<T>) -> bool,
        bar: u32,
        f: impl FnOnce(&BarIo<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut g = self.mig_lock();
        if !active(&mut g) {
            return Err(ENODEV);
        }
        // SAFETY: A data file is active and the migration lock is held, so the device is open.
        let dev = unsafe { self.assume_open() };
        dev.with_memory(|| f(&dev.bar(bar)?))
    }

    /// Tells the saving file's pollers that new data may be ready, e.g. because state changed
    /// after it was sent in PRE_COPY.
    ///
    /// Lock-free but for the wait queue's spinlock: callable from the page-fault path and from
    /// any context that may take a spinlock, with or without the migration lock. `poll()`
    /// re-evaluates [`MigrationOps::save_pending`], so a spurious call only costs a wake-up.
    pub fn migration_data_ready(&self) {
        self.mig.wait.notify_all();
    }

    /// Handles a reset of the device (`reset_done`).
    pub(super) fn mig_reset_done(&self) {
        *self.mig.deferred_reset.lock() = true;
        if let Some(guard) = self.mig.inner.try_lock() {
            // Releasing the lock performs the deferred reset.
            drop(MigGuard::new(self, guard));
        }
    }
}

impl<T: Driver> Device<T, Open> {
    /// Runs `f` with `memory_lock` held and the device's memory decoding enabled.
    ///
    /// The device's state must be savable and restorable whatever the user did to its command
    /// register: QEMU restores the config space of a resuming device only after its data, and a
    /// guest may clear memory decoding while it is being saved. When the user enabled decoding,
    /// `f` runs with `memory_lock` held for reading, as the user's own BAR accesses do.
    /// Otherwise `memory_lock` is taken for writing, which excludes every user access to the
    /// BARs (there is no BAR mapping while decoding is off: clearing it zapped them), decoding
    /// is enabled in the device for the duration of `f` and the user's value is put back, as
    /// `vfio_pci_memory_lock_and_enable()` does for the core's own accesses. Fails with `EIO`
    /// only when the device is in a low-power state (D3hot or runtime-suspended by the user).
    fn with_memory<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let core = self.as_core_raw();
        let lock = || {
            // SAFETY: `core` is a live, enabled core device; `memory_lock` is initialised by
            // `vfio_pci_core_init_dev()`.
            unsafe { &raw mut (*core).memory_lock }
        };

        // SAFETY: See `lock`.
        unsafe { bindings::down_read(lock()) };
        // SAFETY: `memory_lock` is held, as `__vfio_pci_memory_enabled()` requires.
        if unsafe { bindings::__vfio_pci_memory_enabled(core) } {
            let ret = f();
            // SAFETY: Taken above.
            unsafe { bindings::up_read(lock()) };
            return ret;
        }
        // SAFETY: Taken above.
        unsafe { bindings::up_read(lock()) };

        // SAFETY: See `lock`.
        unsafe { bindings::down_write(lock()) };
        let ret = self.with_decoding(f);
        // SAFETY: Taken above.
        unsafe { bindings::up_write(lock()) };
        ret
    }

    /// Runs `f` with memory decoding enabled in the device's command register, then restores
    /// the register. `memory_lock` must be held for writing.
    fn with_decoding<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        /// `PCI_D3hot` of `include/linux/pci.h`.
        const PCI_D3HOT: bindings::pci_power_t = 3;
        /// `PCI_COMMAND` and `PCI_COMMAND_MEMORY` of `include/uapi/linux/pci_regs.h`.
        // CAST: Both fit: 4 and 2.
        const COMMAND: i32 = bindings::PCI_COMMAND as i32;
        const MEMORY: u16 = bindings::PCI_COMMAND_MEMORY as u16;

        let core = self.as_core_raw();
        // SAFETY: `core` is a live, enabled core device, whose `pdev` is its PCI device;
        // `memory_lock` is held for writing, which the core also holds to change the power
        // state and `pm_runtime_engaged`.
        let (pdev, asleep) = unsafe {
            let pdev = (*core).pdev;
            (
                pdev,
                (*core).pm_runtime_engaged || (*pdev).current_state >= PCI_D3HOT,
            )
        };
        if asleep {
            return Err(EIO);
        }
        let mut cmd = 0u16;
        // SAFETY: `pdev` is a live PCI device, `cmd` a valid `u16`.
        to_result(unsafe { bindings::pci_read_config_word(pdev, COMMAND, &mut cmd) })?;
        if cmd & MEMORY == 0 {
            // SAFETY: `pdev` is a live PCI device.
            to_result(unsafe { bindings::pci_write_config_word(pdev, COMMAND, cmd | MEMORY) })?;
        }
        let ret = f();
        if cmd & MEMORY == 0 {
            // Nothing to do on failure: the next user config write sets the register anyway.
            // SAFETY: `pdev` is a live PCI device.
            let _ = unsafe { bindings::pci_write_config_word(pdev, COMMAND, cmd) };
        }
        ret
    }

    /// Called before `vfio_pci_core_close_device()`: disables the data files.
    pub(super) fn mig_close(&self) {
        let mut g = self.mig_lock();
        reset_locked(&mut g);
    }

    /// Runs the single arc `from -> to`; returns the new data file of an arc that opens one.
    fn run_arc(
        &self,
        g: &mut MigInner<T>,
        from: MigState,
        to: MigState,
    ) -> Result<Option<ARef<File>>> {
        match MigArc::classify(from, to)? {
            MigArc::P2p(q) => Ops::<T>::set_p2p(self, q).map(|()| None),
            MigArc::Stop(s) => Ops::<T>::set_stopped(self, s).map(|()| None),
            MigArc::SaveOpen { precopy } => {
                if !precopy {
                    // STOP -> STOP_COPY: already stopped.
                }
                check_bar_records::<T>()?;
                let mut id = KVec::new();
                Ops::<T>::identity(self, &mut id)?;
                let state = Ops::<T>::save_begin(self, precopy)?;
                let mut session = 0;
                while session == 0 {
                    // SAFETY: FFI call without preconditions.
                    session = unsafe { bindings::get_random_u64() };
                }
                let file = Arc::pin_init(SaveFile::new(ARef::from(&**self)), GFP_KERNEL)?;
                let f = anon_inode::new_stream_file::<SaveFile<T>>(
                    anon_inode::Options {
                        name: c"vfio-rust-mig-save",
                        flags: bindings::O_RDONLY,
                    },
                    file.clone(),
                )?;
                g.save = Some(SaveSession {
                    file,
                    writer: StreamWriter::new(session)?,
                    state,
                    phase: if precopy {
                        SavePhase::PreCopy
                    } else {
                        SavePhase::StopCopy
                    },
                    header: Some(id),
                });
                Ok(Some(f))
            }
            MigArc::SaveStopCopy => {
                Ops::<T>::set_stopped(self, true)?;
                if let Some(s) = g.save.as_mut() {
                    s.phase = SavePhase::StopCopy;
                    self.mig.wait.notify_all();
                }
                Ok(None)
            }
            MigArc::SaveClose => {
                g.save = None;
                self.mig.wait.notify_all();
                Ok(None)
            }
            MigArc::ResumeOpen => {
                check_bar_records::<T>()?;
                let mut id = KVec::new();
                Ops::<T>::identity(self, &mut id)?;
                let state = Ops::<T>::resume_begin(self)?;
                let direct = Ops::<T>::BAR_RECORDS.iter().map(|r| r.ty);
                let reader = StreamReader::new(&id, direct)?;
                let file = Arc::pin_init(ResumeFile::new(ARef::from(&**self), reader), GFP_KERNEL)?;
                let f = anon_inode::new_stream_file::<ResumeFile<T>>(
                    anon_inode::Options {
                        name: c"vfio-rust-mig-resume",
                        flags: bindings::O_WRONLY,
                    },
                    file.clone(),
                )?;
                g.resume = Some(ResumeSession {
                    file,
                    state: Some(state),
                    complete: false,
                });
                Ok(Some(f))
            }
            MigArc::ResumeFinish => {
                let s = g.resume.as_mut().ok_or(EINVAL)?;
                if !s.complete {
                    // Truncated or corrupt: RESUMING -> STOP fails, the device stays in RESUMING
                    // with the file as it is.
                    return Err(EINVAL);
                }
                let state = s.state.take().ok_or(EINVAL)?;
                g.resume = None;
                if let Err(e) = self.with_memory(|| Ops::<T>::resume_finish(self, state)) {
                    // A complete stream the driver rejects leaves the device partly restored,
                    // with no session to retry: ERROR, until a reset.
                    g.state = MigState::Error;
                    return Err(e);
                }
                Ok(None)
            }
        }
    }

    /// `migration_set_state`.
    pub(super) fn mig_set_state(&self, new: MigState) -> Result<Option<ARef<File>>> {
        let mut g = self.mig_lock();
        let mut file = None;
        while g.state != new {
            let cur = g.state;
            if cur == MigState::Error {
                return Err(EINVAL);
            }
            let mut next = 0;
            // SAFETY: `self` is a registered, open device and `cur` is not ERROR; the core only
            // reads the device's migration flags.
            to_result(unsafe {
                bindings::vfio_mig_get_next_state(
                    self.as_vdev_raw(),
                    cur.as_raw(),
                    new.as_raw(),
                    &mut next,
                )
            })?;
            let next = MigState::from_raw(next)?;
            if file.is_some() {
                // A file is only returned by the last arc of a path.
                return Err(EINVAL);
            }
            match self.run_arc(&mut g, cur, next) {
                Ok(f) => {
                    g.state = next;
                    file = f;
                }
                Err(e) => {
                    // Arcs that only start or finish a session leave the device as it was; a
                    // device that failed to start or stop is in an unknown state.
                    if matches!(
                        MigArc::classify(cur, next),
                        Ok(MigArc::P2p(_) | MigArc::Stop(_) | MigArc::SaveStopCopy)
                    ) {
                        g.state = MigState::Error;
                        disable_files(&mut g);
                    }
                    return Err(e);
                }
            }
        }
        Ok(file)
    }

    /// `migration_get_state`.
    pub(super) fn mig_get_state(&self) -> MigState {
        self.mig_lock().state
    }

    /// `migration_get_data_size`: "the estimated data length that will be required to complete
    /// stop copy".
    ///
    /// Inside a saving session, what STOP_COPY would still stream from it: the bytes produced
    /// and not read yet, what the driver has not produced yet and the records that only
    /// STOP_COPY produces; in PRE_COPY, that is `initial_bytes + dirty_bytes` plus those final
    /// records. QEMU switches over when this fits in its downtime, so it must shrink as
    /// pre-copy proceeds. Without a saving session, the size of a whole new STOP_COPY stream.
    pub(super) fn mig_data_size(&self) -> Result<u64> {
        // The file's I/O lock comes before the migration lock: find the saving file first.
        let file = self.mig_lock().save.as_ref().map(|s| s.file.clone());
        let io = file.as_ref().map(|f| f.io.lock());
        let g = self.mig_lock();
        if let (Some(s), Some(io)) = (g.save.as_ref(), io.as_ref()) {
            if file.as_ref().is_some_and(|f| ptr::eq(&**f, &*s.file)) {
                let header = s
                    .header
                    .as_ref()
                    .map_or(0, |id| migration::header_record_size(id.len()));
                let end = if s.writer.ended() {
                    0
                } else {
                    migration::END_RECORD_SIZE
                };
                let driver = Ops::<T>::stop_copy_size(self, Some(&s.state))?;
                // CAST: `usize` fits in `u64`.
                return Ok((io.unread + header + end) as u64 + driver);
            }
        }
        let mut id = KVec::new();
        Ops::<T>::identity(self, &mut id)?;
        let driver = Ops::<T>::stop_copy_size(self, None)?;
        Ok(migration::header_record_size(id.len()) as u64
            + driver
            + migration::END_RECORD_SIZE as u64)
    }
}

/// Buffered output of a saving file.
///
/// # Invariants
///
/// `seg <= batch.segs.len()`; before `seg`, every segment was read; `seg_done` bytes of
/// segment `seg` (less than its length) and the bytes of `batch.buf` before `buf_pos` were
/// read; `unread` bytes were not.
struct SaveIo {
    batch: Batch,
    seg: usize,
    seg_done: usize,
    buf_pos: usize,
    unread: usize,
    /// How many of the unread bytes belong to the initial image.
    initial: usize,
    /// The bounce buffer for BAR bytes, allocated when first needed.
    bounce: KVVec<u8>,
}

impl SaveIo {
    /// Starts over with an empty batch.
    fn clear(&mut self) {
        self.batch.buf.clear();
        self.batch.segs.clear();
        self.seg = 0;
        self.seg_done = 0;
        self.buf_pos = 0;
        self.unread = 0;
        self.initial = 0;
    }

    /// Accounts `n` bytes of the current segment as read.
    fn consume(&mut self, n: usize) {
        self.seg_done += n;
        self.unread -= n;
        self.initial = self.initial.saturating_sub(n);
        if self.seg_done == self.batch.segs[self.seg].len() {
            self.seg += 1;
            self.seg_done = 0;
        }
    }
}

/// Returns the bounce buffer `buf`, allocated to [`BOUNCE_SIZE`] bytes if it was not yet.
fn bounce(buf: &mut KVVec<u8>) -> Result<&mut [u8]> {
    if buf.is_empty() {
        buf.resize(BOUNCE_SIZE, 0, GFP_KERNEL)?;
    }
    Ok(&mut buf[..])
}

/// The saving data file.
#[pin_data]
struct SaveFile<T: Driver> {
    dev: ARef<Device<T>>,
    #[pin]
    io: Mutex<SaveIo>,
}

impl<T: Driver> SaveFile<T> {
    fn new(dev: ARef<Device<T>>) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            dev,
            io <- new_mutex!(SaveIo {
                batch: Batch {
                    buf: KVVec::new(),
                    segs: KVec::new(),
                },
                seg: 0,
                seg_done: 0,
                buf_pos: 0,
                unread: 0,
                initial: 0,
                bounce: KVVec::new(),
            }),
        })
    }

    /// Returns the session if this file is the active saving file.
    fn session<'a>(&self, g: &'a mut MigInner<T>) -> Option<&'a mut SaveSession<T>> {
        g.save.as_mut().filter(|s| ptr::eq(&*s.file, self))
    }

    /// Refills the empty batch with the next records. Returns `false` at the end of the stream.
    fn refill(&self, io: &mut SaveIo) -> Result<bool> {
        io.clear();
        let mut g = self.dev.mig_lock();
        let s = self.session(&mut g).ok_or(ENODEV)?;
        // SAFETY: The file is active and the migration lock is held, so the device is open.
        let dev = unsafe { self.dev.assume_open() };
        let mut initial = false;
        let mut sink = RecordSink {
            writer: &mut s.writer,
            batch: &mut io.batch,
            bar_records: Ops::<T>::BAR_RECORDS,
        };
        if let Some(id) = s.header.as_deref() {
            sink.append_with(|w, buf| w.append_header(buf, id))?;
            s.header = None;
            initial = true;
        } else if sink.writer.ended() {
            return Ok(false);
        } else {
            let before = Ops::<T>::save_pending(dev, &s.state);
            let produced =
                dev.with_memory(|| Ops::<T>::save_next(dev, &mut s.state, s.phase, &mut sink));
            let produced = match produced {
                // Records produced before the failure are part of the stream already (counted
                // by the writer, no longer pending for the driver): hand them out; a lasting
                // failure comes back with the next refill.
                Err(_) if !sink.batch.segs.is_empty() => true,
                ret => ret?,
            };
            if produced {
                if sink.batch.segs.is_empty() {
                    // A driver that claims a record but produced none would make readers spin.
                    return Err(EIO);
                }
                initial = before.initial > 0;
            } else if s.phase == SavePhase::PreCopy {
                return Err(ENOMSG);
            } else {
                sink.append_with(|w, buf| w.append_end(buf))?;
            }
        }
        // INVARIANT: Nothing of the new batch was read.
        io.unread = io.batch.len();
        if initial {
            io.initial = io.unread;
        }
        Ok(true)
    }

    /// Runs `f` on BAR `bar`, with the migration lock and `memory_lock` held and memory
    /// decoding enabled, if this file is active.
    fn with_bar<R>(&self, bar: u32, f: impl FnOnce(&BarIo<'_>) -> Result<R>) -> Result<R> {
        self.dev
            .with_active_bar(|g| self.session(g).is_some(), bar, f)
    }

    /// Copies bytes of the current segment to `out`, consuming them from both.
    fn copy_out(&self, io: &mut SaveIo, out: &mut UserBuffer) -> Result {
        let seg = io.batch.segs[io.seg];
        let n = (seg.len() - io.seg_done).min(out.len());
        match seg {
            Segment::Bytes(_) => {
                // The user copy runs with the I/O lock only, see the module documentation. On
                // a fault nothing is consumed.
                out.write_slice(&io.batch.buf[io.buf_pos..io.buf_pos + n])?;
                io.buf_pos += n;
                io.consume(n);
            }
            Segment::Bar { bar, off, len: _ } => {
                let off = off + io.seg_done;
                match out.pin(n, true) {
                    Ok(pages) => {
                        // One copy, from the BAR into the pinned pages, which cannot fault.
                        self.with_bar(bar, |b| {
                            pages.for_each_mapped(0, n, |dst, len, at| {
                                // SAFETY: `dst` is a kernel mapping of `len` bytes of a page
                                // pinned for writing, only accessed through raw pointers.
                                unsafe { b.read_raw(off + at, dst, len) }
                            })
                        })?;
                        drop(pages);
                        out.advance(n)?;
                        io.consume(n);
                    }
                    Err(_) => {
                        // Not pinnable (e.g. itself an mmap() of device memory): bounce.
                        let n = n.min(BOUNCE_SIZE);
                        let tmp = bounce(&mut io.bounce)?;
                        self.with_bar(bar, |b| b.read(off, &mut tmp[..n]))?;
                        out.write_slice(&tmp[..n])?;
                        io.consume(n);
                    }
                }
            }
        }
        Ok(())
    }

    /// `VFIO_MIG_GET_PRECOPY_INFO`.
    fn precopy_info(&self, arg: usize) -> Result<isize> {
        let (mut reader, mut writer) =
            UserSlice::new(UserPtr::from_addr(arg), PRECOPY_INFO_SIZE).reader_writer();
        let mut raw = [0u8; PRECOPY_INFO_SIZE];
        reader.read_slice(&mut raw)?;
        let argsz = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if (argsz as usize) < PRECOPY_INFO_SIZE {
            return Err(EINVAL);
        }

        let io = self.io.lock();
        let mut g = self.dev.mig_lock();
        // Only valid in PRE_COPY and PRE_COPY_P2P, whatever the file: -EINVAL in any other
        // state, as the uAPI asks, before looking at the file.
        if !matches!(g.state, MigState::PreCopy | MigState::PreCopyP2p) {
            return Err(EINVAL);
        }
        let s = self.session(&mut g).ok_or(ENODEV)?;
        if s.phase != SavePhase::PreCopy {
            return Err(EINVAL);
        }
        // SAFETY: The file is active and the migration lock is held, so the device is open.
        let dev = unsafe { self.dev.assume_open() };
        let p = Ops::<T>::save_pending(dev, &s.state);
        let unread = io.unread;
        let header = s
            .header
            .as_ref()
            .map_or(0, |id| migration::header_record_size(id.len()));
        // CAST: `usize` fits in `u64`.
        let initial = p.initial + (io.initial + header) as u64;
        // CAST: `usize` fits in `u64`; `io.initial <= unread` (the initial bytes are unread ones).
        let dirty = p.dirty + (unread - io.initial) as u64;
        // SAFETY: The device is alive. The VFIO core writes `precopy_info_v2` (a byte) from the
        // feature ioctl without a lock this file shares, so it is read once, volatile, as C's
        // `READ_ONCE()`.
        let v2 =
            unsafe { ptr::read_volatile(&raw const (*self.dev.as_vdev_raw()).precopy_info_v2) }
                != 0;
        drop(g);
        drop(io);

        if v2 {
            // Output flags: no REINIT, this driver never re-initialises the stream.
            raw[4..8].copy_from_slice(&0u32.to_ne_bytes());
        }
        raw[8..16].copy_from_slice(&initial.to_ne_bytes());
        raw[16..24].copy_from_slice(&dirty.to_ne_bytes());
        writer.write_slice(&raw)?;
        Ok(0)
    }
}

#[vtable]
impl<T: Driver> AnonFile for SaveFile<T> {
    type Ptr = Arc<Self>;

    fn read(this: ArcBorrow<'_, Self>, _file: &File, out: &mut UserBuffer) -> Result<usize> {
        let mut io = this.io.lock();
        {
            // A disabled file hands out nothing, not even bytes it buffered while active.
            let mut g = this.dev.mig_lock();
            if this.session(&mut g).is_none() {
                io.clear();
                return Err(ENODEV);
            }
        }
        let want = out.len();
        // Fill the buffer with as many records as are ready; an error after some bytes were
        // read ends the read short, the next one reports it.
        while !out.is_empty() {
            let step = if io.unread == 0 {
                match this.refill(&mut io) {
                    Ok(true) => Ok(()),
                    Ok(false) => break,
                    Err(e) => Err(e),
                }
            } else {
                this.copy_out(&mut io, out)
            };
            if let Err(e) = step {
                if out.len() == want {
                    return Err(e);
                }
                break;
            }
        }
        Ok(want - out.len())
    }

    fn ioctl(this: ArcBorrow<'_, Self>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        if cmd != VFIO_MIG_GET_PRECOPY_INFO {
            return Err(ENOTTY);
        }
        this.precopy_info(arg)
    }

    fn poll(this: ArcBorrow<'_, Self>, file: &File, table: PollTable<'_>) -> Result<u32> {
        table.register_wait(file, &this.dev.mig.wait);
        let readable = poll_mask::EPOLLIN | poll_mask::EPOLLRDNORM;
        let io = this.io.lock();
        let mut g = this.dev.mig_lock();
        let Some(s) = this.session(&mut g) else {
            return Ok(poll_mask::EPOLLERR);
        };
        if io.unread > 0 || s.phase == SavePhase::StopCopy || s.header.is_some() {
            return Ok(readable);
        }
        // SAFETY: The file is active and the migration lock is held, so the device is open.
        let dev = unsafe { this.dev.assume_open() };
        let p = Ops::<T>::save_pending(dev, &s.state);
        Ok(if p.initial + p.dirty > 0 { readable } else { 0 })
    }
}

/// The input side of a resuming file.
struct ResumeIo {
    reader: StreamReader,
    /// The bounce buffer for BAR bytes, allocated when first needed.
    bounce: KVVec<u8>,
}

/// The resuming data file.
#[pin_data]
struct ResumeFile<T: Driver> {
    dev: ARef<Device<T>>,
    #[pin]
    io: Mutex<ResumeIo>,
}

/// Checks [`MigrationOps::BAR_RECORDS`]: driver record types of standard BARs, each type once.
fn check_bar_records<T: Driver>() -> Result {
    let recs = Ops::<T>::BAR_RECORDS;
    for (i, r) in recs.iter().enumerate() {
        if r.ty < migration::RECORD_DRIVER_BASE
            || r.bar > bindings::VFIO_PCI_BAR5_REGION_INDEX
            || recs[..i].iter().any(|o| o.ty == r.ty)
        {
            return Err(EINVAL);
        }
    }
    Ok(())
}

/// Returns the BAR of records of type `ty`, if they are [`MigrationOps::BAR_RECORDS`].
fn bar_of<T: Driver>(ty: u32) -> Option<u32> {
    Ops::<T>::BAR_RECORDS
        .iter()
        .find(|r| r.ty == ty)
        .map(|r| r.bar)
}

/// Checks that `len` bytes at `off` are inside `bar`.
fn check_bar_range(bar: &BarIo<'_>, off: u64, len: u64) -> Result {
    match off.checked_add(len) {
        // CAST: `usize` fits in `u64`.
        Some(end) if end <= bar.len() as u64 => Ok(()),
        _ => Err(EINVAL),
    }
}

impl<T: Driver> ResumeFile<T> {
    fn new(dev: ARef<Device<T>>, reader: StreamReader) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            dev,
            io <- new_mutex!(ResumeIo {
                reader,
                bounce: KVVec::new(),
            }),
        })
    }

    /// Runs `f` on BAR `bar`, with the migration lock and `memory_lock` held and memory
    /// decoding enabled, if this file is active.
    fn with_bar<R>(&self, bar: u32, f: impl FnOnce(&BarIo<'_>) -> Result<R>) -> Result<R> {
        self.dev
            .with_active_bar(|g| self.session(g).is_some(), bar, f)
    }

    /// Writes up to `want` bytes of `inp` into BAR `bar`, as data `at..` of a record of `total`
    /// bytes for the BAR at `off`; returns how many were consumed.
    ///
    /// The whole record must fit in the BAR, which is checked before anything is written.
    fn write_bar(
        &self,
        bounce_buf: &mut KVVec<u8>,
        bar: u32,
        (off, at, total): (u64, u64, u64),
        want: usize,
        inp: &mut UserBuffer,
    ) -> Result<usize> {
        // Only used once `off + total` was checked to be inside the BAR, so that it neither
        // overflows nor truncates then: `at < total`.
        // CAST: See above.
        let dst = off.wrapping_add(at) as usize;
        match inp.pin(want, false) {
            Ok(pages) => {
                // One copy, from the pinned pages into the BAR.
                self.with_bar(bar, |b| {
                    check_bar_range(b, off, total)?;
                    pages.for_each_mapped(0, want, |src, len, pos| {
                        // SAFETY: `src` is a kernel mapping of `len` bytes of a pinned page,
                        // only accessed through raw pointers.
                        unsafe { b.write_raw(dst + pos, src, len) }
                    })
                })?;
                inp.advance(want)?;
                Ok(want)
            }
            Err(_) => {
                // Not pinnable (e.g. itself an mmap() of device memory): bounce.
                let n = want.min(BOUNCE_SIZE);
                let tmp = bounce(bounce_buf)?;
                inp.read_slice(&mut tmp[..n])?;
                self.with_bar(bar, |b| {
                    check_bar_range(b, off, total)?;
                    b.write(dst, &tmp[..n])
                })?;
                Ok(n)
            }
        }
    }

    /// Returns the session if this file is the active resuming file.
    fn session<'a>(&self, g: &'a mut MigInner<T>) -> Option<&'a mut ResumeSession<T>> {
        g.resume.as_mut().filter(|s| ptr::eq(&*s.file, self))
    }

    /// Parses the bytes of one `write()`, writes the data of BAR records into their BAR and
    /// hands the other complete records to the driver.
    fn consume(&self, io: &mut ResumeIo, inp: &mut UserBuffer) -> Result<usize> {
        let r = &mut io.reader;
        let mut done = 0;
        // A fault on the user's buffer consumes nothing of it and leaves the stream usable: what
        // was consumed before is reported, the caller may retry the rest.
        let fault = |done: usize, e: Error| if done > 0 { Ok(done) } else { Err(e) };
        while !inp.is_empty() {
            let n = match r.input()? {
                Input::Buffer(buf) => {
                    let n = buf.len().min(inp.len());
                    // The user copy runs with the I/O lock only, see the module documentation.
                    if let Err(e) = inp.read_slice(&mut buf[..n]) {
                        return fault(done, e);
                    }
                    n
                }
                Input::Direct {
                    ty,
                    offset,
                    at,
                    total,
                } => {
                    let bar = bar_of::<T>(ty).ok_or(EINVAL).map_err(|e| r.fail(e))?;
                    // CAST: Bounded by `inp.len()`.
                    let want = (total - at).min(inp.len() as u64) as usize;
                    match self.write_bar(&mut io.bounce, bar, (offset, at, total), want, inp) {
                        Ok(n) => n,
                        Err(e) if e == EFAULT => return fault(done, e),
                        Err(e) => return Err(r.fail(e)),
                    }
                }
            };
            let delivered = match r.advance(n)? {
                Some(record) => self.deliver(&record),
                None => Ok(()),
            };
            if let Err(e) = delivered {
                return Err(r.fail(e));
            }
            done += n;
        }
        Ok(done)
    }

    /// Hands a complete record to the driver.
    fn deliver(&self, record: &Record<'_>) -> Result {
        if let Some(bar) = bar_of::<T>(record.ty) {
            // The data is in the BAR already; a record without data must still point inside.
            let mut off = [0u8; DIRECT_PREFIX];
            off.copy_from_slice(&record.payload[..DIRECT_PREFIX]);
            let off = u64::from_le_bytes(off);
            return self.with_bar(bar, |b| check_bar_range(b, off, 0));
        }
        let mut g = self.dev.mig_lock();
        let s = self.session(&mut g).ok_or(ENODEV)?;
        let state = s.state.as_mut().ok_or(EINVAL)?;
        // SAFETY: The file is active and the migration lock is held, so the device is open.
        let dev = unsafe { self.dev.assume_open() };
        let known = dev.with_memory(|| Ops::<T>::resume_record(dev, state, record))?;
        if known || record.flags & migration::RECORD_OPTIONAL != 0 {
            Ok(())
        } else {
            Err(EINVAL)
        }
    }
}

#[vtable]
impl<T: Driver> AnonFile for ResumeFile<T> {
    type Ptr = Arc<Self>;

    fn write(this: ArcBorrow<'_, Self>, _file: &File, inp: &mut UserBuffer) -> Result<usize> {
        let mut io = this.io.lock();
        {
            let mut g = this.dev.mig_lock();
            this.session(&mut g).ok_or(ENODEV)?;
        }
        let ret = this.consume(&mut io, inp);
        // Publish whether the stream is complete for RESUMING -> STOP, after every write,
        // failed ones included: a fault after a complete stream (e.g. data after END) makes it
        // incomplete for good.
        let complete = io.reader.finish().is_ok();
        let mut g = this.dev.mig_lock();
        if let Some(s) = this.session(&mut g) {
            s.complete = complete;
        }
        ret
    }

    fn ioctl(_this: ArcBorrow<'_, Self>, _file: &File, cmd: u32, _arg: usize) -> Result<isize> {
        // The precopy information only exists in PRE_COPY and PRE_COPY_P2P.
        if cmd == VFIO_MIG_GET_PRECOPY_INFO {
            Err(EINVAL)
        } else {
            Err(ENOTTY)
        }
    }
}
