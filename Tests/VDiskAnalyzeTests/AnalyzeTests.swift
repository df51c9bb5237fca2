import Foundation
import VDiskStore
import XCTest

@testable import VDiskAnalyze

/// SplitMix64: a seeded generator, so that the synthetic images are the same on every run.
struct SplitMix64 {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(n + 8)
        while out.count < n { withUnsafeBytes(of: next()) { out.append(contentsOf: $0) } }
        return Array(out.prefix(n))
    }
}

/// What the figures should be, computed the slow and obvious way from the bytes.
struct Reference {
    var total: [Int64]
    var zeroBytes: [Int64]
    var nonzero: [Int64]
    var unique: [Int64]
    var uniqueBlocks: [Int64]
    var pair: [[Int64]]
    var allUnique: Int64
    var allUniqueBlocks: Int64
    var estimate: Int64
    var estimatePer: [Int64]

    init(_ images: [[UInt8]], blockSize: Int) {
        let n = images.count
        var table: [[UInt8]: UInt64] = [:]
        total = Array(repeating: 0, count: n)
        zeroBytes = Array(repeating: 0, count: n)
        for (i, img) in images.enumerated() {
            var o = 0
            while o < img.count {
                let block = Array(img[o..<min(img.count, o + blockSize)])
                total[i] += Int64(block.count)
                if block.allSatisfy({ $0 == 0 }) {
                    zeroBytes[i] += Int64(block.count)
                } else {
                    table[block, default: 0] |= UInt64(1) << UInt64(i)
                }
                o += blockSize
            }
        }
        nonzero = zip(total, zeroBytes).map { $0 - $1 }
        unique = Array(repeating: 0, count: n)
        uniqueBlocks = Array(repeating: 0, count: n)
        estimatePer = Array(repeating: 0, count: n)
        pair = Array(repeating: Array(repeating: 0, count: n), count: n)
        allUnique = 0
        allUniqueBlocks = 0
        estimate = 0
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: Compression.bound(blockSize), alignment: 16)
        defer { out.deallocate() }
        for (block, mask) in table {
            let c = Int64(block.withUnsafeBytes { Compression.compress($0, into: out).1 })
            allUnique += Int64(block.count)
            allUniqueBlocks += 1
            estimate += c
            for i in 0..<n where mask & (1 << UInt64(i)) != 0 {
                unique[i] += Int64(block.count)
                uniqueBlocks[i] += 1
                estimatePer[i] += c
                for j in 0..<n where j != i && mask & (1 << UInt64(j)) != 0 { pair[i][j] += Int64(block.count) }
            }
        }
    }

    func similarity(_ i: Int, _ j: Int) -> Double? {
        if i == j { return nonzero[i] > 0 ? Double(nonzero[i] - unique[i]) / Double(nonzero[i]) : nil }
        let t = nonzero[i] + nonzero[j]
        guard t > 0 else { return nil }
        return Double(t - (unique[i] + unique[j] - pair[i][j])) / Double(t)
    }
}

