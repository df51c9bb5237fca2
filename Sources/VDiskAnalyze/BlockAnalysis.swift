import Dispatch
import Foundation
import VDiskStore

/// Entry points of the analysis.
public enum Analyzer {
    /// Block-level analysis of disk images (the paper's "disk block" method), at every block size
    /// of `options` in one read of each image.
    public static func analyzeImages(_ paths: [String], options: AnalyzeOptions) throws -> AnalysisReport {
        try options.validate()
        guard !paths.isEmpty else { throw StoreError.invalidArgument("no image given") }
        guard paths.count <= AnalyzeOptions.maxImages else {
            throw StoreError.invalidArgument("at most \(AnalyzeOptions.maxImages) images can be compared in one run")
        }
        let analysis = try BlockAnalysis(options: options, imageCount: paths.count)
        return try analysis.run(paths)
    }
}

/// Bytes and blocks of one image at one block size.
struct LevelCounter {
    var blocks: Int64 = 0
    var zeroBlocks: Int64 = 0
    var bytes: Int64 = 0
    var zeroBytes: Int64 = 0

    mutating func add(_ o: LevelCounter) {
        blocks += o.blocks; zeroBlocks += o.zeroBlocks; bytes += o.bytes; zeroBytes += o.zeroBytes
    }

    /// `length` bytes of zeros cut into blocks of `blockSize`.
    mutating func addZeros(_ length: Int, blockSize: Int) {
        let n = Int64((length + blockSize - 1) / blockSize)
        blocks += n; zeroBlocks += n; bytes += Int64(length); zeroBytes += Int64(length)
    }
}

struct PendingBlock {
    var key: BlockKey
    var offset: Int
    var length: Int
    var isNew: Bool
    var csize: UInt32
}

/// The scratch of one worker: counters summed over the pieces it took in a window.
final class WorkerScratch {
    let hasher = BlockHasher()
    let out: UnsafeMutableRawBufferPointer
    var nonzeroPrefix: [Int32]
    var pending: [[PendingBlock]]
    var counters: [LevelCounter]
    var tails: [(level: Int, key: BlockKey, length: Int)] = []
    /// The 32-byte identities of the piece's blocks, per block size (children of the next size).
    let digests: [UnsafeMutableRawPointer]

    init(sizes: [Int], pieceSize: Int) {
        let levels = sizes.count, maxBlock = sizes.last!, smallest = sizes.first!
        digests = sizes.map { .allocate(byteCount: 32 * (pieceSize / $0), alignment: 16) }
        out = .allocate(byteCount: Compression.bound(maxBlock), alignment: 16)
        nonzeroPrefix = Array(repeating: 0, count: pieceSize / smallest + 1)
        pending = Array(repeating: [], count: levels)
        counters = Array(repeating: LevelCounter(), count: levels)
    }

    deinit { out.deallocate(); digests.forEach { $0.deallocate() } }
}

final class BlockAnalysis {
    let options: AnalyzeOptions
    let sizes: [Int]
    let smallest: Int
    let maxBlock: Int
    let window: Int
    let pieceSize: Int
    let tableBudget: Int64
    let minCapacity: [Int]
    let tables: [BlockTable]
    var runs: [[String]]
    var tails: [[BlockKey: Int]]
    let spill: SpillArea
    let lock = NSLock()
    let works: [WorkerScratch]
    /// [image][level]
    var counters: [[LevelCounter]]
    let zeroDigests: UnsafeMutableRawPointer
    var holeBytes: Int64 = 0

