import CSupport

/// The record list of a sealed pack, kept beside it on a shared store so that another
/// host's index can take the pack in with one small read instead of reading it whole
/// (restic keeps index files for the same reason). Derived data: a pack without a summary
/// is still read and verified by its own record headers.
///
/// Encoding: `"VDISKPS1" | pack u64 | count u32 | count × (hash 32 | kind u8 | offset u32 |
/// length field u32) | crc32c u32`, one entry per chunk (each member of a grouped record has
/// its own, with the member in its length field: see ``ChunkLocation``).
struct PackSummary {
    struct Entry: Equatable {
        var hash: ChunkHash
        var kind: RecordKind
        var location: ChunkLocation
    }

    private(set) var entries: [Entry] = []
    static let magic: [UInt8] = Array("VDISKPS1".utf8)
    static let entrySize = 32 + 1 + 4 + 4

    mutating func add(hash: ChunkHash, kind: RecordKind, location: ChunkLocation) {
        entries.append(Entry(hash: hash, kind: kind, location: location))
    }

    func encode() -> [UInt8] {
        var w = ByteWriter(capacity: 24 + entries.count * Self.entrySize)
        w.raw(Self.magic)
        w.u64(entries.first?.location.pack ?? 0)
        w.u32(UInt32(entries.count))
        for e in entries {
            w.hash(e.hash)
            w.u8(e.kind.rawValue)
            w.u32(e.location.offset)
            w.u32(e.location.lengthField)
        }
        let crc = w.bytes.withUnsafeBytes { crc32c($0) }
        w.u32(crc)
        return w.bytes
    }

    /// Decodes the summary of `pack`; throws `corruptStore` when it does not check out.
    static func decode(_ bytes: [UInt8], pack: UInt64) throws -> PackSummary {
        let what = "summary of pack \(PackFormat.fileName(pack))"
        guard bytes.count >= 24, Array(bytes[0..<8]) == magic else { throw StoreError.corruptStore(detail: "\(what) is damaged") }
        let crc = bytes.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<(bytes.count - 4)])) }
        var r = ByteReader(bytes, what: what)
        r.offset = bytes.count - 4
        guard try r.u32() == crc else { throw StoreError.corruptStore(detail: "\(what) fails its checksum") }
        r.offset = 8
        let stated = try r.u64()
        let count = Int(try r.u32())
        guard count == 0 || stated == pack, count * entrySize + 24 == bytes.count else {
            throw StoreError.corruptStore(detail: "\(what) does not match its pack")
        }
        var s = PackSummary()
        s.entries.reserveCapacity(count)
        for _ in 0..<count {
            let h = try r.hash()
            guard let kind = RecordKind(rawValue: try r.u8()) else { throw StoreError.corruptStore(detail: "\(what) names an unknown record kind") }
            let offset = try r.u32()
            let length = try r.u32()
            s.add(hash: h, kind: kind, location: ChunkLocation(pack: pack, offset: offset, lengthField: length))
        }
        return s
    }
}
