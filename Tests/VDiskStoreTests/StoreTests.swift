import XCTest
@testable import VDiskStore

final class StoreTests: XCTestCase {
    func newStore() throws -> (String, Store) {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/store")
        return (dir, try Store.open(at: dir + "/store", access: .readWrite))
    }

    func testOpenErrors() throws {
        let dir = temporaryDirectory(self)
        XCTAssertThrowsStoreError(try Store.open(at: dir + "/none", access: .readOnly)) { $0 == .storeMissing(path: dir + "/none") }
        XCTAssertThrowsStoreError(try Store.open(at: dir, access: .readOnly)) { $0 == .notAStore(path: dir) }
        try Store.create(at: dir + "/s")
        XCTAssertThrowsStoreError(try Store.create(at: dir + "/s")) { $0 == .nameExists(name: dir + "/s") }
        writeFile(dir + "/s/vdiskfs.json", Array("{\"format\": \"vdiskfs\", \"version\": 99, \"id\": \"00\"}".utf8))
        XCTAssertThrowsStoreError(try Store.open(at: dir + "/s", access: .readOnly)) { if case .corruptStore = $0 { return true }; return false }
        try Store.create(at: dir + "/t")
        try? FileManager.default.removeItem(atPath: dir + "/t/roots/current")
        XCTAssertThrowsStoreError(try Store.open(at: dir + "/t", access: .readOnly)) { if case .corruptStore = $0 { return true }; return false }
    }

    func testWriterLockExcludesOthers() throws {
        let (dir, s) = try newStore()
        XCTAssertThrowsStoreError(try Store.open(at: dir + "/store", access: .readWrite)) { if case .storeLocked = $0 { return true }; return false }
        XCTAssertThrowsStoreError(try Store.open(at: dir + "/store", access: .readOnly)) { if case .storeLocked = $0 { return true }; return false }
        _ = s
    }

    func testImportExportRoundTripDedupAndSparseness() throws {
        let (dir, s) = try newStore()
        for bs in [4096, 65536] {
            let image = makeImage(blocks: 3000, blockSize: 4096, seed: UInt64(bs), tail: 1234)
            writeFile(dir + "/in-\(bs).img", image)
            let r = try Importer.importImage(into: s, from: dir + "/in-\(bs).img", as: "vms/\(bs).img", blockSize: UInt32(bs))
            XCTAssertEqual(r.size, UInt64(image.count))
            try Exporter.export(from: s, image: "vms/\(bs).img", to: dir + "/out-\(bs).img")
            XCTAssertEqual(readFile(dir + "/out-\(bs).img"), image, "block size \(bs)")
        }
        // The same content again dedups completely.
        let before = try s.diskBytes().packs
        let r = try Importer.importImage(into: s, from: dir + "/in-4096.img", as: "copy.img")
        XCTAssertEqual(r.newChunks, 0)
        XCTAssertLessThan(try s.diskBytes().packs - before, 64 << 10)
        // Zero blocks are holes in the export.
        var st = stat()
        stat(dir + "/out-4096.img", &st)
        XCTAssertLessThan(Int(st.st_blocks) * 512, 3000 * 4096 * 9 / 10)
        // Name clash and missing input leave the namespace alone.
        let gen = s.namespace.generation
        XCTAssertThrowsStoreError(try Importer.importImage(into: s, from: dir + "/in-4096.img", as: "copy.img")) { $0 == .nameExists(name: "copy.img") }
        XCTAssertThrowsStoreError(try Importer.importImage(into: s, from: dir + "/nope", as: "x.img")) { if case .inputUnreadable = $0 { return true }; return false }
        XCTAssertThrowsStoreError(try Importer.importImage(into: s, from: dir, as: "x.img")) { if case .inputUnreadable = $0 { return true }; return false }
        XCTAssertEqual(s.namespace.generation, gen)
        XCTAssertTrue(try Verifier.verify(s).isClean)
        let stats = try s.stats()
        XCTAssertEqual(stats.images, 3)
        XCTAssertGreaterThan(stats.dedupRatio, 1)
    }

