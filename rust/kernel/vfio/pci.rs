// SPDX-License-Identifier: GPL-2.0

//! VFIO PCI variant drivers.
//!
//! C header: [`include/linux/vfio_pci_core.h`](srctree/include/linux/vfio_pci_core.h)
//!
//! A VFIO PCI variant driver binds to a PCI device (only through `driver_override`), exposes it to
//! userspace through the VFIO device interface and reuses `vfio-pci-core` for everything it does
//! not handle itself. A driver implements [`Driver`] and declares its module with
//! [`module_vfio_pci_driver!`](crate::module_vfio_pci_driver).
//!
//! # The device object
//!
//! [`Device<T>`] is one C allocation made by `_vfio_alloc_device()` (the `vfio_alloc_device()`
//! macro cannot be used from Rust):
//!
//! ```text
//! +-------------------------------------+ offset 0
//! | struct vfio_pci_core_device         |   (struct vfio_device at offset 0 inside it)
//! +-------------------------------------+
//! | ARef<pci::Device>                   |   a reference on the PCI device
//! | T::Data                             |   the driver's data, pinned
//! +-------------------------------------+
//! ```
//!
//! It is reference counted through the embedded `struct vfio_device::device` (`get_device()` /
//! `put_device()`; the C `vfio_put_device()` is a static inline for `put_device()`), see
//! [`AlwaysRefCounted`]. The allocation never moves, so `T::Data` is pinned. The reference on the
//! PCI device makes [`Device::pci_dev`] valid for as long as the VFIO device lives, which may be
//! longer than the PCI binding.
//!
//! # Allocation and release
//!
//! `_vfio_alloc_device()` calls `ops->init` (`vfio_pci_core_init_dev()`) before Rust can
//! initialise `T::Data`, and if `T::Data`'s initialiser fails, the final `put_device()` calls
//! `ops->release`, which then must not drop `T::Data`. The allocation therefore happens in stages,
//! like `drm::UnregisteredDevice::new`:
//!
//! 1. Allocate with a temporary operations table whose only callbacks are
//!    `init = vfio_pci_core_init_dev` and `release = vfio_pci_core_release_dev`.
//! 2. Store the PCI device reference and initialise `T::Data` in place. On failure, drop the PCI
//!    device reference by hand and `put_device()`: the temporary `release` frees only the C state.
//! 3. (Reserved for migration.) Set `vfio_device::mig_ops` and `migration_flags`; they are static
//!    properties that `vfio_pci_core_register_device()` checks, so they belong to this path.
//! 4. Switch `vfio_device::ops` to the full table, whose `release` drops `T::Data`, calls
//!    `vfio_pci_core_release_dev()` and then drops the PCI device reference.
//!
//! Nothing can observe the device between the stages: it is not registered yet.
//!
//! # PCI driver data
//!
//! In Linux 7.3, `vfio-pci-core` requires the PCI device's drvdata to be the
//! `struct vfio_pci_core_device`: `vfio_pci_core_register_device()` fails with a `WARN_ON` if it
//! is not, and the runtime PM callbacks, the VGA arbiter callback and
//! `vfio_pci_core_aer_err_detected()` read it. [`pci::Adapter`], in contrast, stores a
//! `Pin<KBox<T::Data>>` there, and the generic [`driver::Registration`] takes it back after unbind
//! (`post_unbind_rust` calls `drvdata_obtain()`, i.e. `KBox::from_foreign(dev_get_drvdata())`).
//!
//! This module therefore has its own PCI [`Adapter`] that keeps the C convention:
//!
//! - drvdata is set to the core device right before `vfio_pci_core_register_device()` and owns the
//!   reference count of the probed [`Device<T>`];
//! - it is cleared to `NULL` when registration fails, and in the remove callback after
//!   `vfio_pci_core_unregister_device()` (which is also after the last runtime PM, VGA or AER
//!   access), so `post_unbind_rust` always finds `NULL` and takes nothing;
//! - as a second line of defence, the adapter's [`driver::DriverLayout::DriverData`] is
//!   [`CoreDeviceDrvdata`], a zero-sized type without drop glue: even a stray non-`NULL` pointer
//!   would not be freed as a `KBox`.
//!
//! The drivers do not see any of this: their data lives in [`Device<T>`] and every callback gets
//! the device. Once the C core no longer depends on drvdata (a later upstream change), the adapter
//! can switch to the generic scheme without changing the [`Driver`] trait.
//!
//! The adapter also sets `driver_managed_dma` and the PCI error handlers (`vfio-pci-core`'s own, or
//! a copy with a Rust `reset_done` if the driver implements [`Driver::reset_done`]), and its ID
//! table entries should be built with [`pci::DeviceId::from_id_vfio_override`], so that the driver
//! only binds through `driver_override`.
//!
//! # Operations
//!
//! [`Driver`] is a `#[vtable]` trait turned into a `struct vfio_device_ops`. Callbacks that a
//! driver does not implement are the `vfio_pci_core_*` defaults (`read`, `write`, `ioctl`, `mmap`,
//! `device_feature`; `request`, `match`, `match_token_uuid` and `get_region_info_caps` are always
//! the defaults for now), and with `CONFIG_IOMMUFD` the `vfio_iommufd_physical_*` callbacks.
//! `open_device` always goes through Rust: `vfio_pci_core_enable()`, [`Driver::open_device`],
//! `vfio_pci_core_finish_enable()` (or `vfio_pci_core_disable()` if the hook fails).
//! `close_device` calls [`Driver::close_device`] and then `vfio_pci_core_close_device()`.
//!
//! The callbacks that run on an open device file get a [`Device<T, Open>`], which additionally
//! gives access to the bound PCI device and to the `vfio_pci_core_*` implementation of the same
//! operation, so that a driver can handle some requests and pass the rest on.
//!
//! # Linking
//!
//! `vfio.ko` and `vfio-pci-core.ko` may be modules while this code is in `vmlinux`: everything
//! that refers to one of their symbols is generic over `T: Driver` (including the operation tables,
//! which are associated constants), so it is only instantiated in the driver module. Do not add
//! non-generic functions or statics that refer to such symbols. No `rust/helpers` code is needed:
//! the only static inline used, `vfio_put_device()`, is open-coded as `put_device()`.
//!
//! # Migration
//!
//! A driver that migrates names its [`MigrationOps`] in [`Driver::Migration`]; the abstraction
//! installs `struct vfio_migration_ops` (and, with [`Driver::NO_DMA`], the DMA logging ops) in
//! stage 3 of the allocation. See [`MigrationOps`] for the state machine and the data files. Note
//! for kCFI: `enum vfio_device_mig_state` is passed through function pointers, so a kCFI build
//! needs `--newtype-enum vfio_device_mig_state` and
//! `--with-attribute-custom-enum=vfio_device_mig_state='#[cfi_encoding="21vfio_device_mig_state"]'`
//! in `rust/bindgen_parameters` (the callbacks must then take the newtype, not `u32`). Until
//! that is done, a kCFI build stops here instead of trapping at the first migration ioctl.

// The migration callbacks take `enum vfio_device_mig_state` as `u32`: kCFI would trap on them.
#[cfg(CONFIG_CFI_CLANG)]
compile_error!("kernel::vfio::pci does not support CONFIG_CFI_CLANG yet (see the module docs)");

use crate::{
    alloc::allocator::Kmalloc,
    bindings,
    device,
    device_id::RawDeviceIdIndex,
    driver,
    error::{
        from_err_ptr,
        from_result,
        to_result,
        VTABLE_DEFAULT_ERROR, //
    },
    mm::virt::{
        VmaNew,
        VmaRef, //
    },
    pci,
    prelude::*,
    sync::aref::{
        ARef,
        AlwaysRefCounted, //
    },
    sync::atomic::{
        Acquire,
        Atomic,
        Full,
        Release, //
    },
    sync::barrier::smp_mb,
    types::Opaque,
    vfio::{
        migration::MigState,
        MigrationFlags, //
    },
    ModuleMetadata,
    ThisModule, //
};
use core::{
    alloc::Layout,
    marker::PhantomData,
    mem::offset_of,
    ops::Deref,
    ptr::{
        self,
        NonNull, //
    },
};

mod migration;

/// `VFIO_DEVICE_IOEVENTFD`.
// CAST: `VFIO_TYPE` is the ASCII code of ';'.
const VFIO_DEVICE_IOEVENTFD: u32 =
    crate::ioctl::_IO(bindings::VFIO_TYPE as u32, bindings::VFIO_BASE + 16);

pub use migration::{
    BarRecord,
    MigrationOps,
    NoMigration,
    Pending,
    RecordSink, //
};

/// Returns the region index encoded in a VFIO PCI device file offset.
///
/// Equivalent to C's `VFIO_PCI_OFFSET_TO_INDEX` macro.
#[inline]
pub const fn region_index(pos: i64) -> u32 {
    // CAST: File offsets are reinterpreted as unsigned, like in C; after the shift at most 24 bits
    // remain, which fit in `u32`.
    ((pos as u64) >> bindings::VFIO_PCI_OFFSET_SHIFT) as u32
}

