// SPDX-License-Identifier: GPL-2.0

//! VFIO PCI variant driver for QEMU's `ivshmem-plain` device.
//!
//! QEMU's inter-VM shared memory device (PCI ID `1af4:1110`) comes in two forms:
//!
//! - `ivshmem-plain`: BAR0 holds 256 bytes of registers, BAR2 maps the shared memory backend;
//! - `ivshmem-doorbell`: the same, plus an MSI-X BAR1 and interrupts between peers.
//!
//! This driver binds to `ivshmem-plain` only, and only through `driver_override`, like every VFIO
//! PCI variant driver:
//!
//! ```text
//! echo ivshmem-vfio-pci > /sys/bus/pci/devices/0000:01:00.0/driver_override
//! echo 0000:01:00.0 > /sys/bus/pci/drivers_probe
//! ```
//!
//! It behaves like `vfio-pci` and adds live migration (VFIO migration v2 with STOP_COPY, P2P and
//! PRE_COPY) of the device state: all of BAR2 (the shared memory) and the BAR0 registers that
//! hold state (`INTRMASK`, `INTRSTATUS`). The stream format is documented in
//! `Documentation/driver-api/vfio-rust-migration-stream.rst`; the framing, the data files and
//! the state machine are `kernel::vfio`'s, this driver only produces and consumes its records:
//!
//! - `MEM` (0x100): a little-endian 64-bit offset into BAR2, then up to 1 MiB of its bytes;
//! - `REGS` (0x101): `INTRMASK`, `INTRSTATUS` (little-endian 32-bit each).
//!
//! While a saving session is open, every user write to BAR2 is tracked per 4 KiB unit: through
//! `mmap()` (during a session a page sent is unmapped, and its next access, read or write,
//! faults, maps it writable and marks all the units of the CPU page; outside a session the
//! mappings are vfio-pci-core's, huge pages included) and through the region `write()` path; a
//! page that goes from sent to written wakes the saving file's pollers. PRE_COPY streams the initial
//! image of BAR2 in 1 MiB records, then the pages written since they were sent, one page per
//! record; STOP_COPY streams what is left, then `REGS`. `dirty_bytes` is exact: the marked pages
//! times the size of their records. `VFIO_DEVICE_IOEVENTFD` is refused with `EOPNOTSUPP`: the
//! kernel would write for an ioeventfd on BAR2 behind the tracking's back, and the BAR of a
//! request cannot be checked without racing the VFIO core's own copy of it (QEMU then handles
//! such accesses itself; it sets none on ivshmem). With `track_writes=0`, STOP_COPY streams all
//! of BAR2 again.
//!
//! ivshmem-plain does no DMA and has no peer-to-peer activity, so the P2P and STOP arcs have
//! nothing to quiesce. The state is frozen once the user stops writing (the VMM stops its
//! vCPUs) only under two conditions this driver cannot enforce, which a VMM must meet:
//!
//! - no other writer shares the memory backend (ivshmem peers, another process mapping the same
//!   file): their writes neither stop nor are tracked;
//! - no device writes into BAR2 by peer-to-peer DMA through the IOMMU mapping of the BAR that
//!   QEMU creates: such writes bypass the CPU mappings and are not tracked.
//!
//! The state is saved and restored whatever the user set in the command register (QEMU
//! restores config space after the device data), see `kernel::vfio::pci`'s migration docs.

use kernel::{
    device::Core,
    io::ResourceSize,
    pci,
    prelude::*,
    sizes::SizeConstants,
    sync::Arc,
    uaccess::UserPtr,
    vfio::{
        self,
        dirty::{
            DirtyPages,
            PAGE, //
        },
        migration::{
            record_size,
            Record,
            SavePhase,
            DIRECT_PREFIX,
            MAX_RECORD_DATA,
            RECORD_DRIVER_BASE, //
        },
        pci::{
            region_index,
            region_offset,
            BarRecord,
            Device,
            MigrationOps,
            Open,
            Pending,
            RecordSink, //
        },
    }, //
};