    init(options: AnalyzeOptions, imageCount: Int) throws {
        self.options = options
        sizes = options.blockSizes
        smallest = sizes.first!
        maxBlock = sizes.last!
        // Tables take 60 % of the budget: growing one briefly holds the old slots and the new,
        // sorting one for a spill takes scratch of up to half its entries.
        tableBudget = options.memoryBudget / 10 * 6
        let sizes = self.sizes
        func minimum(_ w: Int) -> [Int] { sizes.map { BlockTable.capacity(for: (w + $0 - 1) / $0) } }
        func bytes(_ caps: [Int]) -> Int64 { caps.reduce(0) { $0 + Int64($1) * Int64(BlockTable.slotBytes) } }
        // A window's worth of new blocks must fit every table at once: shrink the window when
        // the budget is tiny.
        var w = max(options.windowSize, maxBlock)
        while w > maxBlock && bytes(minimum(w)) > tableBudget { w /= 2 }
        guard bytes(minimum(w)) <= tableBudget else {
            let need = (bytes(minimum(w)) * 10 + 5) / 6
            throw StoreError.invalidArgument(
                "--memory-budget is too small for these block sizes: at least \(AnalyzeOptions.formatBytes(need))")
        }
        window = w
        let piece = min(w, max(maxBlock, 128 << 10))
        pieceSize = piece
        minCapacity = minimum(w)
        tables = zip(sizes, minCapacity).map { BlockTable(blockSize: $0, capacity: $1) }
        runs = Array(repeating: [], count: sizes.count)
        tails = Array(repeating: [:], count: sizes.count)
        spill = SpillArea(parent: options.tempDirectory)
        works = (0..<options.workers).map { _ in
            WorkerScratch(sizes: sizes, pieceSize: piece)
        }
        // The identity of an all-zero block at each size (a child of the next size).
        let zd = UnsafeMutableRawPointer.allocate(byteCount: 32 * sizes.count, alignment: 16)
        let h = BlockHasher()
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: max(sizes[0], 32 * (sizes.last! / sizes[0])), alignment: 16)
        defer { zeros.deallocate() }
        for (li, s) in sizes.enumerated() {
            if li == 0 {
                zeros.initializeMemory(as: UInt8.self, repeating: 0)
                h.digest(UnsafeRawBufferPointer(rebasing: zeros[0..<s]), into: zd)
            } else {
                let ratio = s / sizes[li - 1]
                for k in 0..<ratio { (zeros.baseAddress! + 32 * k).copyMemory(from: zd + 32 * (li - 1), byteCount: 32) }
                h.digestNode(UnsafeRawBufferPointer(rebasing: zeros[0..<(32 * ratio)]), into: zd + 32 * li)
            }
        }
        zeroDigests = zd
        counters = Array(repeating: Array(repeating: LevelCounter(), count: sizes.count), count: imageCount)
    }

    deinit { zeroDigests.deallocate() }

    func run(_ paths: [String]) throws -> AnalysisReport {
        let start = DispatchTime.now()
        defer { spill.removeAll() }
        // Open every image first: a missing one fails before any work is done.
        var readers: [ImageReader] = []
        readers.reserveCapacity(paths.count)
        for p in paths { readers.append(try ImageReader(path: p)) }
        let buffers = [UnsafeMutableRawBufferPointer.allocate(byteCount: window, alignment: 4096),
                       UnsafeMutableRawBufferPointer.allocate(byteCount: window, alignment: 4096)]
        defer { buffers.forEach { $0.deallocate() } }
        let labels = makeLabels(paths)
        for (i, r) in readers.enumerated() {
            let what = paths.count > 1 ? "\(labels[i]) (\(i + 1)/\(paths.count))" : labels[i]
            try scan(r, image: i, label: what, buffers: buffers)
        }
        let report = try finish(paths: paths, readers: readers)
        var r = report
        r.seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        return r
    }

    /// The read-ahead of the next window, handed to the read queue and back.
    private final class NextWindow: @unchecked Sendable {
        let reader: ImageReader
        let buffer: UnsafeMutableRawBufferPointer
        var result: Result<ImageReader.Window, Error> = .success(.end)
        init(_ reader: ImageReader, _ buffer: UnsafeMutableRawBufferPointer) { self.reader = reader; self.buffer = buffer }
    }

    private func scan(_ reader: ImageReader, image: Int, label: String, buffers: [UnsafeMutableRawBufferPointer]) throws {
        let readQueue = DispatchQueue(label: "vdiskfs.analyze.read")
        let bit = UInt64(1) << UInt64(image)
        var current = try reader.next(into: buffers[0])
        var which = 0
        options.progress?(label, 0, reader.size ?? -1)
        loop: while true {
            switch current {
            case .end:
                break loop
            case .hole(let len):
                holeBytes += Int64(len)
                for (li, s) in sizes.enumerated() { counters[image][li].addZeros(len, blockSize: s) }
                current = try reader.next(into: buffers[which])
            case .data(let len):
                try reserve(windowBytes: len)
                let next = NextWindow(reader, buffers[1 - which])
                let group = DispatchGroup()
                readQueue.async(group: group) { next.result = Result { try next.reader.next(into: next.buffer) } }
                process(UnsafeRawBufferPointer(rebasing: buffers[which][0..<len]), bit: bit, image: image)
                group.wait()
                current = try next.result.get()
                which = 1 - which
            }
            options.progress?(label, reader.position, reader.size ?? -1)
        }
    }

    /// Makes room for one window's new blocks in every table, growing tables within the budget
    /// and spilling the largest ones to disk when it would be exceeded.
    private func reserve(windowBytes: Int) throws {
        for (li, s) in sizes.enumerated() {
            let extra = (windowBytes + s - 1) / s
            let t = tables[li]
            while t.count + extra > t.maxCount {
                let need = BlockTable.capacity(for: t.count + extra)
                let total = tables.reduce(Int64(0)) { $0 + $1.bytes }
                if total - t.bytes + Int64(need) * Int64(BlockTable.slotBytes) <= tableBudget {
                    t.resize(to: need)
                    break
                }
                // Spill the largest non-empty table (this one on a tie).
                var victim = li
                for (k, o) in tables.enumerated() where o.count > 0 && o.bytes > tables[victim].bytes { victim = k }
                try spillTable(victim)
            }
        }
    }

    private func spillTable(_ li: Int) throws {
        let t = tables[li]
        if t.count > 0 {
            let sorted = t.compactSorted()
            runs[li].append(try spill.write(UnsafeBufferPointer(sorted)))
        }
        t.reset(capacity: minCapacity[li])
    }

    /// Hashes (and trial-compresses) the non-zero blocks of one window at every block size.
    /// The window is cut into small pieces that the workers take in turn, so that a window
    /// with its data in one corner still keeps every core busy.
    private func process(_ data: UnsafeRawBufferPointer, bit: UInt64, image: Int) {
        let pieces = (data.count + pieceSize - 1) / pieceSize
        for w in works {
            for li in sizes.indices { w.counters[li] = LevelCounter() }
            w.tails.removeAll(keepingCapacity: true)
        }
        let nextPiece = NextPiece()
        DispatchQueue.concurrentPerform(iterations: min(works.count, pieces)) { wi in
            let work = works[wi]
            while true {
                let p = nextPiece.take()
                guard p < pieces else { return }
                let start = p * pieceSize
                let piece = UnsafeRawBufferPointer(rebasing: data[start..<min(data.count, start + pieceSize)])
                processPiece(piece, work: work, bit: bit)
            }
        }
        for w in works {
            for li in sizes.indices { counters[image][li].add(w.counters[li]) }
            for t in w.tails { tails[t.level][t.key] = t.length }
        }
    }

    private final class NextPiece: @unchecked Sendable {
        private let lock = NSLock()
        private var next = 0
        func take() -> Int {
            lock.lock()
            defer { lock.unlock() }
            next += 1
            return next - 1
        }
    }

    private func processPiece(_ piece: UnsafeRawBufferPointer, work w: WorkerScratch, bit: UInt64) {
        let s0 = smallest
        let base = piece.baseAddress!
        let length = piece.count
        for li in sizes.indices { w.pending[li].removeAll(keepingCapacity: true) }
        // Which smallest blocks hold data: a prefix count, so that any larger block is known
        // to be zero without scanning it again.
        let n0 = (length + s0 - 1) / s0
        var nonzero: Int32 = 0
        w.nonzeroPrefix.withUnsafeMutableBufferPointer { prefix in
            prefix[0] = 0
            for j in 0..<n0 {
                let o = j * s0
                if !isAllZero(UnsafeRawBufferPointer(start: base + o, count: min(s0, length - o))) { nonzero += 1 }
                prefix[j + 1] = nonzero
            }
        }
        if nonzero == 0 {
            for (li, s) in sizes.enumerated() { w.counters[li].addZeros(length, blockSize: s) }
            return
        }
        var anyNew = false
        w.nonzeroPrefix.withUnsafeBufferPointer { prefix in
            for (li, s) in sizes.enumerated() {
                var c = LevelCounter()
                let digests = w.digests[li]
                let children = li > 0 ? w.digests[li - 1] : digests
                let ratio = li > 0 ? s / sizes[li - 1] : 0
                var o = 0, b = 0
                while o < length {
                    let l = min(s, length - o)
                    let d = digests + 32 * b
                    c.blocks += 1
                    c.bytes += Int64(l)
                    if prefix[(o + l + s0 - 1) / s0] == prefix[o / s0] {
                        c.zeroBlocks += 1
                        c.zeroBytes += Int64(l)
                        d.copyMemory(from: zeroDigests + 32 * li, byteCount: 32)
                    } else {
                        if li == 0 || l < s {
                            w.hasher.digest(UnsafeRawBufferPointer(start: base + o, count: l), into: d)
                        } else {
                            w.hasher.digestNode(UnsafeRawBufferPointer(start: children + 32 * ratio * b, count: 32 * ratio), into: d)
                        }
                        let key = BlockHasher.key(ofDigest: d)
                        w.pending[li].append(PendingBlock(key: key, offset: o, length: l, isNew: false, csize: 0))
                        if l < s { w.tails.append((li, key, l)) }
                    }
                    o += s
                    b += 1
                }
                w.counters[li].add(c)
            }
        }
        lock.lock()
        for li in sizes.indices {
            let t = tables[li]
            w.pending[li].withUnsafeMutableBufferPointer { pb in
                for k in pb.indices {
                    pb[k].isNew = t.insert(pb[k].key, bit: bit)
                    if pb[k].isNew { anyNew = true }
                }
            }
        }
        lock.unlock()
        guard options.estimateStoreSize && anyNew else { return }
        // LZ4 only for blocks new to the run: their sizes are what a store would keep.
        for li in sizes.indices {
            w.pending[li].withUnsafeMutableBufferPointer { pb in
                for k in pb.indices where pb[k].isNew {
                    let (_, n) = Compression.compress(UnsafeRawBufferPointer(start: base + pb[k].offset, count: pb[k].length),
                                                      into: w.out)
                    pb[k].csize = UInt32(n)
                }
            }
        }
        lock.lock()
        for li in sizes.indices {
            let t = tables[li]
            for b in w.pending[li] where b.isNew { t.setCompressedSize(b.key, b.csize) }
        }
        lock.unlock()
    }

    /// Counts every distinct block once (merging spilled runs) and builds the report.
    private func finish(paths: [String], readers: [ImageReader]) throws -> AnalysisReport {
        let n = paths.count
        var levels: [BlockSizeReport] = []
        var perImage: [[ImageLevelReport]] = Array(repeating: [], count: n)
        for (li, s) in sizes.enumerated() {
            var acc = ShareAccumulator(images: n)
            let tailLengths = tails[li]
            let table = tables[li]
            func add(_ slot: Slot) {
                let len = tailLengths.isEmpty ? s : (tailLengths[slot.key] ?? s)
                acc.add(mask: slot.mask, length: Int64(len), csize: Int64(slot.csize))
            }
            if runs[li].isEmpty {
                table.forEach(add)
            } else {
                var files = runs[li]
                // Keep the open files few: merge runs 64 at a time until few enough are left.
                while files.count > 63 {
                    let group = Array(files.prefix(64))
                    files.removeFirst(64)
                    let writer = try spill.makeWriter()
                    try mergeRuns(try group.map { try RunReader(path: $0) }) { try writer.append($0) }
                    try writer.flush()
                    group.forEach { unlink($0) }
                    files.append(writer.path)
                }
                var sources: [SlotSource] = try files.map { try RunReader(path: $0) }
                sources.append(MemoryRun(table.compactSorted()))
                try mergeRuns(sources, into: add)
                files.forEach { unlink($0) }
            }
            table.release()

            let nonzero = (0..<n).map { counters[$0][li].bytes - counters[$0][li].zeroBytes }
            for i in 0..<n {
                let c = counters[i][li]
                perImage[i].append(ImageLevelReport(
                    blockSize: s, blocks: c.blocks, zeroBlocks: c.zeroBlocks, zeroShare: share(c.zeroBytes, of: c.bytes),
                    nonzeroBytes: nonzero[i], uniqueBytes: acc.uniqueBytes[i], uniqueBlocks: acc.uniqueBlocks[i],
                    selfDuplication: share(nonzero[i] - acc.uniqueBytes[i], of: nonzero[i]),
                    estimatedStoreBytes: options.estimateStoreSize ? acc.estimated[i] : nil))
            }
            let total = (0..<n).reduce(Int64(0)) { $0 + counters[$1][li].bytes }
            let zeros = (0..<n).reduce(Int64(0)) { $0 + counters[$1][li].zeroBytes }
            let nz = total - zeros
            levels.append(BlockSizeReport(
                blockSize: s, totalBytes: total, zeroShare: share(zeros, of: total), nonzeroBytes: nz,
                uniqueBytes: acc.allUniqueBytes, uniqueBlocks: acc.allUniqueBlocks,
                duplicateShare: share(nz - acc.allUniqueBytes, of: nz),
                estimatedStoreBytes: options.estimateStoreSize ? acc.allEstimated : nil,
                matrix: acc.matrix(nonzero: nonzero)))
        }
        let primary = options.primaryBlockSize
        let pi = sizes.firstIndex(of: primary)!
        let labels = makeLabels(paths)
        let images = (0..<n).map { i -> ImageReport in
            let l = perImage[i][pi]
            return ImageReport(
                path: paths[i], label: labels[i], size: counters[i][pi].bytes, zeroShare: l.zeroShare,
                selfDuplication: l.selfDuplication, nonzeroBytes: l.nonzeroBytes, uniqueBytes: l.uniqueBytes,
                estimatedStoreBytes: l.estimatedStoreBytes, perBlockSize: perImage[i],
                files: nil, hardLinksDiscounted: nil, skipped: nil)
        }
        return AnalysisReport(
            method: .blocks, blockSize: primary, images: images, matrix: levels[pi].matrix, blockSizes: levels,
            spilledRuns: spill.runsWritten, spilledBytes: spill.bytesWritten, holeBytes: holeBytes, seconds: 0,
            bytesAnalyzed: images.reduce(0) { $0 + $1.size })
    }
}