/// Returns the offset within its region of a VFIO PCI device file offset.
///
/// Equivalent to C's `pos & VFIO_PCI_OFFSET_MASK`.
#[inline]
pub const fn region_offset(pos: i64) -> u64 {
    // CAST: File offsets are reinterpreted as unsigned, like in C.
    (pos as u64) & ((1u64 << bindings::VFIO_PCI_OFFSET_SHIFT) - 1)
}

/// Converts the return value of a `vfio_pci_core_*` callback into a [`Result`].
#[inline]
fn isize_to_result(ret: isize) -> Result<isize> {
    if ret < 0 {
        // CAST: Negative return values of the VFIO callbacks are `-errno` and fit in `c_int`.
        Err(Error::from_errno(ret as c_int))
    } else {
        Ok(ret)
    }
}

mod private {
    pub trait Sealed {}

    impl Sealed for super::Normal {}
    impl Sealed for super::Open {}
}

/// The context in which a [`Device`] reference is valid.
///
/// The possible contexts are [`Normal`] and [`Open`].
pub trait DeviceContext: private::Sealed + Send + Sync + 'static {}

/// The general-purpose, reference-counted [`DeviceContext`].
///
/// A [`Device`] in this context may or may not be registered, and its PCI device may or may not be
/// bound. [`AlwaysRefCounted`] is implemented for this context only.
pub struct Normal;
impl DeviceContext for Normal {}

/// The [`DeviceContext`] of the callbacks that run on an open device.
///
/// A reference to a [`Device<T, Open>`] is only handed to [`Driver`] callbacks that run between a
/// successful `vfio_pci_core_enable()` (in `open_device`) and `vfio_pci_core_close_device()` (in
/// `close_device`).
///
/// # Invariants
///
/// For the lifetime of a `&Device<T, Open>`: the device is registered, its PCI device is bound to
/// the driver, and the device is enabled by `vfio-pci-core` (BARs requested, config space
/// virtualised).
pub struct Open;
impl DeviceContext for Open {}

/// A VFIO PCI variant device.
///
/// See the [module documentation](self) for its layout and life cycle.
///
/// # Invariants
///
/// - `core` is a `struct vfio_pci_core_device` allocated by `_vfio_alloc_device()` and initialised
///   by `vfio_pci_core_init_dev()`; its `vdev.ops` is `Ops::<T>::FULL` and its reference count is
///   the one of `core.vdev.device`.
/// - `pdev` is the PCI device `core.pdev` points to.
/// - `data` is initialised and pinned; it is dropped by the `release` callback only.
/// - The layout of `Device<T, C>` does not depend on `C`.
#[repr(C)]
pub struct Device<T: Driver, C: DeviceContext = Normal> {
    core: Opaque<bindings::vfio_pci_core_device>,
    pdev: ARef<pci::Device>,
    mig: migration::MigCtl<T>,
    /// The `vm_operations_struct` `vfio_pci_core_mmap()` installs, which the write-notifying
    /// wrapper delegates to (see [`Driver::bar_mmap_write`]).
    core_vm_ops: Atomic<usize>,
    /// DMA logging was started and not stopped (with [`Driver::NO_DMA`]).
    dma_logging: Atomic<bool>,
    data: T::Data,
    _ctx: PhantomData<C>,
}

impl<T: Driver> Device<T> {
    /// Allocates a new, unregistered VFIO PCI device for `pdev` holding the data from `data`.
    fn new(
        pdev: &pci::Device<device::Core<'_>>,
        data: impl PinInit<T::Data, Error>,
    ) -> Result<ARef<Self>> {
        const_assert!(
            offset_of!(Device<T>, core) == 0,
            "struct vfio_pci_core_device must be at offset 0"
        );
        const_assert!(
            offset_of!(bindings::vfio_pci_core_device, vdev) == 0,
            "struct vfio_device must be at offset 0 of struct vfio_pci_core_device"
        );

        // `_vfio_alloc_device()` allocates with `kvzalloc()`: use a `kmalloc()` compatible size.
        let layout = Kmalloc::aligned_layout(Layout::new::<Self>());

        // Stage 1: allocate with the temporary operations table, see the module documentation.
        //
        // SAFETY:
        // - `layout.size()` covers `Self`, which starts with a `struct vfio_pci_core_device`.
        // - `pdev` is a valid, bound PCI device; `vfio_pci_core_init_dev()` relies on it being a
        //   PCI device.
        // - `ALLOC_REF` is a `'static` operations table.
        let raw = unsafe {
            bindings::_vfio_alloc_device(layout.size(), pdev.as_ref().as_raw(), Ops::<T>::ALLOC_REF)
        };
        let vdev = NonNull::new(from_err_ptr(raw)?).ok_or(ENOMEM)?;
        let this = vdev.cast::<Self>();

        // Stage 2: the Rust fields.
        //
        // SAFETY: `this` points to a live allocation large enough for `Self`; `pdev` is not
        // initialised yet and is written exactly once.
        unsafe { (&raw mut (*this.as_ptr()).pdev).write(pdev.into()) };

        // SAFETY: `core_vm_ops` is uninitialised memory inside the allocation, written once.
        unsafe { (&raw mut (*this.as_ptr()).core_vm_ops).write(Atomic::new(0)) };

        // SAFETY: As above.
        unsafe { (&raw mut (*this.as_ptr()).dma_logging).write(Atomic::new(false)) };

        // SAFETY: `mig` is uninitialised memory inside the allocation, which never moves; it is
        // only dropped in `release` or below.
        if let Err(e) = unsafe {
            pin_init::raw_try_init(&raw mut (*this.as_ptr()).mig, migration::MigCtl::new())
        } {
            // SAFETY: `pdev` was initialised above and is not used after this.
            unsafe { ptr::drop_in_place(&raw mut (*this.as_ptr()).pdev) };

            // SAFETY: We own the only reference. The temporary `release` callback
            // (`vfio_pci_core_release_dev()`) does not touch the Rust fields.
            unsafe { bindings::put_device(&raw mut (*vdev.as_ptr()).device) };
            return Err(e);
        }

        // SAFETY:
        // - `data` is uninitialised memory inside the allocation.
        // - The allocation is never moved and `data` is only dropped in `release`.
        // - On error, `data` is not touched again.
        if let Err(e) = unsafe { pin_init::raw_try_init(&raw mut (*this.as_ptr()).data, data) } {
            // SAFETY: `mig` and `pdev` were initialised above and are not used after this.
            unsafe { ptr::drop_in_place(&raw mut (*this.as_ptr()).mig) };
            // SAFETY: As above.
            unsafe { ptr::drop_in_place(&raw mut (*this.as_ptr()).pdev) };

            // SAFETY: We own the only reference. The temporary `release` callback
            // (`vfio_pci_core_release_dev()`) does not touch the Rust fields.
            unsafe { bindings::put_device(&raw mut (*vdev.as_ptr()).device) };
            return Err(e);
        }

        // Stage 3, reserved for migration: `mig_ops` and `migration_flags` must be set before
        // `vfio_pci_core_register_device()`, which checks them.
        if let Some(mig_ops) = Ops::<T>::MIGRATION {
            // SAFETY: The device is still private to this function.
            unsafe {
                (*vdev.as_ptr()).mig_ops = mig_ops;
                (*vdev.as_ptr()).migration_flags = Ops::<T>::MIGRATION_FLAGS.bits();
            }
        }

        if T::NO_DMA {
            // SAFETY: The device is still private to this function.
            unsafe { (*vdev.as_ptr()).log_ops = Ops::<T>::LOG_OPS_REF };
        }

        // Stage 4: from now on `release` drops the Rust fields.
        //
        // SAFETY: The device is still private to this function.
        unsafe { (*vdev.as_ptr()).ops = Ops::<T>::FULL_REF };

        // SAFETY: `_vfio_alloc_device()` returned with a reference count of one, which we own.
        // INVARIANT: `core` was initialised by `vfio_pci_core_init_dev()`, `pdev` and `data` are
        // initialised and `ops` is the full table.
        Ok(unsafe { ARef::from_raw(this) })
    }

    /// Returns the driver's data.
    #[inline]
    pub fn data(&self) -> Pin<&T::Data> {
        // SAFETY: By the type invariants, `data` is initialised and pinned.
        unsafe { Pin::new_unchecked(&self.data) }
    }

    /// Returns the PCI device.
    ///
    /// The device holds a reference on it, so it is valid even after the driver was unbound.
    #[inline]
    pub fn pci_dev(&self) -> &pci::Device {
        &self.pdev
    }
}

impl<T: Driver, C: DeviceContext> Device<T, C> {
    /// Returns a pointer to the embedded `struct vfio_pci_core_device`.
    #[inline]
    fn as_core_raw(&self) -> *mut bindings::vfio_pci_core_device {
        self.core.get()
    }

    /// Returns a pointer to the embedded `struct vfio_device`.
    #[inline]
    fn as_vdev_raw(&self) -> *mut bindings::vfio_device {
        // CAST: `vdev` is at offset 0 of `struct vfio_pci_core_device`.
        self.core.get().cast()
    }

