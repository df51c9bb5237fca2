/// The log area of a clean ext3/ext4 journal: file-system blocks that hold only old
/// transactions. When the journal is empty (its superblock's `s_start` is 0 and the file
/// system does not need recovery) nothing ever reads them again — the next mount starts a
/// fresh log over them — so file-system-aware import stores them as zeros, as mkfs leaves
/// them. A used journal is often the largest lump of "dirty but unused" blocks in an image
/// (64 MiB in a 2 GiB Debian image).
///
/// Only an internal journal whose inode, block map or extent tree and journal superblock
/// all validate is used; anything else leaves the journal as it is (never lose data).
struct Ext4Journal {
    /// Runs of file-system blocks (first, count) of the journal's log area.
    private(set) var logExtents: [(first: UInt64, count: UInt64)] = []
    /// Why the journal's blocks are kept, when they are.
    private(set) var keptBecause: String?

    var logBlocks: UInt64 { logExtents.reduce(0) { $0 + $1.count } }

    struct Geometry {
        var base: UInt64
        var blockSize: Int
        var blockCount: UInt64
        var firstDataBlock: UInt64
        var groupDescriptors: [UInt8]
        var descriptorSize: Int
        var is64Bit: Bool
    }

    /// Reads the journal of the file system whose superblock is `sb`.
    init(_ disk: DiskReader, superblock sb: [UInt8], geometry g: Geometry) {
        let hasJournal = le32(sb, 0x5C) & 0x4 != 0
        guard hasJournal else { return }
        do {
            logExtents = try Self.logArea(disk, sb, g)
        } catch let e as Problem {
            keptBecause = e.why
        } catch {
            keptBecause = "it could not be read (\(error))"
        }
    }

    private struct Problem: Error { var why: String }

    private static func logArea(_ disk: DiskReader, _ sb: [UInt8], _ g: Geometry) throws -> [(first: UInt64, count: UInt64)] {
        let inode = UInt64(le32(sb, 0xE0))
        guard inode != 0, le32(sb, 0xE4) == 0, sb[0xD0..<0xE0].allSatisfy({ $0 == 0 }) else { throw Problem(why: "it is external") }
        let bs = UInt64(g.blockSize)
        // The journal inode: its group's inode table.
        let perGroup = UInt64(le32(sb, 0x28))
        let revision = le32(sb, 0x4C)
        let inodeSize = revision >= 1 ? Int(le16(sb, 0x58)) : 128
        guard perGroup > 0, inodeSize >= 128, inodeSize <= Int(bs), inodeSize & (inodeSize - 1) == 0 else { throw Problem(why: "the inode geometry is odd") }
        let group = Int((inode - 1) / perGroup), index = (inode - 1) % perGroup
        let d = group * g.descriptorSize
        guard d + g.descriptorSize <= g.groupDescriptors.count else { throw Problem(why: "its inode is outside the group descriptors") }
        let table = UInt64(le32(g.groupDescriptors, d + 0x08))
            | (g.is64Bit && g.descriptorSize >= 64 ? UInt64(le32(g.groupDescriptors, d + 0x28)) << 32 : 0)
        // Block numbers below blockCount stay within the file system's bytes (checked to fit
        // the disk by Ext4Bitmap), so block × block size does not overflow; the inode's
        // offset in its table (index < 2^32) must lie inside the file system too.
        guard table > g.firstDataBlock, table < g.blockCount,
              index * UInt64(inodeSize) + 128 <= (g.blockCount - table) * bs
        else { throw Problem(why: "its inode table is outside the file system") }
        let raw = try disk.bytes(at: g.base + table * bs + index * UInt64(inodeSize), count: 128)
        guard raw.count == 128 else { throw Problem(why: "its inode is cut short") }
        let mode = le16(raw, 0x00), flags = le32(raw, 0x20)
        guard mode & 0xF000 == 0x8000 else { throw Problem(why: "its inode is not a regular file") }
        let byteSize = UInt64(le32(raw, 0x04)) | UInt64(le32(raw, 0x6C)) << 32
        let blocks = byteSize / bs
        guard blocks >= 2, blocks <= 1 << 22 else { throw Problem(why: "its size is odd") }

        // Logical → physical, as runs.
        var map = BlockMap(disk: disk, geometry: g, logicalBlocks: blocks)
        let iBlock = Array(raw[0x28..<0x64])
        if flags & 0x80000 != 0 {
            try map.extentTree(iBlock, depthLimit: 5)
        } else {
            try map.blockPointers(iBlock)
        }

        // The journal superblock (big-endian), at logical block 0.
        guard let jsbBlock = map.physical(0) else { throw Problem(why: "its first block is not mapped") }
        guard jsbBlock > g.firstDataBlock, jsbBlock < g.blockCount else { throw Problem(why: "its superblock is outside the file system") }
        let jsb = try disk.bytes(at: g.base + jsbBlock * bs, count: 1024)
        guard jsb.count == 1024, be32(jsb, 0) == 0xC03B_3998 else { throw Problem(why: "its superblock has no jbd2 magic") }
        let type = be32(jsb, 4)
        guard type == 3 || type == 4 else { throw Problem(why: "its superblock is of type \(type)") }
        guard UInt64(be32(jsb, 0x0C)) == bs else { throw Problem(why: "its block size differs from the file system's") }
        let maxLength = UInt64(be32(jsb, 0x10)), first = UInt64(be32(jsb, 0x14))
        guard first >= 1, first < maxLength, maxLength <= blocks else { throw Problem(why: "its log bounds do not fit its inode") }
        guard be32(jsb, 0x1C) == 0 else { throw Problem(why: "it holds transactions (not cleanly unmounted)") }

        var out: [(first: UInt64, count: UInt64)] = []
        for run in map.runs {
            let lo = max(run.logical, first), hi = min(run.logical + run.count, maxLength)
            guard lo < hi else { continue }
            let start = run.physical + (lo - run.logical)
            guard start > g.firstDataBlock, start + (hi - lo) <= g.blockCount else { throw Problem(why: "a block of it is outside the file system") }
            out.append((start, hi - lo))
        }
        guard out.reduce(0, { $0 + $1.count }) == maxLength - first else { throw Problem(why: "its log area is not wholly mapped") }
        return out
    }

