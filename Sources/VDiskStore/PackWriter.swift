import Glibc
import SystemPackage

/// Appends records to packs: buffered, sealed at a target size, never reopened for
/// appending once closed (a torn tail after a crash is therefore never written over).
///
/// Not thread-safe: one writer per store, serialised by the caller.
final class PackWriter {
    let backend: StoreBackend
    let storeID: [UInt8]
    let targetSize: Int
    private(set) var nextPack: UInt64
    private var output: PackOutput?
    private var currentPack: UInt64 = 0
    /// Bytes of the current pack already handed to the backend.
    private var written: Int64 = 0
    private let buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    /// Packs written but not yet made durable (the current one included).
    private var unsynced: [UInt64: PackOutput] = [:]
    /// The current pack's records, for its summary (shared backends only).
    private var summary: PackSummary?
    /// Every pack this writer created, oldest first.
    private(set) var createdPacks: [UInt64] = []

    /// Records are handed to the backend a buffer at a time (1 MiB writes). A record still
    /// in the buffer cannot be read from its pack: ``Store`` drains before such a read.
    static let bufferSize = 1 << 20

    init(backend: StoreBackend, storeID: [UInt8], firstPack: UInt64, targetSize: Int) {
        self.backend = backend
        self.storeID = storeID
        self.nextPack = firstPack
        self.targetSize = targetSize
        buffer = .allocate(byteCount: Self.bufferSize, alignment: 4096)
    }

    deinit {
        for (_, o) in unsynced { o.close() }
        output?.close()
        buffer.deallocate()
    }

    /// The pack records are currently appended to, if one is open.
    var openPack: UInt64? { output == nil ? nil : currentPack }

    /// Appends a record whose payload is already encoded; returns where it lives (for a
    /// grouped record of `members` chunks, whose payload starts with the hash table: the
    /// record's own location; ``ChunkLocation/withMember(_:)`` gives each member's).
    func append(kind: RecordKind, hash: ChunkHash, codec: Codec, rawLength: Int,
                payload: UnsafeRawBufferPointer, members: Int = 1) throws -> ChunkLocation {
        let length = PackFormat.recordHeaderSize + payload.count
        if output == nil || (written + Int64(buffered) + Int64(length) > Int64(targetSize) && written + Int64(buffered) > Int64(PackFormat.headerSize)) {
            try startPack()
        }
        if buffered + length > buffer.count { try drain() }
        let offset = written + Int64(buffered)
        if length > buffer.count {
            // An oversized record (a large namespace): write it straight through.
            var record = [UInt8](repeating: 0, count: length)
            record.withUnsafeMutableBytes { r in
                PackFormat.storeRecordHeader(to: r.baseAddress!, kind: kind, codec: codec, rawLength: rawLength,
                                             hash: hash, payload: payload, members: members)
                (r.baseAddress! + PackFormat.recordHeaderSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            }
            try record.withUnsafeBytes { (r) throws in try output!.write(r, at: offset) }
            written += Int64(length)
        } else {
            let p = buffer.baseAddress! + buffered
            PackFormat.storeRecordHeader(to: p, kind: kind, codec: codec, rawLength: rawLength, hash: hash, payload: payload,
                                         members: members)
            if payload.count > 0 {
                (p + PackFormat.recordHeaderSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            }
            buffered += length
        }
        if members > 1 {
            let location = ChunkLocation(pack: currentPack, offset: UInt32(offset), groupStoredLength: UInt32(payload.count),
                                         member: 0, of: members)
            summary?.add(hash: hash, kind: kind, location: location)
            for m in 1..<members {
                summary?.add(hash: ChunkHash(bytes: payload.baseAddress! + (m - 1) * 32), kind: kind, location: location.withMember(m))
            }
            return location
        }
        let location = ChunkLocation(pack: currentPack, offset: UInt32(offset), storedLength: UInt32(payload.count))
        summary?.add(hash: hash, kind: kind, location: location)
        return location
    }

    /// Compresses `raw` (LZ4, or raw when that is not smaller) and appends it.
    func appendCompressing(kind: RecordKind, hash: ChunkHash, raw: UnsafeRawBufferPointer) throws -> ChunkLocation {
        let bound = Compression.bound(raw.count)
        return try withUnsafeTemporaryAllocation(byteCount: bound, alignment: 16) { (out) throws -> ChunkLocation in
            let (codec, n) = Compression.compress(raw, into: out)
            return try append(kind: kind, hash: hash, codec: codec, rawLength: raw.count,
                              payload: UnsafeRawBufferPointer(rebasing: out[0..<n]))
        }
    }

    /// Whether `location` names a record appended but still in the buffer, which readers
    /// cannot see in the pack until ``drain()``.
    func isBuffered(_ location: ChunkLocation) -> Bool {
        output != nil && location.pack == currentPack && Int64(location.offset) >= written
    }

    /// Hands buffered records to the backend (readers can see them afterwards).
    func drain() throws {
        guard let output, buffered > 0 else { return }
        try output.write(UnsafeRawBufferPointer(rebasing: buffer[0..<buffered]), at: written)
        written += Int64(buffered)
        buffered = 0
    }

    /// Makes every record appended so far durable: drain, then synchronize each touched pack
    /// (a new pack's directory entry included).
    func synchronize() throws {
        try drain()
        for (pack, o) in unsynced {
            try o.synchronize()
            if pack != currentPack || output == nil { o.close() }
        }
        unsynced.removeAll()
    }

    /// Drops buffered records and lets go of every pack without writing more (rollback:
    /// the caller deletes or cuts what was written).
    func abandon() {
        buffered = 0
        for (_, o) in unsynced { o.close() }
        output?.close()
        unsynced.removeAll()
        output = nil
        summary = nil
    }

    /// Seals the current pack (it will not be appended to again). On a shared backend the
    /// pack is made durable first, then its summary written, so a summary never lists a
    /// record that is not there.
    func sealCurrent() throws {
        guard let o = output else { return }
        try drain()
        if let s = summary {
            try synchronize()
            try backend.writePackSummary(currentPack, s.encode())
            summary = nil
        }
        if unsynced[currentPack] == nil { o.close() }
        output = nil
    }

    private func startPack() throws {
        if output != nil { try sealCurrent() }
        var pack = nextPack
        while true {
            let header = PackFormat.encodeHeader(pack: pack, storeID: storeID, created: Self.nowNanoseconds())
            if let o = try backend.createPack(pack, header: header) {
                output = o
                break
            }
            // Taken (another host of a shared store, or a leftover): the next number.
            pack += 1
        }
        nextPack = pack + 1
        currentPack = pack
        written = Int64(PackFormat.headerSize)
        buffered = 0
        unsynced[pack] = output
        if backend.isShared { summary = PackSummary() }
        createdPacks.append(pack)
    }

    static func nowNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