    /// Borrows a [`Device`] from a pointer to its `struct vfio_device`.
    ///
    /// # Safety
    ///
    /// - `vdev` must point to the `struct vfio_device` of a live [`Device<T>`] and the device must
    ///   stay alive for `'a`.
    /// - The guarantees of `C` must hold for `'a`.
    #[inline]
    unsafe fn from_vdev<'a>(vdev: *mut bindings::vfio_device) -> &'a Self {
        // CAST: `struct vfio_device` is at offset 0 of `struct vfio_pci_core_device`, which is at
        // offset 0 of `Self`, whose layout does not depend on `C`.
        let this = vdev.cast::<Self>();

        // SAFETY: By the safety requirements, `this` is a live `Device<T, C>` for `'a`.
        unsafe { &*this }
    }
}

impl<T: Driver> Device<T, Open> {
    /// Returns the PCI device, which is bound in this context.
    pub fn bound_pci_dev(&self) -> &pci::Device<device::Bound> {
        let pdev: &pci::Device = &self.pdev;
        let dev: &device::Device = pdev.as_ref();

        // SAFETY: By the invariants of `Open`, the PCI device is bound for the lifetime of `self`.
        let dev = unsafe { dev.as_bound() };

        // SAFETY: `dev` is the `struct device` embedded in the `struct pci_dev` of `self.pdev`.
        unsafe {
            <pci::Device<device::Bound> as device::AsBusDevice<device::Bound>>::from_device(dev)
        }
    }

    /// Passes an ioctl to `vfio_pci_core_ioctl()`.
    pub fn core_ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        // SAFETY: `self` is an open, registered `vfio_pci_core_device`; `arg` is only used as a
        // user pointer or value by the core, which validates it.
        isize_to_result(unsafe { bindings::vfio_pci_core_ioctl(self.as_vdev_raw(), cmd, arg) })
    }

    /// Passes a read to `vfio_pci_core_read()`.
    ///
    /// Returns the number of bytes read; `pos` is advanced by the core.
    pub fn core_read(&self, buf: UserPtr, count: usize, pos: &mut i64) -> Result<usize> {
        // SAFETY: `self` is an open, registered `vfio_pci_core_device`; `buf` is a user pointer
        // (accessed with `copy_to_user()`) and `pos` is valid for writes.
        let ret = unsafe {
            bindings::vfio_pci_core_read(self.as_vdev_raw(), buf.as_mut_ptr().cast(), count, pos)
        };

        // CAST: `isize_to_result()` only returns non-negative values.
        isize_to_result(ret).map(|n| n as usize)
    }

    /// Passes a write to `vfio_pci_core_write()`.
    ///
    /// Returns the number of bytes written; `pos` is advanced by the core.
    pub fn core_write(&self, buf: UserPtr, count: usize, pos: &mut i64) -> Result<usize> {
        // SAFETY: `self` is an open, registered `vfio_pci_core_device`; `buf` is a user pointer
        // (accessed with `copy_from_user()`) and `pos` is valid for writes.
        let ret = unsafe {
            bindings::vfio_pci_core_write(self.as_vdev_raw(), buf.as_const_ptr().cast(), count, pos)
        };

        // CAST: `isize_to_result()` only returns non-negative values.
        isize_to_result(ret).map(|n| n as usize)
    }

    /// Passes an `mmap()` to `vfio_pci_core_mmap()`.
    pub fn core_mmap(&self, vma: &VmaNew) -> Result {
        // SAFETY: `self` is an open, registered `vfio_pci_core_device` and `vma` is undergoing its
        // initial setup in this `mmap()` call.
        to_result(unsafe { bindings::vfio_pci_core_mmap(self.as_vdev_raw(), vma.as_ptr()) })
    }

    /// Passes a `VFIO_DEVICE_FEATURE` request to `vfio_pci_core_ioctl_feature()`.
    pub fn core_device_feature(&self, flags: u32, arg: UserPtr, argsz: usize) -> Result {
        // SAFETY: `self` is an open, registered `vfio_pci_core_device`; `arg` is a user pointer
        // (accessed with `copy_{from,to}_user()`).
        to_result(unsafe {
            bindings::vfio_pci_core_ioctl_feature(
                self.as_vdev_raw(),
                flags,
                arg.as_mut_ptr(),
                argsz,
            )
        })
    }
}

impl<T: Driver> Device<T, Open> {
    /// Returns the mapping of BAR `index` that `vfio-pci-core` set up when the device was opened.
    ///
    /// Accesses through it are plain MMIO: the caller makes sure memory decoding is enabled where
    /// that matters (the migration callbacks run with it checked).
    pub fn bar(&self, index: u32) -> Result<BarIo<'_>> {
        let i = usize::try_from(index).map_err(|_| EINVAL)?;
        if i >= 6 {
            return Err(EINVAL);
        }
        // SAFETY: The device is open, so `barmap` was set up by `vfio_pci_core_enable()` and is
        // only torn down by `vfio_pci_core_disable()` after the last close.
        let addr = unsafe { (*self.as_core_raw()).barmap[i] };
        // CAST: `IS_ERR()`: error pointers are the last page of the address space.
        if addr.is_null() || addr as usize >= usize::MAX - 4095 {
            return Err(ENODEV);
        }
        let len = usize::try_from(self.pci_dev().resource_len(index)?).map_err(|_| EINVAL)?;
        // INVARIANT: `addr` maps the whole BAR (`pci_iomap()` with no length limit) until the
        // device is closed, which cannot happen while `self` is borrowed.
        Ok(BarIo {
            addr,
            len,
            index,
            _dev: PhantomData,
        })
    }
}

impl<T: Driver> Device<T, Open> {
    /// Unmaps bytes `offset..offset + len` of BAR `bar` from every user mapping of the device,
    /// so that the next access faults again (and, with [`Driver::bar_mmap_write`], the next
    /// write notifies again).
    pub fn zap_bar(&self, bar: u32, offset: u64, len: u64) -> Result {
        if bar >= 6 {
            return Err(EINVAL);
        }
        let start = (u64::from(bar) << bindings::VFIO_PCI_OFFSET_SHIFT)
            .checked_add(offset)
            .ok_or(EINVAL)?;
        let start = i64::try_from(start)?;
        let len = i64::try_from(len)?;
        // SAFETY: The device is registered, so its inode (whose mapping every `mmap()` of the
        // device shares) is valid.
        unsafe {
            let inode = (*self.as_vdev_raw()).inode;
            bindings::unmap_mapping_range((*inode).i_mapping, start, len, 1);
        }
        Ok(())
    }
}

/// The `vm_operations_struct` of the mappings of tracked BARs, see [`Driver::bar_mmap_write`].
///
/// No present page of such a mapping is ever read-only (in-kernel walkers of PFN mappings, like
/// the type1 IOMMU driver mapping a BAR for peer-to-peer DMA, or KVM, would not upgrade it):
/// while the driver does not track the BAR ([`Driver::bar_tracked`]), every fault goes to
/// `vfio-pci-core` (huge mappings included); while it does, faults map single pages writable
/// and notify the driver, and the driver re-arms a page by unmapping it ([`Device::zap_bar`]).
struct TrackOps<T: Driver>(PhantomData<T>);

impl<T: Driver> TrackOps<T> {
    const VM_OPS: bindings::vm_operations_struct = bindings::vm_operations_struct {
        fault: Some(Self::fault),
        huge_fault: Some(Self::huge_fault),
        ..pin_init::zeroed()
    };

    const VM_OPS_REF: &'static bindings::vm_operations_struct = &Self::VM_OPS;

