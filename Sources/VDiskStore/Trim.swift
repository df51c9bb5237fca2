import Foundation

/// What `trim` did to an image.
public struct TrimReport: Codable, Sendable {
    public var name: String
    /// Blocks that held data the file system marks free, now zero blocks.
    public var freedBlocks: UInt64
    public var freedBytes: UInt64
    public var notes: [String]

    enum CodingKeys: String, CodingKey { case name, notes, freedBlocks = "freed_blocks", freedBytes = "freed_bytes" }
}

extension Store {
    /// File-system-aware reclaim of an image already in the store: reads its partition
    /// table and ext2/3/4 bitmaps through the store, turns blocks the file system marks free
    /// into zero blocks, and commits the result as the image's new version. Chunks only the
    /// old version used return with gc. Needs the store opened for writing (not mounted).
    public func trim(_ rawName: String) throws -> TrimReport {
        let name = try Namespace.validate(rawName)
        return try withLeases([name], purpose: "trim") { try trimLeased(name) }
    }

    /// ``trim(_:)`` for a caller that holds the image's lease (a mount).
    func trimLeased(_ name: String) throws -> TrimReport {
        guard var entry = namespace.entries[name], entry.kind == .image, let image = entry.image else {
            throw StoreError.noSuchImage(name: name)
        }
        let bs = Int(image.blockSize)
        let disk = DiskReader(size: image.size) { [self] buffer, offset in
            // Reads through the image's tree, block by block.
            var done = 0
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: bs, alignment: 64)
            defer { scratch.deallocate() }
            while done < buffer.count && offset + UInt64(done) < image.size {
                let at = offset + UInt64(done)
                let block = at / UInt64(bs)
                _ = try readBlock(try blockRef(image, block), into: scratch)
                let within = Int(at % UInt64(bs))
                let n = min(bs - within, buffer.count - done, Int(image.size - at))
                (buffer.baseAddress! + done).copyMemory(from: scratch.baseAddress! + within, byteCount: n)
                done += n
            }
            return done
        }
        let layout = DiskLayout.probe(disk, blockSize: bs)
        var changes: [(block: UInt64, ref: ChunkRef)] = []
        var first: UInt64 = 0
        let fan = UInt64(TreeNode.fanOut)
        while first < image.blockCount {
            let n = Int(min(fan, image.blockCount - first))
            let refs = try blockRefs(image, from: first, count: n)
            for i in 0..<n where !refs[i].isZero && layout.isFree(Int(first) + i) { changes.append((first + UInt64(i), .zero)) }
            first += fan
        }
        var report = TrimReport(name: name, freedBlocks: UInt64(changes.count), freedBytes: UInt64(changes.count * bs), notes: layout.notes)
        guard !changes.isEmpty else { return report }
        let (root, _) = try TreeUpdater.apply(self, to: image, newSize: image.size, changes: changes)
        entry.image = root
        entry.mtime = PackWriter.nowNanoseconds()
        entry.ctime = entry.mtime
        var ns = namespace
        ns.entries[name] = entry
        try commit(ns)
        report.freedBytes = UInt64(changes.count * bs)
        return report
    }
}
