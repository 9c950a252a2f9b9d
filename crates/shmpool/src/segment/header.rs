//! The segment header: the first 4096 bytes of every segment.
//!
//! ```text
//!  offset  field          written            meaning
//!  0       magic          last, at creation  "SHMPOOL\0"; zero while being created
//!  8       version        at creation        layout version (bumped by any change below)
//!  12      header_len     at creation        4096: first data offset
//!  16      page_size      at creation        page size of the mapping (4 KiB, 2 MiB, 1 GiB)
//!  24      reserved_len   at creation        bytes every process maps (the growth limit)
//!  32      created_ns     at creation        CLOCK_REALTIME of creation
//!  40      segment_id     at creation        random id, names the segment in buffer headers
//!  48      creator_uid    at creation
//!  52      creator_pid    at creation
//!  56      flags          at creation        bit 0: huge pages; bit 1: lazy commit
//!  64      check          at creation        FNV-1a of bytes 8..64
//!  72      committed      grows              bytes usable now; never shrinks
//!  80      room           later layers       process registry, named roots (zero now)
//! ```
//!
//! Invariants: `header_len <= committed <= reserved_len`; `committed <= file length`
//! (the file is grown before `committed` is raised); `page_size` divides `reserved_len`.
//! Fields from `version` to `flags` never change after `magic` is published.
//!
//! [`validate`] checks a copy of these bytes before anything is mapped; it is pure so
//! every rejection can be unit-tested with crafted bytes.

use super::committed::Committed;
use super::error::AttachError;
// The header lives in real shared memory, never in a loom model: plain atomics.
#[cfg(not(loom))]
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU64, Ordering};

/// `"SHMPOOL\0"` read as a native-endian `u64`.
pub const MAGIC: u64 = u64::from_ne_bytes(*b"SHMPOOL\0");
/// Layout version this build reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the header; the first data byte of a segment is at this offset.
pub const HEADER_LEN: u64 = 4096;
/// Largest reserved capacity a header may claim (64 TiB), a sanity bound on attach.
pub const MAX_RESERVED: u64 = 1 << 46;
/// Header flag: the segment is backed by huge pages.
pub const FLAG_HUGE_PAGES: u64 = 1;
/// Header flag: the segment grows lazily (`Commit::Lazy`); every attacher follows it.
pub const FLAG_LAZY: u64 = 2;

const ROOM_WORDS: usize = (HEADER_LEN as usize - 80) / 8;

/// The header as it lies in the mapping.
#[repr(C)]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub version: u32,
    pub header_len: u32,
    pub page_size: u64,
    pub reserved_len: u64,
    pub created_ns: u64,
    pub segment_id: u64,
    pub creator_uid: u32,
    pub creator_pid: u32,
    pub flags: u64,
    pub check: u64,
    pub committed: Committed,
    /// Room for the process registry and the named-root table of later layers.
    pub room: [AtomicU64; ROOM_WORDS],
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<Header>() == HEADER_LEN as usize);
    assert!(offset_of!(Header, version) == 8);
    assert!(offset_of!(Header, check) == 64);
    assert!(offset_of!(Header, committed) == 72);
};

/// The immutable fields, as written at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFields {
    /// Layout version.
    pub version: u32,
    /// Page size of the mapping.
    pub page_size: u64,
    /// Bytes every process maps.
    pub reserved_len: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// Random id of the segment.
    pub segment_id: u64,
    /// User id of the creator.
    pub creator_uid: u32,
    /// Process id of the creator.
    pub creator_pid: u32,
    /// `FLAG_*` bits.
    pub flags: u64,
}

/// What [`validate`] found: the immutable fields and the committed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The immutable fields.
    pub fields: HeaderFields,
    /// Committed bytes when the header was read.
    pub committed: u64,
}

