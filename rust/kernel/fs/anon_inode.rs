// SPDX-License-Identifier: GPL-2.0

//! Anonymous-inode files.
//!
//! An anonymous-inode file is a [`File`] that is not reachable through any path: it exists only
//! as long as something (typically a file descriptor handed to userspace) holds a reference to it.
//! Its file operations are implemented in Rust by a type implementing [`AnonFile`], and its
//! `private_data` holds a [`ForeignOwnable`] (typically an [`Arc`]) owned by the file.
//!
//! Users are, for example, the `data_fd` files of VFIO live migration: a stream file that is
//! read-only while saving and write-only while resuming the device state.
//!
//! C header: [`include/linux/anon_inodes.h`](srctree/include/linux/anon_inodes.h)
//!
//! [`Arc`]: crate::sync::Arc

use crate::{
    bindings,
    error::{
        from_err_ptr,
        to_result,
        VTABLE_DEFAULT_ERROR, //
    },
    fs::{
        file::flags,
        File, //
    },
    mm::pin::PinnedUserPages,
    module::this_module,
    prelude::*,
    sync::{
        aref::ARef,
        poll::PollTable, //
    },
    types::ForeignOwnable,
    uaccess::{
        UserPtr,
        UserSlice, //
    }, //
};
use core::{
    marker::PhantomData,
    ptr::NonNull, //
};

/// The user buffer of one `read()` or `write()` of an anonymous-inode file, consumed from its
/// start.
///
/// Bytes are either copied, which may fault ([`UserBuffer::write_slice`],
/// [`UserBuffer::read_slice`]), or pinned first ([`UserBuffer::pin`]), copied through the
/// kernel mapping of the pinned pages, possibly with locks held that a fault would need, and then
/// consumed ([`UserBuffer::advance`]).
pub struct UserBuffer {
    ptr: UserPtr,
    len: usize,
}

impl UserBuffer {
    fn new(ptr: UserPtr, len: usize) -> Self {
        Self { ptr, len }
    }

    /// Returns the number of bytes not consumed yet.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns `true` if the whole buffer was consumed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Consumes `n` bytes (at most [`UserBuffer::len`]).
    pub fn advance(&mut self, n: usize) -> Result {
        if n > self.len {
            return Err(EINVAL);
        }
        self.ptr = self.ptr.wrapping_byte_add(n);
        self.len -= n;
        Ok(())
    }

    /// Copies `data` to the buffer (of a `read()`) and consumes it.
    ///
    /// Fails with `EFAULT`, consuming nothing, if the buffer is shorter or not writable.
    pub fn write_slice(&mut self, data: &[u8]) -> Result {
        if data.len() > self.len {
            return Err(EFAULT);
        }
        UserSlice::new(self.ptr, data.len())
            .writer()
            .write_slice(data)?;
        self.advance(data.len())
    }

    /// Fills `out` from the buffer (of a `write()`) and consumes what was read.
    ///
    /// Fails with `EFAULT`, consuming nothing, if the buffer is shorter or not readable.
    pub fn read_slice(&mut self, out: &mut [u8]) -> Result {
        if out.len() > self.len {
            return Err(EFAULT);
        }
        UserSlice::new(self.ptr, out.len())
            .reader()
            .read_slice(out)?;
        self.advance(out.len())
    }

    /// Pins the next `len` bytes of the buffer, for writing by the kernel if `write` is set (the
    /// buffer of a `read()`); consumes nothing.
    ///
    /// Fails like [`PinnedUserPages::new`], for example for a buffer that is an `mmap()` of
    /// device memory: callers then fall back to copying.
    pub fn pin(&self, len: usize, write: bool) -> Result<PinnedUserPages> {
        if len > self.len {
            return Err(EINVAL);
        }
        PinnedUserPages::new(self.ptr, len, write)
    }
}

/// Event masks returned by [`AnonFile::poll`].
///
/// These are the kernel-internal `__poll_t` values (`EPOLL*` in
/// [`include/uapi/linux/eventpoll.h`](srctree/include/uapi/linux/eventpoll.h)), which is what
/// `file_operations::poll` must return on every architecture. The VFS translates them to the
/// userspace `POLL*` values where those differ.
pub mod poll_mask {
    /// There is data to read.
    pub const EPOLLIN: u32 = 0x0000_0001;

