// SPDX-License-Identifier: GPL-2.0

//! VFIO (Virtual Function I/O) device drivers.
//!
//! C header: [`include/linux/vfio.h`](srctree/include/linux/vfio.h)
//!
//! This module holds the parts of the VFIO abstractions that do not depend on the bus; the PCI
//! variant driver support lives in the `pci` submodule (with `CONFIG_VFIO_PCI_CORE`).
//!
//! # Linking
//!
//! `CONFIG_VFIO` and `CONFIG_VFIO_PCI_CORE` are tristate, while the `kernel` crate is always
//! built into `vmlinux`. Therefore every function in these modules that calls into, or takes the
//! address of, a `vfio_*` or `vfio_pci_core_*` symbol is generic over the driver type and only
//! instantiated (monomorphised) inside the driver module, which is linked against `vfio.ko` and
//! `vfio-pci-core.ko`. Non-generic items, such as [`MigrationFlags`], only use compile-time
//! constants from the UAPI header.

use crate::{
    bindings,
    fmt, //
};

pub mod dirty;
pub mod migration;
#[cfg(CONFIG_VFIO_PCI_CORE)]
pub mod pci;

/// Migration capabilities of a VFIO device.
///
/// Corresponds to the `VFIO_MIGRATION_*` flags of `struct vfio_device_feature_migration` and to
/// `struct vfio_device::migration_flags`. A device without migration support reports
/// [`MigrationFlags::empty`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MigrationFlags(u32);

impl MigrationFlags {
    /// `VFIO_MIGRATION_STOP_COPY`: the device supports the STOP, STOP_COPY and RESUMING states.
    pub const STOP_COPY: Self = Self(bindings::VFIO_MIGRATION_STOP_COPY);

    /// `VFIO_MIGRATION_P2P`: the device supports the RUNNING_P2P state.
    pub const P2P: Self = Self(bindings::VFIO_MIGRATION_P2P);

    /// `VFIO_MIGRATION_PRE_COPY`: the device supports the PRE_COPY (and PRE_COPY_P2P) states.
    pub const PRE_COPY: Self = Self(bindings::VFIO_MIGRATION_PRE_COPY);

    /// Returns the empty set: the device does not support migration.
    #[inline]
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Returns the raw `VFIO_MIGRATION_*` bits.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Returns `true` if no flag is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Returns `true` if all flags of `other` are set in `self`.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Returns the union of `self` and `other`.
    #[inline]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl core::ops::BitOr for MigrationFlags {
    type Output = Self;

    #[inline]
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Display for MigrationFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }

        let mut sep = "";
        for (flag, name) in [
            (Self::STOP_COPY, "stop-copy"),
            (Self::P2P, "p2p"),
            (Self::PRE_COPY, "pre-copy"),
        ] {
            if self.contains(flag) {
                f.write_str(sep)?;
                f.write_str(name)?;
                sep = "+";
            }
        }

        Ok(())
    }
}