/// PCI device ID of QEMU's inter-VM shared memory device (both forms).
const IVSHMEM_DEVICE_ID: u32 = 0x1110;

/// The BAR of the MSI-X table of `ivshmem-doorbell`; `ivshmem-plain` does not implement it.
const MSIX_BAR: u32 = 1;

/// The BAR that maps the shared memory.
const SHMEM_BAR: u32 = 2;

/// The BAR of the registers.
const REGS_BAR: u32 = 0;

/// BAR0 interrupt mask register (read/write).
const INTRMASK: usize = 0;

/// BAR0 interrupt status register (reading it clears it; writing sets it).
const INTRSTATUS: usize = 4;

/// The migration capabilities of the device.
const MIGRATION: vfio::MigrationFlags = vfio::MigrationFlags::STOP_COPY
    .union(vfio::MigrationFlags::P2P)
    .union(vfio::MigrationFlags::PRE_COPY);

/// Record type: a chunk of BAR2.
const REC_MEM: u32 = RECORD_DRIVER_BASE;

/// Record type: the BAR0 registers.
const REC_REGS: u32 = RECORD_DRIVER_BASE + 1;

/// Size of the offset that starts a `MEM` record.
const MEM_PREFIX: usize = DIRECT_PREFIX;

/// Payload size of the `REGS` record.
const REGS_LEN: usize = 8;

/// The driver.
struct IvshmemVfioPci;

/// Per-device data, stored in the VFIO device.
struct IvshmemDevice {
    /// Size of the shared memory (BAR2) in bytes.
    shmem_size: ResourceSize,
    /// The pages of BAR2 the open saving session still has to send.
    dirty: Arc<DirtyPages>,
}

/// Splits a non-zero size in bytes into a value and the largest binary unit that divides it.
fn size_with_unit(bytes: ResourceSize) -> (ResourceSize, &'static str) {
    if bytes % ResourceSize::SZ_1G == 0 {
        (bytes / ResourceSize::SZ_1G, "GiB")
    } else if bytes % ResourceSize::SZ_1M == 0 {
        (bytes / ResourceSize::SZ_1M, "MiB")
    } else if bytes % ResourceSize::SZ_1K == 0 {
        (bytes / ResourceSize::SZ_1K, "KiB")
    } else {
        (bytes, "bytes")
    }
}

kernel::pci_device_table!(
    PCI_TABLE,
    <IvshmemVfioPci as vfio::pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id_vfio_override(pci::Vendor::REDHAT_QUMRANET, IVSHMEM_DEVICE_ID),
        ()
    )]
);

/// A saving session: how far BAR2 has been streamed.
struct Save {
    /// Next offset of the initial image.
    pre: u64,
    /// How much of the initial image was sent while the device ran.
    pre_running: u64,
    /// Without tracking: next offset of the STOP_COPY resend of what was sent while running.
    stop: u64,
    /// Where the search for written pages goes on.
    scan: usize,
    /// Whether `REGS` was sent.
    regs: bool,
    /// Whether writes are tracked in this session.
    tracking: bool,
    dirty: Arc<DirtyPages>,
}

impl Drop for Save {
    fn drop(&mut self) {
        if self.tracking {
            self.dirty.set_active(false);
        }
    }
}

/// Size of the `MEM` record of one page.
const PAGE_RECORD: u64 = record_size(MEM_PREFIX + PAGE as usize) as u64;

/// The most page records one `save_next` produces.
const PAGES_PER_CALL: usize = 256;

/// A resuming session: the registers, applied when the stream is complete.
struct Resume {
    regs: Option<[u8; REGS_LEN]>,
}

/// Returns the stream size of the `MEM` records that carry `bytes` of BAR2.
fn mem_records_size(bytes: u64) -> u64 {
    let chunk = MAX_RECORD_DATA as u64;
    let records = bytes.div_ceil(chunk);
    bytes + records * record_size(MEM_PREFIX) as u64
}

