import Foundation
import Glibc
import XCTest
@testable import VDiskStore

/// The local disk cache tier, on real files (and a real tmpfs for the full-disk case).
final class DiskCacheTests: XCTestCase {
    /// A pack record for `payload` as the store writes it (LZ4 when that is smaller), and a
    /// ref naming it at some pack location.
    struct TestRecord {
        var ref: ChunkRef
        var bytes: [UInt8]
        var kind: RecordKind
    }

    static func makeRecord(_ raw: [UInt8], kind: RecordKind = .data, pack: UInt64 = 1, offset: UInt32 = 64) -> TestRecord {
        let hash = ChunkHash.of(raw)
        var payload = [UInt8](repeating: 0, count: Compression.bound(raw.count))
        let (codec, n) = raw.withUnsafeBytes { r in payload.withUnsafeMutableBytes { Compression.compress(r, into: $0) } }
        payload.removeLast(payload.count - n)
        var rec = [UInt8](repeating: 0, count: PackFormat.recordHeaderSize)
        rec.withUnsafeMutableBytes { r in
            payload.withUnsafeBytes {
                PackFormat.storeRecordHeader(to: r.baseAddress!, kind: kind, codec: codec, rawLength: raw.count, hash: hash, payload: $0)
            }
        }
        rec += payload
        return TestRecord(ref: ChunkRef(hash: hash, location: ChunkLocation(pack: pack, offset: offset, storedLength: UInt32(n))),
                          bytes: rec, kind: kind)
    }

    /// `count` distinct records of `size` raw bytes: incompressible, or half compressible.
    static func makeRecords(_ count: Int, size: Int = 4096, seed: UInt64 = 1, compressible: Bool = false) -> [TestRecord] {
        var rng = SeededBytes(seed: seed)
        return (0..<count).map { i in
            let raw = compressible ? rng.bytes(size / 2) + [UInt8](repeating: UInt8(i & 0xff), count: size - size / 2) : rng.bytes(size)
            return makeRecord(raw, offset: UInt32(64 + i * 4200))
        }
    }

    @discardableResult
    func insert(_ cache: DiskCache, _ r: TestRecord) -> Bool {
        r.bytes.withUnsafeBytes { cache.insert(r.ref, kind: r.kind, record: $0) }
    }

    /// Collects lines sent to the store's log while `body` runs.
    func capturingLog<T>(_ body: () throws -> T) rethrows -> (T, [String]) {
        let lines = Locked<[String]>([])
        let saved = logHandler
        logHandler = { line in lines.withLock { $0.append(line) } }
        defer { logHandler = saved }
        let result = try body()
        return (result, lines.withLock { $0 })
    }

    /// Where `needle` is in one of the cache's segment files.
    func locate(_ needle: [UInt8], in dir: String) -> (path: String, offset: Int)? {
        for i in 0..<DiskCache.segmentCount {
            let path = dir + "/" + DiskCache.Segment.fileName(i)
            let bytes = readFile(path)
            guard bytes.count >= needle.count else { continue }
            var at = 0
            while at + needle.count <= bytes.count {
                if bytes[at] == needle[0] && Array(bytes[at..<(at + needle.count)]) == needle { return (path, at) }
                at += 1
            }
        }
        return nil
    }

    /// Flips a byte in place (the cache keeps its files open: no replacing them).
    func flipByte(_ path: String, at offset: Int) {
        let fd = open(path, O_RDWR)
        precondition(fd >= 0)
        defer { close(fd) }
        var b: UInt8 = 0
        precondition(pread(fd, &b, 1, off_t(offset)) == 1)
        b ^= 0x5a
        precondition(pwrite(fd, &b, 1, off_t(offset)) == 1)
    }

    func segmentFilesBytes(_ dir: String) -> Int64 {
        (0..<DiskCache.segmentCount).reduce(Int64(0)) { $0 + Int64(FileIO.size(dir + "/" + DiskCache.Segment.fileName($1))) }
    }

    // MARK: basics

