/// A version of one image: its size, block size and the root of its hash tree.
///
/// The tree is Venti-style: level-0 nodes hold the refs of up to ``TreeNode/fanOut`` blocks,
/// level-n nodes the refs of level-(n-1) nodes; `depth` levels in all, the root at the top.
/// A zero ref stands for a block (or a whole subtree) of zeros and is never read.
public struct ImageRoot: Equatable, Sendable {
    public var size: UInt64
    public var blockSize: UInt32
    public var depth: UInt8
    public var root: ChunkRef

    public init(size: UInt64, blockSize: UInt32, depth: UInt8, root: ChunkRef) {
        self.size = size; self.blockSize = blockSize; self.depth = depth; self.root = root
    }

    /// An image of `size` zero bytes.
    public static func empty(size: UInt64, blockSize: UInt32) -> ImageRoot {
        ImageRoot(size: size, blockSize: blockSize, depth: TreeNode.depth(forBlocks: blockCount(size, blockSize)), root: .zero)
    }

    public var blockCount: UInt64 { Self.blockCount(size, blockSize) }

    static func blockCount(_ size: UInt64, _ blockSize: UInt32) -> UInt64 {
        // (size + blockSize − 1) / blockSize would overflow for sizes within a block of 2^64.
        size / UInt64(blockSize) + (size % UInt64(blockSize) == 0 ? 0 : 1)
    }

    /// The deepest tree an image can need: 2^64 bytes in blocks of the smallest size (2^52
    /// blocks) take 6 levels of 1024 refs (1024^6 = 2^60). A deeper tree's span(ofLevel:)
    /// and block arithmetic would overflow; namespace records with one are rejected.
    public static let maxDepth: UInt8 = 6

    /// The block sizes an image may have.
    public static let allowedBlockSizes: [UInt32] = [4096, 8192, 16384, 32768, 65536]
}

/// A hash-tree node: `level u8 | 3 zero bytes | count u32 | count × ChunkRef`.
struct TreeNode {
    static let fanOut = 1024
    static let headerSize = 8

    var level: UInt8
    var refs: [ChunkRef]

    /// Levels needed for `blocks` blocks (at least one).
    static func depth(forBlocks blocks: UInt64) -> UInt8 {
        var d: UInt8 = 1
        var span = UInt64(fanOut)
        while span < blocks {
            d += 1
            // Past 2^54 blocks (no image has that many) the next span would overflow.
            guard span <= UInt64.max / UInt64(fanOut) else { break }
            span *= UInt64(fanOut)
        }
        return d
    }

    /// Blocks covered by one ref at `level` (level 0: a block).
    static func span(ofLevel level: Int) -> UInt64 {
        var s: UInt64 = 1
        for _ in 0..<level { s *= UInt64(fanOut) }
        return s
    }

    func encode() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.headerSize + refs.count * ChunkRef.encodedSize)
        bytes.withUnsafeMutableBytes { b in
            b.storeBytes(of: level, as: UInt8.self)
            b.storeBytes(of: UInt32(refs.count).littleEndian, toByteOffset: 4, as: UInt32.self)
            for (i, r) in refs.enumerated() { r.store(to: b.baseAddress! + Self.headerSize + i * ChunkRef.encodedSize) }
        }
        return bytes
    }

    static func decode(_ bytes: [UInt8], what: String) throws -> TreeNode {
        guard bytes.count >= headerSize else { throw StoreError.corruptStore(detail: "\(what) is truncated") }
        return try bytes.withUnsafeBytes { (b) throws -> TreeNode in
            let level = b.load(as: UInt8.self)
            let count = Int(UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            guard count <= fanOut, bytes.count == headerSize + count * ChunkRef.encodedSize else {
                throw StoreError.corruptStore(detail: "\(what) has a bad entry count")
            }
            var refs = [ChunkRef]()
            refs.reserveCapacity(count)
            for i in 0..<count { refs.append(ChunkRef(loading: b.baseAddress! + headerSize + i * ChunkRef.encodedSize)) }
            return TreeNode(level: level, refs: refs)
        }
    }

    /// The ref at `index`, zero past the node's last entry.
    subscript(index: Int) -> ChunkRef { index < refs.count ? refs[index] : .zero }
}

/// Builds a tree bottom-up from block refs given in order (import). Nodes are handed to
/// `store`, which writes (or dedups) them and returns their ref. All-zero nodes are not stored.
struct TreeBuilder {
    private var levels: [[ChunkRef]] = [[]]
    private let store: (TreeNode) throws -> ChunkRef

    init(store: @escaping (TreeNode) throws -> ChunkRef) { self.store = store }

    mutating func append(_ ref: ChunkRef) throws { try push(ref, level: 0) }

    private mutating func push(_ ref: ChunkRef, level: Int) throws {
        if levels.count <= level { levels.append([]) }
        levels[level].append(ref)
        if levels[level].count == TreeNode.fanOut {
            let node = levels[level]
            levels[level].removeAll(keepingCapacity: true)
            try push(try emit(node, level: level), level: level + 1)
        }
    }

    private func emit(_ refs: [ChunkRef], level: Int) throws -> ChunkRef {
        if refs.allSatisfy(\.isZero) { return .zero }
        // Trailing zero refs are implied by a short node.
        var n = refs.count
        while n > 0 && refs[n - 1].isZero { n -= 1 }
        return try store(TreeNode(level: UInt8(level), refs: Array(refs[0..<n])))
    }

    /// Closes the tree over `blocks` blocks; returns its depth and root.
    mutating func finish(blocks: UInt64) throws -> (depth: UInt8, root: ChunkRef) {
        let depth = Int(TreeNode.depth(forBlocks: blocks))
        for level in 0..<depth {
            if levels.count <= level { levels.append([]) }
            if level == depth - 1 {
                if levels.count > depth, let done = levels[depth].first { return (UInt8(depth), done) }
                return (UInt8(depth), try emit(levels[level], level: level))
            }
            if !levels[level].isEmpty {
                let node = levels[level]
                levels[level].removeAll()
                let ref = try emit(node, level: level)
                if levels.count <= level + 1 { levels.append([]) }
                levels[level + 1].append(ref)
            }
        }
        return (UInt8(depth), .zero)
    }
}