    func testReopenSeesCommittedState() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let image = makeImage(blocks: 500, seed: 3)
        writeFile(dir + "/a.img", image)
        do {
            let s = try Store.open(at: dir + "/s", access: .readWrite)
            _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img")
        }
        let s = try Store.open(at: dir + "/s", access: .readOnly)
        try Exporter.export(from: s, image: "a.img", to: dir + "/b.img")
        XCTAssertEqual(readFile(dir + "/b.img"), image)
    }

    func testRollbackUndoesUncommittedWrites() throws {
        let (dir, s) = try newStore()
        let committed = try s.diskBytes().packs
        var rng = SeededBytes(seed: 9)
        var block = rng.bytes(4096)
        let ref = try block.withUnsafeBytes { try s.storeBlock($0) }
        XCTAssertNotNil(s.existing(ref.hash))
        try s.rollback()
        XCTAssertNil(s.existing(ref.hash))
        XCTAssertEqual(try s.diskBytes().packs, committed)
        // The store still works and verifies.
        block[0] ^= 1
        _ = try block.withUnsafeBytes { try s.storeBlock($0) }
        try s.commit(s.namespace)
        XCTAssertTrue(try Verifier.verify(s).isClean)
        _ = dir
    }

    func testDamagedPackIsDetectedNeverReturned() throws {
        let (dir, s) = try newStore()
        let image = makeImage(blocks: 200, seed: 5)
        writeFile(dir + "/a.img", image)
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img")
        let pack = try s.packNumbers().last!
        // Flip a byte in the middle of the pack (inside some record's payload).
        let path = (s.backend as! DirectoryBackend).packPath(pack)
        var bytes = readFile(path)
        bytes[bytes.count / 2] ^= 0x40
        writeFile(path, bytes)
        s.packs.closeAll()
        let report = try Verifier.verify(s)
        XCTAssertFalse(report.isClean)
        XCTAssertFalse(report.damagedChunks.isEmpty)
        XCTAssertEqual(Array(report.damagedImages.keys), ["a.img"])
        XCTAssertThrowsStoreError(try Exporter.export(from: s, image: "a.img", to: dir + "/out.img")) { if case .damagedChunk = $0 { return true }; return false }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.img"), "a failed export leaves no partial file")
    }

    func testIndexRebuildFromPacksAlone() throws {
        let (dir, s) = try newStore()
        let image = makeImage(blocks: 400, seed: 11)
        writeFile(dir + "/a.img", image)
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img")
        let someHash = try s.blockRef(try s.image("a.img"), 1).hash
        try s.rebuildIndex(progress: nil)
        XCTAssertNotNil(s.existing(someHash))
        // A second import still dedups against the rebuilt index.
        let r = try Importer.importImage(into: s, from: dir + "/a.img", as: "b.img")
        XCTAssertEqual(r.newChunks, 0)
    }

    func testRemoveAndUsage() throws {
        let (dir, s) = try newStore()
        writeFile(dir + "/a.img", makeImage(blocks: 100, seed: 1))
        writeFile(dir + "/b.img", makeImage(blocks: 100, seed: 2))
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "d/a.img")
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "d/a2.img")
        _ = try Importer.importImage(into: s, from: dir + "/b.img", as: "b.img")
        let usage = try s.usage(under: "")
        let a = usage.first { $0.name == "d/a.img" }!
        XCTAssertEqual(a.uniqueBytes, 0, "a shares every chunk with a2")
        XCTAssertGreaterThan(usage.first { $0.name == "b.img" }!.uniqueBytes, 0)
        XCTAssertThrowsStoreError(try s.remove("d")) { if case .invalidArgument = $0 { return true }; return false }
        try s.remove("d/a2.img")
        XCTAssertThrowsStoreError(try s.remove("d/a2.img")) { $0 == .noSuchImage(name: "d/a2.img") }
        XCTAssertGreaterThan(try s.usage(under: "d").first!.uniqueBytes, 0)
    }
}

final class CloneTests: XCTestCase {
    func testCloneSharesEverythingAndDiverges() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readWrite)
        let image = makeImage(blocks: 2000, seed: 21)
        writeFile(dir + "/a.img", image)
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img")
        let before = try s.diskBytes().packs
        try s.clone("a.img", to: "vms/b.img")
        XCTAssertLessThan(try s.diskBytes().packs - before, 4096, "a clone writes only a namespace record")
        XCTAssertEqual(try s.image("vms/b.img"), try s.image("a.img"))
        XCTAssertThrowsStoreError(try s.clone("a.img", to: "vms/b.img")) { $0 == .nameExists(name: "vms/b.img") }
        XCTAssertThrowsStoreError(try s.clone("nope", to: "c.img")) { $0 == .noSuchImage(name: "nope") }
        s.close()
        // Writing the clone through a volume leaves the source alone.
        let v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        let vms = try v.lookup(parent: Volume.rootNode, name: "vms").node
        let b = try v.lookup(parent: vms, name: "b.img").node
        _ = try [UInt8](repeating: 0xEE, count: 10000).withUnsafeBytes { try v.write(b, offset: 4096, data: $0) }
        try v.close()
        let r = try Store.open(at: dir + "/s", access: .readOnly)
        try Exporter.export(from: r, image: "a.img", to: dir + "/a.out")
        XCTAssertEqual(readFile(dir + "/a.out"), image)
        try Exporter.export(from: r, image: "vms/b.img", to: dir + "/b.out")
        var expected = image
        expected.replaceSubrange(4096..<14096, with: [UInt8](repeating: 0xEE, count: 10000))
        XCTAssertEqual(readFile(dir + "/b.out"), expected)
    }
}

