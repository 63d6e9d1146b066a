//! The host side: reading and writing the provisioning file on a boot
//! partition that is not mounted — inside a `.wic` disk image, on a whole
//! card (`/dev/sdX`, `/dev/mmcblk0`), or on a FAT partition or FAT image
//! alone. No mount, so no root: a user who can write the image file or the
//! card's device node can provision it, on any OS the CLI runs on.
//!
//! The boot partition is the first partition holding a FAT file system:
//! found from the MBR (the layer's U-Boot and Raspberry Pi images) or the
//! GPT (the x86-64 EFI images). The FAT code is the `fatfs` crate working on
//! that partition's byte range only.
//!
//! Writes go to `containeros/config.new` first, which then replaces
//! `config.toml` (remove, rename): a card pulled out mid-write leaves the
//! old file, or the new one whole under `config.new` (and the device
//! refuses a half-written `config.toml` anyway).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

const SECTOR: u64 = 512;

/// Where the FAT file system is inside `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number; 0 when the whole file is the file system.
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

/// Finds the boot partition (see the module docs).
pub fn find_boot_partition(file: &mut File) -> io::Result<Partition> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut first = [0u8; 512];
    read_at(file, 0, &mut first)?;
    if looks_like_fat(&first) {
        return Ok(Partition {
            number: 0,
            start: 0,
            len,
        });
    }
    if first[510..512] != [0x55, 0xaa] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "neither a partition table nor a FAT file system at its start (is this a ContainerOS image or card?)",
        ));
    }
    let mut candidates = Vec::new();
    let entries: Vec<&[u8]> = (0..4).map(|i| &first[446 + i * 16..446 + (i + 1) * 16]).collect();
    if entries.iter().any(|e| e[4] == 0xee) {
        let mut header = [0u8; 92];
        read_at(file, SECTOR, &mut header)?;
        if &header[..8] != b"EFI PART" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "protective MBR without a GPT header at sector 1",
            ));
        }
        let table = u64_le(&header[72..80]);
        let count = u32_le(&header[80..84]).min(256);
        let size = u64::from(u32_le(&header[84..88]));
        if size < 128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "GPT entries smaller than 128 bytes",
            ));
        }
        for i in 0..count {
            let mut entry = [0u8; 128];
            read_at(file, table * SECTOR + u64::from(i) * size, &mut entry)?;
            if entry[..16].iter().all(|b| *b == 0) {
                continue;
            }
            let (first_lba, last_lba) = (u64_le(&entry[32..40]), u64_le(&entry[40..48]));
            if last_lba >= first_lba {
                candidates.push(Partition {
                    number: i + 1,
                    start: first_lba * SECTOR,
                    len: (last_lba - first_lba + 1) * SECTOR,
                });
            }
        }
    } else {
        for (i, e) in entries.iter().enumerate() {
            let (start, sectors) = (u64::from(u32_le(&e[8..12])), u64::from(u32_le(&e[12..16])));
            if e[4] != 0 && sectors > 0 {
                candidates.push(Partition {
                    number: u32::try_from(i).unwrap_or(0) + 1,
                    start: start * SECTOR,
                    len: sectors * SECTOR,
                });
            }
        }
    }
    for p in candidates {
        if p.start + p.len > len {
            continue;
        }
        let mut boot = [0u8; 512];
        read_at(file, p.start, &mut boot)?;
        if looks_like_fat(&boot) {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no partition with a FAT file system (the boot partition) in its partition table",
    ))
}

