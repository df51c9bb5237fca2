import XCTest
@testable import VDiskStore

final class VolumeTests: XCTestCase {
    var dir = ""

    func openVolume(_ options: VolumeOptions = VolumeOptions()) throws -> Volume {
        if dir.isEmpty {
            dir = temporaryDirectory(self)
            try Store.create(at: dir + "/s")
        }
        return try Volume(store: try Store.open(at: dir + "/s", access: .readWrite), options: options)
    }

    func read(_ v: Volume, _ id: NodeID, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xAA, count: count)
        let n = try out.withUnsafeMutableBytes { try v.read(id, offset: offset, into: $0) }
        return Array(out[0..<n])
    }

    func write(_ v: Volume, _ id: NodeID, _ offset: UInt64, _ bytes: [UInt8]) throws {
        _ = try bytes.withUnsafeBytes { try v.write(id, offset: offset, data: $0) }
    }

    func testWritesReadsAndModelAcrossFlushAndReopen() throws {
        var v = try openVolume()
        let dirAttr = try v.makeDirectory(parent: Volume.rootNode, name: "vms", mode: 0o755, uid: 0, gid: 0)
        let f = try v.createImage(parent: dirAttr.node, name: "a.img", mode: 0o644, uid: 0, gid: 0)
        var model = [UInt8]()
        var rng = SeededBytes(seed: 77)
        func apply(_ offset: Int, _ bytes: [UInt8]) throws {
            try write(v, f.node, UInt64(offset), bytes)
            if model.count < offset + bytes.count { model += [UInt8](repeating: 0, count: offset + bytes.count - model.count) }
            model.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
        }
        // Unaligned, overlapping, sparse writes.
        for round in 0..<60 {
            let off = Int(rng.next() % 3_000_000)
            let len = Int(rng.next() % 70_000) + 1
            try apply(off, round % 7 == 0 ? [UInt8](repeating: 0, count: len) : rng.bytes(len))
            if round == 30 { try v.flush() }
        }
        XCTAssertEqual(try v.attributes(f.node).size, UInt64(model.count))
        XCTAssertEqual(try read(v, f.node, 0, model.count + 100), model)
        try v.flush()
        XCTAssertEqual(try read(v, f.node, 0, model.count), model)
        try v.close()
        v = try openVolume()
        let again = try v.lookup(parent: try v.lookup(parent: Volume.rootNode, name: "vms").node, name: "a.img")
        XCTAssertEqual(try read(v, again.node, 0, model.count), model)
        try v.close()
        XCTAssertTrue(try Verifier.verify(try Store.open(at: dir + "/s", access: .readOnly)).isClean)
    }

    func testJournalReplayAfterCrash() throws {
        var v = try openVolume()
        let f = try v.createImage(parent: Volume.rootNode, name: "disk.img", mode: 0o644, uid: 0, gid: 0)
        let data = randomBytes(seed: 5, 9_000_000)   // more than replay's 4 MiB read window
        try write(v, f.node, 4096 * 3 + 17, data)
        try v.synchronize(f.node, dataOnly: true)
        v.abandonForTesting()   // as kill -9: nothing flushed
        v = try openVolume()     // replays
        let id = try v.lookup(parent: Volume.rootNode, name: "disk.img").node
        XCTAssertEqual(try read(v, id, 4096 * 3 + 17, data.count), data)
        XCTAssertEqual(try read(v, id, 0, 10), [UInt8](repeating: 0, count: 10))
        try v.close()
        // The replayed data was committed: the journal is empty and the store verifies.
        let s = try Store.open(at: dir + "/s", access: .readOnly)
        XCTAssertEqual(try s.image("disk.img").size, UInt64(4096 * 3 + 17 + data.count))
        XCTAssertTrue(try Verifier.verify(s).isClean)
    }

    /// The journal on a small tmpfs fills up: the write that does not fit fails with ENOSPC.
    /// Space is freed and a later write is fsynced; after a crash it must replay. (A write
    /// that failed after taking its place in the segment would leave a hole there, and
    /// replay, which stops at the first record that does not check out, would drop it.)
    func testAWriteThatMetAFullDiskLeavesNoHoleBeforeLaterWrites() throws {
        guard getuid() == 0 else { throw XCTSkip("mounting a tmpfs needs root") }
        _ = try openVolume()  // creates the store
        let journalDir = dir + "/journal-fs"
        try FileManager.default.createDirectory(atPath: journalDir, withIntermediateDirectories: true)
        guard mount("tmpfs", journalDir, "tmpfs", 0, "size=6M") == 0 else { throw XCTSkip("cannot mount a tmpfs: \(errno)") }
        defer { umount2(journalDir, Int32(MNT_DETACH)) }
        var options = VolumeOptions()
        options.journalDirectory = journalDir
        options.flushInterval = 3600  // nothing leaves the journal until the test says so
        var v = try openVolume(options)
        let f = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0)
        var full = false
        var blocks = 0
        while blocks < 4096 && !full {
            do {
                try write(v, f.node, UInt64(blocks) * 4096, randomBytes(seed: UInt64(blocks), 4096))
                blocks += 1
            } catch let e as StoreError {
                XCTAssertEqual(e.errno, ENOSPC, "\(e)")
                full = true
            }
        }
        XCTAssertTrue(full, "6 MiB of tmpfs took \(blocks) blocks")
        XCTAssertEqual(mount("tmpfs", journalDir, "tmpfs", UInt(MS_REMOUNT), "size=64M"), 0)
        let later = randomBytes(seed: 999, 8192)
        try write(v, f.node, 1 << 30, later)
        try v.synchronize(f.node, dataOnly: true)
        v.abandonForTesting()   // as kill -9
        v = try openVolume(options)
        let id = try v.lookup(parent: Volume.rootNode, name: "a.img").node
        XCTAssertTrue(try read(v, id, 1 << 30, later.count) == later, "an fsynced write after the full disk was lost")
        XCTAssertTrue(try read(v, id, 0, 4096) == randomBytes(seed: 0, 4096))
        XCTAssertEqual(try v.attributes(id).size, (1 << 30) + 8192)
        try v.close()
    }

    /// Write A has its place in the journal but is not written yet when write B (after it)
    /// is fsynced: the fsync must wait for A, since a crash before A is written would leave
    /// a hole that replay stops at, dropping B.
    func testFsyncWaitsForAnEarlierAppendStillBeingWritten() throws {
        var options = VolumeOptions()
        options.flushInterval = 3600
        var v = try openVolume(options)
        let a = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0)
        let b = try v.createImage(parent: Volume.rootNode, name: "b.img", mode: 0o644, uid: 0, gid: 0)
        let placed = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let firstCall = Locked(true)
        v.beforeJournalWriteForTesting = {
            if firstCall.withLock({ f in defer { f = false }; return f }) { placed.signal(); release.wait() }
        }
        let dataA = randomBytes(seed: 1, 4096), dataB = randomBytes(seed: 2, 4096)
        let wroteA = DispatchSemaphore(value: 0)
        Thread { [v] in
            _ = try? dataA.withUnsafeBytes { try v.write(a.node, offset: 0, data: $0) }
            wroteA.signal()
        }.start()
        placed.wait()
        try write(v, b.node, 0, dataB)
        let synced = DispatchSemaphore(value: 0)
        Thread { [v] in try? v.synchronize(b.node, dataOnly: true); synced.signal() }.start()
        XCTAssertEqual(synced.wait(timeout: .now() + 0.5), .timedOut, "fsync returned while an earlier append was still unwritten")
        release.signal()
        XCTAssertEqual(synced.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(wroteA.wait(timeout: .now() + 30), .success)
        v.beforeJournalWriteForTesting = nil
        v.abandonForTesting()   // as kill -9
        v = try openVolume(options)
        let ra = try v.lookup(parent: Volume.rootNode, name: "a.img").node
        let rb = try v.lookup(parent: Volume.rootNode, name: "b.img").node
        XCTAssertTrue(try read(v, ra, 0, 4096) == dataA)
        XCTAssertTrue(try read(v, rb, 0, 4096) == dataB)
        try v.close()
    }

    /// Sizes past Volume.maxSize (2^50) are EFBIG however they are asked for, and ranges whose
    /// end overflows 64 bits never trap; the image is left as it was.
    func testSizesPastTheLimitAreRefused() throws {
        let v = try openVolume()
        let f = try v.createImage(parent: Volume.rootNode, name: "big.img", mode: 0o644, uid: 0, gid: 0).node
        try write(v, f, 0, randomBytes(seed: 3, 10000))
        func isEFBIG(_ e: StoreError) -> Bool { if case .io(let errno, _) = e { return errno == EFBIG }; return false }
        XCTAssertThrowsStoreError(try v.setAttributes(f, AttributeChanges(size: Volume.maxSize + 1)), isEFBIG)
        XCTAssertThrowsStoreError(try v.zeroRange(f, offset: 4096, length: Volume.maxSize, keepSize: false), isEFBIG)
        XCTAssertThrowsStoreError(try v.zeroRange(f, offset: UInt64.max - 10, length: 100, keepSize: false), isEFBIG)
        XCTAssertThrowsStoreError(try v.allocate(f, offset: UInt64.max - 10, length: 100, keepSize: false), isEFBIG)
        try v.punchHole(f, offset: 8192, length: UInt64.max)   // to the end of the image
        XCTAssertEqual(try v.attributes(f).size, 10000)
        XCTAssertEqual(try read(v, f, 8192, 10000 - 8192), [UInt8](repeating: 0, count: 10000 - 8192))
    }

    func testTruncatePunchSeekAndClone() throws {
        let v = try openVolume()
        let f = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0).node
        let data = randomBytes(seed: 8, 1 << 20)
        try write(v, f, 0, data)
        // Punch 8 KiB in the middle (two whole blocks) and 100 bytes unaligned.
        try v.punchHole(f, offset: 65536, length: 8192)
        try v.punchHole(f, offset: 10, length: 100)
        var model = data
        for i in 65536..<(65536 + 8192) { model[i] = 0 }
        for i in 10..<110 { model[i] = 0 }
        XCTAssertEqual(try read(v, f, 0, model.count), model)
        XCTAssertEqual(try v.seek(f, offset: 65536, data: false), 65536)
        XCTAssertEqual(try v.seek(f, offset: 65536, data: true), 65536 + 8192)
        try v.flush()
        XCTAssertEqual(try v.seek(f, offset: 65536, data: true), 65536 + 8192)
        XCTAssertEqual(try v.seek(f, offset: 0, data: false), 65536)
        XCTAssertThrowsStoreError(try v.seek(f, offset: 1 << 21, data: true)) { $0.errno == ENXIO }
        // Clone: shares chunks, then diverges without touching the source.
        let g = try v.createImage(parent: Volume.rootNode, name: "b.img", mode: 0o644, uid: 0, gid: 0).node
        let packsBefore = try v.store.diskBytes().packs
        XCTAssertEqual(try v.copyRange(from: f, offset: 0, to: g, offset: 0, length: UInt64(model.count)), UInt64(model.count))
        try v.flush()
        XCTAssertLessThan(try v.store.diskBytes().packs - packsBefore, 100_000, "a clone stores no data blocks")
        XCTAssertEqual(try read(v, g, 0, model.count), model)
        try write(v, g, 5, [1, 2, 3])
        XCTAssertEqual(try read(v, f, 0, model.count), model)
        // Truncate shrink to an unaligned size, then grow: the cut bytes read back as zeros.
        _ = try v.setAttributes(f, AttributeChanges(size: 5000))
        _ = try v.setAttributes(f, AttributeChanges(size: 20000))
        XCTAssertEqual(try read(v, f, 0, 20000), Array(model[0..<5000]) + [UInt8](repeating: 0, count: 15000))
        // Extend with fallocate, shrink to zero.
        try v.allocate(f, offset: 0, length: 3 << 20, keepSize: false)
        XCTAssertEqual(try v.attributes(f).size, 3 << 20)
        _ = try v.setAttributes(f, AttributeChanges(size: 0))
        XCTAssertEqual(try read(v, f, 0, 10), [])
        try v.close()
        XCTAssertTrue(try Verifier.verify(try Store.open(at: dir + "/s", access: .readOnly)).isClean)
    }

    /// A flush in several windows reads the tree the previous window wrote. With the tree
    /// node cache too small to keep those nodes, they come from the pack, where the last of
    /// them may still sit in the pack writer's buffer: the window must leave them readable.
    func testFlushWindowsReadTheNodesThePreviousWindowWrote() throws {
        var options = VolumeOptions()
        options.flushWindow = 64
        let v = try openVolume(options)
        let a = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0).node
        // One block in every other leaf, 600 of them (1024 blocks a leaf, 1024 leaves under
        // a level-1 node; a sparse 4.7 GiB image of depth 3): every window rewrites leaves, a
        // level-1 node and the root, and the next one reads that level-1 node back while its
        // record may still sit in the pack writer's buffer.
        let stride = 2 * TreeNode.fanOut * 4096
        var model: [Int: [UInt8]] = [:]
        for i in 0..<600 {
            let block = randomBytes(seed: UInt64(1000 + i), 4096)
            try write(v, a, UInt64(i * stride), block)
            model[i] = block
        }
        v.store.nodeCache.resize(1)  // only the node stored last stays cached: the root
        try v.flush()
        for (i, block) in model { XCTAssertEqual(try read(v, a, UInt64(i * stride), 4096), block, "leaf \(i)") }
    }

    /// The flusher groups dirty blocks that lie near each other, as import does: they read
    /// back byte-exact, overwrites of single members leave the rest of their group live,
    /// and gc and a reopen keep every byte.
    func testTheFlusherGroupsBlocksWrittenNearEachOther() throws {
        var v = try openVolume()
        let a = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0).node
        var model = [UInt8](repeating: 0, count: 598 * 4096)  // the last block written is 597
        func put(_ block: Int, _ bytes: [UInt8]) throws {
            try write(v, a, UInt64(block * 4096), bytes)
            model.replaceSubrange((block * 4096)..<(block * 4096 + bytes.count), with: bytes)
        }
        try put(0, randomBytes(seed: 61, 200 * 4096))                                   // a run
        for b in stride(from: 300, to: 600, by: 3) { try put(b, randomBytes(seed: UInt64(b), 4096)) }  // scattered
        try v.flush()
        var most = 0
        for p in try v.store.packNumbers() {
            try PackScanner.scan(v.store.backend, pack: p, withPayloads: false) { most = max(most, $0.members.count) }
        }
        XCTAssertEqual(most, Importer.defaultGroupBytes / 4096, "flushed blocks are grouped")
        XCTAssertTrue(try read(v, a, 0, model.count) == model)
        // Overwrite one member of many groups; half the run becomes garbage for gc.
        for b in stride(from: 0, to: 200, by: 5) { try put(b, randomBytes(seed: UInt64(7000 + b), 4096)) }
        try v.flush()
        XCTAssertTrue(try read(v, a, 0, model.count) == model)
        _ = try v.collectGarbage(threshold: 0, dryRun: false)
        XCTAssertTrue(try read(v, a, 0, model.count) == model)
        try v.close()
        v = try openVolume()
        XCTAssertTrue(try read(v, a, 0, model.count) == model)
        try v.close()
        XCTAssertTrue(try Verifier.verify(try Store.open(at: dir + "/s", access: .readOnly)).isClean)
    }

    /// Shared chunks (copy_file_range) live in the dirty maps only as where their journal
    /// record is: reads, copies of copies, gc, replay after a crash and a flush in many
    /// windows all read them back from the journal.
    func testSharedChunksReadBackFromTheJournal() throws {
        var options = VolumeOptions()
        options.flushWindow = 16
        var v = try openVolume(options)
        let a = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0).node
        let data = randomBytes(seed: 31, 200 * 4096)
        try write(v, a, 0, data)
        try v.flush()
        let b = try v.createImage(parent: Volume.rootNode, name: "b.img", mode: 0o644, uid: 0, gid: 0).node
        XCTAssertEqual(try v.copyRange(from: a, offset: 0, to: b, offset: 0, length: UInt64(data.count)), UInt64(data.count))
        // Before any flush: large reads, small unaligned reads, a read-modify-write.
        XCTAssertEqual(try read(v, b, 0, data.count), data)
        XCTAssertEqual(try read(v, b, 4096 * 7 + 5, 100), Array(data[(4096 * 7 + 5)..<(4096 * 7 + 105)]))
        var model = data
        try write(v, b, 4096 * 9 + 1, [9, 9, 9])
        model.replaceSubrange((4096 * 9 + 1)..<(4096 * 9 + 4), with: [9, 9, 9])
        try v.punchHole(b, offset: 4096 * 20, length: 4096 * 2)
        for i in (4096 * 20)..<(4096 * 22) { model[i] = 0 }
        // A copy of the copy, still unflushed, at an offset.
        let c = try v.createImage(parent: Volume.rootNode, name: "c.img", mode: 0o644, uid: 0, gid: 0).node
        XCTAssertEqual(try v.copyRange(from: b, offset: 4096 * 4, to: c, offset: 4096, length: 4096 * 100), 4096 * 100)
        let cModel = [UInt8](repeating: 0, count: 4096) + Array(model[(4096 * 4)..<(4096 * 104)])
        XCTAssertEqual(try read(v, c, 0, cModel.count), cModel)
        // gc keeps what the journal's refs name (a's chunks, with a gone).
        try v.unlink(parent: Volume.rootNode, name: "a.img")
        _ = try v.collectGarbage(threshold: 0, dryRun: false)
        XCTAssertEqual(try read(v, b, 0, model.count), model)
        // A crash with refs in the journal: replay reads them back.
        XCTAssertEqual(try v.copyRange(from: b, offset: 0, to: c, offset: 4096 * 200, length: 4096 * 50), 4096 * 50)
        let cModel2 = cModel + [UInt8](repeating: 0, count: 4096 * 200 - cModel.count) + Array(model[0..<(4096 * 50)])
        try v.synchronize(nil, dataOnly: true)
        v.abandonForTesting()
        v = try openVolume(options)
        let b2 = try v.lookup(parent: Volume.rootNode, name: "b.img").node
        let c2 = try v.lookup(parent: Volume.rootNode, name: "c.img").node
        XCTAssertEqual(try read(v, b2, 0, model.count), model)
        XCTAssertEqual(try read(v, c2, 0, cModel2.count), cModel2)
        try v.close()
        XCTAssertTrue(try Verifier.verify(try Store.open(at: dir + "/s", access: .readOnly)).isClean)
    }

    func testNamespaceOperations() throws {
        var v = try openVolume()
        let d = try v.makeDirectory(parent: Volume.rootNode, name: "d", mode: 0o700, uid: 1, gid: 2)
        let a = try v.createImage(parent: d.node, name: "a.img", mode: 0o600, uid: 1, gid: 2).node
        try write(v, a, 0, [1, 2, 3])
        XCTAssertThrowsStoreError(try v.createImage(parent: d.node, name: "a.img", mode: 0o600, uid: 0, gid: 0)) { $0.errno == EEXIST }
        XCTAssertThrowsStoreError(try v.removeDirectory(parent: Volume.rootNode, name: "d")) { $0.errno == ENOTEMPTY }
        try v.rename(parent: d.node, name: "a.img", newParent: Volume.rootNode, newName: "b.img", noReplace: true, exchange: false)
        XCTAssertEqual(try v.lookup(parent: Volume.rootNode, name: "b.img").node, a, "node ids survive renames")
        XCTAssertEqual(try read(v, a, 0, 3), [1, 2, 3])
        let c = try v.createImage(parent: Volume.rootNode, name: "c.img", mode: 0o600, uid: 0, gid: 0).node
        XCTAssertThrowsStoreError(try v.rename(parent: Volume.rootNode, name: "b.img", newParent: Volume.rootNode, newName: "c.img", noReplace: true, exchange: false)) { $0.errno == EEXIST }
        try v.rename(parent: Volume.rootNode, name: "b.img", newParent: Volume.rootNode, newName: "c.img", noReplace: false, exchange: false)
        XCTAssertEqual(try v.lookup(parent: Volume.rootNode, name: "c.img").node, a)
        _ = c
        _ = try v.setAttributes(a, AttributeChanges(mode: 0o640, uid: 5))
        XCTAssertEqual(try v.attributes(a).mode & 0o7777, 0o640)
        try v.rename(parent: Volume.rootNode, name: "d", newParent: Volume.rootNode, newName: "e", noReplace: false, exchange: false)
        XCTAssertEqual(try v.list(Volume.rootNode).map(\.name), ["c.img", "e"])
        try v.unlink(parent: Volume.rootNode, name: "c.img")
        XCTAssertEqual(try read(v, a, 0, 3), [1, 2, 3], "an unlinked image stays readable while the kernel holds it")
        try v.removeDirectory(parent: Volume.rootNode, name: "e")
        try v.close()
        v = try openVolume()
        XCTAssertEqual(try v.list(Volume.rootNode).count, 0)
        XCTAssertEqual(v.store.namespace.entries.count, 0)
        try v.close()
    }

    func testConcurrentWritersAndReaders() throws {
        var opts = VolumeOptions()
        opts.flushInterval = 0.05
        let v = try openVolume(opts)
        let ids = try (0..<4).map { try v.createImage(parent: Volume.rootNode, name: "f\($0)", mode: 0o644, uid: 0, gid: 0).node }
        let expected = (0..<4).map { randomBytes(seed: UInt64($0 + 1), 512 * 1024) }
        DispatchQueue.concurrentPerform(iterations: 4) { i in
            for k in stride(from: 0, to: expected[i].count, by: 10_000) {
                let end = min(k + 10_000, expected[i].count)
                _ = try! Array(expected[i][k..<end]).withUnsafeBytes { try v.write(ids[i], offset: UInt64(k), data: $0) }
                _ = try! read(v, ids[i], UInt64(k), 10_000)
            }
        }
        for i in 0..<4 { XCTAssertEqual(try read(v, ids[i], 0, expected[i].count), expected[i]) }
        try v.close()
    }
}

