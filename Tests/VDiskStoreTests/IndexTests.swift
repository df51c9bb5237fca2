import XCTest
@testable import VDiskStore

final class IndexTests: XCTestCase {
    func hash(_ i: Int) -> ChunkHash { ChunkHash.of(withUnsafeBytes(of: i) { Array($0) }) }

    func testInsertFlushReopenGrow() throws {
        let dir = temporaryDirectory(self)
        let path = dir + "/chunks"
        try ChunkIndex.create(path: path)
        do {
            let (idx, torn) = try ChunkIndex.open(path: path)
            XCTAssertFalse(torn)
            // Enough to double the table several times (256 buckets × 85 at start).
            for i in 0..<100_000 { idx.insert(hash(i), ChunkLocation(pack: UInt64(i % 7 + 1), offset: UInt32(i), storedLength: 10)) }
            XCTAssertEqual(idx.lookup(hash(5))?.offset, 5)  // pending entries are visible
            try idx.flush(indexedThrough: 7)
            XCTAssertEqual(idx.pendingCount, 0)
        }
        let (idx, torn) = try ChunkIndex.open(path: path)
        XCTAssertFalse(torn)
        XCTAssertEqual(idx.entryCount, 100_000)
        XCTAssertEqual(idx.indexedThrough, 7)
        for i in stride(from: 0, to: 100_000, by: 997) { XCTAssertEqual(idx.lookup(hash(i))?.offset, UInt32(i)) }
        XCTAssertNil(idx.lookup(hash(100_001)))
        // Removal by location.
        try idx.remove { $0.pack == 3 }
        XCTAssertNil(idx.lookup(hash(2)))         // 2 % 7 + 1 == 3
        XCTAssertNotNil(idx.lookup(hash(3)))
    }

    func testTornBucketIsDetected() throws {
        let dir = temporaryDirectory(self)
        let path = dir + "/chunks"
        try ChunkIndex.create(path: path)
        do {
            let (idx, _) = try ChunkIndex.open(path: path)
            for i in 0..<1000 { idx.insert(hash(i), ChunkLocation(pack: 1, offset: UInt32(i), storedLength: 1)) }
            try idx.flush()
        }
        // Damage a bucket and mark the index dirty, as a crash mid-flush would.
        let fd = open(path, O_RDWR)
        var junk: [UInt8] = [0xff, 0xee, 0xdd]
        pwrite(fd, &junk, 3, 4096 * 3 + 100)
        var one: UInt32 = 1
        pwrite(fd, &one, 4, 32)
        close(fd)
        XCTAssertThrowsStoreError(try ChunkIndex.open(path: path)) { if case .corruptStore = $0 { return true }; return false }  // header crc now wrong
    }

    /// A header whose entry count the table cannot hold (but whose CRC checks out) makes the
    /// index rebuild, rather than be trusted: a flush would double the table without end.
    func testImpossibleEntryCountMeansRebuild() throws {
        let dir = temporaryDirectory(self)
        let path = dir + "/chunks"
        try ChunkIndex.create(path: path)
        var header = [UInt8](readFile(path)[0..<40])
        withUnsafeBytes(of: (UInt64(1) << 32 + 200).littleEndian) { header.replaceSubrange(16..<24, with: $0) }
        let crc = header.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<36])) }
        withUnsafeBytes(of: crc.littleEndian) { header.replaceSubrange(36..<40, with: $0) }
        let fd = open(path, O_RDWR)
        _ = header.withUnsafeBytes { pwrite(fd, $0.baseAddress, 40, 0) }
        close(fd)
        let (_, torn) = try ChunkIndex.open(path: path)
        XCTAssertTrue(torn)
    }
}
