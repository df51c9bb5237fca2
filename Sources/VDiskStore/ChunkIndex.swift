import Glibc
import SystemPackage

/// The on-disk index from chunk hash to location, used to find duplicates on write and
/// to follow a stale tree pointer after packs were rewritten. The read path does not use it.
///
/// It is a hash table of 4 KiB buckets chosen by the top bits of the hash (SHA-256 spreads
/// evenly), mapped read-only for lookups and updated with pwrite. Memory does not grow with
/// the store: the table lives in the page cache, which the kernel sizes; only entries added
/// since the last flush are held on the heap. It doubles when it passes 70 % full. A mount
/// (``readsBuckets``) reads buckets with pread instead of touching the mapping (lookups,
/// flushes, removals), so the table does not count in its RSS.
///
/// It is derived data: a header flag marks it dirty while buckets are being written, and a
/// crc32c per bucket catches a torn write, in which case it is rebuilt from the packs.
/// `indexedThrough` names the highest pack all of whose records are in it; packs after
/// that are scanned in when the store opens.
final class ChunkIndex: @unchecked Sendable {
    static let pageSize = 4096
    static let bucketHeader = 8
    /// Entry: the first 20 bytes of the hash, pack u32, offset u32, length field u32 (stored
    /// length and group member, see ``ChunkLocation``).
    /// 160 bits of SHA-256 keep accidental and deliberate collisions out of reach (2^80 work).
    static let entrySize = 32
    static let bucketCapacity = (pageSize - bucketHeader) / entrySize  // 127
    static let magic: [UInt8] = Array("VDISKIX2".utf8)
    static let initialBits = 8

    private struct State {
        var fd: FileDescriptor
        var bits: Int
        var map: UnsafeMutableRawPointer
        var mapLength: Int
        var entryCount: UInt64
        var indexedThrough: UInt64
        var pending: [ChunkHash: ChunkLocation] = [:]
        var pendingLimit = ChunkIndex.defaultPendingLimit
        var readsBuckets = false
    }

    let path: String
    private let state: Locked<State>

    /// Pending entries past which the owner should flush (bounded heap use: about 100 bytes
    /// each). Import keeps the default (fewer, larger index flushes); a mount lowers it.
    var pendingLimit: Int {
        get { state.withLock { $0.pendingLimit } }
        set { state.withLock { $0.pendingLimit = newValue } }
    }
    static let defaultPendingLimit = 262_144
    /// Buckets a flush rewrites (or a growth reads) between two drops of the mapped pages
    /// from RSS. A fault maps up to 16 neighbouring pages that are in the page cache too (the
    /// kernel's fault-around), so at most 16 × this many pages (16 MiB) count in the
    /// process's RSS while it runs.
    static let bucketsPerTrim = 256
    /// Whether lookups and flushes read buckets with pread (a mount, whose memory is
    /// bounded) rather than through the mapping. A lookup through the mapping faults in 16
    /// pages that then count in RSS; through pread it is a syscall and a 4 KiB copy from the
    /// page cache. Off for import, whose lookups cost less through the mapping.
    var readsBuckets: Bool {
        get { state.withLock { $0.readsBuckets } }
        set { state.withLock { $0.readsBuckets = newValue } }
    }

    private init(path: String, state: State) {
        self.path = path
        self.state = Locked(state)
    }

    deinit {
        state.withLock { s in
            munmap(s.map, s.mapLength)
            try? s.fd.close()
        }
    }

    // MARK: creating and opening

    /// Creates an empty index at `path` (replacing any file there).
    static func create(path: String) throws {
        try writeEmptyTable(path: path, bits: initialBits, indexedThrough: 0)
    }

