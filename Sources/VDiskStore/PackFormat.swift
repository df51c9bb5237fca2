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

/// Where a record lives: pack number, byte offset of its header, payload length, and for a
/// chunk kept in a grouped record (several chunks compressed together), which member it is.
/// Tree entries carry it so that reading a block needs no index lookup.
///
/// The stored length and the member share one 32-bit field (``lengthField``), as on disk:
/// bits 28–31 hold the group's member count minus one (0: a record of one chunk, whose
/// stored length is the whole field), bits 24–27 the member's position, bits 0–23 the
/// group record's stored length.
public struct ChunkLocation: Hashable, Sendable {
    public var pack: UInt64
    public var offset: UInt32
    /// The stored length, with the member fields of a grouped record (see above).
    public var lengthField: UInt32

    public static let none = ChunkLocation(pack: 0, offset: 0, storedLength: 0)

    /// A record of one chunk (or a tree node, namespace, snapshot table).
    public init(pack: UInt64, offset: UInt32, storedLength: UInt32) {
        self.pack = pack; self.offset = offset; self.lengthField = storedLength
    }

    /// Member `member` of the grouped record of `count` (2...16) chunks at `offset`.
    public init(pack: UInt64, offset: UInt32, groupStoredLength: UInt32, member: Int, of count: Int) {
        precondition(count >= 2 && count <= PackFormat.maxGroupMembers && member >= 0 && member < count
                     && groupStoredLength <= PackFormat.maxGroupStoredLength)
        self.pack = pack; self.offset = offset
        self.lengthField = UInt32(count - 1) << 28 | UInt32(member) << 24 | groupStoredLength
    }

    /// As stored in tree entries and the index.
    public init(pack: UInt64, offset: UInt32, lengthField: UInt32) {
        self.pack = pack; self.offset = offset; self.lengthField = lengthField
    }

    /// Whether the chunk is a member of a grouped record.
    @inline(__always) public var isGrouped: Bool { lengthField >> 28 != 0 }
    /// Payload bytes of the record (the whole group's, for a member).
    @inline(__always) public var storedLength: UInt32 { isGrouped ? lengthField & 0xFF_FFFF : lengthField }
    /// The chunk's position in its grouped record (0 for a record of one chunk).
    @inline(__always) public var member: Int { isGrouped ? Int(lengthField >> 24 & 0xF) : 0 }
    /// Chunks in the record (1 unless grouped).
    @inline(__always) public var memberCount: Int { Int(lengthField >> 28) + 1 }
    /// The location of the record itself (member fields cleared): what a pack read fetches.
    public var record: ChunkLocation { ChunkLocation(pack: pack, offset: offset, storedLength: storedLength) }
    /// Member `m` of the same record.
    func withMember(_ m: Int) -> ChunkLocation {
        isGrouped ? ChunkLocation(pack: pack, offset: offset, groupStoredLength: storedLength, member: m, of: memberCount) : self
    }

    /// Bytes the record occupies in its pack (header + payload).
    public var recordLength: Int { PackFormat.recordHeaderSize + Int(storedLength) }
    /// Whether two locations name the same record (members of one group do).
    func sameRecord(_ other: ChunkLocation) -> Bool { pack == other.pack && offset == other.offset }
}

/// A hash and where its record lives: the unit trees, namespaces and the index hold.
public struct ChunkRef: Hashable, Sendable {
    public var hash: ChunkHash
    public var location: ChunkLocation

    public static let zero = ChunkRef(hash: .zero, location: .none)

    public init(hash: ChunkHash, location: ChunkLocation) { self.hash = hash; self.location = location }

    public var isZero: Bool { hash.isZero }

    /// Encoded size: hash (32) + pack (8) + offset (4) + length field (4).
    static let encodedSize = 48

    func store(to p: UnsafeMutableRawPointer) {
        hash.store(to: p)
        p.storeBytes(of: location.pack.littleEndian, toByteOffset: 32, as: UInt64.self)
        p.storeBytes(of: location.offset.littleEndian, toByteOffset: 40, as: UInt32.self)
        p.storeBytes(of: location.lengthField.littleEndian, toByteOffset: 44, as: UInt32.self)
    }

