import Glibc
import SystemPackage

/// Reads and checks records from packs. Thread-safe.
final class PackReader: @unchecked Sendable {
    let backend: StoreBackend
    /// The local disk cache tier, asked before the backend and given what the backend
    /// returned (copy-on-read); set once, before reads start.
    var diskCache: DiskCache?

    /// Why a record could not be returned.
    enum Failure: Error {
        /// Not at that location (pack gone, offset past its end, another record there):
        /// the location is stale, ask the index.
        case notThere
        /// The record is there but its bytes do not check out.
        case damaged(String)
        case system(StoreError)
    }

    init(backend: StoreBackend) { self.backend = backend }

    /// Scratch space for single records and decoded group prefixes (a grouped record is at
    /// most 32 KiB by default): reused rather than allocated per read. 1 MiB at most.
    static let scratch = ScratchPool(size: 64 << 10, keep: 16)

    /// Forgets open handles (after packs were deleted or replaced).
    func closeAll() { backend.forgetOpenPacks() }

    /// Reads the record at `ref.location`, checks its crc32c and that it holds `ref.hash`,
    /// and decodes its payload (a grouped record: the member `ref` names) into `output`
    /// (which must hold the raw length); returns the raw length.
    func read(_ ref: ChunkRef, kind: RecordKind, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        try withRecord(ref, kind: kind) { record in
            let header = try Self.checked(record, ref, kind: kind)
            guard header.memberLength <= output.count else { throw Failure.damaged("\(Self.describe(ref, kind)) is longer than expected") }
            try Self.decode(record, header, ref, kind, into: UnsafeMutableRawBufferPointer(rebasing: output[0..<header.memberLength]))
            return header.memberLength
        }
    }

    /// Reads a record whose raw length is not known in advance (tree nodes, namespaces):
    /// one read, since the location carries the record's length.
    func readBytes(_ ref: ChunkRef, kind: RecordKind) throws -> [UInt8] {
        try withRecord(ref, kind: kind) { record in
            let header = try Self.checked(record, ref, kind: kind)
            var out = [UInt8](repeating: 0, count: header.rawLength)
            try out.withUnsafeMutableBytes { try Self.decode(record, header, ref, kind, into: $0) }
            return out
        }
    }

    /// Reads the whole record `ref` names into a temporary buffer for `body`.
    private func withRecord<T>(_ ref: ChunkRef, kind: RecordKind, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        // (The disk cache keeps records of one chunk only: see DiskCache.)
        if let cache = diskCache, !ref.location.isGrouped, let hit = try cache.withRecord(for: ref, kind: kind, { record, _ in try body(record) }) {
            return hit
        }
        // No record is longer than maxRecordLength: a ref stating more (a damaged tree node
        // or namespace) names no record there, and must not size an allocation.
        guard Int(ref.location.storedLength) <= PackFormat.maxRecordLength else { throw Failure.notThere }
        let length = ref.location.recordLength
        return try Self.scratch.withBuffer(length) { (record) throws -> T in
            let got: Int?
            do { got = try backend.readPack(ref.location.pack, at: Int64(ref.location.offset), into: record) }
            catch { throw Failure.system(StoreError.system(error, "read pack \(PackFormat.fileName(ref.location.pack))", path: backend.name)) }
            guard let n = got else { throw Failure.notThere }
            let bytes = UnsafeRawBufferPointer(rebasing: record[0..<n])
            let result = try body(bytes)
            // Only a record that checked out is cached.
            if let cache = diskCache, !ref.location.isGrouped { _ = cache.insert(ref, kind: kind, record: bytes) }
            return result
        }
    }

    /// The one check of a record read from a pack, for every read path: it must be whole and
    /// hold `ref.hash` with `ref`'s length (for a member of a grouped record: at `ref`'s
    /// position in a group of `ref`'s size; else the location is stale: `notThere`), be of
    /// `kind` and pass its crc32c (else it is damaged).
    static func checked(_ record: UnsafeRawBufferPointer, _ ref: ChunkRef, kind: RecordKind) throws -> PackFormat.RecordHeader {
        guard record.count == ref.location.recordLength, let header = PackFormat.loadRecordHeader(record.baseAddress!),
              header.storedLength == Int(ref.location.storedLength), header.memberCount == ref.location.memberCount,
              PackFormat.memberHash(record.baseAddress!, header, ref.location.member) == ref.hash
        else { throw Failure.notThere }
        guard header.kind == kind else { throw Failure.damaged("\(describe(ref, header.kind)) has the wrong kind") }
        guard PackFormat.recordChecksumMatches(record, header: header) else {
            throw Failure.damaged("\(describe(ref, kind)) fails its checksum")
        }
        return header
    }

    /// Decodes a checked record's payload into exactly `output.count` bytes: the whole
    /// record, or for a grouped record the member `ref` names (only the members up to it
    /// are decompressed).
    static func decode(_ record: UnsafeRawBufferPointer, _ header: PackFormat.RecordHeader, _ ref: ChunkRef, _ kind: RecordKind,
                       into output: UnsafeMutableRawBufferPointer) throws {
        let payload = UnsafeRawBufferPointer(rebasing: record[header.encodedStart...])
        if header.memberCount == 1 {
            guard Compression.decompress(header.codec, payload, into: output) else {
                throw Failure.damaged("\(describe(ref, kind)) does not decompress")
            }
            return
        }
        let m = ref.location.member, length = header.memberLength
        guard output.count == length else { throw Failure.damaged("\(describe(ref, kind)) has the wrong length") }
        let ok = scratch.withBuffer((m + 1) * length) { group -> Bool in
            guard Compression.decompressPrefix(header.codec, payload, rawLength: header.rawLength, into: group) else { return false }
            output.baseAddress!.copyMemory(from: group.baseAddress! + m * length, byteCount: length)
            return true
        }
        guard ok else { throw Failure.damaged("\(describe(ref, kind)) does not decompress") }
    }