impl HeaderFields {
    /// Bytes 8..64 of the header, native-endian.
    fn image(&self) -> [u8; 56] {
        let mut b = [0u8; 56];
        b[0..4].copy_from_slice(&self.version.to_ne_bytes());
        b[4..8].copy_from_slice(&(HEADER_LEN as u32).to_ne_bytes());
        b[8..16].copy_from_slice(&self.page_size.to_ne_bytes());
        b[16..24].copy_from_slice(&self.reserved_len.to_ne_bytes());
        b[24..32].copy_from_slice(&self.created_ns.to_ne_bytes());
        b[32..40].copy_from_slice(&self.segment_id.to_ne_bytes());
        b[40..44].copy_from_slice(&self.creator_uid.to_ne_bytes());
        b[44..48].copy_from_slice(&self.creator_pid.to_ne_bytes());
        b[48..56].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }

    /// The checksum stored in `check`.
    pub fn checksum(&self) -> u64 {
        fnv1a(&self.image())
    }

    /// Builds the full 4096-byte header image (magic included) with `committed`.
    pub fn to_bytes(&self, committed: u64) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC.to_ne_bytes());
        b[8..64].copy_from_slice(&self.image());
        b[64..72].copy_from_slice(&self.checksum().to_ne_bytes());
        b[72..80].copy_from_slice(&committed.to_ne_bytes());
        b
    }
}

