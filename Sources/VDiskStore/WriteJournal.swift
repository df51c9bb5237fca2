import Glibc
import SystemPackage

/// The write-back journal: an append-only log of block writes on local disk, in segments
/// `journal-<seq>.log`. A write is acknowledged once appended; fsync makes the segment
/// durable. The flusher freezes the current segment, moves its blocks into the store,
/// commits, and deletes it. A crash leaves segments behind; the next mount replays them.
///
/// Record: `magic u32 "VJRN" | kind u8 | 0 u8 | path length u16 | block u64 |
/// image size after u64 | payload length u32 | crc32c u32 | path | payload`, the crc32c
/// covering header bytes 0..<28, path and payload. Kinds: 1 data (payload: the block),
/// 2 zero (no payload), 3 ref (payload: a ChunkRef of a chunk already in the store),
/// 4 size (no payload: the image grew to the size field, e.g. by fallocate).
/// Replay stops at the first record that does not check out (a torn tail); a record whose
/// path is not UTF-8 (no image can have it) is skipped. Since a record that failed to be
/// written would hide every record after it, disk space for appends is allocated ahead
/// (so a full disk fails the reservation, not the write), and fsync waits for appends
/// placed before it to be written.
final class WriteJournal: @unchecked Sendable {
    static let magic: UInt32 = 0x4E52_4A56
    static let headerSize = 32

    enum Kind: UInt8 { case data = 1, zero = 2, ref = 3, size = 4 }

    /// One segment file. Kept open while any dirty entry points into it.
    final class Segment: @unchecked Sendable {
        let sequence: UInt64
        let path: String
        let fd: FileDescriptor
        /// Bytes reserved so far (appends go at the end).
        var size: Int64
        /// Bytes from the start whose disk space is allocated (``Volume/reserveJournal(_:)``).
        var allocated: Int64 = 0
        /// False once the file system has said it cannot allocate ahead.
        var allocatesAhead = true
        init(sequence: UInt64, path: String, fd: FileDescriptor, size: Int64) {
            self.sequence = sequence; self.path = path; self.fd = fd; self.size = size
        }
        deinit { try? fd.close() }
    }

    /// A record met by ``replay(directory:_:)``.
    struct Record {
        var kind: Kind
        var path: String
        var block: UInt64
        var sizeAfter: UInt64
        var payload: [UInt8]
        /// Where the payload starts in the segment file (from the record's own lengths).
        var payloadOffset: Int64
    }

    let directory: String

    init(directory: String) throws {
        self.directory = directory
        try FileIO.makeDirectory(directory)
    }

    static func fileName(_ seq: UInt64) -> String { "journal-\(seq).log" }

    /// Sequence numbers of the segments on disk, oldest first.
    func segmentsOnDisk() throws -> [UInt64] {
        try FileIO.list(directory).compactMap { name -> UInt64? in
            guard name.hasPrefix("journal-"), name.hasSuffix(".log") else { return nil }
            return UInt64(name.dropFirst(8).dropLast(4))
        }.sorted()
    }