    /// Decodes every member of a checked grouped record into `output` (the raw length).
    static func decodeGroup(_ record: UnsafeRawBufferPointer, _ header: PackFormat.RecordHeader, _ ref: ChunkRef,
                            into output: UnsafeMutableRawBufferPointer) throws {
        guard Compression.decompress(header.codec, UnsafeRawBufferPointer(rebasing: record[header.encodedStart...]), into: output) else {
            throw Failure.damaged("\(describe(ref, .data)) does not decompress")
        }
    }

    static func describe(_ ref: ChunkRef, _ kind: RecordKind) -> String {
        "\(kind == .data ? "chunk" : kind == .tree ? "tree node" : "record") \(ref.hash.short) in pack \(PackFormat.fileName(ref.location.pack)) at offset \(ref.location.offset)"
            + (ref.location.isGrouped ? " (member \(ref.location.member) of \(ref.location.memberCount))" : "")
    }
}

/// Scans a pack from its start, record by record, stopping at the first record that is
/// torn or damaged (the tail a crash may leave). Used to rebuild the index and by verify.
struct PackScanner {
    /// One record met by the scan.
    struct Record {
        /// The record's header hash (member 0's, for a grouped record) and its location.
        var ref: ChunkRef
        var kind: RecordKind
        var codec: Codec
        var rawLength: Int
        /// Every chunk the record holds, with its own location: `[ref]`, or one per member
        /// of a grouped record.
        var members: [ChunkRef]
        /// Where the encoded payload starts in `bytes` (after a group's hash table).
        var encodedStart: Int
        /// Header and payload bytes (only when the scan was asked for payloads).
        var bytes: UnsafeRawBufferPointer
        var checksumOK: Bool
    }

    /// Calls `body` for each record of `pack`; returns the offset where valid records end and the pack's length.
    @discardableResult
    static func scan(_ backend: StoreBackend, pack number: UInt64, withPayloads: Bool,
                     _ body: (Record) throws -> Void) throws -> (end: Int64, fileLength: Int64) {
        let file = PackFormat.fileName(number)
        guard let length = try backend.packSize(number) else { throw StoreError.corruptStore(detail: "pack \(file) is missing") }
        func read(_ into: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
            guard let n = try backend.readPack(number, at: offset, into: into) else { throw StoreError.corruptStore(detail: "pack \(file) is missing") }
            return n
        }
        var headerBytes = [UInt8](repeating: 0, count: PackFormat.headerSize)
        let got = try headerBytes.withUnsafeMutableBytes { (b) throws -> Int in try read(b, at: 0) }
        guard got == PackFormat.headerSize else { throw StoreError.corruptStore(detail: "\(file) is not a pack") }
        let pack = try PackFormat.decodeHeader(headerBytes, file: file)
        // Writers name a pack in its header by its own number: any other is damage (and the
        // locations made from it would name another pack, or one the index cannot hold).
        guard pack == number else { throw StoreError.corruptStore(detail: "\(file)'s header names pack \(pack)") }

        // Read in large windows; a record never exceeds maxRecordLength.
        let reader = WindowedReader(window: 8 << 20, largestRecord: PackFormat.recordHeaderSize + PackFormat.maxRecordLength, read: read)
        var offset = Int64(PackFormat.headerSize)
        while offset + Int64(PackFormat.recordHeaderSize) <= length {
            guard let hp = try reader.bytes(at: offset, count: PackFormat.recordHeaderSize),
                  let h = PackFormat.loadRecordHeader(hp) else { break }
            let recLen = PackFormat.recordHeaderSize + h.storedLength
            guard offset + Int64(recLen) <= length else { break }
            var members: [ChunkRef]
            if h.memberCount > 1 {
                guard let p = try reader.bytes(at: offset, count: h.encodedStart) else { break }
                let first = ChunkLocation(pack: pack, offset: UInt32(offset), groupStoredLength: UInt32(h.storedLength),
                                          member: 0, of: h.memberCount)
                members = (0..<h.memberCount).map { ChunkRef(hash: PackFormat.memberHash(p, h, $0)!, location: first.withMember($0)) }
            } else {
                members = []
            }
            var ok = true
            var bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            if withPayloads {
                guard let p = try reader.bytes(at: offset, count: recLen) else { break }
                bytes = UnsafeRawBufferPointer(start: p, count: recLen)
                ok = PackFormat.recordChecksumMatches(bytes, header: h)
            }
            let ref = ChunkRef(hash: h.hash, location: ChunkLocation(pack: pack, offset: UInt32(offset), storedLength: UInt32(h.storedLength)))
            if members.isEmpty { members = [ref] }
            try body(Record(ref: ref, kind: h.kind, codec: h.codec, rawLength: h.rawLength, members: members,
                            encodedStart: h.encodedStart, bytes: bytes, checksumOK: ok))
            offset += Int64(recLen)
        }
        return (offset, length)
    }
}