    /// There is some exceptional condition on the file.
    pub const EPOLLPRI: u32 = 0x0000_0002;

    /// Writing is now possible.
    pub const EPOLLOUT: u32 = 0x0000_0004;

    /// Error condition.
    pub const EPOLLERR: u32 = 0x0000_0008;

    /// Hang up: the other end is gone, or no more data will ever be produced.
    pub const EPOLLHUP: u32 = 0x0000_0010;

    /// Invalid request.
    pub const EPOLLNVAL: u32 = 0x0000_0020;

    /// Normal data may be read (usually reported together with [`EPOLLIN`]).
    pub const EPOLLRDNORM: u32 = 0x0000_0040;

    /// Priority band data can be read.
    pub const EPOLLRDBAND: u32 = 0x0000_0080;

    /// Normal data may be written (usually reported together with [`EPOLLOUT`]).
    pub const EPOLLWRNORM: u32 = 0x0000_0100;

    /// Priority data may be written.
    pub const EPOLLWRBAND: u32 = 0x0000_0200;

    /// Peer closed its writing half of the connection.
    pub const EPOLLRDHUP: u32 = 0x0000_2000;
}

// The masks below `EPOLLWRNORM` have the same value in the userspace `POLL*` encoding on every
// architecture; check them against the C definitions that bindgen can see.
static_assert!(poll_mask::EPOLLIN == bindings::POLLIN);
static_assert!(poll_mask::EPOLLPRI == bindings::POLLPRI);
static_assert!(poll_mask::EPOLLOUT == bindings::POLLOUT);
static_assert!(poll_mask::EPOLLERR == bindings::POLLERR);
static_assert!(poll_mask::EPOLLHUP == bindings::POLLHUP);
static_assert!(poll_mask::EPOLLNVAL == bindings::POLLNVAL);
static_assert!(poll_mask::EPOLLRDNORM == bindings::POLLRDNORM);
static_assert!(poll_mask::EPOLLRDBAND == bindings::POLLRDBAND);

/// Returns whether `file` is in non-blocking mode (`O_NONBLOCK`).
///
/// The flag may be changed at any time with `fcntl(F_SETFL)`, so callbacks of an [`AnonFile`]
/// should check it on every call that would block, and fail with [`EAGAIN`] instead of sleeping
/// when it is set.
#[inline]
pub fn is_nonblocking(file: &File) -> bool {
    file.flags() & flags::O_NONBLOCK != 0
}

/// Options for creating an anonymous-inode file.
#[derive(Copy, Clone)]
pub struct Options {
    /// The name of the file, shown as `anon_inode:<name>` in `/proc/<pid>/fd/`.
    pub name: &'static CStr,

    /// The open flags of the file.
    ///
    /// One of [`O_RDONLY`], [`O_WRONLY`] or [`O_RDWR`], optionally combined with [`O_NONBLOCK`]
    /// and [`O_CLOEXEC`]. Any other flag is rejected with [`EINVAL`]. The access mode decides
    /// which of [`AnonFile::read`] and [`AnonFile::write`] the VFS lets userspace reach (the
    /// other fails with `EBADF`). [`O_CLOEXEC`] is a property of the file descriptor, not of the
    /// file: it is accepted for convenience and ignored here, whoever installs the file in a file
    /// descriptor table chooses the descriptor flags.
    ///
    /// [`O_RDONLY`]: flags::O_RDONLY
    /// [`O_WRONLY`]: flags::O_WRONLY
    /// [`O_RDWR`]: flags::O_RDWR
    /// [`O_NONBLOCK`]: flags::O_NONBLOCK
    /// [`O_CLOEXEC`]: flags::O_CLOEXEC
    pub flags: u32,
}

impl Options {
    /// Checks the flags and returns them in the form `anon_inode_getfile()` takes.
    fn raw_flags(&self) -> Result<c_int> {
        const ALLOWED: u32 = flags::O_ACCMODE | flags::O_NONBLOCK | flags::O_CLOEXEC;

        if self.flags & !ALLOWED != 0 || self.flags & flags::O_ACCMODE == flags::O_ACCMODE {
            return Err(EINVAL);
        }
        // `O_CLOEXEC` only matters for file descriptors; `anon_inode_getfile()` ignores it.
        let raw = self.flags & !flags::O_CLOEXEC;

        // CAST: `raw` only has bits of `O_ACCMODE | O_NONBLOCK` set, so it fits in a `c_int`.
        Ok(raw as c_int)
    }
}

