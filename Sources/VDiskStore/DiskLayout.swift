import SystemPackage

/// What file-system-aware import knows about a disk image: which of its blocks hold no
/// data (free in a file system's bitmap, or the log area of a clean journal), so they are
/// stored as zero blocks. The same file
/// system dedups across disk layouts because each partition starts on a block boundary.
public struct DiskLayout: Sendable {
    /// One bit per image block, set when the block is free.
    private var free: [UInt64]
    public let blockSize: Int
    /// Bytes marked free.
    public private(set) var freeBytes: UInt64 = 0
    /// One line per partition or file system found, and why any was left raw.
    public private(set) var notes: [String] = []

    /// Whether image block `block` is free (its content need not be stored).
    public func isFree(_ block: Int) -> Bool { block >> 6 < free.count && (free[block >> 6] >> UInt64(block & 63)) & 1 == 1 }

    /// Probes the disk behind `fd`: partition tables, then ext2/3/4 in each partition (or the
    /// whole disk). Never throws for what it cannot understand: those parts stay raw.
    public static func probe(_ fd: FileDescriptor, size: UInt64, blockSize: Int) -> DiskLayout {
        probe(DiskReader(fd: fd, size: size), blockSize: blockSize)
    }

    static func probe(_ disk: DiskReader, blockSize: Int) -> DiskLayout {
        let size = disk.size
        var layout = DiskLayout(free: [UInt64](repeating: 0, count: Int((size / UInt64(blockSize) + 64) / 64)), blockSize: blockSize)
        let parts = (try? PartitionTable.read(disk)) ?? []
        let units = parts.isEmpty ? [Partition(offset: 0, length: size, label: "disk")] : parts
        for p in units {
            guard p.offset % UInt64(blockSize) == 0 else {
                layout.notes.append("\(p.label): starts at byte \(p.offset), not on a \(blockSize)-byte block boundary; stored raw")
                continue
            }
            do {
                let fs = try Ext4Bitmap(disk, base: p.offset, length: p.length)
                layout.mark(fs, base: p.offset)
                var note = "\(p.label): ext file system, \(fs.freeBlocks) of \(fs.blockCount) blocks free"
                if fs.journalBlocks > 0 { note += ", \(fs.journalBlocks) more in its clean journal's log" }
                if let why = fs.journalKept { note += "; journal kept as it is: \(why)" }
                layout.notes.append(note)
            } catch Ext4Bitmap.Problem.notExt {
                if !parts.isEmpty { layout.notes.append("\(p.label): no known file system; stored raw") }
            } catch {
                layout.notes.append("warning: \(p.label): \(error); stored raw")
            }
        }
        return layout
    }

    /// Marks image blocks whose every byte lies in free file-system blocks.
    private mutating func mark(_ fs: Ext4Bitmap, base: UInt64) {
        let bs = UInt64(blockSize), fbs = UInt64(fs.blockSize)
        let first = base / bs
        let imageBlocks = fs.blockCount * fbs / bs
        for i in 0..<imageBlocks {
            let start = i * bs / fbs, end = ((i + 1) * bs + fbs - 1) / fbs
            var allFree = true
            var b = start
            while b < end { if !fs.isFree(b) { allFree = false; break }; b += 1 }
            if allFree {
                let blk = Int(first + i)
                if blk >> 6 < free.count, !isFree(blk) {
                    free[blk >> 6] |= 1 << UInt64(blk & 63)
                    freeBytes += bs
                }
            }
        }
    }
}