    /// Returns the device of a fault and the operations `vfio-pci-core` installed.
    ///
    /// # Safety
    ///
    /// `vmf` must be a fault on a mapping set up by [`Ops::mmap`] with these operations.
    unsafe fn device<'a>(
        vmf: *mut bindings::vm_fault,
    ) -> (&'a Device<T>, &'a bindings::vm_operations_struct) {
        // SAFETY: By the safety requirements, `vmf` is a valid fault whose mapping's private
        // data is the `struct vfio_pci_core_device` (set by `vfio_pci_core_mmap()`), at offset
        // 0 of a `Device<T>`; the mapping's file keeps the device alive during the fault.
        let dev = unsafe {
            let vma = (*vmf).__bindgen_anon_1.vma;
            Device::<T>::from_vdev((*vma).vm_private_data.cast())
        };
        let ops = dev.core_vm_ops.load(Acquire) as *const bindings::vm_operations_struct;
        // SAFETY: Stored by `mmap` before these operations were installed; it points to
        // `vfio-pci-core`'s static table, which outlives the device.
        (dev, unsafe { &*ops })
    }

    /// Returns the BAR and the page index in it of a fault.
    ///
    /// # Safety
    ///
    /// `vmf` must be a valid fault.
    unsafe fn bar_page(vmf: *mut bindings::vm_fault) -> (u32, u64) {
        // SAFETY: `vmf` is valid for the duration of the call.
        let pgoff = unsafe { (*vmf).__bindgen_anon_1.pgoff } as u64;
        let shift = bindings::VFIO_PCI_OFFSET_SHIFT - bindings::PAGE_SHIFT;
        // CAST: The region index is below 2^24.
        ((pgoff >> shift) as u32, pgoff & ((1 << shift) - 1))
    }

    /// After `vfio-pci-core` mapped `len` bytes at `offset` of `bar` because the BAR was not
    /// tracked: if tracking started meanwhile, notify the driver as for a tracked fault.
    ///
    /// A session that starts marks the pages to send and unmaps each one before it is sent; a
    /// page mapped by a fault that had seen no tracking may land after that, writable and
    /// unmarked. Checking again after the mapping exists (with a full barrier, against the
    /// driver's start of tracking, then unmapping) notifies in that case.
    fn recheck(dev: &Device<T>, bar: u32, offset: u64, len: u64) {
        smp_mb(Full);
        if T::bar_tracked(dev, bar) {
            T::bar_mmap_write(dev, bar, offset, len);
        }
    }

    /// `fault`: a tracked BAR maps the page writable and notifies; otherwise `vfio-pci-core`.
    ///
    /// # Safety
    ///
    /// `vmf` must be a fault on a mapping set up by [`Ops::mmap`] with these operations.
    unsafe extern "C" fn fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
        // SAFETY: Called by the mm core for a fault on a mapping with these operations.
        let (dev, core) = unsafe { Self::device(vmf) };
        // SAFETY: As above.
        let (bar, page) = unsafe { Self::bar_page(vmf) };
        if T::bar_tracked(dev, bar) {
            // SAFETY: As above; a fault on a page that is not mapped.
            return unsafe { Self::tracked_fault(dev, vmf) };
        }
        let ret = match core.fault {
            // SAFETY: Delegating the same fault to the operations of the mapping's creator.
            Some(f) => unsafe { f(vmf) },
            None => bindings::vm_fault_reason_VM_FAULT_SIGBUS,
        };
        if ret == bindings::vm_fault_reason_VM_FAULT_NOPAGE {
            Self::recheck(
                dev,
                bar,
                page << bindings::PAGE_SHIFT,
                1 << bindings::PAGE_SHIFT,
            );
        }
        ret
    }

    /// `huge_fault`: a tracked BAR falls back to pages; otherwise `vfio-pci-core`.
    ///
    /// # Safety
    ///
    /// `vmf` must be a fault on a mapping set up by [`Ops::mmap`] with these operations.
    unsafe extern "C" fn huge_fault(
        vmf: *mut bindings::vm_fault,
        order: c_uint,
    ) -> bindings::vm_fault_t {
        // SAFETY: Called by the mm core for a fault on a mapping with these operations.
        let (dev, core) = unsafe { Self::device(vmf) };
        // SAFETY: As above.
        let (bar, page) = unsafe { Self::bar_page(vmf) };
        if order > 0 && T::bar_tracked(dev, bar) {
            // Pages notify one by one; a huge mapping would not.
            return bindings::vm_fault_reason_VM_FAULT_FALLBACK;
        }
        let ret = match core.huge_fault {
            // SAFETY: Delegating the same fault to the operations of the mapping's creator.
            Some(f) => unsafe { f(vmf, order) },
            None => bindings::vm_fault_reason_VM_FAULT_FALLBACK,
        };
        if ret == bindings::vm_fault_reason_VM_FAULT_NOPAGE {
            let len = 1u64 << (bindings::PAGE_SHIFT + order);
            Self::recheck(dev, bar, (page << bindings::PAGE_SHIFT) & !(len - 1), len);
        }
        ret
    }

    /// A fault on a page of a tracked BAR that is not mapped: map it writable, then notify.
    ///
    /// This does what `vfio-pci-core`'s handler does for one page. Read faults notify too: the
    /// page is writable from now on, there is no later fault that would tell a write.
    ///
    /// # Safety
    ///
    /// `vmf` must be a fault on a mapping of `dev` with these operations.
    unsafe fn tracked_fault(dev: &Device<T>, vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
        let sigbus = bindings::vm_fault_reason_VM_FAULT_SIGBUS;
        // SAFETY: `vmf` is valid for the duration of the call.
        let (vma, address) = unsafe {
            let f = &(*vmf).__bindgen_anon_1;
            (f.vma, f.address)
        };
        // SAFETY: As above.
        let (bar, page) = unsafe { Self::bar_page(vmf) };
        let Ok(start) = dev.pci_dev().resource_start(bar) else {
            return sigbus;
        };
        let pfn = (start >> bindings::PAGE_SHIFT) + page;
        let core = dev.as_core_raw();
        // SAFETY: The device is open (the mapping holds its file); `memory_lock` is initialised.
        unsafe { bindings::down_read(&raw mut (*core).memory_lock) };
        // SAFETY: `memory_lock` is held, as both fields require.
        let ret = if unsafe {
            (*core).pm_runtime_engaged || !bindings::__vfio_pci_memory_enabled(core)
        } {
            sigbus
        } else {
            // SAFETY: `vma` is the faulting mapping, stable during the fault (the mmap lock or the
            // VMA lock is held); `pfn` is a page of BAR `bar`, which `vfio_pci_core_mmap()`
            // checked the mapping stays within.
            unsafe {
                let flags = VmaRef::from_raw(vma).flags();
                let prot =
                    bindings::pgprot_modify((*vma).vm_page_prot, bindings::vm_get_page_prot(flags));
                bindings::vmf_insert_pfn_prot(
                    vma,
                    address & !((1 << bindings::PAGE_SHIFT) - 1),
                    pfn as c_ulong,
                    prot,
                )
            }
        };
        // SAFETY: Taken above.
        unsafe { bindings::up_read(&raw mut (*core).memory_lock) };

        // Notify only once the writable page is mapped, still before the write lands (it is
        // retried when the fault returns): if the driver re-arms the page in between (unmarks
        // it, unmaps it, copies it), the write faults again and notifies again. Notified
        // before the mapping, a re-arm in between would be lost and the write untracked.
        if ret == bindings::vm_fault_reason_VM_FAULT_NOPAGE {
            T::bar_mmap_write(
                dev,
                bar,
                page << bindings::PAGE_SHIFT,
                1 << bindings::PAGE_SHIFT,
            );
        }
        ret
    }
}

/// The MMIO mapping of a BAR of an open [`Device`].
///
/// # Invariants
///
/// `addr` is an `__iomem` mapping of the `len` bytes of BAR `index`, valid for `'a`.
pub struct BarIo<'a> {
    addr: *mut c_void,
    len: usize,
    index: u32,
    _dev: PhantomData<&'a ()>,
}

impl BarIo<'_> {
    /// Returns the index of the BAR.
    #[inline]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Returns the size of the BAR in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns `true` if the BAR is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks that `len` bytes at `off` are inside the BAR and returns their address.
    fn at(&self, off: usize, len: usize) -> Result<*mut c_void> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.addr.wrapping_byte_add(off)),
            _ => Err(EINVAL),
        }
    }

    /// Reads the 32-bit register at `off` (4-byte aligned).
    pub fn read32(&self, off: usize) -> Result<u32> {
        if off % 4 != 0 {
            return Err(EINVAL);
        }
        let p = self.at(off, 4)?;
        // SAFETY: By the type invariants and the check above, `p` is valid MMIO for 4 bytes.
        Ok(unsafe { bindings::readl(p) })
    }

    /// Writes the 32-bit register at `off` (4-byte aligned).
    pub fn write32(&self, off: usize, value: u32) -> Result {
        if off % 4 != 0 {
            return Err(EINVAL);
        }
        let p = self.at(off, 4)?;
        // SAFETY: By the type invariants and the check above, `p` is valid MMIO for 4 bytes.
        unsafe { bindings::writel(value, p) };
        Ok(())
    }

    /// Copies `buf.len()` bytes at `off` into `buf`.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> Result {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        unsafe { self.read_raw(off, buf.as_mut_ptr(), buf.len()) }
    }

    /// Copies `buf` to the BAR at `off`.
    pub fn write(&self, off: usize, buf: &[u8]) -> Result {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        unsafe { self.write_raw(off, buf.as_ptr(), buf.len()) }
    }

    /// Copies `len` bytes at `off` to `dst` (`memcpy_fromio()`).
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `len` bytes, which no other reference may cover during
    /// the call.
    pub unsafe fn read_raw(&self, off: usize, dst: *mut u8, len: usize) -> Result {
        let p = self.at(off, len)?;
        // SAFETY: `p` is valid MMIO for `len` bytes (checked above), `dst` valid for writes of
        // `len` bytes by the safety requirements.
        unsafe { bindings::memcpy_fromio(dst.cast(), p, len) };
        Ok(())
    }

    /// Copies `len` bytes from `src` to the BAR at `off`.
    ///
    /// The BAR is written in 64-bit units (`__iowrite64_copy()`) if `off`, `src` and `len` are
    /// multiples of 8, else with `memcpy_toio()`: use it for memory BARs, not for registers.
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads of `len` bytes, which no other mutable reference may cover
    /// during the call.
    pub unsafe fn write_raw(&self, off: usize, src: *const u8, len: usize) -> Result {
        let p = self.at(off, len)?;
        // SAFETY: `p` is valid MMIO for `len` bytes (checked above), `src` valid for reads of
        // `len` bytes by the safety requirements; the 64-bit copy gets both 8-byte aligned and a
        // length that is a multiple of 8.
        unsafe {
            // CAST: Only the addresses' alignment is looked at.
            if (p as usize | src as usize | len) % 8 == 0 {
                bindings::__iowrite64_copy(p, src.cast(), len / 8)
            } else {
                bindings::memcpy_toio(p, src.cast(), len)
            }
        };
        Ok(())
    }
}

