import Foundation
import XCTest
@testable import VDiskStore

/// Grouped data records (store format 2): several chunks compressed together in one record.
final class GroupedRecordTests: XCTestCase {
    func testGroupedRecordHeaderGoldenBytesAndValidation() throws {
        let members = [[UInt8](repeating: 1, count: 4096), [UInt8](repeating: 2, count: 4096), [UInt8](repeating: 3, count: 4096)]
        let hashes = members.map { ChunkHash.of($0) }
        var table = [UInt8](repeating: 0, count: 64)
        table.withUnsafeMutableBytes { hashes[1].store(to: $0.baseAddress!); hashes[2].store(to: $0.baseAddress! + 32) }
        let raw = members.flatMap { $0 }
        var packed = [UInt8](repeating: 0, count: Compression.bound(raw.count))
        let (codec, n) = raw.withUnsafeBytes { r in packed.withUnsafeMutableBytes { Compression.compress(r, into: $0) } }
        XCTAssertEqual(codec, .lz4)
        let payload = table + packed[0..<n]
        var rec = [UInt8](repeating: 0, count: PackFormat.recordHeaderSize)
        rec.withUnsafeMutableBytes { r in
            payload.withUnsafeBytes {
                PackFormat.storeRecordHeader(to: r.baseAddress!, kind: .data, codec: codec, rawLength: raw.count, hash: hashes[0], payload: $0, members: 3)
            }
        }
        // flags = member count; raw length = 3 × 4096; stored length = table + compressed.
        XCTAssertEqual(Array(rec[0..<12]), [0x56, 0x43, 0x48, 0x4B, 1, 1, 3, 0, 0x00, 0x30, 0, 0])
        XCTAssertEqual(Array(rec[12..<16]), withUnsafeBytes(of: UInt32(payload.count).littleEndian) { Array($0) })
        let full = rec + payload
        let header = full.withUnsafeBytes { PackFormat.loadRecordHeader($0.baseAddress!) }
        XCTAssertEqual(header?.memberCount, 3)
        XCTAssertEqual(header?.memberLength, 4096)
        XCTAssertEqual(header?.encodedStart, PackFormat.recordHeaderSize + 64)
        for m in 0..<3 { XCTAssertEqual(full.withUnsafeBytes { PackFormat.memberHash($0.baseAddress!, header!, m) }, hashes[m]) }
        XCTAssertTrue(full.withUnsafeBytes { PackFormat.recordChecksumMatches($0, header: header!) })

        // Each member reads back through the one check and decode every read path uses.
        let base = ChunkLocation(pack: 7, offset: 64, groupStoredLength: UInt32(payload.count), member: 0, of: 3)
        for m in 0..<3 {
            let ref = ChunkRef(hash: hashes[m], location: base.withMember(m))
            var out = [UInt8](repeating: 0, count: 4096)
            try full.withUnsafeBytes { record in
                let h = try PackReader.checked(record, ref, kind: .data)
                try out.withUnsafeMutableBytes { try PackReader.decode(record, h, ref, .data, into: $0) }
            }
            XCTAssertEqual(out, members[m])
            // The location packs member and count into the length field, as stored on disk.
            XCTAssertEqual(ref.location.member, m)
            XCTAssertEqual(ref.location.memberCount, 3)
            XCTAssertEqual(Int(ref.location.storedLength), payload.count)
            XCTAssertEqual(ref.location.lengthField >> 24, UInt32(2 << 4 | m))
        }
        // A ref naming the wrong member (or a one-chunk record) does not match: the location is stale.
        let wrong = ChunkRef(hash: hashes[1], location: base.withMember(2))
        XCTAssertThrowsError(try full.withUnsafeBytes { try PackReader.checked($0, wrong, kind: .data) })
        // A location naming a member the group does not have (damaged tree entry): not there, no read past the table.
        let outside = ChunkRef(hash: hashes[2], location: ChunkLocation(pack: 7, offset: 64, lengthField: base.lengthField | 15 << 24))
        XCTAssertEqual(outside.location.member, 15)
        XCTAssertThrowsError(try full.withUnsafeBytes { try PackReader.checked($0, outside, kind: .data) })
        let single = ChunkRef(hash: hashes[0], location: ChunkLocation(pack: 7, offset: 64, storedLength: UInt32(payload.count)))
        XCTAssertThrowsError(try full.withUnsafeBytes { try PackReader.checked($0, single, kind: .data) })

        // Group fields that cannot be right make the header invalid.
        func load(_ edit: (inout [UInt8]) -> Void) -> PackFormat.RecordHeader? {
            var b = full
            edit(&b)
            return b.withUnsafeBytes { PackFormat.loadRecordHeader($0.baseAddress!) }
        }
        XCTAssertNil(load { $0[6] = 1 })     // a group of one
        XCTAssertNil(load { $0[6] = 17 })    // more than 16 members
        XCTAssertNil(load { $0[4] = 2 })     // only data records are grouped
        XCTAssertNil(load { $0[8] = 1 })     // raw length not a multiple of the count
        XCTAssertNil(load { $0[12] = 10; $0[13] = 0; $0[14] = 0; $0[15] = 0 })  // shorter than its hash table
    }