/// The file operations of an anonymous-inode file.
///
/// The type implementing this trait is the per-file state; the file owns an [`AnonFile::Ptr`] to
/// it, stored in `file->private_data` by [`new_stream_file`] and handed back to
/// [`AnonFile::release`] when the last reference to the file is dropped.
///
/// # Concurrency
///
/// No callback is serialised by this abstraction, and none is called with a lock of this
/// abstraction held: on a stream file, [`read`], [`write`], [`ioctl`] and [`poll`] may run
/// concurrently with each other and with themselves (from several threads or processes sharing
/// the file), so the implementation must protect its state itself, e.g. with a
/// [`Mutex`](crate::sync::Mutex). All callbacks run in process context and may sleep; blocking
/// callbacks should honour [`is_nonblocking`], and [`poll`] must not wait for events. [`release`]
/// is called exactly once, after every other callback has returned (possibly from a workqueue, not
/// from the task that closed the last file descriptor).
///
/// Methods that are not implemented are left out of the `file_operations` table, so that the VFS
/// applies its default (e.g. `read()` fails with `EINVAL`, `ioctl()` with `ENOTTY`, and `poll()`
/// reports the file as always readable and writable).
///
/// [`read`]: AnonFile::read
/// [`write`]: AnonFile::write
/// [`ioctl`]: AnonFile::ioctl
/// [`poll`]: AnonFile::poll
/// [`release`]: AnonFile::release
#[vtable]
pub trait AnonFile: Sized + Send + Sync + 'static {
    /// The pointer stored in `file->private_data`, typically `Arc<Self>`.
    type Ptr: ForeignOwnable + Send + Sync + 'static;

    /// Reads from the file into `buf`.
    ///
    /// Called for `read()` and `readv()`. The file is a stream: there is no file position, so the
    /// implementation keeps track of how far the data has been consumed. Returns the number of
    /// bytes written to `buf` (at most its length when called), with `0` meaning end of file.
    fn read(
        _this: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _buf: &mut UserBuffer,
    ) -> Result<usize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Writes `buf` to the file.
    ///
    /// Called for `write()` and `writev()`. The file is a stream: there is no file position.
    /// Returns the number of bytes consumed from `buf` (at most its length when called).
    fn write(
        _this: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _buf: &mut UserBuffer,
    ) -> Result<usize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles an ioctl.
    ///
    /// The `cmd` argument is usually decoded with the utilities in [`kernel::ioctl`]; for 32-bit
    /// userspace on a 64-bit kernel, `compat_ptr_ioctl()` converts `arg` as a pointer and calls
    /// this method, so ioctls whose argument structures have the same layout on 32 and 64 bits
    /// need no special handling.
    ///
    /// [`kernel::ioctl`]: mod@crate::ioctl
    fn ioctl(
        _this: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _cmd: u32,
        _arg: usize,
    ) -> Result<isize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Polls the file.
    ///
    /// Registers `table` with every wait queue whose wake-up may change the result, typically
    /// through [`PollTable::register_wait`] with a [`PollCondVar`], then returns the events that
    /// are ready now, a combination of the constants in [`poll_mask`]. An error is reported to the
    /// VFS as [`EPOLLERR`]. It may take a sleeping lock such as a [`Mutex`], but must not wait for
    /// the events themselves.
    ///
    /// [`Mutex`]: crate::sync::Mutex
    ///
    /// [`PollCondVar`]: crate::sync::poll::PollCondVar
    /// [`EPOLLERR`]: poll_mask::EPOLLERR
    fn poll(
        _this: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _table: PollTable<'_>,
    ) -> Result<u32> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Called when the last reference to the file is dropped, with the private data.
    ///
    /// The file's reference count is already zero: `file` may be inspected, but no new reference
    /// to it may be taken (e.g. with `ARef::from`).
    fn release(this: Self::Ptr, _file: &File) {
        drop(this);
    }
}

