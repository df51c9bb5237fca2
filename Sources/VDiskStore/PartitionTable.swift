import SystemPackage

/// A partition found in an MBR or GPT table: byte offset and length within the disk.
public struct Partition: Equatable, Sendable {
    public var offset: UInt64
    public var length: UInt64
    public var label: String
}

/// Reads MBR (with extended partitions) and GPT partition tables. Anything that does not
/// validate yields no partitions, and the caller treats the disk as one unit.
enum PartitionTable {
    static func read(_ disk: DiskReader) throws -> [Partition] {
        let mbr = try disk.bytes(at: 0, count: 512)
        guard mbr.count == 512, mbr[510] == 0x55, mbr[511] == 0xAA else { return [] }
        var parts: [Partition] = []
        var extended: (UInt64, UInt64)?
        for i in 0..<4 {
            let e = 446 + i * 16
            let type = mbr[e + 4]
            let start = UInt64(le32(mbr, e + 8)), count = UInt64(le32(mbr, e + 12))
            if type == 0 || count == 0 { continue }
            if type == 0xEE { return try gpt(disk) }
            if type == 0x05 || type == 0x0F || type == 0x85 { extended = (start, count); continue }
            parts.append(Partition(offset: start * 512, length: count * 512, label: "mbr\(i + 1)"))
        }
        if let (base, _) = extended {
            // Walk the chain of extended boot records (at most 128, against loops).
            var ebr = base
            for n in 0..<128 {
                let b = try disk.bytes(at: ebr * 512, count: 512)
                guard b.count == 512, b[510] == 0x55, b[511] == 0xAA else { break }
                let start = UInt64(le32(b, 446 + 8)), count = UInt64(le32(b, 446 + 12))
                if b[446 + 4] != 0 && count > 0 { parts.append(Partition(offset: (ebr + start) * 512, length: count * 512, label: "logical\(n + 5)")) }
                let next = UInt64(le32(b, 462 + 8))
                if b[462 + 4] == 0 || next == 0 { break }
                ebr = base + next
            }
        }
        return parts.filter { fits($0, disk) }
    }

    /// Whether `p` lies within the disk (a partition whose end overflows does not).
    static func fits(_ p: Partition, _ disk: DiskReader) -> Bool {
        let (end, overflow) = p.offset.addingReportingOverflow(p.length)
        return !overflow && end <= disk.size
    }

    /// `lba × 512` bytes, or nil when that overflows (a damaged or hostile table).
    private static func sectorBytes(_ lba: UInt64) -> UInt64? {
        let (bytes, overflow) = lba.multipliedReportingOverflow(by: 512)
        return overflow ? nil : bytes
    }

    private static func gpt(_ disk: DiskReader) throws -> [Partition] {
        let h = try disk.bytes(at: 512, count: 92)
        guard h.count == 92, Array(h[0..<8]) == Array("EFI PART".utf8) else { return [] }
        let entriesLBA = le64(h, 0x48), count = Int(le32(h, 0x50)), size = Int(le32(h, 0x54))
        guard size >= 128, size <= 4096, count <= 1024 else { return [] }
        guard let tableOffset = sectorBytes(entriesLBA) else { return [] }
        let table = try disk.bytes(at: tableOffset, count: count * size)
        guard table.count == count * size else { return [] }
        var parts: [Partition] = []
        for i in 0..<count {
            let e = i * size
            if table[e..<(e + 16)].allSatisfy({ $0 == 0 }) { continue }
            let first = le64(table, e + 32), last = le64(table, e + 40)
            // An entry whose bounds overflow cannot fit the disk: ignored, like one past its end.
            guard last >= first, last < UInt64.max, let offset = sectorBytes(first), let length = sectorBytes(last - first + 1)
            else { continue }
            parts.append(Partition(offset: offset, length: length, label: "gpt\(i + 1)"))
        }
        return parts.filter { fits($0, disk) }
    }
}

@inline(__always) func le16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
@inline(__always) func le32(_ b: [UInt8], _ o: Int) -> UInt32 { UInt32(le16(b, o)) | UInt32(le16(b, o + 2)) << 16 }
@inline(__always) func le64(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(le32(b, o)) | UInt64(le32(b, o + 4)) << 32 }

/// Positioned reads of a disk image for the layout probes: a file, or an image in a store.
struct DiskReader {
    let size: UInt64
    /// Reads into the buffer at the offset; returns the bytes read.
    let readAt: (UnsafeMutableRawBufferPointer, UInt64) throws -> Int

    init(fd: FileDescriptor, size: UInt64) {
        self.size = size
        readAt = { buffer, offset in try fd.readFully(into: buffer, at: Int64(offset)) }
    }

    init(size: UInt64, readAt: @escaping (UnsafeMutableRawBufferPointer, UInt64) throws -> Int) {
        self.size = size
        self.readAt = readAt
    }

    /// Up to `count` bytes at `offset` (fewer at the end of the disk).
    func bytes(at offset: UInt64, count: Int) throws -> [UInt8] {
        guard offset < size else { return [] }
        var b = [UInt8](repeating: 0, count: min(count, Int(size - offset)))
        let n = try b.withUnsafeMutableBytes { try readAt($0, offset) }
        return Array(b[0..<n])
    }
}