    private static func writeEmptyTable(path: String, bits: Int, indexedThrough: UInt64) throws {
        let tmp = path + ".new"
        let fd = try FileIO.open(tmp, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead], context: "create index")
        do {
            try fd.truncate(to: Int64((1 << bits) + 1) * Int64(pageSize))
            var page = [UInt8](repeating: 0, count: pageSize)
            page.withUnsafeMutableBytes { setBucketChecksum($0.baseAddress!) }
            // An empty bucket's crc is the same everywhere; write it to every bucket.
            var chunk = [UInt8]()
            for _ in 0..<min(256, 1 << bits) { chunk += page }
            var b = 0
            while b < (1 << bits) {
                let n = min(256, (1 << bits) - b)
                try chunk.withUnsafeBytes { (c) throws in
                    try fd.writeFully(UnsafeRawBufferPointer(rebasing: c[0..<(n * pageSize)]), at: Int64(b + 1) * Int64(pageSize))
                }
                b += n
            }
            try writeHeader(fd, bits: bits, entryCount: 0, indexedThrough: indexedThrough, dirty: false)
            try fd.synchronize()
            try fd.close()
        } catch {
            try? fd.close()
            throw StoreError.system(error, "write index", path: tmp)
        }
        if rename(tmp, path) != 0 { throw StoreError.system(Errno(rawValue: errno), "rename index", path: path) }
        try FileIO.syncDirectory(containing: path)
    }

    /// Opens the index. `needsRecovery` is true when it was left dirty and a bucket is torn:
    /// the caller must rebuild it.
    static func open(path: String) throws -> (ChunkIndex, needsRebuild: Bool) {
        let fd = try FileIO.open(path, .readWrite, context: "open index")
        var header = [UInt8](repeating: 0, count: 40)
        do { _ = try header.withUnsafeMutableBytes { (b) throws -> Int in try fd.readFully(into: b, at: 0) } }
        catch { try? fd.close(); throw StoreError.system(error, "read index", path: path) }
        guard Array(header[0..<8]) == magic else {
            try? fd.close()
            throw StoreError.corruptStore(detail: "index \(path) has no index header")
        }
        var r = ByteReader(header, what: "index header")
        r.offset = 8
        let version = try r.u32()
        let bits = Int(try r.u32())
        let count = try r.u64()
        let through = try r.u64()
        let dirty = try r.u32()
        let crc = try r.u32()
        let expect = header.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<36])) }
        guard version == 1, crc == expect, bits >= 1, bits <= 40 else {
            try? fd.close()
            throw StoreError.corruptStore(detail: "index \(path) has a damaged header")
        }
        let length = ((1 << bits) + 1) * pageSize
        let fileLength: Int64
        do { fileLength = try fd.byteSize() } catch { try? fd.close(); throw StoreError.system(error, "stat index", path: path) }
        guard fileLength >= Int64(length), let map = mmap(nil, length, PROT_READ, MAP_SHARED, fd.rawValue, 0), map != MAP_FAILED else {
            try? fd.close()
            throw StoreError.corruptStore(detail: "index \(path) is truncated")
        }
        let index = ChunkIndex(path: path, state: State(fd: fd, bits: bits, map: map, mapLength: length,
                                                        entryCount: count, indexedThrough: through))
        // A count the table cannot hold is damage (trusting it would grow the table without end).
        var torn = count > UInt64(bucketCapacity) << UInt64(bits)
        if dirty != 0 && !torn {
            index.state.withLock { s in
                for b in 0..<(1 << s.bits) where !bucketChecksumMatches(s.map + (b + 1) * pageSize) { torn = true; break }
            }
        }
        return (index, torn)
    }

    private static func writeHeader(_ fd: FileDescriptor, bits: Int, entryCount: UInt64, indexedThrough: UInt64, dirty: Bool) throws {
        var w = ByteWriter(capacity: 40)
        w.raw(magic)
        w.u32(1)
        w.u32(UInt32(bits))
        w.u64(entryCount)
        w.u64(indexedThrough)
        w.u32(dirty ? 1 : 0)
        let crc = w.bytes.withUnsafeBytes { crc32c($0) }
        w.u32(crc)
        try w.bytes.withUnsafeBytes { (b) throws in try fd.writeFully(b, at: 0) } as Void
    }

    // MARK: buckets

    /// Entries in a bucket (a damaged count past the bucket's capacity reads as full).
    private static func bucketCount(_ p: UnsafeRawPointer) -> Int {
        min(Int(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self))), bucketCapacity)
    }

    private static func setBucketChecksum(_ p: UnsafeMutableRawPointer) {
        let crc = crc32c(UnsafeRawBufferPointer(start: p + bucketHeader, count: pageSize - bucketHeader),
                         seed: crc32c(UnsafeRawBufferPointer(start: p, count: 4)))
        p.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    private static func bucketChecksumMatches(_ p: UnsafeRawPointer) -> Bool {
        let crc = crc32c(UnsafeRawBufferPointer(start: p + bucketHeader, count: pageSize - bucketHeader),
                         seed: crc32c(UnsafeRawBufferPointer(start: p, count: 4)))
        return crc == UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) && bucketCount(p) <= bucketCapacity
    }

    @inline(__always)
    private static func bucket(of hash: ChunkHash, bits: Int) -> Int { Int(hash.w0 >> UInt64(64 - bits)) }

    private static func find(_ hash: ChunkHash, in page: UnsafeRawPointer) -> ChunkLocation? {
        let n = min(bucketCount(page), bucketCapacity)
        var e = page + bucketHeader
        for _ in 0..<n {
            if entryMatches(e, hash) { return entryLocation(e) }
            e += Self.entrySize
        }
        return nil
    }

    @inline(__always)
    static func entryMatches(_ e: UnsafeRawPointer, _ h: ChunkHash) -> Bool {
        UInt64(bigEndian: e.loadUnaligned(as: UInt64.self)) == h.w0
            && UInt64(bigEndian: e.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) == h.w1
            && UInt32(bigEndian: e.loadUnaligned(fromByteOffset: 16, as: UInt32.self)) == UInt32(truncatingIfNeeded: h.w2 >> 32)
    }

    @inline(__always)
    static func entryLocation(_ e: UnsafeRawPointer) -> ChunkLocation {
        ChunkLocation(pack: UInt64(UInt32(littleEndian: e.loadUnaligned(fromByteOffset: 20, as: UInt32.self))),
                      offset: UInt32(littleEndian: e.loadUnaligned(fromByteOffset: 24, as: UInt32.self)),
                      lengthField: UInt32(littleEndian: e.loadUnaligned(fromByteOffset: 28, as: UInt32.self)))
    }

    /// The top 64 bits of the hash an entry holds (enough to choose its bucket).
    @inline(__always)
    static func entryBucketKey(_ e: UnsafeRawPointer) -> UInt64 { UInt64(bigEndian: e.loadUnaligned(as: UInt64.self)) }

    static func storeEntry(_ e: UnsafeMutableRawPointer, _ h: ChunkHash, _ l: ChunkLocation) {
        precondition(l.pack <= UInt64(UInt32.max), "pack numbers above 2^32 do not fit the index")
        e.storeBytes(of: h.w0.bigEndian, as: UInt64.self)
        e.storeBytes(of: h.w1.bigEndian, toByteOffset: 8, as: UInt64.self)
        e.storeBytes(of: UInt32(truncatingIfNeeded: h.w2 >> 32).bigEndian, toByteOffset: 16, as: UInt32.self)
        e.storeBytes(of: UInt32(l.pack).littleEndian, toByteOffset: 20, as: UInt32.self)
        e.storeBytes(of: l.offset.littleEndian, toByteOffset: 24, as: UInt32.self)
        e.storeBytes(of: l.lengthField.littleEndian, toByteOffset: 28, as: UInt32.self)
    }

    // MARK: public operations

    /// Where the chunk with `hash` lives, if the store has it.
    func lookup(_ hash: ChunkHash) -> ChunkLocation? {
        state.withLock { s in
            if let l = s.pending[hash] { return l }
            let b = Self.bucket(of: hash, bits: s.bits)
            guard s.readsBuckets else { return Self.find(hash, in: s.map + (b + 1) * Self.pageSize) }
            return withUnsafeTemporaryAllocation(byteCount: Self.pageSize, alignment: 16) { page in
                // A bucket that cannot be read is treated as not holding the chunk: the
                // chunk is stored again (a duplicate, never a wrong location).
                guard Self.readBucket(s, b, into: page) else { return nil }
                return Self.find(hash, in: UnsafeRawPointer(page.baseAddress!))
            }
        }
    }

    /// Reads bucket `b` into `page` with pread (without mapping it). False on a read error.
    private static func readBucket(_ s: State, _ b: Int, into page: UnsafeMutableRawBufferPointer) -> Bool {
        (try? s.fd.readFully(into: page, at: Int64(b + 1) * Int64(pageSize))) == pageSize
    }

    /// Copies bucket `b` into `page` for rewriting: with pread when ``readsBuckets``, else
    /// from the mapping.
    private func loadBucket(_ s: State, _ b: Int, into page: UnsafeMutableRawBufferPointer) throws {
        if s.readsBuckets {
            guard Self.readBucket(s, b, into: page) else { throw StoreError.io(errno: EIO, context: "read index bucket \(b) of \(path)") }
        } else {
            page.baseAddress!.copyMemory(from: s.map + (b + 1) * Self.pageSize, byteCount: Self.pageSize)
        }
    }

    /// Where the chunk with `hash` lives if it was added since the last flush: the cheap
    /// re-check, under the store's write lock, for a chunk another thread stored between a
    /// caller's ``lookup(_:)`` and its append (missing one only costs a duplicate record).
    func lookupPending(_ hash: ChunkHash) -> ChunkLocation? {
        state.withLock { $0.pending[hash] }
    }

    /// Records a chunk; it reaches disk at the next ``flush(indexedThrough:)``.
    func insert(_ hash: ChunkHash, _ location: ChunkLocation) {
        state.withLock { s in s.pending[hash] = location }
    }

    var pendingCount: Int { state.withLock { $0.pending.count } }
    var indexedThrough: UInt64 { state.withLock { $0.indexedThrough } }
    var entryCount: UInt64 { state.withLock { $0.entryCount + UInt64($0.pending.count) } }
    var fileBytes: Int64 { state.withLock { Int64($0.mapLength) } }

    /// Writes pending entries into their buckets and makes them durable. Callers must have
    /// made the packs those entries point into durable first (data before index).
    func flush(indexedThrough through: UInt64? = nil) throws {
        try state.withLock { (s) throws in
            if s.pending.isEmpty && (through == nil || through == s.indexedThrough) { return }
            while Double(s.entryCount) + Double(s.pending.count) > 0.7 * Double(Self.bucketCapacity << s.bits) {
                try grow(&s)
            }
            do {
                try Self.writeHeader(s.fd, bits: s.bits, entryCount: s.entryCount, indexedThrough: s.indexedThrough, dirty: true)
                try s.fd.synchronizeData()
            } catch { throw StoreError.system(error, "write index", path: path) }
            // Pending entries in bucket order (one flat array: little memory beside the
            // pending table, and the buckets are written front to back).
            let bits = s.bits
            let sorted = s.pending.map { (bucket: Self.bucket(of: $0.key, bits: bits), hash: $0.key, location: $0.value) }
                .sorted { $0.bucket < $1.bucket }
            var page = [UInt8](repeating: 0, count: Self.pageSize)
            var sinceTrim = 0
            var next = 0
            while next < sorted.count {
                let b = sorted[next].bucket
                var end = next + 1
                while end < sorted.count && sorted[end].bucket == b { end += 1 }
                let items = sorted[next..<end].lazy.map { ($0.hash, $0.location) }
                next = end
                sinceTrim += 1
                if sinceTrim >= Self.bucketsPerTrim && !s.readsBuckets { _ = madvise(s.map, s.mapLength, MADV_DONTNEED); sinceTrim = 0 }
                var placed: [ChunkHash] = []
                var added = 0
                try page.withUnsafeMutableBytes { (p) throws in
                    try loadBucket(s, b, into: p)
                    var n = Self.bucketCount(p.baseAddress!)
                    for (h, l) in items {
                        // Replace the entry for a hash already present (a newer location wins).
                        var slot = n
                        for i in 0..<n where Self.entryMatches(p.baseAddress! + Self.bucketHeader + i * Self.entrySize, h) { slot = i; break }
                        if slot == n {
                            // A full bucket keeps the rest pending; the table doubles below.
                            if n == Self.bucketCapacity { continue }
                            n += 1
                            added += 1
                        }
                        Self.storeEntry(p.baseAddress! + Self.bucketHeader + slot * Self.entrySize, h, l)
                        placed.append(h)
                    }
                    p.baseAddress!.storeBytes(of: UInt16(n).littleEndian, as: UInt16.self)
                    Self.setBucketChecksum(p.baseAddress!)
                    do { try s.fd.writeFully(UnsafeRawBufferPointer(p), at: Int64(b + 1) * Int64(Self.pageSize)) }
                    catch { throw StoreError.system(error, "write index", path: path) }
                }
                s.entryCount += UInt64(added)
                for h in placed { s.pending[h] = nil }
            }
            if s.pending.isEmpty, let through { s.indexedThrough = max(s.indexedThrough, through) }
            if s.pending.isEmpty { s.pending = [:] }  // give back the table's capacity
            do {
                try s.fd.synchronizeData()
                try Self.writeHeader(s.fd, bits: s.bits, entryCount: s.entryCount, indexedThrough: s.indexedThrough, dirty: false)
                try s.fd.synchronizeData()
            } catch { throw StoreError.system(error, "write index", path: path) }
            if !s.pending.isEmpty { try grow(&s) }
            // The mapped pages stay in the page cache but leave this process's RSS, so the
            // index's share of an import's memory does not grow with the store.
            if !s.readsBuckets { _ = madvise(s.map, s.mapLength, MADV_DONTNEED) }
        }
        if pendingCount > 0 { try flush(indexedThrough: through) }
    }

    /// Removes every entry whose location `drop` selects (undoing a failed write, rebuilding).
    func remove(where drop: (ChunkLocation) -> Bool) throws {
        try state.withLock { (s) throws in
            s.pending = s.pending.filter { !drop($0.value) }
            do {
                try Self.writeHeader(s.fd, bits: s.bits, entryCount: s.entryCount, indexedThrough: s.indexedThrough, dirty: true)
                try s.fd.synchronizeData()
                var page = [UInt8](repeating: 0, count: Self.pageSize)
                for b in 0..<(1 << s.bits) {
                    var n = 0
                    var keep = 0
                    var changed = false
                    try page.withUnsafeMutableBytes { (p) throws in
                        try loadBucket(s, b, into: p)
                        n = Self.bucketCount(p.baseAddress!)
                        for i in 0..<n {
                            let e = p.baseAddress! + Self.bucketHeader + i * Self.entrySize
                            if drop(Self.entryLocation(e)) { changed = true; continue }
                            if keep != i { (p.baseAddress! + Self.bucketHeader + keep * Self.entrySize).copyMemory(from: e, byteCount: Self.entrySize) }
                            keep += 1
                        }
                        if changed {
                            let tail = p.baseAddress! + Self.bucketHeader + keep * Self.entrySize
                            tail.initializeMemory(as: UInt8.self, repeating: 0, count: (n - keep) * Self.entrySize)
                            p.baseAddress!.storeBytes(of: UInt16(keep).littleEndian, as: UInt16.self)
                            Self.setBucketChecksum(p.baseAddress!)
                        }
                    }
                    if changed {
                        try page.withUnsafeBytes { (p) throws in try s.fd.writeFully(p, at: Int64(b + 1) * Int64(Self.pageSize)) }
                        s.entryCount -= min(s.entryCount, UInt64(n - keep))
                    }
                }
                try s.fd.synchronizeData()
                try Self.writeHeader(s.fd, bits: s.bits, entryCount: s.entryCount, indexedThrough: s.indexedThrough, dirty: false)
                try s.fd.synchronizeData()
            } catch { throw StoreError.system(error, "write index", path: path) }
        }
    }

    /// Doubles the table: bucket b splits into 2b and 2b+1 by the next hash bit.
    private func grow(_ s: inout State) throws {
        let newBits = s.bits + 1
        let tmp = path + ".new"
        let fd = try FileIO.open(tmp, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead], context: "grow index")
        do {
            try fd.truncate(to: Int64((1 << newBits) + 1) * Int64(Self.pageSize))
            let batch = 128
            var out = [UInt8](repeating: 0, count: 2 * batch * Self.pageSize)
            var b = 0
            while b < (1 << s.bits) {
                let n = min(batch, (1 << s.bits) - b)
                out.withUnsafeMutableBytes { o in
                    o.initializeMemory(as: UInt8.self, repeating: 0)
                    for i in 0..<n {
                        let src = s.map + (b + i + 1) * Self.pageSize
                        let lo = o.baseAddress! + (2 * i) * Self.pageSize
                        let hi = lo + Self.pageSize
                        var nlo = 0, nhi = 0
                        for j in 0..<Self.bucketCount(src) {
                            let e = src + Self.bucketHeader + j * Self.entrySize
                            if Int(Self.entryBucketKey(e) >> UInt64(64 - newBits)) & 1 == 0 {
                                (lo + Self.bucketHeader + nlo * Self.entrySize).copyMemory(from: e, byteCount: Self.entrySize); nlo += 1
                            } else {
                                (hi + Self.bucketHeader + nhi * Self.entrySize).copyMemory(from: e, byteCount: Self.entrySize); nhi += 1
                            }
                        }
                        lo.storeBytes(of: UInt16(nlo).littleEndian, as: UInt16.self)
                        hi.storeBytes(of: UInt16(nhi).littleEndian, as: UInt16.self)
                        Self.setBucketChecksum(lo)
                        Self.setBucketChecksum(hi)
                    }
                }
                try out.withUnsafeBytes { (o) throws in
                    try fd.writeFully(UnsafeRawBufferPointer(rebasing: o[0..<(2 * n * Self.pageSize)]), at: Int64(2 * b + 1) * Int64(Self.pageSize))
                }
                // The old table's pages read so far leave RSS (the whole table would otherwise).
                _ = madvise(s.map + (b + 1) * Self.pageSize, n * Self.pageSize, MADV_DONTNEED)
                b += n
            }
            try Self.writeHeader(fd, bits: newBits, entryCount: s.entryCount, indexedThrough: s.indexedThrough, dirty: false)
            try fd.synchronize()
        } catch {
            try? fd.close()
            unlink(tmp)
            throw StoreError.system(error, "grow index", path: tmp)
        }
        if rename(tmp, path) != 0 { try? fd.close(); throw StoreError.system(Errno(rawValue: errno), "rename index", path: path) }
        try FileIO.syncDirectory(containing: path)
        let length = ((1 << newBits) + 1) * Self.pageSize
        guard let map = mmap(nil, length, PROT_READ, MAP_SHARED, fd.rawValue, 0), map != MAP_FAILED else {
            throw StoreError.io(errno: errno, context: "map index")
        }
        munmap(s.map, s.mapLength)
        try? s.fd.close()
        s.fd = fd
        s.map = map
        s.mapLength = length
        s.bits = newBits
    }

    /// Replaces the index with an empty one (before a rebuild).
    static func reset(path: String) throws { try writeEmptyTable(path: path, bits: initialBits, indexedThrough: 0) }
}