/// Creates a new anonymous-inode stream file named `opts.name`, owning `data`.
///
/// The file is a stream (`stream_open()`): it has no position, `lseek()`, `pread()` and
/// `pwrite()` on it fail with `ESPIPE`, and [`AnonFile::read`] and [`AnonFile::write`] may run
/// concurrently. The file holds a reference to the module implementing `T` until it is released.
///
/// On success, `data` is owned by the file until [`AnonFile::release`] gets it back, and the
/// returned [`ARef`] owns the only reference to the file; it is not installed in any file
/// descriptor table (use [`FileDescriptorReservation`] for that, or hand the reference to C code
/// that does it). On failure, `data` is dropped before this function returns.
///
/// [`FileDescriptorReservation`]: crate::fs::file::FileDescriptorReservation
///
/// # Examples
///
/// The saving side of a migration data file: a read-only stream over a buffer, readable once the
/// buffer is filled.
///
/// ```ignore
/// use kernel::{
///     fs::{
///         anon_inode::{
///             self,
///             poll_mask,
///             AnonFile,
///             UserBuffer, //
///         },
///         file::flags,
///         File, //
///     },
///     new_mutex,
///     new_poll_condvar,
///     prelude::*,
///     sync::{
///         aref::ARef,
///         poll::{
///             PollCondVar,
///             PollTable, //
///         },
///         Arc,
///         ArcBorrow,
///         Mutex, //
///     },
/// };
///
/// struct SaveState {
///     data: KVec<u8>,
///     pos: usize,
///     done: bool,
/// }
///
/// #[pin_data]
/// struct SaveFile {
///     #[pin]
///     state: Mutex<SaveState>,
///     #[pin]
///     ready: PollCondVar,
/// }
///
/// #[vtable]
/// impl AnonFile for SaveFile {
///     type Ptr = Arc<SaveFile>;
///
///     fn read(
///         this: ArcBorrow<'_, SaveFile>,
///         file: &File,
///         buf: &mut UserBuffer,
///     ) -> Result<usize> {
///         let mut st = this.state.lock();
///         while !st.done && st.pos == st.data.len() {
///             if anon_inode::is_nonblocking(file) {
///                 return Err(EAGAIN);
///             }
///             if this.ready.wait_interruptible(&mut st) {
///                 return Err(ERESTARTSYS);
///             }
///         }
///         let n = (st.data.len() - st.pos).min(buf.len());
///         buf.write_slice(&st.data[st.pos..st.pos + n])?;
///         st.pos += n;
///         Ok(n)
///     }
///
///     fn poll(this: ArcBorrow<'_, SaveFile>, file: &File, table: PollTable<'_>) -> Result<u32> {
///         table.register_wait(file, &this.ready);
///         let st = this.state.lock();
///         if st.pos < st.data.len() {
///             Ok(poll_mask::EPOLLIN | poll_mask::EPOLLRDNORM)
///         } else if st.done {
///             Ok(poll_mask::EPOLLHUP)
///         } else {
///             Ok(0)
///         }
///     }
/// }
///
/// fn new_save_file() -> Result<ARef<File>> {
///     let save = Arc::pin_init(
///         pin_init!(SaveFile {
///             state <- new_mutex!(SaveState {
///                 data: KVec::new(),
///                 pos: 0,
///                 done: false,
///             }),
///             ready <- new_poll_condvar!("SaveFile::ready"),
///         }),
///         GFP_KERNEL,
///     )?;
///     let opts = anon_inode::Options {
///         name: c"example_mig",
///         flags: flags::O_RDONLY | flags::O_CLOEXEC,
///     };
///     anon_inode::new_stream_file::<SaveFile>(opts, save)
/// }
/// ```
pub fn new_stream_file<T: AnonFile>(opts: Options, data: T::Ptr) -> Result<ARef<File>> {
    let raw_flags = opts.raw_flags()?;
    let private = data.into_foreign();

    // SAFETY:
    // - `opts.name` is a valid NUL-terminated string; `anon_inode_getfile()` copies it into the
    //   dentry name and does not keep the pointer.
    // - The `file_operations` table is `'static`, and its callbacks expect the private data to be
    //   `private`, a `T::Ptr` turned into a foreign pointer.
    // - On success, ownership of `private` moves to the file, whose `release` callback
    //   (`AnonFileVTable::<T>::release`) takes it back exactly once.
    let raw = unsafe {
        bindings::anon_inode_getfile(
            opts.name.as_char_ptr(),
            AnonFileVTable::<T>::build(),
            private,
            raw_flags,
        )
    };

    // `anon_inode_getfile()` returns an `ERR_PTR()` on failure, never NULL; treat NULL as an
    // allocation failure anyway rather than trusting it blindly.
    let raw = match from_err_ptr(raw).and_then(|ptr| NonNull::new(ptr).ok_or(ENOMEM)) {
        Ok(raw) => raw,
        Err(err) => {
            // SAFETY: `private` was returned by `into_foreign()` above. `anon_inode_getfile()`
            // failed, so it did not create a file holding `private` (no file operation, in
            // particular `release`, can ever see it) and ownership of it is still ours. This is
            // the only call to `from_foreign()` for it.
            drop(unsafe { <T::Ptr as ForeignOwnable>::from_foreign(private) });
            return Err(err);
        }
    };

    // SAFETY: `anon_inode_getfile()` returned a new file with a reference count of one, which we
    // now own and pass to the `ARef` (`File` is a transparent wrapper of `struct file`). The file
    // is in no file descriptor table and no other thread knows about it, so there is no
    // `fdget_pos()` call on it; and once it is a stream file (below) `fdget_pos()` never skips
    // `f_pos_lock` for a position that is used, since the VFS never uses its position.
    // If a later step fails, dropping the `ARef` releases the file, which gives `private` back to
    // `T::release`.
    let file: ARef<File> = unsafe { ARef::from_raw(raw.cast()) };

    // SAFETY: The file and its inode are valid; the file is not visible to anyone else yet, so
    // `stream_open()` can update `f_mode` without racing with any other access to it.
    // `stream_open()` clears `FMODE_LSEEK`, `FMODE_PREAD`, `FMODE_PWRITE` and `FMODE_ATOMIC_POS`
    // and sets `FMODE_STREAM`.
    to_result(unsafe { bindings::stream_open((*file.as_ptr()).f_inode, file.as_ptr()) })?;

    Ok(file)
}

