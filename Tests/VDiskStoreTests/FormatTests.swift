import XCTest
@testable import VDiskStore

/// Golden bytes: the on-disk format must not change by accident.
final class FormatTests: XCTestCase {
    func testSHA256OfKnownInput() {
        XCTAssertEqual(ChunkHash.of(Array("abc".utf8)).hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    func testCRC32CCheckValue() {
        let v = Array("123456789".utf8).withUnsafeBytes { crc32c($0) }
        XCTAssertEqual(v, 0xE306_9283)
        // Long inputs take the 8-byte path; the result must not depend on it.
        let long = [UInt8](repeating: 0x5a, count: 1003)
        let whole = long.withUnsafeBytes { crc32c($0) }
        let split = long.withUnsafeBytes { b in crc32c(UnsafeRawBufferPointer(rebasing: b[500...]), seed: crc32c(UnsafeRawBufferPointer(rebasing: b[0..<500]))) }
        XCTAssertEqual(whole, split)
        // Inputs long enough for the three-stream paths (3 × 256 and 3 × 8192 bytes), at odd
        // lengths and offsets, against a bit-at-a-time reference.
        func reference(_ b: UnsafeRawBufferPointer) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for byte in b { c ^= UInt32(byte); for _ in 0..<8 { c = (c >> 1) ^ (0x82F6_3B78 & (0 &- (c & 1))) } }
            return ~c
        }
        var x: UInt64 = 3
        let data = (0..<70_000).map { _ -> UInt8 in x = x &* 6_364_136_223_846_793_005 &+ 1; return UInt8(truncatingIfNeeded: x >> 33) }
        data.withUnsafeBytes { b in
            for (start, count) in [(0, 767), (0, 768), (1, 4096), (3, 16_389), (5, 24_576), (7, 60_001)] {
                let slice = UnsafeRawBufferPointer(rebasing: b[start..<(start + count)])
                XCTAssertEqual(crc32c(slice), reference(slice), "\(count) bytes at \(start)")
            }
        }
    }

    func testZeroDetection() {
        var b = [UInt8](repeating: 0, count: 4096)
        XCTAssertTrue(b.withUnsafeBytes { isAllZero($0) })
        b[4095] = 1
        XCTAssertFalse(b.withUnsafeBytes { isAllZero($0) })
        b[4095] = 0; b[3] = 1
        XCTAssertFalse(b.withUnsafeBytes { isAllZero($0) })
    }

    func testRecordHeaderGoldenBytes() {
        let payload: [UInt8] = [1, 2, 3, 4]
        let hash = ChunkHash.of(payload)
        var rec = [UInt8](repeating: 0, count: PackFormat.recordHeaderSize)
        rec.withUnsafeMutableBytes { r in
            payload.withUnsafeBytes { PackFormat.storeRecordHeader(to: r.baseAddress!, kind: .data, codec: .raw, rawLength: 4, hash: hash, payload: $0) }
        }
        XCTAssertEqual(Array(rec[0..<16]), [0x56, 0x43, 0x48, 0x4B, 1, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0])
        XCTAssertEqual(Array(rec[16..<48]), { var h = [UInt8](repeating: 0, count: 32); h.withUnsafeMutableBytes { hash.store(to: $0.baseAddress!) }; return h }())
        let parsed = rec.withUnsafeBytes { PackFormat.loadRecordHeader($0.baseAddress!) }
        XCTAssertEqual(parsed?.hash, hash)
        XCTAssertEqual(parsed?.rawLength, 4)
        XCTAssertEqual(parsed?.storedLength, 4)
        let full = rec + payload
        XCTAssertTrue(full.withUnsafeBytes { PackFormat.recordChecksumMatches($0, header: parsed!) })
        var bad = full
        bad[57] ^= 1
        XCTAssertFalse(bad.withUnsafeBytes { PackFormat.recordChecksumMatches($0, header: parsed!) })
    }

    func testPackHeaderRoundTripAndVersionCheck() throws {
        let h = PackFormat.encodeHeader(pack: 42, storeID: Array(0..<16), created: 7)
        XCTAssertEqual(h.count, 64)
        XCTAssertEqual(Array(h[0..<8]), Array("VDISKPK\0".utf8))
        XCTAssertEqual(try PackFormat.decodeHeader(h, file: "x"), 42)
        var v2 = h
        v2[8] = 2
        XCTAssertThrowsStoreError(try PackFormat.decodeHeader(v2, file: "x")) { if case .corruptStore = $0 { return true }; return false }
    }

    func testTreeNodeEncoding() throws {
        let ref = ChunkRef(hash: ChunkHash.of([9]), location: ChunkLocation(pack: 3, offset: 64, storedLength: 100))
        let node = TreeNode(level: 1, refs: [ref, .zero, ref])
        let bytes = node.encode()
        XCTAssertEqual(bytes.count, 8 + 3 * 48)
        XCTAssertEqual(Array(bytes[0..<8]), [1, 0, 0, 0, 3, 0, 0, 0])
        let back = try TreeNode.decode(bytes, what: "t")
        XCTAssertEqual(back.refs, node.refs)
        XCTAssertEqual(back[1000], .zero)
        XCTAssertThrowsStoreError(try TreeNode.decode(Array(bytes.dropLast()), what: "t")) { if case .corruptStore = $0 { return true }; return false }
    }

    func testNamespaceRoundTrip() throws {
        var ns = Namespace()
        try ns.addImage("vms/web1.img", root: .empty(size: 1 << 30, blockSize: 4096), now: 5)
        try ns.addImage("base.img", root: .empty(size: 10, blockSize: 65536), now: 6)
        XCTAssertEqual(ns.entries["vms"]?.kind, .directory)
        let back = try Namespace.decode(ns.encode())
        XCTAssertEqual(back, ns)
        XCTAssertEqual(back.children(of: ""), ["base.img", "vms"])
        XCTAssertEqual(back.children(of: "vms"), ["vms/web1.img"])
        XCTAssertThrowsStoreError(try ns.addImage("base.img/x", root: .empty(size: 0, blockSize: 4096), now: 0)) { $0 == .nameExists(name: "base.img") }
        XCTAssertThrowsStoreError(try ns.addImage("vms", root: .empty(size: 0, blockSize: 4096), now: 0)) { $0 == .nameExists(name: "vms") }
    }

    func testNameValidation() throws {
        XCTAssertEqual(try Namespace.validate("a//b/"), "a/b")
        for bad in ["", "/abs", "a/../b", ".", ".snapshots/x"] {
            XCTAssertThrowsStoreError(try Namespace.validate(bad)) { if case .invalidName = $0 { return true }; return false }
        }
        XCTAssertThrowsStoreError(try Namespace.validate(String(repeating: "x", count: 256))) { $0.errno == ENAMETOOLONG }
        // Deep trees are fine: only each component is limited, and the whole path to 65535.
        let deep = (0..<40).map { _ in String(repeating: "d", count: 200) }.joined(separator: "/")
        XCTAssertEqual(try Namespace.validate(deep), deep)
    }

    func testTreeDepth() {
        XCTAssertEqual(TreeNode.depth(forBlocks: 0), 1)
        XCTAssertEqual(TreeNode.depth(forBlocks: 1024), 1)
        XCTAssertEqual(TreeNode.depth(forBlocks: 1025), 2)
        XCTAssertEqual(TreeNode.depth(forBlocks: 1024 * 1024 + 1), 3)
    }
}
