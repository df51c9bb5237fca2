import CSupport
import Foundation
import Glibc
import SystemPackage

/// Reading: byte ranges from dirty blocks, the chunk cache and the tree.
extension Volume {
    /// Reads up to `buffer.count` bytes at `offset`; fewer at end of file.
    public func read(_ id: NodeID, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try node(id)
        guard !n.isDirectory else { throw StoreError.io(errno: EISDIR, context: "read") }
        let (size, root, sources): (UInt64, ImageRoot, [Source]) = stateLock.withLock {
            let size = n.liveSize
            guard offset < size, buffer.count > 0 else { return (size, n.root, []) }
            let end = Self.readEnd(offset, buffer.count, size)
            let bs = UInt64(n.root.blockSize)
            var s: [Source] = []
            s.reserveCapacity(Int((end - 1) / bs - offset / bs + 1))
            for b in (offset / bs)...((end - 1) / bs) {
                if let d = n.dirty[b] ?? n.frozen[b] { s.append(.dirty(d)) } else { s.append(.tree) }
            }
            return (size, n.root, s)
        }
        guard !sources.isEmpty else { return 0 }
        let bs = Int(root.blockSize)
        let end = Self.readEnd(offset, buffer.count, size)
        let total = Int(end - offset)
        let firstBlock = offset / UInt64(bs)
        // Tree refs for the blocks not dirty, one walk per leaf.
        var refs = sources.contains(where: { if case .tree = $0 { return true } else { return false } })
            ? try store.blockRefs(root, from: firstBlock, count: sources.count) : [ChunkRef](repeating: .zero, count: sources.count)
        var journaled: [(index: Int, segment: WriteJournal.Segment, offset: Int64)] = []
        for (i, s) in sources.enumerated() {
            switch s {
            case .tree: break
            case .dirty(let d):
                refs[i] = .zero
                if case .ref(let seg, let off) = d.kind { journaled.append((i, seg, off)) }
            }
        }
        if !journaled.isEmpty {
            for (j, r) in try journalRefs(journaled.map { ($0.segment, $0.offset) }).enumerated() { refs[journaled[j].index] = r }
        }
        // Whole blocks read straight into the caller's buffer: large reads (streaming) skip the
        // cache; small ones (random access) go through it.
        let lastPartial = (end % UInt64(bs)) != 0
        let wholeFirst = offset % UInt64(bs) == 0 ? 0 : 1
        let wholeEnd = sources.count - (lastPartial ? 1 : 0)
        let direct = sources.count > 4 && wholeEnd > wholeFirst
        if direct {
            var treeIdx: [Int] = []
            for i in wholeFirst..<wholeEnd {
                if case .tree = sources[i], !refs[i].isZero { treeIdx.append(i) }
                else if case .dirty(let d) = sources[i], case .ref = d.kind, !refs[i].isZero { treeIdx.append(i) }
            }
            // Consecutive blocks land in consecutive slots of the output: read them in runs.
            var k = 0
            while k < treeIdx.count {
                var m = k + 1
                while m < treeIdx.count && treeIdx[m] == treeIdx[m - 1] + 1 { m += 1 }
                let a = treeIdx[k], b = treeIdx[m - 1] + 1
                let outStart = Int(UInt64(a) * UInt64(bs) + firstBlock * UInt64(bs) - offset)
                try store.readBlocks(Array(refs[a..<b]), blockSize: bs,
                                     into: UnsafeMutableRawBufferPointer(rebasing: buffer[outStart..<(outStart + (b - a) * bs)]))
                k = m
            }
        }
        func fill(_ i: Int) throws {
            let b = firstBlock + UInt64(i)
            let blockStart = b * UInt64(bs)
            let lo = Int(max(offset, blockStart) - blockStart)
            let hi = Int(min(end - blockStart, UInt64(bs)))
            let outStart = Int(blockStart + UInt64(lo) - offset)
            let out = UnsafeMutableRawBufferPointer(rebasing: buffer[outStart..<(outStart + hi - lo)])
            if case .dirty(let d) = sources[i], case .data(let seg, let off) = d.kind {
                let got = try seg.fd.readFully(into: out, at: off + Int64(lo))
                guard got == out.count else { throw StoreError.io(errno: EIO, context: "journal segment is short") }
                return
            }
            let r = refs[i]
            if r.isZero { out.initializeMemory(as: UInt8.self, repeating: 0); return }
            if direct && i >= wholeFirst && i < wholeEnd { return }  // already read above
            let chunk = try cache.get(r, length: bs) { dst in _ = try store.readBlock(r, into: dst) }
            out.baseAddress!.copyMemory(from: chunk.bytes.baseAddress! + lo, byteCount: hi - lo)
        }
        for i in 0..<sources.count { try fill(i) }
        return total
    }

    /// Where a read of `count` bytes at `offset` (< `size`) ends: offset + count, or the size
    /// (without overflowing: an image's size may come close to 2^64).
    static func readEnd(_ offset: UInt64, _ count: Int, _ size: UInt64) -> UInt64 {
        size - offset < UInt64(count) ? size : offset + UInt64(count)
    }

    /// The current bytes of one block (dirty or committed), for read-modify-write.
    func readWholeBlock(_ n: Node, _ b: UInt64, into out: UnsafeMutableRawBufferPointer) throws {
        let (d, root): (Dirty?, ImageRoot) = stateLock.withLock { (n.dirty[b] ?? n.frozen[b], n.root) }
        switch d?.kind {
        case .data(let seg, let off)?:
            guard try seg.fd.readFully(into: out, at: off) == out.count else { throw StoreError.io(errno: EIO, context: "journal segment is short") }
        case .zero?: out.initializeMemory(as: UInt8.self, repeating: 0)
        case .ref(let seg, let off)?: _ = try store.readBlock(try journalRefs([(seg, off)])[0], into: out)
        case nil:
            let r = try store.blockRef(root, b)
            if r.isZero { out.initializeMemory(as: UInt8.self, repeating: 0) }
            else {
                let chunk = try cache.get(r, length: out.count) { dst in _ = try store.readBlock(r, into: dst) }
                out.copyMemory(from: UnsafeRawBufferPointer(chunk.bytes))
            }
        }
    }
}