fn looks_like_fat(sector: &[u8; 512]) -> bool {
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    sector[510..512] == [0x55, 0xaa]
        && matches!(sector[0], 0xeb | 0xe9)
        && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sector[13] != 0
        && (&sector[54..57] == b"FAT" || &sector[82..85] == b"FAT")
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn u64_le(b: &[u8]) -> u64 {
    u64::from(u32_le(&b[..4])) | (u64::from(u32_le(&b[4..8])) << 32)
}

/// A byte range of a file, as the FAT code's disk.
#[derive(Debug)]
struct Slice {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Slice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the partition's end",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Slice {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match pos {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// File times from this computer's clock, in UTC (FAT has no time zone).
#[derive(Debug)]
struct Clock;

impl fatfs::TimeProvider for Clock {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // "YYYY-MM-DDTHH:MM:SSZ"; FAT dates start in 1980.
        let text = crate::rfc3339(secs.max(315_532_800));
        let n = |r: std::ops::Range<usize>| text.get(r).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        fatfs::DateTime {
            date: fatfs::Date {
                year: n(0..4),
                month: n(5..7),
                day: n(8..10),
            },
            time: fatfs::Time {
                hour: n(11..13),
                min: n(14..16),
                sec: n(17..19),
                millis: 0,
            },
        }
    }
}

fn open_fs(path: &Path, write: bool) -> io::Result<(fatfs::FileSystem<Slice>, Partition)> {
    let mut file = std::fs::OpenOptions::new().read(true).write(write).open(path)?;
    let partition = find_boot_partition(&mut file)?;
    let slice = Slice {
        file,
        start: partition.start,
        len: partition.len,
        pos: 0,
    };
    let options = fatfs::FsOptions::new()
        .update_accessed_date(false)
        .time_provider(&Clock);
    let fs = fatfs::FileSystem::new(slice, options)?;
    Ok((fs, partition))
}

/// The provisioning file's text in the image at `path`, `None` when the
/// boot partition has none.
pub fn read(path: &Path) -> io::Result<Option<String>> {
    let (fs, _) = open_fs(path, false)?;
    let mut file = match fs.root_dir().open_file(crate::BOOT_FILE) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Writes `text` as the provisioning file in the image at `path`; returns
/// the partition written.
pub fn write(path: &Path, text: &str) -> io::Result<Partition> {
    let (dir_name, file_name) = crate::BOOT_FILE.split_once('/').unwrap_or(("", crate::BOOT_FILE));
    let (fs, partition) = open_fs(path, true)?;
    let missing = match fs.root_dir().open_dir(dir_name) {
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(e),
    };
    let fs = if missing {
        fs.root_dir().create_dir(dir_name)?;
        fs.unmount()?;
        repair_dot_entries(path, partition)?;
        open_fs(path, true)?.0
    } else {
        fs
    };
    {
        let dir = fs.root_dir().open_dir(dir_name)?;
        const NEW: &str = "config.new";
        match dir.remove(NEW) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        {
            let mut file = dir.create_file(NEW)?;
            file.truncate()?;
            file.write_all(text.as_bytes())?;
            file.flush()?;
        }
        match dir.remove(file_name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        dir.rename(NEW, &dir, file_name)?;
    }
    fs.unmount()?;
    Ok(partition)
}

/// fatfs 0.3 writes a long-name entry before a new directory's `.` and `..`
/// entries, which must be the directory's first two slots (fsck.fat and
/// other systems reject it otherwise). Right after `create_dir` the new
/// directory holds exactly [LFN, `.`, LFN, `..`]: they are rewritten as
/// [`.`, `..`] here, on the raw partition.
fn repair_dot_entries(path: &Path, partition: Partition) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let base = partition.start;
    let mut bpb = [0u8; 512];
    read_at(&mut file, base, &mut bpb)?;
    let bps = u64::from(u16::from_le_bytes([bpb[11], bpb[12]]));
    let spc = u64::from(bpb[13]);
    let reserved = u64::from(u16::from_le_bytes([bpb[14], bpb[15]]));
    let fats = u64::from(bpb[16]);
    let root_entries = u64::from(u16::from_le_bytes([bpb[17], bpb[18]]));
    let fat16_size = u64::from(u16::from_le_bytes([bpb[22], bpb[23]]));
    let fat_size = if fat16_size != 0 {
        fat16_size
    } else {
        u64::from(u32_le(&bpb[36..40]))
    };
    let fat32 = fat16_size == 0;
    let root_sectors = (root_entries * 32).div_ceil(bps.max(1));
    let data = base + (reserved + fats * fat_size + root_sectors) * bps;
    let cluster_bytes = spc * bps;
    let cluster_at = |c: u64| data + c.saturating_sub(2) * cluster_bytes;

    // The root directory's byte ranges: fixed (FAT12/16) or a chain (FAT32).
    let mut ranges = Vec::new();
    if fat32 {
        let mut cluster = u64::from(u32_le(&bpb[44..48]));
        for _ in 0..64 {
            if !(2..0x0fff_fff8).contains(&cluster) {
                break;
            }
            ranges.push((cluster_at(cluster), cluster_bytes));
            let mut next = [0u8; 4];
            read_at(&mut file, base + reserved * bps + cluster * 4, &mut next)?;
            cluster = u64::from(u32_le(&next) & 0x0fff_ffff);
        }
    } else {
        ranges.push((base + (reserved + fats * fat_size) * bps, root_entries * 32));
    }
    for (start, len) in ranges {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_at(&mut file, start, &mut buf)?;
        for entry in buf.chunks_exact(32) {
            if entry[0] == 0 {
                break;
            }
            if entry[0] == 0xe5 || entry[11] == 0x0f || entry[11] & 0x10 == 0 {
                continue;
            }
            let cluster = (u64::from(u16::from_le_bytes([entry[20], entry[21]])) << 16)
                | u64::from(u16::from_le_bytes([entry[26], entry[27]]));
            let mut slots = [0u8; 128];
            read_at(&mut file, cluster_at(cluster), &mut slots)?;
            let broken = slots[11] == 0x0f
                && &slots[32..43] == b".          "
                && slots[64 + 11] == 0x0f
                && &slots[96..107] == b"..         ";
            if broken {
                let mut fixed = [0u8; 128];
                fixed[..32].copy_from_slice(&slots[32..64]);
                fixed[32..64].copy_from_slice(&slots[96..128]);
                // `..` of a directory in the root names cluster 0, also on
                // FAT32 (fatfs writes the root's own cluster there).
                for b in [52, 53, 58, 59] {
                    fixed[b] = 0;
                }
                file.seek(SeekFrom::Start(cluster_at(cluster)))?;
                file.write_all(&fixed)?;
            }
        }
    }
    file.sync_all()
}