final class SnapshotTests: XCTestCase {
    func testSnapshotsKeepHistoryCloneRollbackAndLog() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        var s = try Store.open(at: dir + "/s", access: .readWrite)
        let v1 = makeImage(blocks: 600, seed: 31)
        writeFile(dir + "/a.img", v1)
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "vms/a.img")
        let first = try s.createSnapshot(label: "before")
        XCTAssertEqual(first.name, "before")
        XCTAssertThrowsStoreError(try s.createSnapshot(label: "before")) { if case .nameExists = $0 { return true }; return false }
        XCTAssertThrowsStoreError(try s.createSnapshot(label: "a/b")) { if case .invalidName = $0 { return true }; return false }
        let auto = try s.createSnapshot()
        XCTAssertTrue(auto.name.hasSuffix("Z") && auto.name.contains("T"), auto.name)
        s.close()
        // Change the image through a volume: 3 blocks rewritten.
        let v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        let vms = try v.lookup(parent: Volume.rootNode, name: "vms").node
        let a = try v.lookup(parent: vms, name: "a.img").node
        _ = try [UInt8](repeating: 0x42, count: 3 * 4096).withUnsafeBytes { try v.write(a, offset: 8192, data: $0) }
        try v.close()
        s = try Store.open(at: dir + "/s", access: .readWrite)
        XCTAssertEqual(try s.snapshots().map(\.name), ["before", auto.name])
        // The snapshot still holds the old bytes, exportable and clonable.
        try Exporter.export(from: s, image: "@before/vms/a.img", to: dir + "/old.img")
        XCTAssertEqual(readFile(dir + "/old.img"), v1)
        try s.clone("@before/vms/a.img", to: "restored.img")
        XCTAssertEqual(try s.image("restored.img"), try s.namespace(ofSnapshot: "before").entries["vms/a.img"]?.image)
        // History: two snapshots and the live version, 3 blocks changed at the end.
        let log = try s.history(of: "vms/a.img")
        XCTAssertEqual(log.map(\.snapshot), ["before", auto.name, nil])
        XCTAssertEqual(log.map(\.changedBytes), [UInt64(v1.count), 0, 3 * 4096])
        // Rollback restores the snapshot's version.
        try s.rollback("vms/a.img", to: "before")
        try Exporter.export(from: s, image: "vms/a.img", to: dir + "/rolled.img")
        XCTAssertEqual(readFile(dir + "/rolled.img"), v1)
        XCTAssertTrue(try Verifier.verify(s).isClean)
        try s.deleteSnapshot("before")
        XCTAssertThrowsStoreError(try s.deleteSnapshot("before")) { if case .noSuchImage = $0 { return true }; return false }
        XCTAssertEqual(try s.snapshots().count, 1)
        s.close()
        // Snapshots survive reopening.
        XCTAssertEqual(try Store.open(at: dir + "/s", access: .readOnly).snapshots().map(\.name), [auto.name])
    }
}

final class GarbageCollectionTests: XCTestCase {
    func testCollectsWhatNothingReferencesAndKeepsTheRest() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let s = try Store.open(at: dir + "/s", access: .readWrite)
        let emptySize = try s.diskBytes().packs
        let a = makeImage(blocks: 3000, seed: 41), b = makeImage(blocks: 3000, seed: 42)
        writeFile(dir + "/a.img", a); writeFile(dir + "/b.img", b)
        _ = try Importer.importImage(into: s, from: dir + "/a.img", as: "a.img")
        _ = try Importer.importImage(into: s, from: dir + "/b.img", as: "b.img")
        try s.createSnapshot(label: "keep-a")
        try s.remove("a.img")
        // The snapshot still holds a: nothing of it may go.
        var (plan, live) = try GarbageCollector.plan(s)
        try GarbageCollector.execute(s, plan, live: live)
        try Exporter.export(from: s, image: "@keep-a/a.img", to: dir + "/a.out")
        XCTAssertEqual(readFile(dir + "/a.out"), a)
        XCTAssertTrue(try Verifier.verify(s).isClean)
        // Without the snapshot, a's chunks are garbage.
        let before = try s.diskBytes().packs
        try s.deleteSnapshot("keep-a")
        (plan, live) = try GarbageCollector.plan(s)
        XCTAssertGreaterThan(plan.bytesToFree, 1_000_000)
        try GarbageCollector.execute(s, plan, live: live)
        XCTAssertLessThan(try s.diskBytes().packs, before - 1_000_000)
        try Exporter.export(from: s, image: "b.img", to: dir + "/b.out")
        XCTAssertEqual(readFile(dir + "/b.out"), b)
        XCTAssertTrue(try Verifier.verify(s).isClean)
        // Imports still dedup against what survived (the index followed the moves).
        let again = try Importer.importImage(into: s, from: dir + "/b.img", as: "b2.img")
        XCTAssertEqual(again.newChunks, 0)
        // Remove everything: the store returns to near its empty size.
        try s.remove("b.img"); try s.remove("b2.img")
        (plan, live) = try GarbageCollector.plan(s)
        try GarbageCollector.execute(s, plan, live: live)
        XCTAssertLessThan(try s.diskBytes().packs, emptySize + 64 * 1024)
        XCTAssertTrue(try Verifier.verify(s).isClean)
        s.close()
        XCTAssertTrue(try Verifier.verify(try Store.open(at: dir + "/s", access: .readWrite)).isClean)
    }
}