    func testMissThenHitVerifiedAgainstHashLengthAndKind() throws {
        let dir = temporaryDirectory(self) + "/cache"
        let cache = try DiskCache(directory: dir, capacityBytes: 4 << 20)
        let r = Self.makeRecords(1, compressible: true)[0]
        XCTAssertNil(cache.record(for: r.ref, kind: .data))
        XCTAssertTrue(insert(cache, r))
        XCTAssertEqual(cache.record(for: r.ref, kind: .data), r.bytes)
        // Keyed by hash: a ref to another pack location (after a repack) finds it too.
        var moved = r.ref
        moved.location.pack = 99
        moved.location.offset = 12345
        XCTAssertEqual(cache.record(for: moved, kind: .data), r.bytes)
        // Another kind, or another stored length (re-encoded), is a miss.
        XCTAssertNil(cache.record(for: r.ref, kind: .tree))
        var longer = r.ref
        longer.location.lengthField += 1
        XCTAssertNil(cache.record(for: longer, kind: .data))
        // The zero-copy variant hands over the checked header.
        let raw = try cache.withRecord(for: r.ref, kind: .data) { record, header -> [UInt8] in
            var out = [UInt8](repeating: 0, count: header.rawLength)
            try out.withUnsafeMutableBytes { try PackReader.decode(record, header, r.ref, .data, into: $0) }
            return out
        }
        XCTAssertEqual(raw.map(ChunkHash.of), r.ref.hash)
        // A record that does not match its ref is not cached.
        let other = Self.makeRecords(1, seed: 7)[0]
        XCTAssertFalse(other.bytes.withUnsafeBytes { cache.insert(r.ref, kind: .data, record: $0) })
        let s = cache.statistics
        XCTAssertEqual(s.hits, 3)
        XCTAssertEqual(s.misses, 3)
        XCTAssertEqual(s.entries, 1)
        XCTAssertEqual(s.written, 1)
        XCTAssertEqual(s.dropped, 0)
        XCTAssertEqual(s.bytes, Int64(DiskCache.Segment.headerSize + r.bytes.count))
        XCTAssertEqual(segmentFilesBytes(dir), s.bytes)
    }

    func testSecondOpenerIsRefusedWithOneLine() throws {
        let dir = temporaryDirectory(self)
        let cache = try DiskCache(directory: dir, capacityBytes: 1 << 20)
        XCTAssertThrowsStoreError(try DiskCache(directory: dir, capacityBytes: 1 << 20)) { e in
            guard case .busy = e else { return false }
            return e.description.contains("disk cache \(dir)") && e.description.contains("pid \(getpid())") && !e.description.contains("\n")
        }
        XCTAssertThrowsStoreError(try DiskCache(directory: dir + "/x", capacityBytes: 1000)) { if case .invalidArgument = $0 { return true }; return false }
        withExtendedLifetime(cache) {}
    }

    func testIndexMemoryIsFixedAtSixteenBytesPerSlot() throws {
        let cache = try DiskCache(directory: temporaryDirectory(self), capacityBytes: 1 << 30)
        XCTAssertEqual(cache.indexBytes, 8 << 20)  // 1 GiB / 2 KiB slots of 16 bytes
        let small = try DiskCache(directory: temporaryDirectory(self), capacityBytes: 1 << 20, bytesPerEntry: 4096)
        XCTAssertEqual(small.indexBytes, 256 * 16)
    }

    func testSurvivesReopen() throws {
        let dir = temporaryDirectory(self)
        let records = Self.makeRecords(300, compressible: true)
        let more = Self.makeRecords(50, seed: 2)
        do {
            let cache = try DiskCache(directory: dir, capacityBytes: 8 << 20)
            for r in records { XCTAssertTrue(insert(cache, r)) }
        }
        let bytes: Int64
        do {
            let cache = try DiskCache(directory: dir, capacityBytes: 8 << 20)
            XCTAssertEqual(cache.statistics.entries, records.count)
            for r in records { XCTAssertEqual(cache.record(for: r.ref, kind: .data), r.bytes) }
            // Appends continue after what is there, and survive the next reopen too.
            for r in more { XCTAssertTrue(insert(cache, r)) }
            bytes = cache.statistics.bytes
        }
        let again = try DiskCache(directory: dir, capacityBytes: 8 << 20)
        XCTAssertEqual(again.statistics.entries, records.count + more.count)
        XCTAssertEqual(again.statistics.bytes, bytes)
        for r in records + more { XCTAssertEqual(again.record(for: r.ref, kind: .data), r.bytes) }
    }

    // MARK: eviction

