import CSupport

/// What a record in a pack holds.
public enum RecordKind: UInt8, Sendable {
    /// A block of an image (its uncompressed bytes hash to the record's hash).
    case data = 1
    /// A hash-tree node (see ``TreeNode``).
    case tree = 2
    /// A namespace: every image and directory at one commit (see ``Namespace``).
    case namespace = 3
    /// The snapshot table: every kept namespace by name (see ``Snapshot``).
    case snapshotTable = 4
}

/// Where a record lives: pack number, byte offset of its header, payload length.
/// Tree entries carry it so that reading a block needs no index lookup.
public struct ChunkLocation: Hashable, Sendable {
    public var pack: UInt64
    public var offset: UInt32
    public var storedLength: UInt32

    public static let none = ChunkLocation(pack: 0, offset: 0, storedLength: 0)

    public init(pack: UInt64, offset: UInt32, storedLength: UInt32) {
        self.pack = pack; self.offset = offset; self.storedLength = storedLength
    }

    /// Bytes the record occupies in its pack (header + payload).
    public var recordLength: Int { PackFormat.recordHeaderSize + Int(storedLength) }
}

/// A hash and where its record lives: the unit trees, namespaces and the index hold.
public struct ChunkRef: Hashable, Sendable {
    public var hash: ChunkHash
    public var location: ChunkLocation

    public static let zero = ChunkRef(hash: .zero, location: .none)

    public init(hash: ChunkHash, location: ChunkLocation) { self.hash = hash; self.location = location }

    public var isZero: Bool { hash.isZero }

    /// Encoded size: hash (32) + pack (8) + offset (4) + stored length (4).
    static let encodedSize = 48

    func store(to p: UnsafeMutableRawPointer) {
        hash.store(to: p)
        p.storeBytes(of: location.pack.littleEndian, toByteOffset: 32, as: UInt64.self)
        p.storeBytes(of: location.offset.littleEndian, toByteOffset: 40, as: UInt32.self)
        p.storeBytes(of: location.storedLength.littleEndian, toByteOffset: 44, as: UInt32.self)
    }

    init(loading p: UnsafeRawPointer) {
        hash = ChunkHash(bytes: p)
        location = ChunkLocation(
            pack: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt64.self)),
            offset: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt32.self)),
            storedLength: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 44, as: UInt32.self)))
    }
}

/// The pack file format (see vdiskfs-format(5)).
///
/// A pack is a 64-byte header followed by records. Each record is a 56-byte header
/// and a payload; packs are append-only and self-describing, so the index can be
/// rebuilt by scanning them.
///
///     pack header:  "VDISKPK\0" | version u32 | header size u32 | pack number u64 |
///                   store id 16 | created (ns) i64 | zeros | crc32c u32 (of bytes 0..<60)
///     record:       magic u32 "VCHK" | kind u8 | codec u8 | flags u16 | raw length u32 |
///                   stored length u32 | SHA-256 32 | crc32c u32 | zero u32 | payload
///
/// The record crc32c covers header bytes 0..<48 and the payload; it is checked on
/// every read, and the hash must equal the one the reader asked for.
public enum PackFormat {
    static let magic: [UInt8] = Array("VDISKPK\0".utf8)
    static let version: UInt32 = 1
    static let headerSize = 64
    static let recordMagic: UInt32 = 0x4B48_4356  // "VCHK" little-endian
    static let recordHeaderSize = 56
    /// Largest raw record accepted on read (guards allocations against damaged headers).
    static let maxRecordLength = 64 << 20

    static func fileName(_ pack: UInt64) -> String {
        let h = String(pack, radix: 16)
        return String(repeating: "0", count: 16 - h.count) + h + ".pack"
    }

    static func packNumber(fileName: String) -> UInt64? {
        guard fileName.hasSuffix(".pack"), fileName.count == 21 else { return nil }
        return UInt64(fileName.prefix(16), radix: 16)
    }