    /// Creates segment `seq` (durably: the directory is fsynced).
    func createSegment(_ seq: UInt64) throws -> Segment {
        let path = directory + "/" + Self.fileName(seq)
        let fd = try FileIO.open(path, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite], context: "create journal")
        try FileIO.syncDirectory(containing: path)
        return Segment(sequence: seq, path: path, fd: fd, size: 0)
    }

    /// Removes a segment whose blocks are committed to the store.
    func delete(_ segment: Segment) {
        unlink(segment.path)
        try? FileIO.syncDirectory(containing: segment.path)
    }

    /// Bytes one record takes.
    static func recordSize(pathBytes: Int, payload: Int) -> Int { headerSize + pathBytes + payload }

    /// Encodes a record into `to` (which holds `recordSize` bytes); returns the payload's offset within it.
    static func encode(to p: UnsafeMutableRawPointer, kind: Kind, path: [UInt8], block: UInt64, sizeAfter: UInt64,
                       payload: UnsafeRawBufferPointer) -> Int {
        p.storeBytes(of: magic.littleEndian, as: UInt32.self)
        p.storeBytes(of: kind.rawValue, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: UInt8(0), toByteOffset: 5, as: UInt8.self)
        p.storeBytes(of: UInt16(path.count).littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: block.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: sizeAfter.littleEndian, toByteOffset: 16, as: UInt64.self)
        p.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 24, as: UInt32.self)
        path.withUnsafeBytes { (p + headerSize).copyMemory(from: $0.baseAddress!, byteCount: path.count) }
        if payload.count > 0 { (p + headerSize + path.count).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
        var crc = crc32c(UnsafeRawBufferPointer(start: p, count: 28))
        crc = crc32c(UnsafeRawBufferPointer(start: p + headerSize, count: path.count + payload.count), seed: crc)
        p.storeBytes(of: crc.littleEndian, toByteOffset: 28, as: UInt32.self)
        return headerSize + path.count
    }

    /// Reads every whole record of segment file `path`, oldest first.
    static func replay(path: String, _ body: (Record) throws -> Void) throws {
        // Read in windows, so replaying a segment of up to the journal's limit (1 GiB) needs
        // a few MiB of memory, not the segment's size.
        let fd = try FileIO.open(path, .readOnly, context: "open")
        defer { try? fd.close() }
        do { try replay(fd, path: path, body) } catch let e as BodyError { throw e.error } catch let e as StoreError { throw e } catch {
            throw StoreError.system(error, "read \(path)", path: path)
        }
    }

    /// What `body` threw: handed to the caller as it is (not as a read error).
    private struct BodyError: Error { var error: Error }

    private static func replay(_ fd: FileDescriptor, path: String, _ body: (Record) throws -> Void) throws {
        let length = try fd.byteSize()
        let reader = WindowedReader(window: 4 << 20, largestRecord: headerSize + Int(UInt16.max) + (1 << 20)) {
            try fd.readFully(into: $0, at: $1)
        }
        var off: Int64 = 0
        while off + Int64(headerSize) <= length {
            guard var p = try reader.bytes(at: off, count: headerSize),
                  UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)) == magic,
                  let kind = Kind(rawValue: p.load(fromByteOffset: 4, as: UInt8.self)) else { break }
            let pathLen = Int(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 6, as: UInt16.self)))
            let payLen = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
            let total = headerSize + pathLen + payLen
            guard payLen <= 1 << 20, off + Int64(total) <= length, let whole = try reader.bytes(at: off, count: total) else { break }
            p = whole
            var crc = crc32c(UnsafeRawBufferPointer(start: p, count: 28))
            crc = crc32c(UnsafeRawBufferPointer(start: p + headerSize, count: pathLen + payLen), seed: crc)
            guard crc == UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 28, as: UInt32.self)) else { break }
            // Image paths are UTF-8; a lossy decoding could name another image (and would
            // not have the record's length), so a path that is not is no image's: skipped.
            guard let imagePath = String(validating: UnsafeRawBufferPointer(start: p + headerSize, count: pathLen), as: UTF8.self) else {
                log("vdiskfs: journal \(path): the record at offset \(off) names a path that is not UTF-8; skipped")
                off += Int64(total)
                continue
            }
            let payload = Array(UnsafeRawBufferPointer(start: p + headerSize + pathLen, count: payLen))
            let record = Record(kind: kind, path: imagePath,
                                block: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                                sizeAfter: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
                                payload: payload, payloadOffset: off + Int64(headerSize + pathLen))
            do { try body(record) } catch { throw BodyError(error: error) }
            off += Int64(total)
        }
    }
}

/// A reader-writer lock (pthread): appends share it, the flusher's segment switch takes it alone.
final class ReadWriteLock: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
    init() { pthread_rwlock_init(lock, nil) }
    deinit { pthread_rwlock_destroy(lock); lock.deallocate() }
    func withReadLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_rwlock_rdlock(lock); defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
    func withWriteLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_rwlock_wrlock(lock); defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