    func testEvictionKeepsBytesWithinCapacity() throws {
        let dir = temporaryDirectory(self)
        let capacity: Int64 = 2 << 20
        let records = Self.makeRecords(1500)  // ~6 MiB: three turns of the ring
        do {
            let cache = try DiskCache(directory: dir, capacityBytes: capacity)
            for (i, r) in records.enumerated() {
                XCTAssertTrue(insert(cache, r))
                if i % 50 == 0 { XCTAssertLessThanOrEqual(segmentFilesBytes(dir), capacity) }
                XCTAssertLessThanOrEqual(cache.statistics.bytes, capacity)
            }
            XCTAssertLessThanOrEqual(segmentFilesBytes(dir), capacity)
            XCTAssertEqual(cache.statistics.bytes, segmentFilesBytes(dir))
            // The newest are there, the oldest are gone, and nothing found is wrong.
            var found = 0
            for r in records {
                if let b = cache.record(for: r.ref, kind: .data) { XCTAssertEqual(b, r.bytes); found += 1 }
            }
            XCTAssertEqual(found, cache.statistics.entries)
            XCTAssertGreaterThan(found, 15 * 31)  // 15 full segments of 31 records, and the newest
            XCTAssertNil(cache.record(for: records[0].ref, kind: .data))
            XCTAssertEqual(cache.record(for: records[1499].ref, kind: .data), records[1499].bytes)
        }
        // Reopened with half the size, it cuts its segments down to fit.
        let smaller = try DiskCache(directory: dir, capacityBytes: capacity / 2)
        XCTAssertLessThanOrEqual(segmentFilesBytes(dir), capacity / 2)
        XCTAssertEqual(smaller.statistics.bytes, segmentFilesBytes(dir))
        var found = 0
        for r in records {
            if let b = smaller.record(for: r.ref, kind: .data) { XCTAssertEqual(b, r.bytes); found += 1 }
        }
        XCTAssertEqual(found, smaller.statistics.entries)
        XCTAssertGreaterThan(found, 100)
    }

    func testHotEntrySurvivesEvictionOfColderOnes() throws {
        let cache = try DiskCache(directory: temporaryDirectory(self), capacityBytes: 1 << 20)
        let hot = Self.makeRecords(1, seed: 99)[0]
        XCTAssertTrue(insert(cache, hot))
        let cold = Self.makeRecords(1500)  // ~6 MiB of inserts through a 1 MiB cache
        for (i, r) in cold.enumerated() {
            insert(cache, r)
            // Read the hot entry every ~64 KiB of inserts (one segment).
            if i % 15 == 0 { XCTAssertEqual(cache.record(for: hot.ref, kind: .data), hot.bytes, "hot entry lost after \(i) inserts") }
        }
        XCTAssertEqual(cache.record(for: hot.ref, kind: .data), hot.bytes)
        XCTAssertNil(cache.record(for: cold[0].ref, kind: .data))
        XCTAssertNil(cache.record(for: cold[500].ref, kind: .data))
        let s = cache.statistics
        XCTAssertGreaterThan(s.promoted, 4)
        XCTAssertLessThan(s.promoted, 20)  // re-appended about once per 3/4 turn, not on every hit
    }

    func testFullBucketEvictsItsOldestEntry() throws {
        // 16 slots for 1 MiB: the table, not the bytes, limits what is cached.
        let cache = try DiskCache(directory: temporaryDirectory(self), capacityBytes: 1 << 20, bytesPerEntry: 64 << 10)
        let records = Self.makeRecords(100, size: 1024)
        for r in records { XCTAssertTrue(insert(cache, r)) }
        let s = cache.statistics
        XCTAssertLessThanOrEqual(s.entries, 16)
        var found = 0
        for r in records {
            if let b = cache.record(for: r.ref, kind: .data) { XCTAssertEqual(b, r.bytes); found += 1 }
        }
        XCTAssertEqual(found, s.entries)
        XCTAssertEqual(cache.record(for: records[99].ref, kind: .data), records[99].bytes)
    }

    // MARK: damage

