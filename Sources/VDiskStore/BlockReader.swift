import Dispatch
import Foundation

extension Store {
    /// The refs of blocks `first ..< first + count` of `image`, one tree walk per leaf node.
    public func blockRefs(_ image: ImageRoot, from first: UInt64, count: Int) throws -> [ChunkRef] {
        var out = [ChunkRef](repeating: .zero, count: count)
        var b = first
        let end = min(first + UInt64(count), image.blockCount)
        let fan = UInt64(TreeNode.fanOut)
        while b < end {
            let leafFirst = b / fan * fan
            let leafEnd = min(leafFirst + fan, end)
            // Walk down to the leaf that holds b.
            var ref = image.root
            var level = Int(image.depth) - 1
            while level >= 1 && !ref.isZero {
                ref = try readNode(ref)[Int((leafFirst / TreeNode.span(ofLevel: level)) % fan)]
                level -= 1
            }
            if !ref.isZero {
                let leaf = try readNode(ref)
                for x in b..<leafEnd { out[Int(x - first)] = leaf[Int(x - leafFirst)] }
            }
            b = leafEnd
        }
        return out
    }

    /// Reads blocks `refs` into consecutive `blockSize` slots of `output`, verified. Records
    /// that sit next to each other in a pack (as import and the flusher write them) are
    /// fetched with one read; runs are decoded on every core when there are several.
    public func readBlocks(_ refs: [ChunkRef], blockSize: Int, into output: UnsafeMutableRawBufferPointer) throws {
        precondition(output.count >= refs.count * blockSize)
        // Split into runs of adjacent records (at most 1 MiB each).
        var runs: [Range<Int>] = []
        var i = 0
        while i < refs.count {
            if refs[i].isZero {
                UnsafeMutableRawBufferPointer(rebasing: output[(i * blockSize)..<((i + 1) * blockSize)]).initializeMemory(as: UInt8.self, repeating: 0)
                i += 1
                continue
            }
            var j = i + 1
            var bytes = refs[i].location.recordLength
            while j < refs.count, !refs[j].isZero, refs[j].location.pack == refs[j - 1].location.pack,
                  Int(refs[j].location.offset) == Int(refs[j - 1].location.offset) + refs[j - 1].location.recordLength,
                  bytes + refs[j].location.recordLength <= 1 << 20 {
                bytes += refs[j].location.recordLength
                j += 1
            }
            runs.append(i..<j)
            i = j
        }
        if runs.count <= 1 {
            for r in runs { try readRun(refs, r, blockSize: blockSize, into: output) }
            return
        }
        let workers = min(runs.count, max(1, ProcessInfo.processInfo.activeProcessorCount))
        var failure: Error?
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var k = w
            while k < runs.count {
                do { try readRun(refs, runs[k], blockSize: blockSize, into: output) }
                catch { lock.lock(); if failure == nil { failure = error }; lock.unlock() }
                k += workers
            }
        }
        if let failure { throw failure }
    }

    private func readRun(_ refs: [ChunkRef], _ run: Range<Int>, blockSize: Int, into output: UnsafeMutableRawBufferPointer) throws {
        func slot(_ i: Int) -> UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(rebasing: output[(i * blockSize)..<((i + 1) * blockSize)])
        }
        if run.count == 1 {
            guard try readBlock(refs[run.lowerBound], into: slot(run.lowerBound)) == blockSize else {
                throw StoreError.damagedChunk(detail: "chunk \(refs[run.lowerBound].hash.short) has the wrong length")
            }
            return
        }
        if let cache = packs.diskCache {
            // The disk cache first: a run it holds whole costs no backend read at all.
            var misses = 0
            for i in run {
                let hit = try cache.withRecord(for: refs[i], kind: .data) { record, header in
                    guard header.rawLength == blockSize else {
                        throw StoreError.damagedChunk(detail: "\(PackReader.describe(refs[i], .data)) has the wrong length")
                    }
                    try PackReader.decode(record, header, refs[i], .data, into: slot(i))
                }
                if hit == nil { misses += 1 }
            }
            if misses == 0 { return }
        }
        let first = refs[run.lowerBound].location
        let last = refs[run.upperBound - 1].location
        let length = Int(last.offset) + last.recordLength - Int(first.offset)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 64)
        defer { buffer.deallocate() }
        let got: Int
        do {
            guard let n = try backend.readPack(first.pack, at: Int64(first.offset), into: buffer) else { throw PackReader.Failure.notThere }
            got = n
        } catch {
            // Pack gone or unreadable: fall back to one record at a time (index lookups).
            for i in run { _ = try readBlock(refs[i], into: slot(i)) }
            return
        }
        for i in run {
            let at = Int(refs[i].location.offset - first.offset)
            // A short read (the pack shrank) leaves a partial or empty record: checked() sends it to the fallback.
            let record = UnsafeRawBufferPointer(rebasing: buffer[min(at, got)..<min(got, at + refs[i].location.recordLength)])
            do {
                let header = try PackReader.checked(record, refs[i], kind: .data)
                guard header.rawLength == blockSize else {
                    throw PackReader.Failure.damaged("\(PackReader.describe(refs[i], .data)) has the wrong length")
                }
                try PackReader.decode(record, header, refs[i], .data, into: slot(i))
                if let cache = packs.diskCache { _ = cache.insert(refs[i], kind: .data, record: record) }
            } catch PackReader.Failure.notThere {
                // Not where the tree says: the single-record path follows the index.
                guard try readBlock(refs[i], into: slot(i)) == blockSize else {
                    throw StoreError.damagedChunk(detail: "chunk \(refs[i].hash.short) has the wrong length")
                }
            } catch PackReader.Failure.damaged(let what) {
                log("vdiskfs: " + what)
                throw StoreError.damagedChunk(detail: what)
            }
        }
    }
}