    func testImportGroupsChunksAndEveryReadPathReturnsTheRightBytes() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readWrite)
        XCTAssertEqual(s.formatVersion, 2)
        XCTAssertTrue(s.writesGroups)
        let image = makeImage(blocks: 2000, seed: 77, tail: 100)
        writeFile(dir + "/a.img", image)
        let report = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img")

        // Fewer records than chunks: most new chunks went into groups.
        var records = 0, chunks = 0, groups = 0
        for p in try s.packNumbers() {
            try PackScanner.scan(s.backend, pack: p, withPayloads: false) { rec in
                guard rec.kind == .data else { return }
                records += 1
                chunks += rec.members.count
                if rec.members.count > 1 { groups += 1 }
                XCTAssertLessThanOrEqual(rec.members.count, BlockEncoder.groupBytes / 4096)
            }
        }
        XCTAssertEqual(UInt64(chunks), report.newChunks)
        XCTAssertGreaterThan(groups, 50)
        XCTAssertLessThan(records, chunks / 2)
        XCTAssertEqual(try s.stats().uniqueChunks, Int64(chunks))

        // Export (runs of whole groups, decoded straight into place).
        try Exporter.export(from: s, image: "a.img", to: dir + "/out.img")
        XCTAssertEqual(readFile(dir + "/out.img"), image)
        // One block at a time (a member decoded alone, only up to itself).
        let root = try s.image("a.img")
        let blocks = Int(root.blockCount)
        var buf = [UInt8](repeating: 0, count: 4096)
        for b in stride(from: 0, to: blocks - 1, by: 7) {
            let ref = try s.blockRef(root, UInt64(b))
            _ = try buf.withUnsafeMutableBytes { try s.readBlock(ref, into: $0) }
            XCTAssertEqual(buf, Array(image[(b * 4096)..<((b + 1) * 4096)]), "block \(b)")
        }
        // Blocks of groups out of order and partly (one decode per group, then copies).
        let order = Array(0..<(blocks - 1)).reversed().filter { $0 % 3 != 0 }
        let allRefs = try s.blockRefs(root, from: 0, count: blocks - 1)
        var out = [UInt8](repeating: 0, count: order.count * 4096)
        try out.withUnsafeMutableBytes { try s.readBlocks(order.map { allRefs[$0] }, blockSize: 4096, into: $0) }
        for (k, b) in order.enumerated() {
            XCTAssertEqual(Array(out[(k * 4096)..<((k + 1) * 4096)]), Array(image[(b * 4096)..<((b + 1) * 4096)]), "block \(b)")
        }
        XCTAssertTrue(try Verifier.verify(s).isClean)

        // The index, rebuilt from the packs alone, knows every member: a second import dedups whole.
        try s.rebuildIndex(progress: nil)
        XCTAssertEqual(try Importer.importImage(into: s, from: dir + "/a.img", as: "b.img").newChunks, 0)
    }

    func testGroupSizeChoosesHowManyChunksARecordHolds() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readWrite)
        writeFile(dir + "/a.img", makeImage(blocks: 600, seed: 79))
        writeFile(dir + "/b.img", makeImage(blocks: 600, seed: 81))
        func most() throws -> Int {
            var m = 0
            for p in try s.packNumbers() { try PackScanner.scan(s.backend, pack: p, withPayloads: false) { m = max(m, $0.members.count) } }
            return m
        }
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img", groupBytes: 0)
        XCTAssertEqual(try most(), 1)
        _ = try Importer.importImage(into: s, from: dir + "/b.img", as: "b.img", groupBytes: 64 << 10)
        XCTAssertEqual(try most(), 16)
        XCTAssertThrowsStoreError(try Importer.importImage(into: s, from: dir + "/a.img", as: "c.img", groupBytes: 12 << 10)) {
            if case .invalidArgument = $0 { return true }; return false
        }
        try Exporter.export(from: s, image: "b.img", to: dir + "/b.out")
        XCTAssertEqual(readFile(dir + "/b.out"), readFile(dir + "/b.img"))
        XCTAssertTrue(try Verifier.verify(s).isClean)
    }

    func testDamageInAGroupIsNamedAndNeverReturned() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readWrite)
        let image = makeImage(blocks: 400, seed: 78)
        writeFile(dir + "/a.img", image)
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img")
        // Find a group and flip a byte of its compressed members.
        var target: (ChunkRef, Int)?
        for p in try s.packNumbers() where target == nil {
            try PackScanner.scan(s.backend, pack: p, withPayloads: false) { rec in
                if target == nil, rec.members.count > 2 { target = (rec.members[2], rec.encodedStart + 10) }
            }
        }
        let (member, at) = try XCTUnwrap(target)
        let path = (s.backend as! DirectoryBackend).packPath(member.location.pack)
        var bytes = readFile(path)
        bytes[Int(member.location.offset) + at] ^= 0x10
        writeFile(path, bytes)
        s.packs.closeAll()
        var buf = [UInt8](repeating: 0, count: 4096)
        XCTAssertThrowsStoreError(try buf.withUnsafeMutableBytes { try s.readBlock(member, into: $0) }) {
            if case .damagedChunk = $0 { return true }; return false
        }
        XCTAssertThrowsStoreError(try Exporter.export(from: s, image: "a.img", to: dir + "/out.img")) {
            if case .damagedChunk = $0 { return true }; return false
        }
        let report = try Verifier.verify(s)
        XCTAssertEqual(report.damagedChunks.count, 1)
        XCTAssertTrue(report.damagedChunks[0].contains("a group of"), report.damagedChunks[0])
        XCTAssertEqual(Array(report.damagedImages.keys), ["a.img"])
    }

    func testGarbageCollectionKeepsAGroupWhileAnyMemberLives() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readWrite)
        let a = makeImage(blocks: 3000, seed: 901)
        // b shares every fourth block of a's first third (so those groups of a keep a live member).
        var b = makeImage(blocks: 3000, seed: 1203)
        for i in stride(from: 0, to: 1000, by: 4) { b.replaceSubrange((i * 4096)..<((i + 1) * 4096), with: a[(i * 4096)..<((i + 1) * 4096)]) }
        writeFile(dir + "/a.img", a); writeFile(dir + "/b.img", b)
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img")
        _ = try Importer.importImage(into: s, from: dir + "/b.img", as: "b.img")
        try s.remove("a.img")
        let (plan, live) = try GarbageCollector.plan(s, threshold: 0.99)
        try GarbageCollector.execute(s, plan, live: live)
        XCTAssertFalse(plan.packsToRewrite.isEmpty, "a's pack holds live groups: rewritten, not deleted")
        XCTAssertGreaterThan(plan.bytesToFree, 2_000_000)
        try Exporter.export(from: s, image: "b.img", to: dir + "/b.out")
        XCTAssertEqual(readFile(dir + "/b.out"), b)
        XCTAssertTrue(try Verifier.verify(s).isClean)
        s.close()
        let again = try Store.open(at: dir + "/s", access: .readWrite)
        XCTAssertEqual(try Importer.importImage(into: again, from: dir + "/b.img", as: "b2.img").newChunks, 0)
        XCTAssertTrue(try Verifier.verify(again).isClean)
    }

    /// A store written by vdiskfs 0.1.0 (format 1, before grouped records): it opens, reads
    /// byte-exact, takes writes, and stays format 1 (no grouped records), so 0.1.0 can still
    /// read it. The fixture has no index: opening for writing rebuilds it from the packs.
    func testFormat1StoreFromAnEarlierVersion() throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/store-v1").path
        let dir = temporaryDirectory(self)
        try FileManager.default.copyItem(atPath: fixture, toPath: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readWrite)
        XCTAssertEqual(s.formatVersion, 1)
        XCTAssertFalse(s.writesGroups)
        XCTAssertEqual(Set(s.namespace.images(under: "")), ["c.img", "vms/a.img", "vms/b.img"])
        // The fixture's image: 52 blocks, sha256 noted when the fixture was made.
        for name in ["vms/a.img", "vms/b.img", "c.img", "@first/vms/a.img"] {
            let file = dir + "/out-\(name.replacingOccurrences(of: "/", with: "_")).img"
            try Exporter.export(from: s, image: name, to: file)
            let out = readFile(file)
            XCTAssertEqual(out.count, 52 * 4096, name)
            XCTAssertEqual(ChunkHash.of(out).description, "30aa4d31ed74a481373b3df04aa1e2dea9fb73e993b0132bf94192e8db379628", name)
        }
        XCTAssertTrue(try Verifier.verify(s).isClean)
        let image = makeImage(blocks: 300, seed: 5)
        writeFile(dir + "/n.img", image)
        _ = try Importer.importImage(into: s, from: dir + "/n.img", as: "n.img")
        for p in try s.packNumbers() {
            try PackScanner.scan(s.backend, pack: p, withPayloads: false) { XCTAssertEqual($0.members.count, 1) }
        }
        s.close()
        XCTAssertTrue(String(decoding: readFile(dir + "/s/vdiskfs.json"), as: UTF8.self).contains("\"version\": 1"))
        let r = try Store.open(at: dir + "/s", access: .readOnly)
        try Exporter.export(from: r, image: "n.img", to: dir + "/n.out")
        XCTAssertEqual(readFile(dir + "/n.out"), image)
    }
}