    func testCorruptEntryIsDroppedLoggedOnceAndRefetchable() throws {
        let dir = temporaryDirectory(self)
        let records = Self.makeRecords(10, compressible: true)
        let victim = records[3], victim2 = records[6]
        do {
            let cache = try DiskCache(directory: dir, capacityBytes: 4 << 20)
            for r in records { XCTAssertTrue(insert(cache, r)) }
            // A flipped payload byte, and a flipped byte in another record's hash.
            let at = try XCTUnwrap(locate(victim.bytes, in: dir))
            flipByte(at.path, at: at.offset + PackFormat.recordHeaderSize + 100)
            let at2 = try XCTUnwrap(locate(victim2.bytes, in: dir))
            flipByte(at2.path, at: at2.offset + 20)
            let (results, lines) = capturingLog {
                [cache.record(for: victim.ref, kind: .data), cache.record(for: victim.ref, kind: .data),
                 cache.record(for: victim2.ref, kind: .data), cache.record(for: victim2.ref, kind: .data)]
            }
            XCTAssertEqual(results.compactMap { $0 }.count, 0)
            XCTAssertEqual(lines.count, 2, "\(lines)")
            XCTAssertTrue(lines[0].contains("dropped") && lines[0].contains(victim.ref.hash.short) && lines[0].contains("checksum"), lines[0])
            var s = cache.statistics
            XCTAssertEqual(s.dropped, 2)
            XCTAssertEqual(s.entries, 8)
            // The others are untouched; the caller refetches and inserts, and it is served again.
            for r in records where r.ref != victim.ref && r.ref != victim2.ref {
                XCTAssertEqual(cache.record(for: r.ref, kind: .data), r.bytes)
            }
            XCTAssertTrue(insert(cache, victim))
            XCTAssertEqual(cache.record(for: victim.ref, kind: .data), victim.bytes)
            s = cache.statistics
            XCTAssertEqual(s.entries, 9)
            XCTAssertEqual(s.dropped, 2)
        }
        // On reopen, the scan skips the damaged records (their lengths are sound) and finds the rest.
        let (reopened, openLines) = try capturingLog { try DiskCache(directory: dir, capacityBytes: 4 << 20) }
        XCTAssertEqual(reopened.statistics.dropped, 2)
        XCTAssertEqual(openLines.count, 1, "\(openLines)")
        XCTAssertNil(reopened.record(for: victim2.ref, kind: .data))
        for r in records where r.ref != victim2.ref { XCTAssertEqual(reopened.record(for: r.ref, kind: .data), r.bytes) }
    }

    func testTornTailAfterCrashLosesOnlyTheTail() throws {
        let dir = temporaryDirectory(self)
        let records = Self.makeRecords(12)
        do {
            let cache = try DiskCache(directory: dir, capacityBytes: 4 << 20)  // 256 KiB segments: all in one
            for r in records { XCTAssertTrue(insert(cache, r)) }
        }
        // The "crash": the last record only half written.
        let at = try XCTUnwrap(locate(records[11].bytes, in: dir))
        XCTAssertEqual(truncate(at.path, off_t(at.offset + 2000)), 0)
        let more = Self.makeRecords(2, seed: 5)
        do {
            let cache = try DiskCache(directory: dir, capacityBytes: 4 << 20)
            XCTAssertEqual(cache.statistics.entries, 11)
            XCTAssertEqual(cache.statistics.dropped, 0)  // a torn tail is not damage
            for r in records.prefix(11) { XCTAssertEqual(cache.record(for: r.ref, kind: .data), r.bytes) }
            XCTAssertNil(cache.record(for: records[11].ref, kind: .data))
            XCTAssertEqual(FileIO.size(at.path), at.offset)  // the torn tail is cut off
            // Appends go where the tail was; a header cut short ends a scan the same way.
            XCTAssertTrue(insert(cache, records[11]))
            for r in more { XCTAssertTrue(insert(cache, r)) }
        }
        let end = try XCTUnwrap(locate(more[1].bytes, in: dir))
        XCTAssertEqual(truncate(end.path, off_t(end.offset + 30)), 0)
        let again = try DiskCache(directory: dir, capacityBytes: 4 << 20)
        XCTAssertEqual(again.statistics.entries, 13)
        for r in records + [more[0]] { XCTAssertEqual(again.record(for: r.ref, kind: .data), r.bytes) }
    }

    func testDamagedSegmentHeaderEmptiesOnlyThatSegment() throws {
        let dir = temporaryDirectory(self)
        let records = Self.makeRecords(60)  // 1 MiB cache: 15 records a segment, four segments
        do {
            let cache = try DiskCache(directory: dir, capacityBytes: 1 << 20)
            for r in records { XCTAssertTrue(insert(cache, r)) }
        }
        flipByte(dir + "/" + DiskCache.Segment.fileName(1), at: 30)
        let cache = try DiskCache(directory: dir, capacityBytes: 1 << 20)
        var found = 0
        for r in records {
            if let b = cache.record(for: r.ref, kind: .data) { XCTAssertEqual(b, r.bytes); found += 1 }
        }
        XCTAssertEqual(found, cache.statistics.entries)
        XCTAssertEqual(found, 60 - 15)
        XCTAssertNil(cache.record(for: records[0].ref, kind: .data))
        XCTAssertEqual(FileIO.size(dir + "/" + DiskCache.Segment.fileName(1)), 0)
    }