/// Appends the `MEM` record of `len` bytes of BAR2 at `off`.
///
/// The bytes are copied later, when the data file is read. With tracking, the pages are unmarked
/// and unmapped from the user's mappings first, so that a write that lands after this
/// marks them again and a write the copy may have missed is sent again. If the record cannot be
/// queued, the pages are marked again: they are still to be sent.
fn push_mem(
    dev: &Device<IvshmemVfioPci, Open>,
    save: &Save,
    off: u64,
    len: usize,
    out: &mut RecordSink<'_>,
) -> Result {
    let push = |out: &mut RecordSink<'_>| {
        out.push_bar(REC_MEM, &dev.bar(SHMEM_BAR)?, usize::try_from(off)?, len)
    };
    if !save.tracking {
        return push(out);
    }
    save.dirty
        .take(usize::try_from(off / PAGE)?, len.div_ceil(PAGE as usize));
    let ret = dev
        .zap_bar(SHMEM_BAR, off, len as u64)
        .and_then(|()| push(out));
    if ret.is_err() {
        save.dirty.mark(off, len as u64);
    }
    ret
}

/// Appends one page record for each of the `n` written pages from `first` on, which are marked.
///
/// The run is unmarked and unmapped once (one TLB shootdown, not one per page); the pages whose
/// record cannot be queued are marked again.
fn push_pages(
    dev: &Device<IvshmemVfioPci, Open>,
    save: &Save,
    first: usize,
    n: usize,
    out: &mut RecordSink<'_>,
) -> Result {
    let off = u64::try_from(first)? * PAGE;
    let len = u64::try_from(n)? * PAGE;
    save.dirty.take(first, n);
    let mut queued = 0;
    let ret = dev.zap_bar(SHMEM_BAR, off, len).and_then(|()| {
        let bar = dev.bar(SHMEM_BAR)?;
        while queued < len {
            out.push_bar(REC_MEM, &bar, usize::try_from(off + queued)?, PAGE as usize)?;
            queued += PAGE;
        }
        Ok(())
    });
    if ret.is_err() {
        save.dirty.mark(off + queued, len - queued);
    }
    ret
}

/// Appends records of pages written since they were sent; returns `false` if there were none.
fn push_dirty(
    dev: &Device<IvshmemVfioPci, Open>,
    save: &mut Save,
    out: &mut RecordSink<'_>,
) -> Result<bool> {
    let mut produced = 0;
    while produced < PAGES_PER_CALL {
        let Some(page) = save
            .dirty
            .next_marked(save.scan)
            .or_else(|| save.dirty.next_marked(0))
        else {
            break;
        };
        // The run of marked pages from `page` on, within this call's budget.
        let mut n = 1;
        while produced + n < PAGES_PER_CALL && save.dirty.next_marked(page + n) == Some(page + n) {
            n += 1;
        }
        push_pages(dev, save, page, n, out)?;
        save.scan = page + n;
        produced += n;
    }
    Ok(produced > 0)
}

impl MigrationOps<IvshmemVfioPci> for IvshmemVfioPci {
    const FLAGS: vfio::MigrationFlags = MIGRATION;
    type Save = Save;
    type Resume = Resume;