/// The `file_operations` of the anonymous-inode files of `T`.
struct AnonFileVTable<T: AnonFile>(PhantomData<T>);

impl<T: AnonFile> AnonFileVTable<T> {
    /// Borrows the private data and the file.
    ///
    /// # Safety
    ///
    /// `file` must be a file created by [`new_stream_file`], valid for the duration of `'a`,
    /// and its `release` callback must not run (or have run) during `'a`.
    unsafe fn borrow<'a>(
        file: *mut bindings::file,
    ) -> (<T::Ptr as ForeignOwnable>::Borrowed<'a>, &'a File) {
        // SAFETY: The caller guarantees that `file` is valid.
        let private = unsafe { (*file).private_data };

        // SAFETY: `new_stream_file::<T>` set the private data to a pointer returned by
        // `T::Ptr::into_foreign()`, and it is only passed to `from_foreign()` by `release`, which
        // the caller guarantees does not run during `'a`.
        let this = unsafe { <T::Ptr as ForeignOwnable>::borrow(private) };

        // SAFETY:
        // - The caller guarantees that the file is valid for `'a`, and its reference count is
        //   positive while a file operation other than `release` runs on it.
        // - The file is a stream file: `FMODE_ATOMIC_POS` is clear, so `fdget_pos()` never takes
        //   `f_pos_lock` for it, but the VFS never reads or writes its position either
        //   (`FMODE_STREAM`), so there is no file position that a `&File` shared with other
        //   threads could race on.
        let file = unsafe { File::from_raw_file(file) };

        (this, file)
    }

    /// # Safety
    ///
    /// Must only be called by the VFS as the `read` file operation of a file created by
    /// [`new_stream_file`].
    unsafe extern "C" fn read(
        file: *mut bindings::file,
        buf: *mut c_char,
        len: usize,
        _ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: The VFS holds a reference to the file for the duration of this call, so it is
        // valid and `release` cannot run.
        let (this, file) = unsafe { Self::borrow(file) };
        // `_ppos` is NULL when called by the read/write syscalls on a stream file; a stream has no
        // position, so it is ignored whatever it is.
        let mut out = UserBuffer::new(UserPtr::from_ptr(buf.cast()), len);

        match T::read(this, file, &mut out) {
            // CAST: The VFS caps `len` at `MAX_RW_COUNT`, so it fits in an `isize`.
            Ok(n) => n.min(len) as isize,
            Err(err) => err.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Must only be called by the VFS as the `write` file operation of a file created by
    /// [`new_stream_file`].
    unsafe extern "C" fn write(
        file: *mut bindings::file,
        buf: *const c_char,
        len: usize,
        _ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: The VFS holds a reference to the file for the duration of this call, so it is
        // valid and `release` cannot run.
        let (this, file) = unsafe { Self::borrow(file) };
        // `_ppos` is NULL when called by the read/write syscalls on a stream file; a stream has no
        // position, so it is ignored whatever it is.
        let mut inp = UserBuffer::new(UserPtr::from_ptr(buf.cast_mut().cast()), len);

        match T::write(this, file, &mut inp) {
            // CAST: The VFS caps `len` at `MAX_RW_COUNT`, so it fits in an `isize`.
            Ok(n) => n.min(len) as isize,
            Err(err) => err.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Must only be called by the VFS as the `unlocked_ioctl` (or, through `compat_ptr_ioctl()`,
    /// `compat_ioctl`) file operation of a file created by [`new_stream_file`].
    unsafe extern "C" fn ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
        // SAFETY: The VFS holds a reference to the file for the duration of this call, so it is
        // valid and `release` cannot run.
        let (this, file) = unsafe { Self::borrow(file) };

        match T::ioctl(this, file, cmd, arg) {
            Ok(ret) => ret as c_long,
            Err(err) => err.to_errno() as c_long,
        }
    }

    /// # Safety
    ///
    /// Must only be called by the VFS as the `poll` file operation of a file created by
    /// [`new_stream_file`], with `wait` null or valid for the duration of the call.
    unsafe extern "C" fn poll(
        file: *mut bindings::file,
        wait: *mut bindings::poll_table_struct,
    ) -> bindings::__poll_t {
        // SAFETY: The caller of `poll` holds a reference to the file for the duration of this
        // call, so it is valid and `release` cannot run.
        let (this, file) = unsafe { Self::borrow(file) };
        // SAFETY: The caller passes a `poll_table` that is null or valid for the duration of this
        // call, which outlives the `PollTable`.
        let table = unsafe { PollTable::from_raw(wait) };

        match T::poll(this, file, table) {
            Ok(mask) => mask,
            Err(_) => poll_mask::EPOLLERR,
        }
    }

    /// # Safety
    ///
    /// Must only be called by the VFS as the `release` file operation of a file created by
    /// [`new_stream_file`].
    unsafe extern "C" fn release(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
        // SAFETY: `release` is called once, when the last reference to the file is gone and no
        // other file operation runs or can start on it; the file itself stays valid (not freed)
        // until this call returns.
        let private = unsafe { (*file).private_data };
        // SAFETY: `new_stream_file::<T>` set the private data to a pointer returned by
        // `T::Ptr::into_foreign()`. This is the only call to `from_foreign()` for it, and all
        // borrows taken by the other file operations have ended.
        let this = unsafe { <T::Ptr as ForeignOwnable>::from_foreign(private) };
        // SAFETY: The file stays valid until this call returns (see `AnonFile::release` for what
        // may be done with it), and as a stream file it has no position to race on.
        let file = unsafe { File::from_raw_file(file) };

        T::release(this, file);
        0
    }

    const VTABLE: bindings::file_operations = bindings::file_operations {
        // `__anon_inode_getfile()` takes a reference to this module for the file, and the VFS
        // drops it after `release`, so the module (and this table) outlive the file.
        owner: this_module::<T::OwnerModule>().as_ptr(),
        // No `llseek`: `FMODE_LSEEK` is then never set (and `stream_open()` clears it anyway), so
        // `lseek()` fails with `ESPIPE` without ever calling into the file.
        llseek: None,
        read: if T::HAS_READ { Some(Self::read) } else { None },
        write: if T::HAS_WRITE {
            Some(Self::write)
        } else {
            None
        },
        poll: if T::HAS_POLL { Some(Self::poll) } else { None },
        unlocked_ioctl: if T::HAS_IOCTL {
            Some(Self::ioctl)
        } else {
            None
        },
        // `bindings::compat_ptr_ioctl` is `None` without `CONFIG_COMPAT`.
        compat_ioctl: if T::HAS_IOCTL {
            bindings::compat_ptr_ioctl
        } else {
            None
        },
        release: Some(Self::release),
        ..pin_init::zeroed()
    };

    const fn build() -> &'static bindings::file_operations {
        &Self::VTABLE
    }
}