impl<T: Driver> Deref for Device<T, Open> {
    type Target = Device<T>;

    #[inline]
    fn deref(&self) -> &Device<T> {
        // CAST: The layout of `Device<T, C>` does not depend on `C`.
        let ptr = ptr::from_ref(self).cast::<Device<T>>();

        // SAFETY: `Open` guarantees strictly more than `Normal`.
        unsafe { &*ptr }
    }
}

impl<T: Driver, C: DeviceContext> AsRef<device::Device> for Device<T, C> {
    /// Returns the PCI device's `struct device`, e.g. for `dev_info!`.
    #[inline]
    fn as_ref(&self) -> &device::Device {
        let pdev: &pci::Device = &self.pdev;
        pdev.as_ref()
    }
}

// SAFETY: The reference count is the one of the embedded `struct vfio_device::device`; the last
// `put_device()` calls `vfio_device_release()`, which calls `ops->release` and frees the
// allocation.
unsafe impl<T: Driver> AlwaysRefCounted for Device<T> {
    #[inline]
    fn inc_ref(&self) {
        // SAFETY: The existence of a shared reference guarantees that the refcount is non-zero.
        unsafe { bindings::get_device(&raw mut (*self.as_vdev_raw()).device) };
    }

    #[inline]
    unsafe fn dec_ref(obj: NonNull<Self>) {
        // CAST: `struct vfio_device` is at offset 0 of `Self`.
        let vdev = obj.as_ptr().cast::<bindings::vfio_device>();

        // SAFETY: The safety requirements guarantee that the refcount is non-zero.
        unsafe { bindings::put_device(&raw mut (*vdev).device) };
    }
}

// SAFETY: The C parts are protected by `vfio-pci-core`'s own locking and the device may be
// released from any thread; `T::Data` is `Send + Sync`, `pci::Device` is `Send + Sync` and the
// context marker is a zero-sized type.
unsafe impl<T: Driver, C: DeviceContext> Send for Device<T, C> {}

// SAFETY: All methods taking `&self` are safe to call concurrently: the C functions they call do
// their own locking and `T::Data` is `Sync`.
unsafe impl<T: Driver, C: DeviceContext> Sync for Device<T, C> {}