    // BAR2 bytes are copied once, between BAR2 and the user's buffer of the data file.
    const BAR_RECORDS: &'static [BarRecord] = &[BarRecord {
        ty: REC_MEM,
        bar: SHMEM_BAR,
    }];

    fn identity(dev: &Device<Self, Open>, id: &mut KVec<u8>) -> Result {
        let pdev = dev.pci_dev();
        let vendor = pdev.vendor_id().as_raw();
        for v in [
            vendor,
            pdev.device_id(),
            pdev.subsystem_vendor_id(),
            pdev.subsystem_device_id(),
        ] {
            id.extend_from_slice(&v.to_le_bytes(), GFP_KERNEL)?;
        }
        id.extend_from_slice(&dev.data().shmem_size.to_le_bytes(), GFP_KERNEL)?;
        Ok(())
    }

    fn save_begin(dev: &Device<Self, Open>, _precopy: bool) -> Result<Save> {
        let size = dev.data().shmem_size;
        let dirty = dev.data().dirty.clone();
        let tracking = module_parameters::track_writes.value();
        if tracking {
            // Every page starts out to be sent (the initial image); mappings made before
            // (huge ones included) are unmapped, so that every access faults through the
            // tracking.
            dirty.set_active(true);
            dirty.mark(0, size);
            dev.zap_bar(SHMEM_BAR, 0, size)?;
        }
        Ok(Save {
            pre: 0,
            pre_running: 0,
            stop: 0,
            scan: 0,
            regs: false,
            tracking,
            dirty,
        })
    }

    fn save_next(
        dev: &Device<Self, Open>,
        save: &mut Save,
        phase: SavePhase,
        out: &mut RecordSink<'_>,
    ) -> Result<bool> {
        let size = dev.data().shmem_size;
        if save.pre < size {
            // The initial image.
            let len = usize::try_from(size - save.pre)?.min(MAX_RECORD_DATA);
            push_mem(dev, save, save.pre, len, out)?;
            save.pre += len as u64;
            if phase == SavePhase::PreCopy {
                save.pre_running = save.pre;
            }
            return Ok(true);
        }
        if save.tracking && push_dirty(dev, save, out)? {
            return Ok(true);
        }
        match phase {
            SavePhase::PreCopy => return Ok(false),
            SavePhase::StopCopy if !save.tracking && save.stop < save.pre_running => {
                // Untracked: what was sent while the device ran may have changed since.
                let len = usize::try_from(save.pre_running - save.stop)?.min(MAX_RECORD_DATA);
                push_mem(dev, save, save.stop, len, out)?;
                save.stop += len as u64;
            }
            SavePhase::StopCopy if !save.regs => {
                let regs = dev.bar(REGS_BAR)?;
                let mask = regs.read32(INTRMASK)?;
                // Reading INTRSTATUS clears it: put it back, the device keeps running as it was.
                let status = regs.read32(INTRSTATUS)?;
                regs.write32(INTRSTATUS, status)?;
                out.push(REC_REGS, false, REGS_LEN, |p| {
                    p[..4].copy_from_slice(&mask.to_le_bytes());
                    p[4..].copy_from_slice(&status.to_le_bytes());
                    Ok(())
                })?;
                save.regs = true;
            }
            SavePhase::StopCopy => return Ok(false),
        }
        Ok(true)
    }

    fn save_pending(dev: &Device<Self, Open>, save: &Save) -> Pending {
        let size = dev.data().shmem_size;
        let unsent = size.saturating_sub(save.pre);
        // Marked pages are the initial image not sent yet plus the pages written since they
        // were sent; each of the latter goes out as one page record.
        let dirty = if save.tracking {
            save.dirty.count().saturating_sub(unsent / PAGE) * PAGE_RECORD
        } else {
            0
        };
        Pending {
            initial: mem_records_size(unsent),
            dirty,
        }
    }

    fn stop_copy_size(dev: &Device<Self, Open>, save: Option<&Save>) -> Result<u64> {
        let regs = record_size(REGS_LEN) as u64;
        let Some(save) = save else {
            return Ok(mem_records_size(dev.data().shmem_size) + regs);
        };
        let p = Self::save_pending(dev, save);
        // Without tracking, STOP_COPY sends again what was sent while the device ran.
        let resend = if save.tracking {
            0
        } else {
            mem_records_size(save.pre_running.saturating_sub(save.stop))
        };
        Ok(p.initial + p.dirty + resend + if save.regs { 0 } else { regs })
    }

    fn resume_begin(_dev: &Device<Self, Open>) -> Result<Resume> {
        Ok(Resume { regs: None })
    }

    fn resume_record(
        _dev: &Device<Self, Open>,
        resume: &mut Resume,
        record: &Record<'_>,
    ) -> Result<bool> {
        let p = record.payload;
        // `MEM` records go straight into BAR2 (`BAR_RECORDS`).
        match record.ty {
            REC_REGS => {
                let regs: [u8; REGS_LEN] = p.try_into().map_err(|_| EINVAL)?;
                resume.regs = Some(regs);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn resume_finish(dev: &Device<Self, Open>, resume: Resume) -> Result {
        let regs = resume.regs.ok_or(EINVAL)?;
        let bar = dev.bar(REGS_BAR)?;
        let mut v = [0u8; 4];
        v.copy_from_slice(&regs[..4]);
        bar.write32(INTRMASK, u32::from_le_bytes(v))?;
        v.copy_from_slice(&regs[4..]);
        bar.write32(INTRSTATUS, u32::from_le_bytes(v))?;
        Ok(())
    }
}

#[vtable]
impl vfio::pci::Driver for IvshmemVfioPci {
    type IdInfo = ();
    type Data = IvshmemDevice;
    type Migration = Self;

    // ivshmem-plain is not a bus master.
    const NO_DMA: bool = true;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _id_info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data, Error> + 'bound {
        if pdev.resource_len(MSIX_BAR)? != 0 {
            dev_info!(
                pdev,
                "ivshmem-doorbell (MSI-X BAR{}) is not supported, only ivshmem-plain\n",
                MSIX_BAR
            );
            return Err(ENODEV);
        }

        let shmem_size = pdev.resource_len(SHMEM_BAR)?;
        if shmem_size == 0 {
            dev_err!(pdev, "no shared memory in BAR{}\n", SHMEM_BAR);
            return Err(ENODEV);
        }

        let (size, unit) = size_with_unit(shmem_size);
        dev_info!(
            pdev,
            "{} {} shared memory, migration: {}\n",
            size,
            unit,
            MIGRATION
        );

        Ok(IvshmemDevice {
            shmem_size,
            dirty: Arc::new(DirtyPages::new(shmem_size)?, GFP_KERNEL)?,
        })
    }

    fn write(dev: &Device<Self, Open>, buf: UserPtr, count: usize, pos: &mut i64) -> Result<usize> {
        let start = *pos;
        let n = dev.core_write(buf, count, pos)?;
        // Marked after the write landed: a page sent in between is simply sent again.
        if region_index(start) == SHMEM_BAR && dev.data().dirty.mark(region_offset(start), n as u64)
        {
            dev.migration_data_ready();
        }
        Ok(n)
    }

    fn ioeventfd(_dev: &Device<Self, Open>) -> Result {
        // The kernel's writes for an ioeventfd on BAR2 would bypass the write tracking; which BAR
        // a request targets cannot be checked without a race, so all are refused.
        if module_parameters::track_writes.value() {
            return Err(EOPNOTSUPP);
        }
        Ok(())
    }

    // Only BAR2 holds state that user writes change; BAR0's mappings stay vfio-pci-core's.
    const MMAP_TRACKED_BARS: u8 = 1 << SHMEM_BAR;

    fn bar_tracked(dev: &Device<Self>, bar: u32) -> bool {
        bar == SHMEM_BAR && dev.data().dirty.is_active()
    }

    fn bar_mmap_write(dev: &Device<Self>, bar: u32, offset: u64, len: u64) {
        // `len` is the CPU's page, which may hold several tracking units: all are marked.
        if bar == SHMEM_BAR && dev.data().dirty.mark(offset, len) {
            // A page went from sent to written: PRE_COPY has data again.
            dev.migration_data_ready();
        }
    }

    fn open_device(dev: &vfio::pci::Device<Self, vfio::pci::Open>) -> Result {
        dev_dbg!(
            dev,
            "opened, {} bytes of shared memory\n",
            dev.data().shmem_size
        );
        Ok(())
    }
}

kernel::module_vfio_pci_driver! {
    type: IvshmemVfioPci,
    name: "ivshmem-vfio-pci",
    authors: ["VFIO migration overlay"],
    description: "VFIO PCI variant driver for QEMU ivshmem-plain",
    license: "GPL",
    params: {
        track_writes: bool {
            default: true,
            description: "Track writes to the shared memory during migration (default: on)",
        },
    },
}