final class VolumeTruncateTests: XCTestCase {
    /// A truncate after writes must survive close and reopen (found by the mount tests).
    func testTruncateAfterWritesIsDurable() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        var v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        var f = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0).node
        _ = try [UInt8](repeating: 7, count: 1 << 20).withUnsafeBytes { try v.write(f, offset: 0, data: $0) }
        XCTAssertEqual(try v.setAttributes(f, AttributeChanges(size: 1000)).size, 1000)
        try v.close()
        XCTAssertEqual(try Store.open(at: dir + "/s", access: .readOnly).image("a.img").size, 1000)
        // The same with more writes after the truncate, and a crash instead of a close.
        v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        f = try v.lookup(parent: Volume.rootNode, name: "a.img").node
        _ = try [UInt8](repeating: 9, count: 8192).withUnsafeBytes { try v.write(f, offset: 4096, data: $0) }
        XCTAssertEqual(try v.setAttributes(f, AttributeChanges(size: 5000)).size, 5000)
        _ = try [UInt8](repeating: 1, count: 10).withUnsafeBytes { try v.write(f, offset: 100, data: $0) }
        try v.synchronize(f, dataOnly: true)
        v.abandonForTesting()
        v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        f = try v.lookup(parent: Volume.rootNode, name: "a.img").node
        XCTAssertEqual(try v.attributes(f).size, 5000)
        var out = [UInt8](repeating: 0, count: 6000)
        let n = try out.withUnsafeMutableBytes { try v.read(f, offset: 0, into: $0) }
        XCTAssertEqual(n, 5000)
        var expected = [UInt8](repeating: 7, count: 1000) + [UInt8](repeating: 0, count: 3096) + [UInt8](repeating: 9, count: 904)
        expected.replaceSubrange(100..<110, with: [UInt8](repeating: 1, count: 10))
        XCTAssertEqual(Array(out[0..<5000]), expected)
        try v.close()
    }
}