    init(loading p: UnsafeRawPointer) {
        hash = ChunkHash(bytes: p)
        location = ChunkLocation(
            pack: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt64.self)),
            offset: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt32.self)),
            lengthField: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 44, as: UInt32.self)))
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
///
/// A *grouped* data record (store format 2) holds several chunks of one length compressed
/// together, which compresses better than each chunk alone: flags = the member count
/// (2...16), raw length = count × the chunk length, the header's SHA-256 is member 0's, and
/// the payload starts with the SHA-256 of members 1...count-1 (32 bytes each, not
/// compressed) followed by the encoded concatenation of the members.
public enum PackFormat {
    static let magic: [UInt8] = Array("VDISKPK\0".utf8)
    static let version: UInt32 = 1
    static let headerSize = 64
    static let recordMagic: UInt32 = 0x4B48_4356  // "VCHK" little-endian
    static let recordHeaderSize = 56
    /// Largest raw record accepted on read (guards allocations against damaged headers).
    static let maxRecordLength = 64 << 20
    /// Most chunks in a grouped record, and the largest grouped record (its stored length
    /// must fit 24 bits of ``ChunkLocation/lengthField``).
    static let maxGroupMembers = 16
    static let maxGroupStoredLength: UInt32 = (1 << 24) - 1

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
        /// Chunks in the record: 1, or 2...16 for a grouped data record.
        var memberCount = 1

        /// Raw bytes of each member (the raw length unless grouped).
        var memberLength: Int { rawLength / memberCount }
        /// Where the encoded members start in the payload (after the member hash table).
        var encodedStart: Int { recordHeaderSize + (memberCount - 1) * 32 }
    }

    /// Writes a record header for `payload` at `p` (56 bytes). `members` > 1 makes a grouped
    /// record, whose payload must begin with the hash table.
    static func storeRecordHeader(to p: UnsafeMutableRawPointer, kind: RecordKind, codec: Codec, rawLength: Int,
                                  hash: ChunkHash, payload: UnsafeRawBufferPointer, members: Int = 1) {
        p.storeBytes(of: recordMagic.littleEndian, as: UInt32.self)
        p.storeBytes(of: kind.rawValue, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: codec.rawValue, toByteOffset: 5, as: UInt8.self)
        p.storeBytes(of: UInt16(members > 1 ? members : 0).littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: UInt32(rawLength).littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 12, as: UInt32.self)
        hash.store(to: p + 16)
        var crc = crc32c(UnsafeRawBufferPointer(start: p, count: 48))
        crc = crc32c(payload, seed: crc)
        p.storeBytes(of: crc.littleEndian, toByteOffset: 48, as: UInt32.self)
        p.storeBytes(of: UInt32(0), toByteOffset: 52, as: UInt32.self)
    }

    /// Parses a record header; nil when it is not one (bad magic, kind, codec, lengths or
    /// group fields).
    static func loadRecordHeader(_ p: UnsafeRawPointer) -> RecordHeader? {
        guard UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)) == recordMagic,
              let kind = RecordKind(rawValue: p.load(fromByteOffset: 4, as: UInt8.self)),
              let codec = Codec(rawValue: p.load(fromByteOffset: 5, as: UInt8.self))
        else { return nil }
        let flags = Int(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 6, as: UInt16.self)))
        let raw = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        let stored = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        guard raw <= maxRecordLength, stored <= maxRecordLength else { return nil }
        var members = 1
        if flags != 0 {
            guard kind == .data, flags >= 2, flags <= maxGroupMembers, raw % flags == 0, raw > 0,
                  stored >= (flags - 1) * 32, stored <= Int(maxGroupStoredLength) else { return nil }
            members = flags
        }
        return RecordHeader(kind: kind, codec: codec, rawLength: raw, storedLength: stored,
                            hash: ChunkHash(bytes: p + 16),
                            crc: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 48, as: UInt32.self)),
                            memberCount: members)
    }

    /// The SHA-256 of member `m` of a record whose header and hash table start at `p`; nil
    /// when the record has no such member (a damaged or stale location names it).
    static func memberHash(_ p: UnsafeRawPointer, _ header: RecordHeader, _ m: Int) -> ChunkHash? {
        guard m >= 0, m < header.memberCount else { return nil }
        return m == 0 ? header.hash : ChunkHash(bytes: p + recordHeaderSize + (m - 1) * 32)
    }

    /// Checks a whole record (header + payload) against its crc32c.
    static func recordChecksumMatches(_ record: UnsafeRawBufferPointer, header: RecordHeader) -> Bool {
        var crc = crc32c(UnsafeRawBufferPointer(rebasing: record[0..<48]))
        crc = crc32c(UnsafeRawBufferPointer(rebasing: record[recordHeaderSize..<(recordHeaderSize + header.storedLength)]),
                     seed: crc)
        return crc == header.crc
    }
}