final class AnalyzeTests: XCTestCase {
    var dir: String = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "vdiskanalyze-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let p = dir + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    func options(_ sizes: [Int] = [], budget: Int64 = AnalyzeOptions.defaultMemoryBudget, window: Int = 8 << 20,
                 workers: Int = 2) -> AnalyzeOptions {
        AnalyzeOptions(blockSizes: sizes, memoryBudget: budget, tempDirectory: dir, workers: workers, windowSize: window)
    }

    /// Every figure of `report` against the reference at every block size.
    func assertMatchesReference(_ report: AnalysisReport, _ images: [[UInt8]], file: StaticString = #filePath,
                                line: UInt = #line) {
        for row in report.blockSizes {
            let ref = Reference(images, blockSize: row.blockSize)
            let bs = row.blockSize
            XCTAssertEqual(row.totalBytes, ref.total.reduce(0, +), "total @\(bs)", file: file, line: line)
            XCTAssertEqual(row.nonzeroBytes, ref.nonzero.reduce(0, +), "nonzero @\(bs)", file: file, line: line)
            XCTAssertEqual(row.uniqueBytes, ref.allUnique, "unique @\(bs)", file: file, line: line)
            XCTAssertEqual(row.uniqueBlocks, ref.allUniqueBlocks, "unique blocks @\(bs)", file: file, line: line)
            XCTAssertEqual(row.estimatedStoreBytes, ref.estimate, "estimate @\(bs)", file: file, line: line)
            for i in images.indices {
                let l = report.images[i].perBlockSize.first { $0.blockSize == bs }!
                XCTAssertEqual(l.nonzeroBytes, ref.nonzero[i], "image \(i) nonzero @\(bs)", file: file, line: line)
                XCTAssertEqual(l.uniqueBytes, ref.unique[i], "image \(i) unique @\(bs)", file: file, line: line)
                XCTAssertEqual(l.uniqueBlocks, ref.uniqueBlocks[i], "image \(i) unique blocks @\(bs)", file: file, line: line)
                XCTAssertEqual(l.estimatedStoreBytes, ref.estimatePer[i], "image \(i) estimate @\(bs)", file: file, line: line)
                XCTAssertEqual(l.zeroShare, ref.total[i] > 0 ? Double(ref.zeroBytes[i]) / Double(ref.total[i]) : nil,
                               "image \(i) zero share @\(bs)", file: file, line: line)
                for j in images.indices {
                    XCTAssertEqual(row.matrix[i][j], ref.similarity(i, j), "matrix[\(i)][\(j)] @\(bs)", file: file, line: line)
                }
            }
        }
    }

    // MARK: - Exact figures on hand-built images

    /// Two images of 4 KiB pages with known duplication: the definitions pinned by hand.
    func testHandComputedSharesAt4K() throws {
        var g = SplitMix64(1)
        let r = (0..<7).map { _ in g.bytes(4096) }  // incompressible pages
        let z = [UInt8](repeating: 0, count: 4096)
        let a = [r[1], r[2], r[3], r[1], z, r[4]].flatMap { $0 }
        let b = [r[1], r[5], z, z, r[6], r[2]].flatMap { $0 }
        let pa = try write("a.img", a), pb = try write("b.img", b)
        let report = try Analyzer.analyzeImages([pa, pb], options: options())

        XCTAssertEqual(report.blockSize, 4096)
        XCTAssertEqual(report.blockSizes.map(\.blockSize), [512, 1024, 4096, 8192, 65536])
        XCTAssertEqual(report.images[0].size, 6 * 4096)
        XCTAssertEqual(report.images[0].zeroShare, 1.0 / 6)
        XCTAssertEqual(report.images[1].zeroShare, 2.0 / 6)
        // a: five non-zero pages, r1 twice: one of five is a duplicate.
        XCTAssertEqual(report.images[0].selfDuplication, 1.0 / 5)
        XCTAssertEqual(report.images[1].selfDuplication, 0)
        // Together: 9 non-zero pages, 6 distinct (r1…r6): 3 of 9 are duplicates.
        XCTAssertEqual(report.matrix[0][1]!, 3.0 / 9, accuracy: 1e-12)
        XCTAssertEqual(report.matrix[1][0]!, 3.0 / 9, accuracy: 1e-12)
        XCTAssertEqual(report.matrix[0][0], 1.0 / 5)
        // Random pages do not compress: the estimate is the distinct pages' raw size.
        XCTAssertEqual(report.primary?.estimatedStoreBytes, 6 * 4096)
        XCTAssertEqual(report.images[0].estimatedStoreBytes, 4 * 4096)
        // 512 B and 1 KiB blocks see the same structure.
        XCTAssertEqual(report.blockSizes[0].matrix[0][1]!, 3.0 / 9, accuracy: 1e-12)
        XCTAssertEqual(report.blockSizes[1].matrix[0][1]!, 3.0 / 9, accuracy: 1e-12)
        // 8 KiB: a = [r1r2, r3r1, 0r4], b = [r1r5, 00, r6r2]: nothing repeats.
        XCTAssertEqual(report.blockSizes[3].matrix[0][1], 0)
        XCTAssertEqual(report.blockSizes[3].zeroShare, 8192.0 / (12 * 4096))
        // 64 KiB: one partial (24 KiB) block per image.
        XCTAssertEqual(report.blockSizes[4].uniqueBlocks, 2)
        XCTAssertEqual(report.blockSizes[4].uniqueBytes, 12 * 4096)
        XCTAssertEqual(report.blockSizes[4].matrix[0][1], 0)
        assertMatchesReference(report, [a, b])
    }

    func testIdenticalImagesAreHalfDuplicate() throws {
        var g = SplitMix64(2)
        let a = g.bytes(64 * 1024)
        let pa = try write("a.img", a), pb = try write("b.img", a)
        let report = try Analyzer.analyzeImages([pa, pb], options: options([4096]))
        XCTAssertEqual(report.matrix[0][1], 0.5)
        XCTAssertEqual(report.images.map(\.label), ["a.img", "b.img"])
    }

    // MARK: - Against the reference, with windows, pieces and tails

    /// Images from a seeded mix of fresh, repeated, shifted, compressible and zero pages, with a
    /// size that is no multiple of any block size; small windows so that many windows and pieces
    /// are used.
    func makeMixedImages(count: Int, pages: Int, seed: UInt64) -> [[UInt8]] {
        var g = SplitMix64(seed)
        let pool = (0..<24).map { k -> [UInt8] in
            k % 3 == 0 ? [UInt8]((0..<4096).map { UInt8(truncatingIfNeeded: $0 / (k + 1)) }) : g.bytes(4096)
        }
        var images: [[UInt8]] = []
        for _ in 0..<count {
            var img: [UInt8] = []
            for _ in 0..<pages {
                switch g.next() % 8 {
                case 0, 1: img += [UInt8](repeating: 0, count: 4096)
                case 2: img += g.bytes(4096)
                case 3:  // a pool page shifted by 512 bytes: equal only at 512 B blocks
                    let p = pool[Int(g.next() % 24)]
                    img += p[512...] + p[..<512]
                default: img += pool[Int(g.next() % 24)]
                }
            }
            img += g.bytes(1000)  // a tail shorter than any block
            images.append(img)
        }
        return images
    }

    func testMixedImagesMatchReferenceAtEveryBlockSize() throws {
        let images = makeMixedImages(count: 3, pages: 300, seed: 3)
        let paths = try images.enumerated().map { try write("m\($0.offset).img", $0.element) }
        let report = try Analyzer.analyzeImages(paths, options: options(window: 256 << 10))
        XCTAssertEqual(report.spilledRuns, 0)
        assertMatchesReference(report, images)
        // One worker gives the same answer.
        let single = try Analyzer.analyzeImages(paths, options: options(window: 256 << 10, workers: 1))
        XCTAssertEqual(single.renderCSV(), report.renderCSV())
    }

    func testSpillingToDiskGivesIdenticalResults() throws {
        let images = makeMixedImages(count: 3, pages: 500, seed: 4)
        let paths = try images.enumerated().map { try write("s\($0.offset).img", $0.element) }
        let inMemory = try Analyzer.analyzeImages(paths, options: options())
        XCTAssertEqual(inMemory.spilledRuns, 0)
        // A budget this small forces 64 KiB windows and a spill almost every window: more than
        // 64 runs per block size, so the merge takes several passes.
        let spilled = try Analyzer.analyzeImages(paths, options: options(budget: 20 << 10))
        XCTAssertGreaterThan(spilled.spilledRuns, 64 * 2, "\(spilled.spilledRuns)")
        XCTAssertEqual(spilled.renderCSV(), inMemory.renderCSV())
        for (x, y) in zip(spilled.blockSizes, inMemory.blockSizes) {
            XCTAssertEqual(x.uniqueBlocks, y.uniqueBlocks)
            XCTAssertEqual(x.uniqueBytes, y.uniqueBytes)
            XCTAssertEqual(x.estimatedStoreBytes, y.estimatedStoreBytes)
            XCTAssertEqual(x.matrix, y.matrix)
        }
        assertMatchesReference(spilled, images)
        // The spill directory is gone afterwards.
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("vdiskfs-analyze.") }
        XCTAssertEqual(left, [])
    }

    func testSparseFileHolesAreCountedAsZeros() throws {
        var g = SplitMix64(5)
        let p = dir + "/sparse.img"
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(ftruncate(fd, 8 << 20), 0)
        let chunk = g.bytes(12288)
        for off in [0, (3 << 20) + 512, (8 << 20) - 12288] {
            _ = chunk.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(off)) }
        }
        close(fd)
        let report = try Analyzer.analyzeImages([p], options: options([4096, 65536], window: 1 << 20))
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        assertMatchesReference(report, [bytes])
        XCTAssertEqual(report.images[0].size, 8 << 20)
        // Windows 1, 2, 4, 5 and 6 (of 0…7) are holes: not read. (File systems without
        // SEEK_DATA read them all, with the same figures.)
        XCTAssertTrue(report.holeBytes == 5 << 20 || report.holeBytes == 0, "\(report.holeBytes)")
    }

    func testPipeInputIsStreamed() throws {
        let images = makeMixedImages(count: 1, pages: 100, seed: 6)
        let fifo = dir + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let data = images[0]
        let writer = Thread {
            let fd = open(fifo, O_WRONLY)
            guard fd >= 0 else { return }
            data.withUnsafeBytes { b in
                var o = 0
                while o < b.count {
                    let n = Glibc.write(fd, b.baseAddress! + o, min(7000, b.count - o))
                    if n <= 0 { break }
                    o += n
                }
            }
            close(fd)
        }
        writer.start()
        let report = try Analyzer.analyzeImages([fifo], options: options())
        assertMatchesReference(report, images)
    }

    // MARK: - Output formats

    func testJSONParsesAndCarriesTheFigures() throws {
        let images = makeMixedImages(count: 2, pages: 50, seed: 7)
        let paths = try images.enumerated().map { try write("j\($0.offset).img", $0.element) }
        let report = try Analyzer.analyzeImages(paths, options: options([8192, 512]))
        let json = report.renderJSON()
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        XCTAssertEqual(obj["method"] as? String, "blocks")
        XCTAssertEqual(obj["block_size"] as? Int, 8192)
        let imgs = try XCTUnwrap(obj["images"] as? [[String: Any]])
        XCTAssertEqual(imgs.count, 2)
        XCTAssertEqual(imgs[0]["path"] as? String, paths[0])
        XCTAssertEqual(imgs[0]["size"] as? Int, images[0].count)
        XCTAssertEqual((imgs[0]["block_sizes"] as? [Any])?.count, 2)
        let m = try XCTUnwrap(obj["matrix"] as? [[Double]])
        XCTAssertEqual(m[0][1], report.matrix[0][1]!, accuracy: 1e-6)
        let rows = try XCTUnwrap(obj["block_sizes"] as? [[String: Any]])
        XCTAssertEqual(rows.map { $0["block_size"] as? Int }, [512, 8192])
        XCTAssertTrue(rows[0]["estimated_fs_aware_store_bytes"] is NSNull)
        let est = try XCTUnwrap(obj["estimates"] as? [String: Any])
        XCTAssertEqual(est["block_size"] as? Int, 8192)
        XCTAssertEqual(est["raw_ingest_lz4_bytes"] as? Int, Int(report.primary!.estimatedStoreBytes!))
        XCTAssertTrue(est["fs_aware_lz4_bytes"] is NSNull)
    }

    func testCSVAndTextAndSVG() throws {
        var g = SplitMix64(8)
        let a = g.bytes(16384)
        let pa = try write("x,1.img", a), pb = try write("y<&>.img", a + g.bytes(16384))
        let report = try Analyzer.analyzeImages([pa, pb], options: options([4096]))
        let csv = report.renderCSV().split(separator: "\n").map(String.init)
        XCTAssertEqual(csv.count, 3)
        XCTAssertEqual(csv[0], "image,\"x,1.img\",y<&>.img")
        XCTAssertEqual(csv[1], "\"x,1.img\",0.000000,0.333333")
        let text = report.renderText()
        XCTAssertTrue(text.contains("33.3 %"), text)
        XCTAssertTrue(text.contains("fs-aware"))
        let svg = report.renderSVG()
        XCTAssertTrue(svg.hasPrefix("<?xml"))
        XCTAssertTrue(svg.contains("<svg"))
        XCTAssertTrue(svg.hasSuffix("</svg>\n"))
        XCTAssertTrue(svg.contains("y&lt;&amp;&gt;.img"))
        XCTAssertFalse(svg.contains("y<&>"))
        let out = dir + "/plot.svg"
        try report.writeSVG(to: out)
        XCTAssertEqual(try String(contentsOfFile: out, encoding: .utf8), svg)
        XCTAssertThrowsError(try report.writeSVG(to: dir + "/no/such/dir/plot.svg")) { e in
            guard case StoreError.outputUnwritable = e else { return XCTFail("\(e)") }
        }
    }

    // MARK: - Errors

    func testMissingImageIsInputUnreadable() throws {
        let p = dir + "/missing.img"
        XCTAssertThrowsError(try Analyzer.analyzeImages([p], options: options())) { e in
            guard case StoreError.inputUnreadable(let path, let reason) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(path, p)
            XCTAssertFalse(reason.isEmpty)
        }
        XCTAssertThrowsError(try Analyzer.analyzeImages([dir], options: options())) { e in
            guard case StoreError.inputUnreadable(let path, _) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(path, dir)
        }
        XCTAssertThrowsError(try Analyzer.analyzeDirectories([p], options: options())) { e in
            guard case StoreError.inputUnreadable = e else { return XCTFail("\(e)") }
        }
    }

    func testBadArgumentsAreInvalidArgument() throws {
        let p = try write("a.img", [1, 2, 3])
        for sizes in [[3000], [256], [32 << 20]] {
            XCTAssertThrowsError(try Analyzer.analyzeImages([p], options: options(sizes))) { e in
                guard case StoreError.invalidArgument = e else { return XCTFail("\(e)") }
            }
        }
        XCTAssertThrowsError(try Analyzer.analyzeImages([p], options: options(budget: 1000))) { e in
            guard case StoreError.invalidArgument(let m) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(m.contains("--memory-budget"), m)
        }
        XCTAssertThrowsError(try Analyzer.analyzeImages([], options: options())) { e in
            guard case StoreError.invalidArgument = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try Analyzer.analyzeImages(Array(repeating: p, count: 65), options: options())) { e in
            guard case StoreError.invalidArgument = e else { return XCTFail("\(e)") }
        }
        XCTAssertEqual(AnalyzeOptions.parseByteCount("4K"), 4096)
        XCTAssertEqual(AnalyzeOptions.parseByteCount("64KiB"), 65536)
        XCTAssertEqual(AnalyzeOptions.parseByteCount("1.5G"), 3 << 29)
        XCTAssertEqual(AnalyzeOptions.parseByteCount("512"), 512)
        XCTAssertNil(AnalyzeOptions.parseByteCount("-1"))
        XCTAssertNil(AnalyzeOptions.parseByteCount("lots"))
        XCTAssertNil(AnalyzeOptions.parseByteCount(""))
    }

    func testEmptyAndTinyImages() throws {
        let e = try write("empty.img", [])
        let t = try write("tiny.img", [0, 0, 7])
        let report = try Analyzer.analyzeImages([e, t], options: options())
        XCTAssertEqual(report.images[0].size, 0)
        XCTAssertNil(report.images[0].zeroShare)
        XCTAssertNil(report.images[0].selfDuplication)
        XCTAssertEqual(report.images[1].size, 3)
        XCTAssertEqual(report.images[1].selfDuplication, 0)
        XCTAssertEqual(report.matrix[0][1], 0)
        _ = report.renderText()
        XCTAssertNoThrow(try JSONSerialization.jsonObject(with: Data(report.renderJSON().utf8)))
        _ = report.renderSVG()
    }

    // MARK: - Files

    func testFileLevelMethod() throws {
        var g = SplitMix64(9)
        let x = g.bytes(10000), y = g.bytes(5000), z = g.bytes(3000)
        let a = dir + "/treeA", b = dir + "/treeB"
        try FileManager.default.createDirectory(atPath: a + "/sub", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
        try write("treeA/x", x)
        try write("treeA/sub/y", y)
        try write("treeA/sub/x-copy", x)  // a real duplicate
        XCTAssertEqual(link(a + "/x", a + "/x-link"), 0)  // a hard link: not a duplicate
        try write("treeA/empty", [])
        XCTAssertEqual(symlink(a + "/x", a + "/x-symlink"), 0)  // not followed
        try write("treeB/x", x)
        try write("treeB/z", z)
        try write("treeB/zeros", [UInt8](repeating: 0, count: 2000))
        let report = try Analyzer.analyzeDirectories([a, b], options: options())
        XCTAssertEqual(report.method, .files)
        let ia = report.images[0], ib = report.images[1]
        XCTAssertEqual(ia.files, 4)  // x, sub/y, sub/x-copy, empty
        XCTAssertEqual(ia.hardLinksDiscounted, 1)
        XCTAssertEqual(ia.size, 25000)
        XCTAssertEqual(ia.uniqueBytes, 15000)
        XCTAssertEqual(ia.selfDuplication, 10000.0 / 25000)
        XCTAssertEqual(ib.size, 15000)
        XCTAssertEqual(ib.zeroShare, 2000.0 / 15000)
        XCTAssertEqual(ib.selfDuplication, 0)
        // 40000 bytes in all; distinct contents x, y, z, zeros = 20000.
        XCTAssertEqual(report.matrix[0][1]!, 20000.0 / 40000, accuracy: 1e-12)
        let obj = try JSONSerialization.jsonObject(with: Data(report.renderJSON().utf8)) as? [String: Any]
        XCTAssertEqual(obj?["method"] as? String, "files")
        XCTAssertTrue(report.renderText().contains("50.0 %"))
    }
}
