import CSupport

/// Which blocks of an ext2/ext3/ext4 file system are free, from its superblock, group
/// descriptors and block bitmaps, plus the log area of a clean journal (``Ext4Journal``). Only used when everything validates: a clean file system
/// (no journal recovery pending), sane geometry, and with metadata_csum, bitmaps whose
/// checksums match. Groups whose bitmap is not initialised (BLOCK_UNINIT) count as used
/// (their blocks are zeros or metadata; nothing is lost by storing them).
struct Ext4Bitmap {
    let blockSize: Int
    let blockCount: UInt64
    /// One bit per file-system block, set when the block is free.
    private(set) var free: [UInt64]
    /// Blocks the bitmaps mark free.
    let freeBlocks: UInt64
    /// Blocks of a clean journal's log area (also set in `free`: see ``Ext4Journal``).
    let journalBlocks: UInt64
    /// Why a journal's log area is stored as it is, when it is.
    let journalKept: String?

    enum Problem: Error, CustomStringConvertible {
        case notExt, invalid(String)
        var description: String {
            switch self {
            case .notExt: return "no ext2/3/4 file system"
            case .invalid(let why): return why
            }
        }
    }

    func isFree(_ block: UInt64) -> Bool {
        block < blockCount && (free[Int(block >> 6)] >> (block & 63)) & 1 == 1
    }

    /// Reads the file system starting at byte `base` of `disk`, at most `length` bytes long.
    init(_ disk: DiskReader, base: UInt64, length: UInt64) throws {
        let sb = try disk.bytes(at: base + 1024, count: 1024)
        guard sb.count == 1024, le16(sb, 0x38) == 0xEF53 else { throw Problem.notExt }
        let logBlock = le32(sb, 0x18)
        guard logBlock <= 6 else { throw Problem.invalid("block size 2^(10+\(logBlock)) is out of range") }
        let bs = 1024 << Int(logBlock)
        let incompat = le32(sb, 0x60), roCompat = le32(sb, 0x64)
        let is64 = incompat & 0x80 != 0
        let count = UInt64(le32(sb, 0x04)) | (is64 ? UInt64(le32(sb, 0x150)) << 32 : 0)
        let firstData = UInt64(le32(sb, 0x14))
        let perGroup = UInt64(le32(sb, 0x20))
        let state = le16(sb, 0x3A)
        guard incompat & 0x4 == 0 else { throw Problem.invalid("the journal needs recovery (mount it once, or fsck it)") }
        guard state & 1 == 1, state & 2 == 0 else { throw Problem.invalid("the file system is not clean") }
        guard incompat & 0x10 == 0 else { throw Problem.invalid("meta_bg is not supported") }
        // The block count is untrusted: its byte size may overflow (then it cannot fit either).
        let (fsBytes, tooBig) = count.multipliedReportingOverflow(by: UInt64(bs))
        guard perGroup > 0, perGroup == UInt64(bs) * 8 || (perGroup % 8 == 0 && perGroup < UInt64(bs) * 8),
              count > firstData, !tooBig, fsBytes <= length
        else { throw Problem.invalid("the superblock's geometry does not fit the disk") }
        let descSize = is64 ? Int(le16(sb, 0xFE)) : 32
        guard descSize >= 32, descSize <= 1024, descSize & (descSize - 1) == 0 else { throw Problem.invalid("bad group descriptor size \(descSize)") }
        let groups = Int((count - firstData + perGroup - 1) / perGroup)
        let metadataCsum = roCompat & 0x400 != 0
        let gdtCsum = roCompat & 0x10 != 0
        var seed: UInt32 = 0
        if metadataCsum {
            // s_checksum_seed when the csum_seed feature is on, else crc32c(~0, uuid).
            seed = incompat & 0x2000 != 0 ? le32(sb, 0x270) : rawCRC32C(~0, Array(sb[0x68..<0x78]))
        }
        // (Offsets below stay under base + fsBytes ≤ the disk's size: blocks are < count.)
        let (gdtBytes, gdtTooBig) = groups.multipliedReportingOverflow(by: descSize)
        guard !gdtTooBig, gdtBytes <= fsBytes else { throw Problem.invalid("the group descriptors do not fit the file system") }
        let gdt = try disk.bytes(at: base + (firstData + 1) * UInt64(bs), count: gdtBytes)
        guard gdt.count == gdtBytes else { throw Problem.invalid("the group descriptors are truncated") }
        var free = [UInt64](repeating: 0, count: Int((count + 63) / 64))
        var freeCount: UInt64 = 0
        let bitmapBytes = Int(perGroup / 8)
        for g in 0..<groups {
            let d = g * descSize
            let flags = le16(gdt, d + 0x12)
            if flags & 0x2 != 0 && (gdtCsum || metadataCsum) { continue }  // BLOCK_UNINIT: count as used
            let bitmapBlock = UInt64(le32(gdt, d)) | (is64 && descSize >= 64 ? UInt64(le32(gdt, d + 0x20)) << 32 : 0)
            guard bitmapBlock > firstData, bitmapBlock < count else { throw Problem.invalid("group \(g)'s block bitmap is outside the file system") }
            let bitmap = try disk.bytes(at: base + bitmapBlock * UInt64(bs), count: bitmapBytes)
            guard bitmap.count == bitmapBytes else { throw Problem.invalid("group \(g)'s block bitmap is truncated") }
            if metadataCsum {
                let crc = rawCRC32C(seed, bitmap)
                let lo = UInt32(le16(gdt, d + 0x18)), hi = descSize >= 64 ? UInt32(le16(gdt, d + 0x38)) : 0
                let matches = descSize >= 64 ? crc == (lo | hi << 16) : (crc & 0xFFFF) == lo
                guard matches else { throw Problem.invalid("group \(g)'s block bitmap fails its checksum") }
            }
            let first = firstData + UInt64(g) * perGroup
            for i in 0..<UInt64(bitmapBytes * 8) where first + i < count {
                if (bitmap[Int(i >> 3)] >> (i & 7)) & 1 == 0 {
                    let b = first + i
                    free[Int(b >> 6)] |= 1 << (b & 63)
                    freeCount += 1
                }
            }
        }
        // The superblock's own free count must roughly agree (it may lag slightly).
        let sbFree = UInt64(le32(sb, 0x0C)) | (is64 ? UInt64(le32(sb, 0x158)) << 32 : 0)
        guard freeCount <= sbFree || freeCount - sbFree <= sbFree / 10 + 1024 else {
            throw Problem.invalid("the bitmaps mark \(freeCount) blocks free, the superblock \(sbFree)")
        }
        // A clean journal's log area holds nothing anyone reads again.
        let journal = Ext4Journal(disk, superblock: sb, geometry: .init(
            base: base, blockSize: bs, blockCount: count, firstDataBlock: firstData,
            groupDescriptors: gdt, descriptorSize: descSize, is64Bit: is64))
        var journalCount: UInt64 = 0
        for run in journal.logExtents {
            for b in run.first..<(run.first + run.count) where (free[Int(b >> 6)] >> (b & 63)) & 1 == 0 {
                free[Int(b >> 6)] |= 1 << (b & 63)
                journalCount += 1
            }
        }
        blockSize = bs
        blockCount = count
        self.free = free
        freeBlocks = freeCount
        journalBlocks = journalCount
        journalKept = journal.keptBecause
    }
}

/// CRC-32C without the final inversion, as ext4 computes metadata checksums.
func rawCRC32C(_ seed: UInt32, _ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { ~vdisk_crc32c(~seed, $0.baseAddress, $0.count) }
}