impl Header {
    /// Writes the header of a new segment; `magic` last, so an attacher that sees the
    /// magic sees every field.
    pub(crate) fn init(&mut self, fields: &HeaderFields, committed: u64) {
        self.version = fields.version;
        self.header_len = HEADER_LEN as u32;
        self.page_size = fields.page_size;
        self.reserved_len = fields.reserved_len;
        self.created_ns = fields.created_ns;
        self.segment_id = fields.segment_id;
        self.creator_uid = fields.creator_uid;
        self.creator_pid = fields.creator_pid;
        self.flags = fields.flags;
        self.check = fields.checksum();
        self.committed.init(committed);
        // SYNC: Release, so that a reader of the mapping that sees the magic also sees every
        // field above. Attachers validate a `pread` copy instead; a copy torn by a creator
        // still writing shows no magic (written last) or fails the checksum.
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// The immutable fields, as this process sees them.
    pub(crate) fn fields(&self) -> HeaderFields {
        HeaderFields {
            version: self.version,
            page_size: self.page_size,
            reserved_len: self.reserved_len,
            created_ns: self.created_ns,
            segment_id: self.segment_id,
            creator_uid: self.creator_uid,
            creator_pid: self.creator_pid,
            flags: self.flags,
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Checks a copy of a header read from a file of `file_len` bytes. `bytes` holds the
/// first `min(file_len, 4096)` bytes of the file. `host_page` is this machine's page size.
pub fn validate(bytes: &[u8], file_len: u64, host_page: u64) -> Result<HeaderInfo, AttachError> {
    if file_len == 0 {
        return Err(AttachError::Empty);
    }
    if file_len < HEADER_LEN || bytes.len() < HEADER_LEN as usize {
        return Err(AttachError::Truncated { len: file_len, need: HEADER_LEN });
    }
    let fields = HeaderFields {
        version: u32_at(bytes, 8),
        page_size: u64_at(bytes, 16),
        reserved_len: u64_at(bytes, 24),
        created_ns: u64_at(bytes, 32),
        segment_id: u64_at(bytes, 40),
        creator_uid: u32_at(bytes, 48),
        creator_pid: u32_at(bytes, 52),
        flags: u64_at(bytes, 56),
    };
    let magic = u64_at(bytes, 0);
    let check = u64_at(bytes, 64);
    let checksum_ok = check == fields.checksum() && u32_at(bytes, 12) == HEADER_LEN as u32;
    if magic != MAGIC {
        // The creator writes the magic last: no magic yet means not finished (the other
        // fields may be half written).
        return Err(if magic == 0 {
            AttachError::Uninitialized
        } else if checksum_ok {
            AttachError::BadMagic { found: magic }
        } else {
            AttachError::NotShmpool { found: bytes[0..8].try_into().expect("8 bytes") }
        });
    }
    if fields.version != LAYOUT_VERSION {
        return Err(AttachError::VersionMismatch { found: fields.version, expected: LAYOUT_VERSION });
    }
    if !checksum_ok {
        return Err(AttachError::Corrupted("header checksum does not match".into()));
    }
    let committed = u64_at(bytes, 72);
    check_sizes(&fields, committed, file_len, host_page)?;
    Ok(HeaderInfo { fields, committed })
}

fn check_sizes(f: &HeaderFields, committed: u64, file_len: u64, host_page: u64) -> Result<(), AttachError> {
    let corrupted = |what: String| Err(AttachError::Corrupted(what));
    if !f.page_size.is_power_of_two() || f.page_size < HEADER_LEN || f.page_size > 1 << 30 {
        return corrupted(format!("page size {} is not a power of two in 4 KiB..=1 GiB", f.page_size));
    }
    if !f.page_size.is_multiple_of(host_page) {
        return Err(AttachError::PageSizeMismatch { found: f.page_size, host: host_page });
    }
    if f.reserved_len < HEADER_LEN
        || f.reserved_len > MAX_RESERVED
        || !f.reserved_len.is_multiple_of(f.page_size)
    {
        return corrupted(format!("reserved size {} is out of range", f.reserved_len));
    }
    if committed < HEADER_LEN || committed > f.reserved_len {
        return corrupted(format!("committed size {committed} is outside {HEADER_LEN}..={}", f.reserved_len));
    }
    if committed > file_len {
        return Err(AttachError::CommittedBeyondFile { committed, file_len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeaderFields {
        HeaderFields {
            version: LAYOUT_VERSION,
            page_size: 4096,
            reserved_len: 1 << 20,
            created_ns: 1,
            segment_id: 0xabcd,
            creator_uid: 0,
            creator_pid: 42,
            flags: 0,
        }
    }

    fn check(bytes: &[u8], file_len: u64) -> Result<HeaderInfo, AttachError> {
        validate(bytes, file_len, 4096)
    }

    #[test]
    fn accepts_a_fresh_header() {
        let b = sample().to_bytes(8192);
        let info = check(&b, 8192).unwrap();
        assert_eq!(info.fields, sample());
        assert_eq!(info.committed, 8192);
    }

    #[test]
    fn rejects_each_damage_with_its_own_variant() {
        let good = sample().to_bytes(8192);
        assert!(matches!(check(&[], 0), Err(AttachError::Empty)));
        assert!(matches!(check(&good[..100], 100), Err(AttachError::Truncated { len: 100, .. })));
        assert!(matches!(check(&[0; 4096], 4096), Err(AttachError::Uninitialized)));
        let mut half = good;
        half[0..8].fill(0); // a creator still writing: fields there, magic not yet
        assert!(matches!(check(&half, 8192), Err(AttachError::Uninitialized)));

        let mut b = good;
        b[0] = b'X';
        assert!(matches!(check(&b, 8192), Err(AttachError::BadMagic { .. })));
        b[20] ^= 1; // and the checksum no longer matches either: someone else's file
        assert!(matches!(check(&b, 8192), Err(AttachError::NotShmpool { .. })));

        let mut f = sample();
        f.version = 99;
        assert!(matches!(
            check(&f.to_bytes(8192), 8192),
            Err(AttachError::VersionMismatch { found: 99, expected: LAYOUT_VERSION })
        ));

        let mut b = good;
        b[30] ^= 0x10; // reserved_len changed behind the checksum's back
        assert!(matches!(check(&b, 8192), Err(AttachError::Corrupted(_))));

        assert!(matches!(
            check(&good, 4096),
            Err(AttachError::CommittedBeyondFile { committed: 8192, file_len: 4096 })
        ));
        assert!(matches!(check(&sample().to_bytes(2 << 20), 4 << 20), Err(AttachError::Corrupted(_))));
    }

    #[test]
    fn page_size_must_suit_the_host() {
        let mut f = sample();
        f.page_size = 8192;
        f.reserved_len = 1 << 20;
        assert!(matches!(
            validate(&f.to_bytes(8192), 8192, 16384),
            Err(AttachError::PageSizeMismatch { found: 8192, host: 16384 })
        ));
        f.page_size = 3000;
        assert!(matches!(check(&f.to_bytes(8192), 8192), Err(AttachError::Corrupted(_))));
    }
}