    // MARK: concurrency

    /// A lookup whose segment is recycled and rewritten between finding the entry and reading
    /// it must miss: not serve what is there now, not call it damage.
    func testLookupRacingSegmentRecyclingMisses() throws {
        let cache = try DiskCache(directory: temporaryDirectory(self), capacityBytes: 1 << 20)
        let first = Self.makeRecords(1, seed: 42)[0]
        XCTAssertTrue(insert(cache, first))
        let filler = Self.makeRecords(16 * 16, seed: 43)  // a whole turn of the ring and more
        cache.afterFindForTesting = { [unowned cache, self] in
            cache.afterFindForTesting = nil
            for r in filler { self.insert(cache, r) }
        }
        let (result, lines) = capturingLog { cache.record(for: first.ref, kind: .data) }
        XCTAssertNil(result)
        XCTAssertEqual(cache.racedLookups, 1)
        XCTAssertEqual(lines, [])
        XCTAssertEqual(cache.statistics.dropped, 0)
        XCTAssertNil(locate(first.bytes, in: cache.directory))  // its segment was recycled meanwhile
        XCTAssertNil(cache.record(for: first.ref, kind: .data))
    }

    func testConcurrentReadersAndWriters() throws {
        let dir = temporaryDirectory(self)
        let records = Self.makeRecords(600, size: 4096, compressible: true) + Self.makeRecords(600, size: 4096, seed: 11)
        do {
            // 2 MiB: constant recycling under the readers.
            let cache = try DiskCache(directory: dir, capacityBytes: 2 << 20)
            let wrong = Locked(0)
            let served = Locked(0)
            DispatchQueue.concurrentPerform(iterations: 8) { t in
                var rng = SeededBytes(seed: UInt64(t + 1) * 7919)
                var good = 0, bad = 0
                for _ in 0..<3000 {
                    // Skewed: half the lookups go to the first 100 records.
                    let i = rng.next() % 2 == 0 ? Int(rng.next() % 100) : Int(rng.next() % UInt64(records.count))
                    let r = records[i]
                    if let b = cache.record(for: r.ref, kind: .data) {
                        if b == r.bytes { good += 1 } else { bad += 1 }
                    } else {
                        r.bytes.withUnsafeBytes { _ = cache.insert(r.ref, kind: .data, record: $0) }
                    }
                }
                wrong.withLock { $0 += bad }
                served.withLock { $0 += good }
            }
            let s = cache.statistics
            XCTAssertEqual(wrong.withLock { $0 }, 0)
            XCTAssertEqual(s.dropped, 0)
            XCTAssertEqual(s.hits, served.withLock { $0 })
            XCTAssertEqual(s.hits + s.misses, 8 * 3000)
            XCTAssertGreaterThan(s.hits, 8 * 3000 / 4)
            XCTAssertLessThanOrEqual(s.bytes, 2 << 20)
            XCTAssertLessThanOrEqual(segmentFilesBytes(dir), 2 << 20)
            XCTAssertGreaterThan(s.written * 3000, 3 * (2 << 20))  // the ring turned several times under the readers
        }
        // What is indexed is what is on disk.
        let reopened = try DiskCache(directory: dir, capacityBytes: 2 << 20)
        for r in records { if let b = reopened.record(for: r.ref, kind: .data) { XCTAssertEqual(b, r.bytes) } }
        XCTAssertEqual(reopened.statistics.dropped, 0)
    }

    // MARK: full disk