    static func encodeHeader(pack: UInt64, storeID: [UInt8], created: Int64) -> [UInt8] {
        var w = ByteWriter(capacity: headerSize)
        w.raw(magic)
        w.u32(version)
        w.u32(UInt32(headerSize))
        w.u64(pack)
        w.raw(Array(storeID.prefix(16)) + [UInt8](repeating: 0, count: max(0, 16 - storeID.count)))
        w.i64(created)
        w.raw([UInt8](repeating: 0, count: 60 - w.bytes.count))
        let crc = w.bytes.withUnsafeBytes { crc32c($0) }
        w.u32(crc)
        return w.bytes
    }

    /// Checks a pack header; returns the pack number it names.
    static func decodeHeader(_ b: [UInt8], file: String) throws -> UInt64 {
        guard b.count >= headerSize, Array(b[0..<8]) == magic else {
            throw StoreError.corruptStore(detail: "\(file) is not a pack")
        }
        let crc = b.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<60])) }
        var r = ByteReader(b, what: file)
        r.offset = 8
        let version = try r.u32()
        guard version == PackFormat.version else {
            throw StoreError.corruptStore(detail: "\(file) has pack format version \(version), this vdiskfs reads \(PackFormat.version)")
        }
        _ = try r.u32()
        let pack = try r.u64()
        r.offset = 60
        guard try r.u32() == crc else { throw StoreError.corruptStore(detail: "\(file) has a damaged header") }
        return pack
    }

    /// A decoded record header.
    struct RecordHeader {
        var kind: RecordKind
        var codec: Codec
        var rawLength: Int
        var storedLength: Int
        var hash: ChunkHash
        var crc: UInt32
    }

    /// Writes a record header for `payload` at `p` (56 bytes).
    static func storeRecordHeader(to p: UnsafeMutableRawPointer, kind: RecordKind, codec: Codec, rawLength: Int,
                                  hash: ChunkHash, payload: UnsafeRawBufferPointer) {
        p.storeBytes(of: recordMagic.littleEndian, as: UInt32.self)
        p.storeBytes(of: kind.rawValue, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: codec.rawValue, toByteOffset: 5, as: UInt8.self)
        p.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: UInt32(rawLength).littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 12, as: UInt32.self)
        hash.store(to: p + 16)
        var crc = crc32c(UnsafeRawBufferPointer(start: p, count: 48))
        crc = crc32c(payload, seed: crc)
        p.storeBytes(of: crc.littleEndian, toByteOffset: 48, as: UInt32.self)
        p.storeBytes(of: UInt32(0), toByteOffset: 52, as: UInt32.self)
    }

    /// Parses a record header; nil when it is not one (bad magic, kind, codec or lengths).
    static func loadRecordHeader(_ p: UnsafeRawPointer) -> RecordHeader? {
        guard UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)) == recordMagic,
              let kind = RecordKind(rawValue: p.load(fromByteOffset: 4, as: UInt8.self)),
              let codec = Codec(rawValue: p.load(fromByteOffset: 5, as: UInt8.self))
        else { return nil }
        let raw = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        let stored = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        guard raw <= maxRecordLength, stored <= maxRecordLength else { return nil }
        return RecordHeader(kind: kind, codec: codec, rawLength: raw, storedLength: stored,
                            hash: ChunkHash(bytes: p + 16),
                            crc: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 48, as: UInt32.self)))
    }

    /// Checks a whole record (header + payload) against its crc32c.
    static func recordChecksumMatches(_ record: UnsafeRawBufferPointer, header: RecordHeader) -> Bool {
        var crc = crc32c(UnsafeRawBufferPointer(rebasing: record[0..<48]))
        crc = crc32c(UnsafeRawBufferPointer(rebasing: record[recordHeaderSize..<(recordHeaderSize + header.storedLength)]),
                     seed: crc)
        return crc == header.crc
    }
}