final class VolumeSnapshotTests: XCTestCase {
    func testSnapshotDirectoryIsReadOnlyAndKeepsTheOldBytes() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        let f = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0).node
        _ = try [UInt8](repeating: 1, count: 9000).withUnsafeBytes { try v.write(f, offset: 0, data: $0) }
        // Dirty data goes into the snapshot: mkdir flushes first.
        let snapDir = try v.makeDirectory(parent: Volume.snapshotsNode, name: "one", mode: 0o755, uid: 0, gid: 0)
        XCTAssertTrue(snapDir.readOnly)
        _ = try [UInt8](repeating: 2, count: 9000).withUnsafeBytes { try v.write(f, offset: 0, data: $0) }
        XCTAssertEqual(try v.lookup(parent: Volume.rootNode, name: ".snapshots").node, Volume.snapshotsNode)
        XCTAssertFalse(try v.list(Volume.rootNode).contains { $0.name == ".snapshots" }, "hidden from the listing")
        XCTAssertEqual(try v.list(Volume.snapshotsNode).map(\.name), ["one"])
        let old = try v.lookup(parent: snapDir.node, name: "a.img")
        XCTAssertTrue(old.readOnly)
        var buf = [UInt8](repeating: 0, count: 9000)
        _ = try buf.withUnsafeMutableBytes { try v.read(old.node, offset: 0, into: $0) }
        XCTAssertEqual(buf, [UInt8](repeating: 1, count: 9000))
        func isEROFS(_ e: StoreError) -> Bool { e.errno == EROFS }
        XCTAssertThrowsStoreError(try [UInt8](repeating: 3, count: 10).withUnsafeBytes { try v.write(old.node, offset: 0, data: $0) }, isEROFS)
        XCTAssertThrowsStoreError(try v.setAttributes(old.node, AttributeChanges(size: 0)), isEROFS)
        XCTAssertThrowsStoreError(try v.setAttributes(old.node, AttributeChanges(mode: 0o600)), isEROFS)
        XCTAssertThrowsStoreError(try v.unlink(parent: snapDir.node, name: "a.img"), isEROFS)
        XCTAssertThrowsStoreError(try v.createImage(parent: snapDir.node, name: "x", mode: 0o644, uid: 0, gid: 0), isEROFS)
        XCTAssertThrowsStoreError(try v.rename(parent: snapDir.node, name: "a.img", newParent: Volume.rootNode, newName: "b.img", noReplace: false, exchange: false), isEROFS)
        XCTAssertThrowsStoreError(try v.rename(parent: Volume.rootNode, name: "a.img", newParent: snapDir.node, newName: "b.img", noReplace: false, exchange: false), isEROFS)
        XCTAssertThrowsStoreError(try v.punchHole(old.node, offset: 0, length: 4096), isEROFS)
        // Copying out of a snapshot (copy_file_range) works and shares chunks.
        let c = try v.createImage(parent: Volume.rootNode, name: "c.img", mode: 0o644, uid: 0, gid: 0).node
        XCTAssertEqual(try v.copyRange(from: old.node, offset: 0, to: c, offset: 0, length: 9000), 9000)
        _ = try buf.withUnsafeMutableBytes { try v.read(c, offset: 0, into: $0) }
        XCTAssertEqual(buf, [UInt8](repeating: 1, count: 9000))
        try v.removeDirectory(parent: Volume.snapshotsNode, name: "one")
        XCTAssertEqual(try v.list(Volume.snapshotsNode).count, 0)
        try v.close()
    }
}

