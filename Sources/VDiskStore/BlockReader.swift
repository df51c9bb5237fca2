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
    /// fetched with one read, in pack order, so that each record is read and decoded once
    /// however its chunks are spread over the range (a grouped record's chunks between zero
    /// or duplicate blocks); runs are decoded on every core when there are several.
    public func readBlocks(_ refsInOrder: [ChunkRef], blockSize: Int, into output: UnsafeMutableRawBufferPointer) throws {
        precondition(output.count >= refsInOrder.count * blockSize)
        var positions: [Int] = []
        positions.reserveCapacity(refsInOrder.count)
        for (i, r) in refsInOrder.enumerated() {
            if r.isZero {
                UnsafeMutableRawBufferPointer(rebasing: output[(i * blockSize)..<((i + 1) * blockSize)]).initializeMemory(as: UInt8.self, repeating: 0)
            } else {
                positions.append(i)
            }
        }
        func key(_ i: Int) -> (UInt64, UInt32, Int) { (refsInOrder[i].location.pack, refsInOrder[i].location.offset, i) }
        if zip(positions, positions.dropFirst()).contains(where: { key($0) > key($1) }) { positions.sort { key($0) < key($1) } }
        let refs = positions.map { refsInOrder[$0] }
        let out = BlockSlots(output: output, blockSize: blockSize, positions: positions)
        // Split into runs of the same or adjacent records (at most 1 MiB each).
        var runs: [Range<Int>] = []
        var i = 0
        while i < refs.count {
            var j = i + 1
            var bytes = refs[i].location.recordLength
            while j < refs.count, refs[j].location.pack == refs[j - 1].location.pack {
                let (l, prev) = (refs[j].location, refs[j - 1].location)
                if l.sameRecord(prev) { j += 1; continue }  // another member of the same grouped record
                guard Int(l.offset) == Int(prev.offset) + prev.recordLength, bytes + l.recordLength <= 1 << 20 else { break }
                bytes += l.recordLength
                j += 1
            }
            runs.append(i..<j)
            i = j
        }
        if runs.count <= 1 {
            for r in runs { try readRun(refs, r, blockSize: blockSize, into: out) }
            return
        }
        if backend.isShared {
            try readRunsTogether(refs, runs, blockSize: blockSize, into: out)
            return
        }
        let workers = min(runs.count, max(1, ProcessInfo.processInfo.activeProcessorCount))
        var failure: Error?
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var k = w
            while k < runs.count {
                do { try readRun(refs, runs[k], blockSize: blockSize, into: out) }
                catch { lock.lock(); if failure == nil { failure = error }; lock.unlock() }
                k += workers
            }
        }
        if let failure { throw failure }
    }

    private func readRun(_ refs: [ChunkRef], _ run: Range<Int>, blockSize: Int, into output: BlockSlots) throws {
        func slot(_ i: Int) -> UnsafeMutableRawBufferPointer { output[i] }
        if run.count == 1 {
            guard try readBlock(refs[run.lowerBound], into: slot(run.lowerBound)) == blockSize else {
                throw StoreError.damagedChunk(detail: "chunk \(refs[run.lowerBound].hash.short) has the wrong length")
            }
            return
        }
        // The disk cache first: a run it holds whole costs no backend read at all.
        if try readRunFromDiskCache(refs, run, blockSize: blockSize, into: output) { return }
        try Self.runBuffers.withBuffer(Self.runLength(refs, run)) { buffer in
            let first = refs[run.lowerBound].location
            let got: Int?
            do { got = try backend.readPack(first.pack, at: Int64(first.offset), into: buffer) } catch { got = nil }
            try decodeRun(refs, run, blockSize: blockSize, bytes: got.map { UnsafeRawBufferPointer(rebasing: buffer[0..<$0]) }, into: output)
        }
    }

    /// Bytes from the first record of `run` to the end of its last.
    static func runLength(_ refs: [ChunkRef], _ run: Range<Int>) -> Int {
        let first = refs[run.lowerBound].location
        let last = refs[run.upperBound - 1].location
        return Int(last.offset) + last.recordLength - Int(first.offset)
    }

    /// Shared (remote) stores: every run's bytes requested at once, so the reads are in
    /// flight together rather than one round trip after another; then decoded on every core.
    private func readRunsTogether(_ refs: [ChunkRef], _ runs: [Range<Int>], blockSize: Int,
                                  into output: BlockSlots) throws {
        var pending: [Range<Int>] = []
        for run in runs where !(try readRunFromDiskCache(refs, run, blockSize: blockSize, into: output)) { pending.append(run) }
        guard !pending.isEmpty else { return }
        let buffers = pending.map { UnsafeMutableRawBufferPointer.allocate(byteCount: Self.runLength(refs, $0), alignment: 64) }
        defer { buffers.forEach { $0.deallocate() } }
        let requests = zip(pending, buffers).map { run, b in
            PackRead(pack: refs[run.lowerBound].location.pack, offset: Int64(refs[run.lowerBound].location.offset), buffer: b)
        }
        // A failed batch falls back to each run on its own (index lookups, clear errors).
        let results = (try? backend.readPacks(requests)) ?? Array(repeating: nil, count: requests.count)
        let workers = min(pending.count, max(1, ProcessInfo.processInfo.activeProcessorCount))
        var failure: Error?
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var k = w
            while k < pending.count {
                let bytes = results[k].map { UnsafeRawBufferPointer(rebasing: buffers[k][0..<$0]) }
                do { try decodeRun(refs, pending[k], blockSize: blockSize, bytes: bytes, into: output) }
                catch { lock.lock(); if failure == nil { failure = error }; lock.unlock() }
                k += workers
            }
        }
        if let failure { throw failure }
    }

    /// Fills `run`'s slots from the disk cache if it holds every record; false otherwise.
    private func readRunFromDiskCache(_ refs: [ChunkRef], _ run: Range<Int>, blockSize: Int,
                                      into output: BlockSlots) throws -> Bool {
        guard let cache = packs.diskCache else { return false }
        for i in run {
            let slot = output[i]
            let hit = try cache.withRecord(for: refs[i], kind: .data) { record, header in
                guard header.rawLength == blockSize else {
                    throw StoreError.damagedChunk(detail: "\(PackReader.describe(refs[i], .data)) has the wrong length")
                }
                try PackReader.decode(record, header, refs[i], .data, into: slot)
            }
            if hit == nil { return false }
        }
        return true
    }

    /// Decodes the records of `run` from `bytes` (the pack from the run's first record on; nil
    /// when it could not be read: each record then goes the single-record way, following the
    /// index). Each record is checked; the disk cache, if any, gets what checks out.
    private func decodeRun(_ refs: [ChunkRef], _ run: Range<Int>, blockSize: Int, bytes: UnsafeRawBufferPointer?,
                           into output: BlockSlots) throws {
        func slot(_ i: Int) -> UnsafeMutableRawBufferPointer { output[i] }
        guard let buffer = bytes else {
            // Pack gone or unreadable: fall back to one record at a time (index lookups).
            for i in run { _ = try readBlock(refs[i], into: slot(i)) }
            return
        }
        let got = buffer.count
        let first = refs[run.lowerBound].location
        var i = run.lowerBound
        while i < run.upperBound {
            let at = Int(refs[i].location.offset - first.offset)
            // A short read (the pack shrank) leaves a partial or empty record: checked() sends it to the fallback.
            let record = UnsafeRawBufferPointer(rebasing: buffer[min(at, got)..<min(got, at + refs[i].location.recordLength)])
            if refs[i].location.isGrouped {
                var j = i + 1
                while j < run.upperBound && refs[j].location.sameRecord(refs[i].location) { j += 1 }
                try decodeGroupMembers(refs, i..<j, blockSize: blockSize, record: record, into: output)
                i = j
                continue
            }
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
            i += 1
        }
    }

    /// Decodes the blocks `members` of `refs`, all members of the grouped record `record`:
    /// the record is checked once and decompressed once, straight into the output when the
    /// blocks are the whole group in order (as import writes them). A block whose ref does
    /// not match the record goes the single-record way.
    private func decodeGroupMembers(_ refs: [ChunkRef], _ members: Range<Int>, blockSize: Int, record: UnsafeRawBufferPointer,
                                    into output: BlockSlots) throws {
        func slot(_ i: Int) -> UnsafeMutableRawBufferPointer { output[i] }
        let i0 = members.lowerBound
        let header: PackFormat.RecordHeader
        do {
            header = try PackReader.checked(record, refs[i0], kind: .data)
            guard header.memberLength == blockSize else {
                throw PackReader.Failure.damaged("\(PackReader.describe(refs[i0], .data)) has the wrong length")
            }
        } catch PackReader.Failure.notThere {
            for i in members { guard try readBlock(refs[i], into: slot(i)) == blockSize else {
                throw StoreError.damagedChunk(detail: "chunk \(refs[i].hash.short) has the wrong length") } }
            return
        } catch PackReader.Failure.damaged(let what) {
            log("vdiskfs: " + what)
            throw StoreError.damagedChunk(detail: what)
        }
        // The crc covered the whole record: each other member only needs its identity checked.
        var matching: [Int] = []
        var inOrder = members.count == header.memberCount && output.areConsecutive(members)
        for i in members {
            let l = refs[i].location
            if l.lengthField & 0xF0FF_FFFF == refs[i0].location.lengthField & 0xF0FF_FFFF,
               PackFormat.memberHash(record.baseAddress!, header, l.member) == refs[i].hash {
                matching.append(i)
                if l.member != i - i0 { inOrder = false }
            } else {
                inOrder = false
                guard try readBlock(refs[i], into: slot(i)) == blockSize else {
                    throw StoreError.damagedChunk(detail: "chunk \(refs[i].hash.short) has the wrong length")
                }
            }
        }
        do {
            if inOrder {
                try PackReader.decodeGroup(record, header, refs[i0],
                                           into: UnsafeMutableRawBufferPointer(start: output[i0].baseAddress, count: members.count * blockSize))
                return
            }
            try withUnsafeTemporaryAllocation(byteCount: header.rawLength, alignment: 16) { group in
                try PackReader.decodeGroup(record, header, refs[i0], into: group)
                for i in matching {
                    slot(i).copyMemory(from: UnsafeRawBufferPointer(rebasing: group[(refs[i].location.member * blockSize)...].prefix(blockSize)))
                }
            }
        } catch PackReader.Failure.damaged(let what) {
            log("vdiskfs: " + what)
            throw StoreError.damagedChunk(detail: what)
        }
    }
}

/// Where each block of a read goes: block `i` (in pack order) to slot `positions[i]` of the
/// caller's buffer.
struct BlockSlots {
    let output: UnsafeMutableRawBufferPointer
    let blockSize: Int
    let positions: [Int]

    subscript(i: Int) -> UnsafeMutableRawBufferPointer {
        let p = positions[i]
        return UnsafeMutableRawBufferPointer(rebasing: output[(p * blockSize)..<((p + 1) * blockSize)])
    }

    /// Whether blocks `range` land in consecutive slots, in order (one decode can fill them).
    func areConsecutive(_ range: Range<Int>) -> Bool {
        range.indices.dropFirst().allSatisfy { positions[$0] == positions[$0 - 1] + 1 }
    }
}