/// A VFIO PCI variant driver.
///
/// `T::Data` lives inside the VFIO device allocation, which is reference counted and may outlive
/// the PCI binding: it must not borrow from the binding (hence `'static`). Callbacks may run
/// concurrently (`ioctl`, `read`, `write` and `mmap` on several file descriptors), hence `Sync`.
/// Do not store an `ARef<Device<Self>>` in `Self::Data`: the cycle would leak the device.
///
/// Callbacks that are not implemented use the `vfio_pci_core_*` defaults.
///
/// # Examples
///
/// ```ignore
/// use kernel::{device::Core, pci, prelude::*, vfio};
///
/// struct MyDriver;
///
/// kernel::pci_device_table!(
///     PCI_TABLE,
///     <MyDriver as vfio::pci::Driver>::IdInfo,
///     [(pci::DeviceId::from_id_vfio_override(pci::Vendor::REDHAT_QUMRANET, 0x1110), ())]
/// );
///
/// #[vtable]
/// impl vfio::pci::Driver for MyDriver {
///     type IdInfo = ();
///     type Data = ();
///     const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;
///
///     fn probe<'bound>(
///         _pdev: &'bound pci::Device<Core<'_>>,
///         _id_info: Option<&'bound Self::IdInfo>,
///     ) -> impl PinInit<Self::Data, Error> + 'bound {
///         Ok(())
///     }
/// }
///
/// kernel::module_vfio_pci_driver! {
///     type: MyDriver,
///     name: "my-vfio-pci",
///     authors: ["..."],
///     description: "...",
///     license: "GPL",
/// }
/// ```
#[vtable]
pub trait Driver: Sized + 'static {
    /// The type holding information about each device ID supported by the driver.
    type IdInfo: 'static;

    /// The driver's per-device data, stored in the [`Device`].
    type Data: Send + Sync + 'static;

    /// The driver's migration operations: [`NoMigration`], or a type implementing
    /// [`MigrationOps`] (often the driver type itself).
    type Migration: MigrationOps<Self>;

    /// The table of device IDs supported by the driver.
    ///
    /// Its entries should be built with [`pci::DeviceId::from_id_vfio_override`].
    const ID_TABLE: pci::IdTable<Self::IdInfo>;

    /// The device never writes to memory by DMA (it is not a bus master).
    ///
    /// Then the device supports DMA dirty logging (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`) and
    /// truthfully reports nothing dirty, so that a VMM without IOMMU dirty tracking need not
    /// refuse to migrate it.
    const NO_DMA: bool = false;

    /// Called when the driver is bound to a PCI device; returns the initialiser of the driver's
    /// data.
    ///
    /// The VFIO device is registered with the data afterwards. The VFIO device name
    /// (`vfio_device_ops::name`) is the name of the module.
    fn probe<'bound>(
        pdev: &'bound pci::Device<device::Core<'_>>,
        id_info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data, Error> + 'bound;

    /// Called when the driver is unbound, after the VFIO device was unregistered (all its file
    /// descriptors are closed). Optional.
    ///
    /// `Self::Data` is dropped when the last reference to `dev` is gone, possibly later.
    fn unbind(pdev: &pci::Device<device::Core<'_>>, dev: &Device<Self>) {
        let _ = (pdev, dev);
    }

    /// Called when the first file descriptor of the device is opened, after
    /// `vfio_pci_core_enable()` and before `vfio_pci_core_finish_enable()`. Optional.
    ///
    /// On error the device is disabled again and the open fails.
    fn open_device(dev: &Device<Self, Open>) -> Result {
        let _ = dev;
        Ok(())
    }

    /// Called when the last file descriptor of the device is closed, before
    /// `vfio_pci_core_close_device()`. Optional.
    fn close_device(dev: &Device<Self, Open>) {
        let _ = dev;
    }

    /// Handles an ioctl on the device file. Default: `vfio_pci_core_ioctl()`.
    ///
    /// `VFIO_DEVICE_FEATURE` and `VFIO_DEVICE_GET_REGION_INFO` do not come here, see
    /// [`Driver::device_feature`]. Unhandled commands can be passed on with
    /// [`Device::core_ioctl`].
    fn ioctl(_dev: &Device<Self, Open>, _cmd: u32, _arg: usize) -> Result<isize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles `read()` on the device file. Default: `vfio_pci_core_read()`.
    ///
    /// `pos` encodes the region, see [`region_index`] and [`region_offset`]. Returns the number of
    /// bytes read and advances `pos`.
    fn read(
        _dev: &Device<Self, Open>,
        _buf: UserPtr,
        _count: usize,
        _pos: &mut i64,
    ) -> Result<usize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles `write()` on the device file. Default: `vfio_pci_core_write()`.
    ///
    /// `pos` encodes the region, see [`region_index`] and [`region_offset`]. Returns the number of
    /// bytes written and advances `pos`.
    fn write(
        _dev: &Device<Self, Open>,
        _buf: UserPtr,
        _count: usize,
        _pos: &mut i64,
    ) -> Result<usize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles `mmap()` on the device file. Default: `vfio_pci_core_mmap()`.
    fn mmap(_dev: &Device<Self, Open>, _vma: &VmaNew) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// The BARs (bit `n` for BAR `n`) whose `mmap()` mappings [`Driver::bar_mmap_write`]
    /// tracks. Mappings of other BARs are `vfio-pci-core`'s, untouched.
    const MMAP_TRACKED_BARS: u8 = 0;

    /// Whether the driver tracks the user's writes to BAR `bar` now (e.g. while a saving session
    /// is open); only asked for [`Driver::MMAP_TRACKED_BARS`]. Default: never.
    ///
    /// It runs in the page-fault path, like [`Driver::bar_mmap_write`]: lock-free. Starting to
    /// track must be ordered (a full barrier, such as a fully ordered atomic operation) before
    /// the driver marks the pages to send and unmaps them ([`Device::zap_bar`]).
    fn bar_tracked(_dev: &Device<Self>, _bar: u32) -> bool {
        false
    }

    /// Called when userspace may write to the `len` bytes at `offset` of BAR `bar` through an
    /// `mmap()` of the device from now on (the page that faulted, `PAGE_SIZE` bytes or a huge
    /// page, whatever the driver's tracking unit). Optional.
    ///
    /// While [`Driver::bar_tracked`] says so, the mappings of [`Driver::MMAP_TRACKED_BARS`] are
    /// made of single pages, mapped writable on the first access, read or write, which calls
    /// this hook once the page is mapped and before the access is done: the page counts as
    /// written. [`Device::zap_bar`] re-arms a range: its next access faults and calls this hook
    /// again. No page is ever mapped read-only (in-kernel users of the mapping, like the IOMMU
    /// driver for peer-to-peer DMA or KVM, would not upgrade it), and while the BAR is not
    /// tracked, faults go to `vfio-pci-core` and may map huge pages. It runs in the page-fault
    /// path with the `mmap` lock held: it must not sleep on anything a fault or the migration
    /// lock may hold (record the write lock-free, e.g. with
    /// [`DirtyPages`](crate::vfio::dirty::DirtyPages)).
    fn bar_mmap_write(_dev: &Device<Self>, _bar: u32, _offset: u64, _len: u64) {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Called before `vfio_pci_core_ioctl()` handles a `VFIO_DEVICE_IOEVENTFD` request; an
    /// error refuses the request with that error. Optional (default: pass it on).
    ///
    /// The kernel performs the writes of an ioeventfd itself, bypassing [`Driver::write`] and
    /// the device's mappings: a driver that tracks the writes to a BAR must refuse ioeventfds
    /// there. The request is not decoded here on purpose: `vfio_pci_core_ioctl()` copies it from
    /// userspace again (and `vfio_pci_ioeventfd()` is not exported), so a check of its BAR or
    /// offset could be raced by another thread changing them in between; such a driver refuses
    /// every request while it tracks writes.
    fn ioeventfd(_dev: &Device<Self, Open>) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles a `VFIO_DEVICE_FEATURE` request that the VFIO core does not handle itself.
    /// Default: `vfio_pci_core_ioctl_feature()`.
    fn device_feature(
        _dev: &Device<Self, Open>,
        _flags: u32,
        _arg: UserPtr,
        _argsz: usize,
    ) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Called by the PCI core after the device was reset (`pci_error_handlers::reset_done`).
    /// Optional.
    ///
    /// It runs with the PCI device lock held and, for resets requested through VFIO, with
    /// `vfio-pci-core`'s `memory_lock` held for writing: it must not wait for anything that an
    /// `mmap()` fault or a region access of the same device may hold (defer the work instead).
    fn reset_done(_dev: &Device<Self>) {
        build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// The operation tables of a [`Driver`].
///
/// All of them are associated constants of a type generic over `T`, so they, and the `vfio*`
/// symbols they refer to, only exist in the driver module.
struct Ops<T: Driver>(PhantomData<T>);

impl<T: Driver> Ops<T> {
    /// `vfio_device_ops::name`: the name of the driver's module.
    const NAME: *mut c_char =
        crate::str::as_char_ptr_in_const_context(<T::OwnerModule as ModuleMetadata>::NAME)
            .cast_mut();

    /// The temporary table used while the Rust fields are not initialised yet.
    const ALLOC: bindings::vfio_device_ops = bindings::vfio_device_ops {
        name: Self::NAME,
        init: Some(bindings::vfio_pci_core_init_dev),
        release: Some(bindings::vfio_pci_core_release_dev),
        ..pin_init::zeroed()
    };

    /// A `'static` reference to [`Self::ALLOC`].
    const ALLOC_REF: &'static bindings::vfio_device_ops = &Self::ALLOC;

    /// The table of a fully initialised device.
    const FULL: bindings::vfio_device_ops = bindings::vfio_device_ops {
        name: Self::NAME,
        init: Some(bindings::vfio_pci_core_init_dev),
        release: Some(Self::release),
        #[cfg(CONFIG_IOMMUFD)]
        bind_iommufd: Some(bindings::vfio_iommufd_physical_bind),
        #[cfg(CONFIG_IOMMUFD)]
        unbind_iommufd: Some(bindings::vfio_iommufd_physical_unbind),
        #[cfg(CONFIG_IOMMUFD)]
        attach_ioas: Some(bindings::vfio_iommufd_physical_attach_ioas),
        #[cfg(CONFIG_IOMMUFD)]
        detach_ioas: Some(bindings::vfio_iommufd_physical_detach_ioas),
        #[cfg(CONFIG_IOMMUFD)]
        pasid_attach_ioas: Some(bindings::vfio_iommufd_physical_pasid_attach_ioas),
        #[cfg(CONFIG_IOMMUFD)]
        pasid_detach_ioas: Some(bindings::vfio_iommufd_physical_pasid_detach_ioas),
        open_device: Some(Self::open_device),
        close_device: Some(Self::close_device),
        read: if T::HAS_READ {
            Some(Self::read)
        } else {
            Some(bindings::vfio_pci_core_read)
        },
        write: if T::HAS_WRITE {
            Some(Self::write)
        } else {
            Some(bindings::vfio_pci_core_write)
        },
        ioctl: if T::HAS_IOCTL || T::HAS_IOEVENTFD {
            Some(Self::ioctl)
        } else {
            Some(bindings::vfio_pci_core_ioctl)
        },
        get_region_info_caps: Some(bindings::vfio_pci_ioctl_get_region_info),
        mmap: if T::HAS_MMAP || T::HAS_BAR_MMAP_WRITE {
            Some(Self::mmap)
        } else {
            Some(bindings::vfio_pci_core_mmap)
        },
        request: Some(bindings::vfio_pci_core_request),
        match_: Some(bindings::vfio_pci_core_match),
        match_token_uuid: Some(bindings::vfio_pci_core_match_token_uuid),
        device_feature: if T::HAS_DEVICE_FEATURE {
            Some(Self::device_feature)
        } else {
            Some(bindings::vfio_pci_core_ioctl_feature)
        },
        ..pin_init::zeroed()
    };

    /// A `'static` reference to [`Self::FULL`].
    const FULL_REF: &'static bindings::vfio_device_ops = &Self::FULL;

    /// The migration capabilities of the driver.
    const MIGRATION_FLAGS: MigrationFlags = <T::Migration as MigrationOps<T>>::FLAGS;

    /// `struct vfio_migration_ops`.
    const MIG_OPS: bindings::vfio_migration_ops = bindings::vfio_migration_ops {
        migration_set_state: Some(Self::migration_set_state),
        migration_get_state: Some(Self::migration_get_state),
        migration_get_data_size: Some(Self::migration_get_data_size),
    };

    /// A `'static` reference to [`Self::MIG_OPS`].
    const MIG_OPS_REF: &'static bindings::vfio_migration_ops = &Self::MIG_OPS;

    /// The migration operations, if the driver migrates.
    const MIGRATION: Option<&'static bindings::vfio_migration_ops> = {
        assert!(
            Self::MIGRATION_FLAGS.is_empty()
                || Self::MIGRATION_FLAGS.contains(MigrationFlags::STOP_COPY),
            "a migrating device supports at least STOP_COPY"
        );
        if Self::MIGRATION_FLAGS.is_empty() {
            None
        } else {
            Some(Self::MIG_OPS_REF)
        }
    };

    /// `struct vfio_log_ops` of a device that does no DMA, see [`Driver::NO_DMA`].
    const LOG_OPS: bindings::vfio_log_ops = bindings::vfio_log_ops {
        log_start: Some(Self::log_start),
        log_stop: Some(Self::log_stop),
        log_read_and_clear: Some(Self::log_read_and_clear),
    };

    /// A `'static` reference to [`Self::LOG_OPS`].
    const LOG_OPS_REF: &'static bindings::vfio_log_ops = &Self::LOG_OPS;

    /// `log_start`: accepts any ranges and page size; a second start without a stop is refused.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`].
    unsafe extern "C" fn log_start(
        vdev: *mut bindings::vfio_device,
        _ranges: *mut bindings::rb_root_cached,
        _nnodes: u32,
        _page_size: *mut u64,
    ) -> c_int {
        // SAFETY: The VFIO core calls this from the feature ioctl of an open device file.
        let this = unsafe { Device::<T>::from_vdev(vdev) };
        if this.dma_logging.xchg(true, Full) {
            EBUSY.to_errno()
        } else {
            0
        }
    }

    /// `log_stop`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`].
    unsafe extern "C" fn log_stop(vdev: *mut bindings::vfio_device) -> c_int {
        // SAFETY: The VFIO core calls this from the feature ioctl of an open device file.
        let this = unsafe { Device::<T>::from_vdev(vdev) };
        this.dma_logging.store(false, Release);
        0
    }

    /// `log_read_and_clear`: the device does no DMA, so nothing is ever dirty; the user's bitmap
    /// is left as it is.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`].
    unsafe extern "C" fn log_read_and_clear(
        vdev: *mut bindings::vfio_device,
        _iova: c_ulong,
        _length: c_ulong,
        _dirty: *mut bindings::iova_bitmap,
    ) -> c_int {
        // SAFETY: The VFIO core calls this from the feature ioctl of an open device file.
        let this = unsafe { Device::<T>::from_vdev(vdev) };
        if this.dma_logging.load(Acquire) {
            0
        } else {
            EINVAL.to_errno()
        }
    }

    /// `migration_set_state`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`].
    unsafe extern "C" fn migration_set_state(
        vdev: *mut bindings::vfio_device,
        new_state: bindings::vfio_device_mig_state,
    ) -> *mut bindings::file {
        // SAFETY: The VFIO core calls this from the feature ioctl of an open device file.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };
        let ret = MigState::from_raw(new_state).and_then(|s| this.mig_set_state(s));
        match ret {
            Ok(None) => ptr::null_mut(),
            // The reference of the new file goes to the VFIO core, which installs it in a file
            // descriptor or puts it.
            Ok(Some(f)) => ARef::into_raw(f).as_ptr().cast(),
            Err(e) => e.to_ptr(),
        }
    }

    /// `migration_get_state`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`]; `state` must be valid for
    /// writes.
    unsafe extern "C" fn migration_get_state(
        vdev: *mut bindings::vfio_device,
        state: *mut bindings::vfio_device_mig_state,
    ) -> c_int {
        // SAFETY: The VFIO core calls this from the feature ioctl of an open device file.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };

        // SAFETY: By the safety requirements, `state` is valid for writes.
        unsafe { *state = this.mig_get_state().as_raw() };
        0
    }

    /// `migration_get_data_size`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`]; `len` must be valid for
    /// writes.
    unsafe extern "C" fn migration_get_data_size(
        vdev: *mut bindings::vfio_device,
        len: *mut c_ulong,
    ) -> c_int {
        // SAFETY: The VFIO core calls this from the feature ioctl of an open device file.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };
        match this.mig_data_size() {
            Ok(n) => {
                // SAFETY: By the safety requirements, `len` is valid for writes.
                unsafe { *len = n as c_ulong };
                0
            }
            Err(e) => e.to_errno(),
        }
    }

    /// `release`: drops the Rust fields and the `vfio-pci-core` state.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of a [`Device<T>`] whose reference count dropped to
    /// zero.
    unsafe extern "C" fn release(vdev: *mut bindings::vfio_device) {
        // CAST: `struct vfio_device` is at offset 0 of `Device<T>`.
        let this = vdev.cast::<Device<T>>();

        // SAFETY: This table is only installed once `data` is initialised, and `release` is the
        // last access to the device.
        unsafe { ptr::drop_in_place(&raw mut (*this).data) };

        // SAFETY: As above; no data file refers to the device any more (they hold references).
        unsafe { ptr::drop_in_place(&raw mut (*this).mig) };

        // SAFETY: `vdev` was initialised by `vfio_pci_core_init_dev()`.
        unsafe { bindings::vfio_pci_core_release_dev(vdev) };

        // SAFETY: `pdev` was initialised before this table was installed and is not used anymore.
        unsafe { ptr::drop_in_place(&raw mut (*this).pdev) };
    }

    /// `open_device`: enable, driver hook, finish enable.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of a registered [`Device<T>`], called by the VFIO
    /// core for the first open of the device.
    unsafe extern "C" fn open_device(vdev: *mut bindings::vfio_device) -> c_int {
        from_result(|| {
            // SAFETY: The VFIO core holds a registration reference during this call.
            let core = unsafe { Device::<T>::from_vdev(vdev) }.as_core_raw();

            // SAFETY: `core` is registered; `open_device` is serialised by the device set lock.
            to_result(unsafe { bindings::vfio_pci_core_enable(core) })?;

            // SAFETY: The device is registered, hence bound, and now enabled; the reference does
            // not outlive this callback.
            // INVARIANT: This establishes the `Open` context, which lasts until
            // `vfio_pci_core_close_device()` (or `vfio_pci_core_disable()` below).
            let this = unsafe { Device::<T, Open>::from_vdev(vdev) };

            if let Err(e) = T::open_device(this) {
                // SAFETY: `vfio_pci_core_enable()` succeeded above.
                unsafe { bindings::vfio_pci_core_disable(core) };
                return Err(e);
            }

            // SAFETY: `vfio_pci_core_enable()` succeeded above.
            unsafe { bindings::vfio_pci_core_finish_enable(core) };
            Ok(0)
        })
    }

    /// `close_device`: driver hook, then `vfio_pci_core_close_device()`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of a registered [`Device<T>`] that was opened,
    /// called by the VFIO core for the last close of the device.
    unsafe extern "C" fn close_device(vdev: *mut bindings::vfio_device) {
        // SAFETY: The device is open (enabled) until `vfio_pci_core_close_device()` below; the
        // reference is not used after that.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };
        if !Self::MIGRATION_FLAGS.is_empty() {
            this.mig_close();
        }
        this.dma_logging.store(false, Release);
        T::close_device(this);

        // SAFETY: The device was opened by `open_device`.
        unsafe { bindings::vfio_pci_core_close_device(vdev) };
    }

    /// `read`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`]; `ppos` must be NULL or
    /// valid for reads and writes for the duration of the call.
    unsafe extern "C" fn read(
        vdev: *mut bindings::vfio_device,
        buf: *mut c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: Read is only called on an open device file, i.e. between `open_device` and
        // `close_device`.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };

        // SAFETY: By the safety requirements, `ppos` is NULL or valid.
        let Some(pos) = (unsafe { ppos.as_mut() }) else {
            return EINVAL.to_errno() as isize;
        };

        match T::read(this, UserPtr::from_ptr(buf.cast()), count, pos) {
            Ok(n) => n as isize,
            Err(e) => e.to_errno() as isize,
        }
    }

    /// `write`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`]; `ppos` must be NULL or
    /// valid for reads and writes for the duration of the call.
    unsafe extern "C" fn write(
        vdev: *mut bindings::vfio_device,
        buf: *const c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: Write is only called on an open device file, i.e. between `open_device` and
        // `close_device`.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };

        // SAFETY: By the safety requirements, `ppos` is NULL or valid.
        let Some(pos) = (unsafe { ppos.as_mut() }) else {
            return EINVAL.to_errno() as isize;
        };

        match T::write(this, UserPtr::from_ptr(buf.cast_mut().cast()), count, pos) {
            Ok(n) => n as isize,
            Err(e) => e.to_errno() as isize,
        }
    }

    /// `ioctl`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`].
    unsafe extern "C" fn ioctl(
        vdev: *mut bindings::vfio_device,
        cmd: c_uint,
        arg: c_ulong,
    ) -> c_long {
        // SAFETY: Ioctls are only called on an open device file.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };

        let ret = if T::HAS_IOEVENTFD && cmd == VFIO_DEVICE_IOEVENTFD {
            T::ioeventfd(this)
        } else {
            Ok(())
        };
        let ret = ret.and_then(|()| {
            if T::HAS_IOCTL {
                T::ioctl(this, cmd, arg)
            } else {
                this.core_ioctl(cmd, arg)
            }
        });
        match ret {
            Ok(ret) => ret,
            Err(e) => e.to_errno() as c_long,
        }
    }

    /// `mmap`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`]; `vma` must be undergoing
    /// its initial setup in this `mmap()` call.
    unsafe extern "C" fn mmap(
        vdev: *mut bindings::vfio_device,
        vma: *mut bindings::vm_area_struct,
    ) -> c_int {
        // SAFETY: `mmap()` is only called on an open device file.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };

        // SAFETY: By the safety requirements, `vma` is being set up for the duration of the call.
        let new = unsafe { VmaNew::from_raw(vma) };

        let ret = if T::HAS_MMAP {
            T::mmap(this, new)
        } else {
            this.core_mmap(new)
        };
        if let Err(e) = ret {
            return e.to_errno();
        }
        // SAFETY: The mapping is being set up by this call, nothing else looks at it yet.
        let index =
            unsafe { (*vma).vm_pgoff } >> (bindings::VFIO_PCI_OFFSET_SHIFT - bindings::PAGE_SHIFT);
        if T::HAS_BAR_MMAP_WRITE && index < 6 && T::MMAP_TRACKED_BARS & (1 << index) != 0 {
            // SAFETY: As above.
            let core_ops = unsafe { (*vma).vm_ops };
            if core_ops.is_null() {
                return EINVAL.to_errno();
            }
            // Every mapping of the device gets the same table from `vfio-pci-core`.
            this.core_vm_ops.store(core_ops as usize, Release);
            // No `pfn_mkwrite` or `page_mkwrite`: the mm core leaves the mapping's protection
            // writable (`vma_set_page_prot()` after `mmap` returns).
            //
            // SAFETY: As above.
            unsafe { (*vma).vm_ops = TrackOps::<T>::VM_OPS_REF };
        }
        0
    }

    /// `device_feature`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `struct vfio_device` of an open [`Device<T>`].
    unsafe extern "C" fn device_feature(
        vdev: *mut bindings::vfio_device,
        flags: u32,
        arg: *mut c_void,
        argsz: usize,
    ) -> c_int {
        // SAFETY: `VFIO_DEVICE_FEATURE` is only called on an open device file.
        let this = unsafe { Device::<T, Open>::from_vdev(vdev) };

        match T::device_feature(this, flags, UserPtr::from_ptr(arg), argsz) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
}

/// The type the generic driver core believes the drvdata of a VFIO PCI variant device to be.
///
/// The drvdata of a bound device is the `struct vfio_pci_core_device` (see the
/// [module documentation](self#pci-driver-data)), never a `KBox` of this type, and it is `NULL`
/// whenever the driver core's `post_unbind_rust` looks at it. This zero-sized type has no drop
/// glue, so nothing would be freed even if that were not the case.
pub struct CoreDeviceDrvdata(());

/// The PCI driver adapter of VFIO PCI variant drivers.
///
/// Used through [`module_vfio_pci_driver!`](crate::module_vfio_pci_driver), see the
/// [module documentation](self#pci-driver-data).
pub struct Adapter<T: Driver>(PhantomData<T>);

// SAFETY:
// - `bindings::pci_driver` is a C type declared as `repr(C)`.
// - `DriverData` is never stored: drvdata holds the C core device while bound and is `NULL` when
//   the driver core runs `post_unbind_rust` (see `probe_callback` and `remove_callback`), and
//   `CoreDeviceDrvdata` is a zero-sized type without drop glue.
// - `DEVICE_DRIVER_OFFSET` is the offset of the `struct device_driver` embedded in
//   `struct pci_driver`.
unsafe impl<T: Driver> driver::DriverLayout for Adapter<T> {
    type DriverType = bindings::pci_driver;
    type DriverData<'bound> = CoreDeviceDrvdata;
    const DEVICE_DRIVER_OFFSET: usize = offset_of!(bindings::pci_driver, driver);
}

// SAFETY: A call to `unregister` for a given instance of `DriverType` is guaranteed to be valid if
// a preceding call to `register` has been successful.
unsafe impl<T: Driver> driver::RegistrationOps for Adapter<T> {
    unsafe fn register(
        pdrv: &Opaque<Self::DriverType>,
        name: &'static CStr,
        module: &'static ThisModule,
    ) -> Result {
        // SAFETY: It's safe to set the fields of `struct pci_driver` on initialization.
        unsafe {
            (*pdrv.get()).name = name.as_char_ptr();
            (*pdrv.get()).probe = Some(Self::probe_callback);
            (*pdrv.get()).remove = Some(Self::remove_callback);
            (*pdrv.get()).id_table = T::ID_TABLE.as_ptr();
            (*pdrv.get()).err_handler = Self::ERR_HANDLER;
            (*pdrv.get()).driver_managed_dma = true;
        }

        // SAFETY: `pdrv` is guaranteed to be a valid `DriverType`.
        to_result(unsafe {
            bindings::__pci_register_driver(pdrv.get(), module.as_ptr(), name.as_char_ptr())
        })
    }

    unsafe fn unregister(pdrv: &Opaque<Self::DriverType>) {
        // SAFETY: `pdrv` is guaranteed to be a valid, registered `DriverType`.
        unsafe { bindings::pci_unregister_driver(pdrv.get()) }
    }
}

impl<T: Driver> Adapter<T> {
    /// The error handlers used when the driver implements [`Driver::reset_done`].
    const ERR_HANDLERS: bindings::pci_error_handlers = bindings::pci_error_handlers {
        error_detected: Some(bindings::vfio_pci_core_aer_err_detected),
        reset_done: if Self::HANDLES_RESET_DONE {
            Some(Self::reset_done_callback)
        } else {
            None
        },
        ..pin_init::zeroed()
    };

    /// A `'static` reference to [`Self::ERR_HANDLERS`].
    const ERR_HANDLERS_REF: &'static bindings::pci_error_handlers = &Self::ERR_HANDLERS;

    /// `vfio-pci-core`'s error handlers.
    #[allow(unused_unsafe, reason = "Safe since Rust 1.82.0")]
    const CORE_ERR_HANDLERS: *const bindings::pci_error_handlers =
        // SAFETY: Only the address of the exported static is taken.
        unsafe { &raw const bindings::vfio_pci_core_err_handlers };

    /// `pci_driver::err_handler`.
    /// Whether the adapter needs `reset_done`: for the driver's hook, or for migration (a reset
    /// returns the device to RUNNING and disables the data files).
    const HANDLES_RESET_DONE: bool =
        T::HAS_RESET_DONE || !<T::Migration as MigrationOps<T>>::FLAGS.is_empty();

    const ERR_HANDLER: *const bindings::pci_error_handlers = if Self::HANDLES_RESET_DONE {
        ptr::from_ref(Self::ERR_HANDLERS_REF)
    } else {
        Self::CORE_ERR_HANDLERS
    };

    extern "C" fn probe_callback(
        pdev: *mut bindings::pci_dev,
        id: *const bindings::pci_device_id,
    ) -> c_int {
        // SAFETY: The PCI bus only ever calls the probe callback with a valid pointer to a
        // `struct pci_dev`.
        //
        // INVARIANT: `pdev` is valid for the duration of `probe_callback()`.
        let pdev = unsafe { &*pdev.cast::<pci::Device<device::CoreInternal<'_>>>() };

        // SAFETY: `DeviceId` is a `#[repr(transparent)]` wrapper of `struct pci_device_id` and
        // does not add additional invariants, so it's safe to transmute.
        let id = unsafe { &*id.cast::<pci::DeviceId>() };

        // SAFETY: `id` comes from `T::ID_TABLE` which is of type `IdArray<_, T::IdInfo>` or
        // `pci_device_id_any` which has 0 as driver_data. It can also come from dynamic IDs, which
        // will ensure that `driver_data` exists in `T::ID_TABLE`.
        let info = unsafe { id.info_unchecked_opt::<T::IdInfo>() };

        from_result(|| {
            let this = Device::<T>::new(pdev, T::probe(pdev, info))?;
            let dev = pdev.as_ref().as_raw();
            let core = this.as_core_raw();

            // `vfio-pci-core` requires drvdata to be the core device, see the module
            // documentation.
            //
            // SAFETY: `dev` is valid; the drvdata of a device being probed belongs to its driver.
            unsafe { bindings::dev_set_drvdata(dev, core.cast()) };

            // SAFETY: `core` is an initialised, unregistered device whose `pdev` is `pdev`, and
            // drvdata points to it.
            if let Err(e) = to_result(unsafe { bindings::vfio_pci_core_register_device(core) }) {
                // SAFETY: As above; `post_unbind_rust` must find `NULL`.
                unsafe { bindings::dev_set_drvdata(dev, ptr::null_mut()) };
                return Err(e);
            }

            // INVARIANT: Drvdata now owns this reference; `remove_callback` takes it back.
            let _ = ARef::into_raw(this);
            Ok(0)
        })
    }

    extern "C" fn remove_callback(pdev: *mut bindings::pci_dev) {
        // SAFETY: The PCI bus only ever calls the remove callback with a valid pointer to a
        // `struct pci_dev`.
        //
        // INVARIANT: `pdev` is valid for the duration of `remove_callback()`.
        let pdev = unsafe { &*pdev.cast::<pci::Device<device::CoreInternal<'_>>>() };
        let dev = pdev.as_ref().as_raw();

        // SAFETY: `dev` is valid.
        let core = unsafe { bindings::dev_get_drvdata(dev) };
        let Some(core) = NonNull::new(core.cast::<bindings::vfio_pci_core_device>()) else {
            return;
        };

        // SAFETY: `remove_callback` is only called after a successful `probe_callback`, which left
        // the reference count of an `ARef<Device<T>>` in drvdata; the core device is at offset 0
        // of `Device<T>`.
        let this: ARef<Device<T>> = unsafe { ARef::from_raw(core.cast()) };

        // SAFETY: The device was registered by `probe_callback`. This waits until all file
        // descriptors of the device are closed.
        unsafe { bindings::vfio_pci_core_unregister_device(core.as_ptr()) };

        T::unbind(pdev, &this);

        // SAFETY: `dev` is valid. No `vfio-pci-core` path reads drvdata after the device was
        // unregistered, and `post_unbind_rust` must find `NULL`.
        unsafe { bindings::dev_set_drvdata(dev, ptr::null_mut()) };

        drop(this);
    }

    extern "C" fn reset_done_callback(pdev: *mut bindings::pci_dev) {
        // SAFETY: The PCI core calls `reset_done` with a valid `struct pci_dev`.
        let dev = unsafe { &raw mut (*pdev).dev };

        // SAFETY: `dev` is valid.
        let core = unsafe { bindings::dev_get_drvdata(dev) };
        if core.is_null() {
            return;
        }

        // SAFETY: A non-NULL drvdata of a device bound to this driver is the core device of a
        // `Device<T>` whose reference drvdata owns. The PCI core calls `reset_done` with the device
        // lock held, which excludes `probe_callback` and `remove_callback`, so it stays alive for
        // this call.
        let this = unsafe { Device::<T>::from_vdev(core.cast()) };

        if !<T::Migration as MigrationOps<T>>::FLAGS.is_empty() {
            this.mig_reset_done();
        }
        if T::HAS_RESET_DONE {
            T::reset_done(this);
        }
    }
}

/// Declares a kernel module that exposes a single VFIO PCI variant driver.
///
/// The driver's PCI name and its VFIO device name are the module name.
///
/// # Examples
///
/// ```ignore
/// kernel::module_vfio_pci_driver! {
///     type: MyDriver,
///     name: "my-vfio-pci",
///     authors: ["Author name"],
///     description: "Description",
///     license: "GPL",
/// }
/// ```
#[macro_export]
macro_rules! module_vfio_pci_driver {
    ($($f:tt)*) => {
        $crate::module_driver!(<T>, $crate::vfio::pci::Adapter<T>, { $($f)* });
    };
}