final class SnapshotScheduleTests: XCTestCase {
    func snap(_ name: String, _ seconds: Double) -> Snapshot {
        Snapshot(name: name, created: Int64(seconds * 1e9), namespace: .zero)
    }

    func testRetentionKeepsLastHourlyDailyWeekly() {
        // One snapshot every 20 minutes for 10 days.
        let start = 1_700_000_000.0
        let all = (0..<(10 * 72)).map { snap("s\($0)", start + Double($0) * 1200) }
        XCTAssertEqual(RetentionPolicy().keep(all).count, all.count, "an empty policy keeps everything")
        XCTAssertEqual(RetentionPolicy(last: 5).keep(all), Set((715..<720).map { "s\($0)" }))
        let hourly = RetentionPolicy(hourly: 4).keep(all)
        XCTAssertEqual(hourly.count, 4)
        XCTAssertTrue(hourly.contains("s719"), "the newest of the newest hour")
        let daily = RetentionPolicy(daily: 3).keep(all)
        XCTAssertEqual(daily.count, 3)
        let mixed = RetentionPolicy(last: 2, daily: 7, weekly: 2).keep(all)
        XCTAssertLessThanOrEqual(mixed.count, 2 + 7 + 2)
        XCTAssertTrue(mixed.isSuperset(of: RetentionPolicy(daily: 7).keep(all)))
        // Weekly buckets: the ten days span two or three ISO weeks, one kept in each.
        XCTAssertEqual(RetentionPolicy(weekly: 10).keep(all).count, Set(all.map { s -> Int in
            var c = Calendar(identifier: .iso8601); c.timeZone = TimeZone(identifier: "UTC")!
            return c.component(.weekOfYear, from: Date(timeIntervalSince1970: Double(s.created) / 1e9))
        }).count)
    }