    /// Logical-to-physical runs of one inode, from an extent tree or (ext2/3) block pointers.
    private struct BlockMap {
        let disk: DiskReader
        let geometry: Geometry
        let logicalBlocks: UInt64
        var runs: [(logical: UInt64, physical: UInt64, count: UInt64)] = []

        init(disk: DiskReader, geometry: Geometry, logicalBlocks: UInt64) {
            self.disk = disk; self.geometry = geometry; self.logicalBlocks = logicalBlocks
        }

        func physical(_ logical: UInt64) -> UInt64? {
            for r in runs where logical >= r.logical && logical < r.logical + r.count { return r.physical + (logical - r.logical) }
            return nil
        }

        private func block(_ n: UInt64) throws -> [UInt8] {
            guard n > geometry.firstDataBlock, n < geometry.blockCount else { throw Problem(why: "a map block is outside the file system") }
            let b = try disk.bytes(at: geometry.base + n * UInt64(geometry.blockSize), count: geometry.blockSize)
            guard b.count == geometry.blockSize else { throw Problem(why: "a map block is cut short") }
            return b
        }

        private mutating func add(_ logical: UInt64, _ physical: UInt64, _ count: UInt64) throws {
            guard count > 0 else { return }
            guard runs.count < 1 << 16 else { throw Problem(why: "it is too fragmented") }
            if let last = runs.last, last.logical + last.count == logical, last.physical + last.count == physical {
                runs[runs.count - 1].count += count
            } else {
                runs.append((logical, physical, count))
            }
        }

        /// An extent node (the inode's i_block or a tree block).
        mutating func extentTree(_ node: [UInt8], depthLimit: Int) throws {
            guard node.count >= 12, le16(node, 0) == 0xF30A else { throw Problem(why: "its extent tree is damaged") }
            let entries = Int(le16(node, 2)), depth = Int(le16(node, 6))
            guard 12 + entries * 12 <= node.count, depth <= depthLimit else { throw Problem(why: "its extent tree is damaged") }
            for i in 0..<entries {
                let e = 12 + i * 12
                if depth == 0 {
                    var length = UInt64(le16(node, e + 4))
                    if length > 32768 { length -= 32768 }  // an unwritten extent: still the journal's
                    let start = UInt64(le16(node, e + 6)) << 32 | UInt64(le32(node, e + 8))
                    try add(UInt64(le32(node, e)), start, length)
                } else {
                    let child = UInt64(le16(node, e + 8)) << 32 | UInt64(le32(node, e + 4))
                    try extentTree(try block(child), depthLimit: depth - 1)
                }
            }
        }

        /// ext2/ext3 block pointers: 12 direct, one indirect, one double indirect (a journal
        /// needing the triple indirect block is not handled: kept).
        mutating func blockPointers(_ iBlock: [UInt8]) throws {
            let perBlock = UInt64(geometry.blockSize / 4)
            var logical: UInt64 = 0
            func pointer(_ b: [UInt8], _ i: Int) -> UInt64 { UInt64(le32(b, i * 4)) }
            for i in 0..<12 where logical < logicalBlocks {
                let p = pointer(iBlock, i)
                if p != 0 { try add(logical, p, 1) }
                logical += 1
            }
            func indirect(_ n: UInt64, level: Int) throws {
                guard n != 0 else { logical += level == 1 ? perBlock : perBlock * perBlock; return }
                let b = try block(n)
                for i in 0..<Int(perBlock) where logical < logicalBlocks {
                    if level == 1 {
                        let p = pointer(b, i)
                        if p != 0 { try add(logical, p, 1) }
                        logical += 1
                    } else {
                        try indirect(pointer(b, i), level: 1)
                    }
                }
            }
            if logical < logicalBlocks { try indirect(pointer(iBlock, 12), level: 1) }
            if logical < logicalBlocks { try indirect(pointer(iBlock, 13), level: 2) }
            guard logical >= logicalBlocks || pointer(iBlock, 14) == 0 else { throw Problem(why: "it needs a triple indirect block") }
        }
    }
}

@inline(__always) func be32(_ b: [UInt8], _ o: Int) -> UInt32 {
    UInt32(b[o]) << 24 | UInt32(b[o + 1]) << 16 | UInt32(b[o + 2]) << 8 | UInt32(b[o + 3])
}
