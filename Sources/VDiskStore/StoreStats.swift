import Foundation

/// Totals over a whole store (`vdiskfs stats`).
public struct StoreStats: Codable, Sendable {
    public var images = 0
    /// Sum of image sizes.
    public var logicalBytes: Int64 = 0
    /// Bytes in non-zero blocks of all images.
    public var allocatedBytes: Int64 = 0
    /// Non-zero block references across all images.
    public var referencedBlocks: Int64 = 0
    /// Distinct data chunks in the packs, their raw and stored bytes.
    public var uniqueChunks: Int64 = 0
    public var chunkRawBytes: Int64 = 0
    public var chunkStoredBytes: Int64 = 0
    public var treeNodes: Int64 = 0
    public var packs = 0
    public var packBytes: Int64 = 0
    public var indexBytes: Int64 = 0
    /// Every byte the store occupies on disk (packs, index, metadata).
    public var storedBytes: Int64 = 0
    /// Allocated bytes per unique raw byte.
    public var dedupRatio: Double = 1
    /// Raw bytes per stored byte of the unique chunks.
    public var compressionRatio: Double = 1
    /// Logical bytes per byte on disk.
    public var overallRatio: Double = 1

    enum CodingKeys: String, CodingKey {
        case images, packs
        case logicalBytes = "logical_bytes", allocatedBytes = "allocated_bytes", referencedBlocks = "referenced_blocks"
        case uniqueChunks = "unique_chunks", chunkRawBytes = "chunk_raw_bytes", chunkStoredBytes = "chunk_stored_bytes"
        case treeNodes = "tree_nodes", packBytes = "pack_bytes", indexBytes = "index_bytes", storedBytes = "stored_bytes"
        case dedupRatio = "dedup_ratio", compressionRatio = "compression_ratio", overallRatio = "overall_ratio"
    }
}

/// One image's use of the store (`vdiskfs ls`).
public struct ImageUsage: Codable, Sendable {
    public var name: String
    public var size: UInt64
    public var blockSize: UInt32
    /// Bytes in non-zero blocks.
    public var allocatedBytes: Int64
    /// Stored (compressed) bytes of the distinct chunks the image references.
    public var storedBytes: Int64
    /// Of those, the bytes no other image references (what removing it would free).
    public var uniqueBytes: Int64
    public var mtime: Int64

    enum CodingKeys: String, CodingKey {
        case name, size, mtime
        case blockSize = "block_size", allocatedBytes = "allocated_bytes", storedBytes = "stored_bytes", uniqueBytes = "unique_bytes"
    }
}

extension Store {
    /// Computes ``StoreStats``: walks every tree (level-0 nodes only) and reads every pack's
    /// record headers. Memory is constant; time grows with the store.
    public func stats() throws -> StoreStats {
        var s = StoreStats()
        for name in namespace.images(under: "") {
            guard let img = namespace.entries[name]?.image else { continue }
            s.images += 1
            s.logicalBytes += Int64(img.size)
            try forEachLeaf(img) { _, refs in
                if let refs {
                    let n = refs.reduce(0) { $0 + ($1.isZero ? 0 : 1) }
                    s.referencedBlocks += Int64(n)
                    s.allocatedBytes += Int64(n) * Int64(img.blockSize)
                }
                return true
            }
        }
        for pack in try packNumbers() {
            s.packs += 1
            try PackScanner.scan(backend, pack: pack, withPayloads: false) { rec in
                switch rec.kind {
                case .data:
                    s.uniqueChunks += Int64(rec.members.count)
                    s.chunkRawBytes += Int64(rec.rawLength)
                    s.chunkStoredBytes += Int64(rec.ref.location.recordLength)
                case .tree: s.treeNodes += 1
                case .namespace, .snapshotTable: break
                }
            }
        }
        let disk = try diskBytes()
        s.packBytes = disk.packs
        s.indexBytes = disk.index
        s.storedBytes = disk.packs + disk.index + disk.other
        if s.chunkRawBytes > 0 { s.dedupRatio = Double(s.allocatedBytes) / Double(s.chunkRawBytes) }
        if s.chunkStoredBytes > 0 { s.compressionRatio = Double(s.chunkRawBytes) / Double(s.chunkStoredBytes) }
        if s.storedBytes > 0 { s.overallRatio = Double(s.logicalBytes) / Double(s.storedBytes) }
        return s
    }

    /// Per-image usage for the images under `path`. Uniqueness is judged against every image
    /// in the store, so this holds one entry per distinct chunk referenced (about 60 bytes each).
    public func usage(under path: String) throws -> [ImageUsage] {
        let names = namespace.images(under: path)
        guard !names.isEmpty || path.isEmpty else { throw StoreError.noSuchImage(name: path) }
        // For every chunk: the one image that references it, or -1 when several do.
        var owner: [ChunkLocation: Int32] = [:]
        let all = namespace.images(under: "")
        for (i, name) in all.enumerated() {
            guard let img = namespace.entries[name]?.image else { continue }
            try forEachLeaf(img) { _, refs in
                for r in refs ?? [] where !r.isZero {
                    if let o = owner[r.location] { if o != Int32(i) { owner[r.location] = -1 } } else { owner[r.location] = Int32(i) }
                }
                return true
            }
        }
        var out: [ImageUsage] = []
        for name in names {
            guard let e = namespace.entries[name], let img = e.image, let me = all.firstIndex(of: name) else { continue }
            var seen = Set<ChunkLocation>()
            var u = ImageUsage(name: name, size: img.size, blockSize: img.blockSize, allocatedBytes: 0, storedBytes: 0, uniqueBytes: 0, mtime: e.mtime)
            try forEachLeaf(img) { _, refs in
                for r in refs ?? [] where !r.isZero {
                    u.allocatedBytes += Int64(img.blockSize)
                    if seen.insert(r.location).inserted {
                        // A member of a grouped record counts for its share of the record.
                        let share = Int64(r.location.recordLength / r.location.memberCount)
                        u.storedBytes += share
                        if owner[r.location] == Int32(me) { u.uniqueBytes += share }
                    }
                }
                return true
            }
            out.append(u)
        }
        return out
    }
}
