import Glibc
import SystemPackage

/// Appends records to pack files: buffered, sealed at a target size, never reopened
/// for appending once closed (a torn tail after a crash is therefore never written over).
///
/// Not thread-safe: one writer per store, serialised by the caller.
final class PackWriter {
    let directory: String
    let storeID: [UInt8]
    let targetSize: Int
    private(set) var nextPack: UInt64
    private var fd: FileDescriptor?
    private var currentPack: UInt64 = 0
    /// Bytes of the current pack already handed to the kernel.
    private var written: Int64 = 0
    private let buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    /// Packs written but not yet fsynced (the current one included).
    private var unsynced: [UInt64: FileDescriptor] = [:]
    private var newFiles = false
    /// Every pack this writer created, oldest first.
    private(set) var createdPacks: [UInt64] = []

    static let bufferSize = 4 << 20

    init(directory: String, storeID: [UInt8], firstPack: UInt64, targetSize: Int) {
        self.directory = directory
        self.storeID = storeID
        self.nextPack = firstPack
        self.targetSize = targetSize
        buffer = .allocate(byteCount: Self.bufferSize, alignment: 4096)
    }

    deinit {
        for (_, f) in unsynced { try? f.close() }
        if let fd, unsynced[currentPack] == nil { try? fd.close() }
        buffer.deallocate()
    }

    /// The pack records are currently appended to, if one is open.
    var openPack: UInt64? { fd == nil ? nil : currentPack }

    /// Appends a record whose payload is already encoded; returns where it lives.
    func append(kind: RecordKind, hash: ChunkHash, codec: Codec, rawLength: Int,
                payload: UnsafeRawBufferPointer) throws -> ChunkLocation {
        let length = PackFormat.recordHeaderSize + payload.count
        if fd == nil || (written + Int64(buffered) + Int64(length) > Int64(targetSize) && written + Int64(buffered) > Int64(PackFormat.headerSize)) {
            try startPack()
        }
        if buffered + length > buffer.count { try drain() }
        let offset = written + Int64(buffered)
        if length > buffer.count {
            // An oversized record (a large namespace): write it straight through.
            var record = [UInt8](repeating: 0, count: length)
            record.withUnsafeMutableBytes { r in
                PackFormat.storeRecordHeader(to: r.baseAddress!, kind: kind, codec: codec, rawLength: rawLength,
                                             hash: hash, payload: payload)
                (r.baseAddress! + PackFormat.recordHeaderSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            }
            do { try record.withUnsafeBytes { (r) throws in try fd!.writeFully(r, at: offset) } }
            catch { throw StoreError.system(error, "write pack", path: directory) }
            written += Int64(length)
        } else {
            let p = buffer.baseAddress! + buffered
            PackFormat.storeRecordHeader(to: p, kind: kind, codec: codec, rawLength: rawLength, hash: hash, payload: payload)
            if payload.count > 0 {
                (p + PackFormat.recordHeaderSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            }
            buffered += length
        }
        return ChunkLocation(pack: currentPack, offset: UInt32(offset), storedLength: UInt32(payload.count))
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

    /// Hands buffered records to the kernel (readers can see them afterwards).
    func drain() throws {
        guard let fd, buffered > 0 else { return }
        do { try fd.writeFully(UnsafeRawBufferPointer(rebasing: buffer[0..<buffered]), at: written) }
        catch { throw StoreError.system(error, "write pack \(PackFormat.fileName(currentPack))", path: directory) }
        written += Int64(buffered)
        buffered = 0
    }

    /// Makes every record appended so far durable: drain, fsync each touched pack,
    /// fsync the packs directory when new files were created.
    func synchronize() throws {
        try drain()
        for (pack, f) in unsynced {
            do { try f.synchronizeData() } catch { throw StoreError.system(error, "fsync pack \(PackFormat.fileName(pack))", path: directory) }
            if pack != currentPack || fd == nil { try? f.close() }
        }
        unsynced.removeAll()
        if newFiles {
            try FileIO.syncDirectory(containing: directory + "/x")
            newFiles = false
        }
    }

    /// Drops buffered records and lets go of every pack without writing more (rollback:
    /// the caller deletes or cuts what was written).
    func abandon() {
        buffered = 0
        for (_, f) in unsynced { try? f.close() }
        if let f = fd, unsynced[currentPack] == nil { try? f.close() }
        unsynced.removeAll()
        fd = nil
    }

    /// Seals the current pack (it will not be appended to again).
    func sealCurrent() throws {
        guard let f = fd else { return }
        try drain()
        if unsynced[currentPack] == nil { try? f.close() }
        fd = nil
    }

    private func startPack() throws {
        if let f = fd {
            try drain()
            // Keep the descriptor until the next synchronize() fsyncs it.
            unsynced[currentPack] = f
            fd = nil
        }
        let pack = nextPack
        let path = directory + "/" + PackFormat.fileName(pack)
        let f = try FileIO.open(path, .readWrite, options: [.create, .exclusiveCreate],
                                permissions: [.ownerReadWrite, .groupRead, .otherRead], context: "create pack")
        let header = PackFormat.encodeHeader(pack: pack, storeID: storeID, created: Self.nowNanoseconds())
        do { try header.withUnsafeBytes { (h) throws in try f.writeFully(h, at: 0) } }
        catch {
            try? f.close()
            unlink(path)
            throw StoreError.system(error, "write pack header", path: path)
        }
        nextPack += 1
        currentPack = pack
        fd = f
        written = Int64(PackFormat.headerSize)
        buffered = 0
        unsynced[pack] = f
        newFiles = true
        createdPacks.append(pack)
    }

    static func nowNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