    func testScheduleTakesAndPrunesWithAFakeClock() throws {
        let dir = temporaryDirectory(self)
        try Store.create(at: dir + "/s")
        let v = try Volume(store: try Store.open(at: dir + "/s", access: .readWrite))
        let f = try v.createImage(parent: Volume.rootNode, name: "a.img", mode: 0o644, uid: 0, gid: 0).node
        _ = try v.makeDirectory(parent: Volume.snapshotsNode, name: "labelled", mode: 0o755, uid: 0, gid: 0)
        var now: Int64 = 1_700_000_000 * 1_000_000_000
        let schedule = SnapshotSchedule(volume: v, interval: 3600, policy: RetentionPolicy(last: 3), clock: { now })
        XCTAssertNil(try schedule.tick(), "not due yet")
        for hour in 1...6 {
            now += 3600 * 1_000_000_000
            _ = try [UInt8](repeating: UInt8(hour), count: 4096).withUnsafeBytes { try v.write(f, offset: 0, data: $0) }
            XCTAssertNotNil(try schedule.tick())
        }
        let names = v.snapshots().map(\.name)
        XCTAssertEqual(names.count, 4, "three automatic and the labelled one: \(names)")
        XCTAssertTrue(names.contains("labelled"))
        // The newest automatic snapshot holds the last write (dirty data included).
        let newest = try v.lookup(parent: try v.lookup(parent: Volume.snapshotsNode, name: names.last!).node, name: "a.img").node
        var b = [UInt8](repeating: 0, count: 1)
        _ = try b.withUnsafeMutableBytes { try v.read(newest, offset: 0, into: $0) }
        XCTAssertEqual(b, [6])
        try v.close()
    }
}