    func testFullDiskSkipsInsertsAndStillServes() throws {
        let mountPoint = temporaryDirectory(self) + "/small"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        guard run("/bin/mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mountPoint]) == 0 else {
            throw XCTSkip("cannot mount a tmpfs here (needs root)")
        }
        defer { _ = run("/bin/umount", [mountPoint]) }
        let dir = mountPoint + "/cache"
        let capacity: Int64 = 8 << 20  // more than the disk holds
        let cache = try DiskCache(directory: dir, capacityBytes: capacity)
        let records = Self.makeRecords(1200, seed: 77)  // ~4.8 MiB
        var cached: [TestRecord] = []
        let ((), lines) = capturingLog {
            for r in records.prefix(800) where insert(cache, r) { cached.append(r) }
        }
        XCTAssertGreaterThan(cached.count, 300)
        XCTAssertLessThan(cached.count, 520)
        XCTAssertEqual(lines.count, 1, "\(lines)")
        XCTAssertTrue(lines.first?.contains("no space left") ?? false, "\(lines)")
        let s = cache.statistics
        XCTAssertGreaterThanOrEqual(s.skipped, 800 - cached.count)
        // Everything that was cached is still served, and verified.
        for r in cached { XCTAssertEqual(cache.record(for: r.ref, kind: .data), r.bytes) }
        // Once the pause is over, the ring moves on: it frees its oldest segments and the
        // cache settles at what the disk holds.
        cache.retryInterval = 0
        let ((), later) = capturingLog {
            var written = 0
            for r in records.suffix(400) where insert(cache, r) { written += 1 }
            XCTAssertGreaterThan(written, 100)
        }
        XCTAssertTrue(later.contains { $0.contains("writing again") }, "\(later)")
        for r in records { if let b = cache.record(for: r.ref, kind: .data) { XCTAssertEqual(b, r.bytes) } }
        XCTAssertEqual(cache.record(for: records[1199].ref, kind: .data), records[1199].bytes)
        withExtendedLifetime(cache) {}
    }

    func run(_ tool: String, _ arguments: [String]) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = arguments
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }

    // MARK: measurement (not an assertion)

    /// Lookup throughput of 4 KiB records from the page cache, on 1 and 8 threads; insert
    /// throughput and the open scan's rate. Runs only with VDISK_MEASURE=1 (in release:
    /// `swift build -c release --build-tests -Xswiftc -enable-testing`).
    func testMeasureLookupThroughput() throws {
        guard ProcessInfo.processInfo.environment["VDISK_MEASURE"] == "1" else { throw XCTSkip("set VDISK_MEASURE=1") }
        func seconds(since start: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        let dir = temporaryDirectory(self)
        let records = Self.makeRecords(16384, seed: 3)  // 64 MiB of incompressible 4 KiB chunks
        let refs = records.map(\.ref)
        do {
            let cache = try DiskCache(directory: dir, capacityBytes: 256 << 20)
            var start = DispatchTime.now().uptimeNanoseconds
            for r in records { XCTAssertTrue(insert(cache, r)) }
            print(String(format: "disk cache inserts, 1 thread: %.0f MB/s", 64 * 1.048576 / seconds(since: start)))
            for threads in [1, 8] {
                let perThread = 400_000 / threads
                start = DispatchTime.now().uptimeNanoseconds
                DispatchQueue.concurrentPerform(iterations: threads) { t in
                    var i = t * 977
                    var sum = 0
                    for _ in 0..<perThread {
                        i = (i &+ 7919) % refs.count
                        sum &+= cache.withRecord(for: refs[i], kind: .data) { record, _ in Int(record[100]) } ?? 0
                    }
                    XCTAssertGreaterThan(sum, 0)
                }
                let n = Double(perThread * threads)
                let t = seconds(since: start)
                print(String(format: "disk cache lookups (withRecord), %d thread%@: %.0f lookups/s, %.0f MB/s of 4 KiB records",
                             threads, threads == 1 ? "" : "s", n / t, n * 4096 / t / 1e6))
            }
            start = DispatchTime.now().uptimeNanoseconds
            var copied = 0
            for k in 0..<100_000 { copied &+= cache.record(for: refs[(k &* 7919) % refs.count], kind: .data)?.count ?? 0 }
            print(String(format: "disk cache lookups (record(for:) copying), 1 thread: %.0f MB/s", Double(copied) / seconds(since: start) / 1e6))
            XCTAssertEqual(cache.statistics.dropped, 0)
        }
        let start = DispatchTime.now().uptimeNanoseconds
        let reopened = try DiskCache(directory: dir, capacityBytes: 256 << 20)
        let t = seconds(since: start)
        XCTAssertEqual(reopened.statistics.entries, records.count)
        print(String(format: "disk cache open: %.3f s for 64 MiB cached (%.0f MB/s from the page cache)", t, 64 * 1.048576 / t))
    }
}
