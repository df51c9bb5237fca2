import XCTest
@testable import VDiskStore

/// Damaged or hostile bytes in the parsers (the inputs fuzz/ found): an error, a part left
/// raw or a record skipped — never a trap, a huge allocation or wrong data.
final class DamagedInputTests: XCTestCase {
    func putLE32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) { for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    func putLE64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) { for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }

    func disk(_ bytes: [UInt8]) -> DiskReader {
        DiskReader(size: UInt64(bytes.count)) { buffer, offset in
            let n = min(buffer.count, bytes.count - Int(offset))
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: n) }
            return n
        }
    }

    // MARK: partition tables and ext file systems (import)

    /// A protective MBR and a GPT header whose table of `entries` 128-byte entries is at `tableLBA`.
    func gptDisk(tableLBA: UInt64, entries: [(first: UInt64, last: UInt64)]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 64 * 1024)
        b[510] = 0x55; b[511] = 0xAA
        b[446 + 4] = 0xEE
        putLE32(&b, 446 + 8, 1); putLE32(&b, 446 + 12, 127)
        b.replaceSubrange(512..<520, with: Array("EFI PART".utf8))
        putLE64(&b, 512 + 0x48, tableLBA)
        putLE32(&b, 512 + 0x50, UInt32(entries.count))
        putLE32(&b, 512 + 0x54, 128)
        for (i, e) in entries.enumerated() {
            let o = 1024 + i * 128
            b[o] = 0xAF  // a nonzero type GUID
            putLE64(&b, o + 32, e.first)
            putLE64(&b, o + 40, e.last)
        }
        return b
    }

    func testGPTWithOverflowingBoundsKeepsOnlyPartitionsThatFit() throws {
        // The table's LBA × 512 overflows: no table.
        let farTable = gptDisk(tableLBA: 1 << 62, entries: [(8, 15)])
        XCTAssertEqual(try PartitionTable.read(disk(farTable)), [])
        _ = DiskLayout.probe(disk(farTable), blockSize: 4096)
        // Entries whose first LBA, length or end overflow are ignored; the good one stays.
        let entries: [(first: UInt64, last: UInt64)] = [
            (1 << 60, (1 << 60) + 7),        // first × 512 overflows
            (0, UInt64.max),                 // last − first + 1 overflows
            (8, 1 << 56),                    // length × 512 overflows
            ((1 << 54) - 8, (1 << 55) - 1),  // offset + length is 2^64: overflows
            ((1 << 55) - 1, (1 << 55) + (1 << 54)),  // offset + length overflows
            (16, 31),
        ]
        let d = gptDisk(tableLBA: 2, entries: entries)
        XCTAssertEqual(try PartitionTable.read(disk(d)), [Partition(offset: 16 * 512, length: 16 * 512, label: "gpt6")])
        let layout = DiskLayout.probe(disk(d), blockSize: 4096)
        XCTAssertEqual(layout.freeBytes, 0)
    }

    func testExtBlockCountWhoseByteSizeOverflowsIsStoredRaw() {
        var b = [UInt8](repeating: 0, count: 64 * 1024)
        let sb = 1024
        b[sb + 0x38] = 0x53; b[sb + 0x39] = 0xEF      // magic
        putLE32(&b, sb + 0x18, 0)                     // 1 KiB blocks
        putLE32(&b, sb + 0x14, 1)                     // first data block
        putLE32(&b, sb + 0x20, 8192)                  // blocks per group
        b[sb + 0x3A] = 1                              // clean
        putLE32(&b, sb + 0x60, 0x80)                  // 64bit
        putLE32(&b, sb + 0x04, 64)
        putLE32(&b, sb + 0x150, 0xFFFF_FFFF)          // count ≈ 2^64: × 1024 overflows
        XCTAssertThrowsError(try Ext4Bitmap(disk(b), base: 0, length: UInt64(b.count))) { e in
            guard case Ext4Bitmap.Problem.invalid = e else { return XCTFail("\(e)") }
        }
        let layout = DiskLayout.probe(disk(b), blockSize: 4096)
        XCTAssertEqual(layout.freeBytes, 0)
        XCTAssertTrue(layout.notes.contains { $0.hasPrefix("warning: disk:") && $0.hasSuffix("stored raw") }, "\(layout.notes)")
    }

    // MARK: namespace records

    func testNamespaceWithHugeEntryCountFailsWithoutReserving() {
        var w = ByteWriter(capacity: 64)
        w.raw(Namespace.magic); w.u32(1); w.u64(3); w.u32(UInt32.max)
        XCTAssertThrowsStoreError(try Namespace.decode(w.bytes)) { if case .corruptStore = $0 { return true }; return false }
    }

    func testImageSizesAndDepthsDecodeOnlyWhenTheTreeCanHoldThem() throws {
        XCTAssertEqual(ImageRoot.blockCount(UInt64.max, 4096), 1 << 52)
        XCTAssertEqual(ImageRoot.blockCount(UInt64.max, 65536), 1 << 48)
        XCTAssertEqual(ImageRoot.blockCount(4097, 4096), 2)
        XCTAssertEqual(ImageRoot.blockCount(0, 4096), 0)
        XCTAssertEqual(TreeNode.depth(forBlocks: ImageRoot.blockCount(UInt64.max, 4096)), ImageRoot.maxDepth)
        XCTAssertEqual(TreeNode.depth(forBlocks: UInt64.max), 7)  // no overflow either
        func record(size: UInt64, depth: UInt8) throws -> [UInt8] {
            var ns = Namespace()
            try ns.addImage("a.img", root: ImageRoot(size: size, blockSize: 4096, depth: depth, root: .zero), now: 1)
            return ns.encode()
        }
        // The largest image decodes, and its reads do not overflow.
        let big = try Namespace.decode(try record(size: UInt64.max, depth: 6)).entries["a.img"]!.image!
        XCTAssertEqual(big.blockCount, 1 << 52)
        XCTAssertEqual(TreeNode.span(ofLevel: Int(big.depth) - 1), 1 << 50)
        for (size, depth) in [(UInt64.max, UInt8(5)), (4096 * 1025, 1), (0, 7), (0, 8)] {
            XCTAssertThrowsStoreError(try Namespace.decode(try record(size: size, depth: depth))) { if case .corruptStore = $0 { return true }; return false }
        }
        // A deeper tree than the size needs is fine (within the limit).
        XCTAssertEqual(try Namespace.decode(try record(size: 4096, depth: 3)).entries["a.img"]?.image?.depth, 3)
    }

    // MARK: journal replay

    func journalRecord(_ kind: WriteJournal.Kind, path: [UInt8], block: UInt64, sizeAfter: UInt64, payload: [UInt8] = []) -> [UInt8] {
        var r = [UInt8](repeating: 0, count: WriteJournal.recordSize(pathBytes: path.count, payload: payload.count))
        r.withUnsafeMutableBytes { o in
            payload.withUnsafeBytes { _ = WriteJournal.encode(to: o.baseAddress!, kind: kind, path: path, block: block, sizeAfter: sizeAfter, payload: $0) }
        }
        return r
    }

    func testJournalReplayTakesPayloadOffsetsFromTheRecordsAndStopsAtImpossibleBlocks() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        var v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        _ = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0)
        try v.close()
        let one = [UInt8](repeating: 1, count: 4096), two = [UInt8](repeating: 2, count: 4096), three = [UInt8](repeating: 3, count: 4096)
        let segment = journalRecord(.data, path: Array("a.img".utf8), block: 0, sizeAfter: 4 * 4096, payload: one)
            // A path that is not UTF-8 (3 bytes; decoded lossily it would be 9): skipped.
            + journalRecord(.data, path: [0xFF, 0xFE, 0xFD], block: 0, sizeAfter: 4 * 4096, payload: three)
            + journalRecord(.data, path: Array("a.img".utf8), block: 1, sizeAfter: 4 * 4096, payload: two)
            // A block whose byte offset overflows: replay stops here, as at a torn tail.
            + journalRecord(.zero, path: Array("a.img".utf8), block: 1 << 62, sizeAfter: 4 * 4096)
            + journalRecord(.data, path: Array("a.img".utf8), block: 2, sizeAfter: 4 * 4096, payload: three)
        let path = dir + "/s/journal/" + WriteJournal.fileName(1)
        writeFile(path, segment)
        var records: [WriteJournal.Record] = []
        try WriteJournal.replay(path: path) { records.append($0) }
        XCTAssertEqual(records.map(\.block), [0, 1, 1 << 62, 2])
        // Offsets from the records' own lengths (the skipped record's path counts as 3 bytes).
        XCTAssertEqual(records[0].payloadOffset, 32 + 5)
        XCTAssertEqual(records[1].payloadOffset, (32 + 5 + 4096) + (32 + 3 + 4096) + 32 + 5)
        for r in records where r.kind == .data {
            XCTAssertEqual(Array(segment[Int(r.payloadOffset)..<(Int(r.payloadOffset) + 4096)]), r.payload)
        }

        v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        let id = try v.lookup(parent: Volume.rootNode, name: "a.img").node
        var out = [UInt8](repeating: 0xAA, count: 3 * 4096)
        let n = try out.withUnsafeMutableBytes { try v.read(id, offset: 0, into: $0) }
        XCTAssertEqual(n, 3 * 4096)
        XCTAssertEqual(Array(out[0..<4096]), one)
        XCTAssertEqual(Array(out[4096..<8192]), two)
        XCTAssertEqual(Array(out[8192...]), [UInt8](repeating: 0, count: 4096), "a record after the damaged one is not replayed")
        try v.close()
        XCTAssertTrue(try Verifier.verify(try Store.open(at: dir + "/s", access: .readOnly)).isClean)
    }

    // MARK: disk cache, packs

    func testDiskCacheHeaderWithImpossibleGenerationIsRejected() {
        XCTAssertEqual(DiskCache.Segment.decodeHeader(DiskCache.Segment.encodeHeader(index: 3, generation: 35), index: 3), 35)
        let g = DiskCache.Segment.maxGeneration
        XCTAssertEqual(DiskCache.Segment.decodeHeader(DiskCache.Segment.encodeHeader(index: 0, generation: g), index: 0), g)
        for bad in [g + 16, 1 << 63, UInt64.max - 15] {
            let index = Int(bad & 15)
            XCTAssertNil(DiskCache.Segment.decodeHeader(DiskCache.Segment.encodeHeader(index: index, generation: bad), index: index))
        }
    }

    func testPackNumberPastTheIndexOrNotItsOwnIsACorruptStore() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readWrite)
        let backend = s.backend as! DirectoryBackend
        let first = try s.packNumbers().last!
        let bytes = readFile(backend.packPath(first))
        s.close()
        // A pack filed under a number the index cannot hold.
        writeFile(backend.packPath(1 << 32), bytes)
        XCTAssertThrowsStoreError(try Store.open(at: dir + "/s", access: .readWrite)) { if case .corruptStore = $0 { return true }; return false }
        unlink(backend.packPath(1 << 32))
        // A pack whose header names another pack (here: the first one's copy as a later one).
        writeFile(backend.packPath(first + 1), bytes)
        XCTAssertThrowsStoreError(try Store.open(at: dir + "/s", access: .readWrite)) {
            if case .corruptStore(let detail) = $0 { return detail.contains("header names pack") }; return false
        }
    }

    func testRefStatingAnImpossibleRecordLengthIsNotThereWithoutAllocating() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readOnly)
        // 256 MiB − 1 (the most a ref can state), past any record.
        let ref = ChunkRef(hash: ChunkHash.of([1]), location: ChunkLocation(pack: 1, offset: 64, storedLength: (1 << 28) - 1))
        XCTAssertThrowsError(try s.packs.readBytes(ref, kind: .tree)) { e in
            guard case PackReader.Failure.notThere = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsStoreError(try s.readRecord(ref, kind: .tree)) { if case .damagedChunk = $0 { return true }; return false }
    }
}
