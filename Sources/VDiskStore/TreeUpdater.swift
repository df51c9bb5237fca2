/// Produces a new version of an image's tree from an old one and a set of changed blocks,
/// rewriting only the nodes on the changed paths (copy-on-write, like any hash tree).
/// Also grows and shrinks: blocks past a smaller size become zero, levels are added or
/// removed as the size needs.
enum TreeUpdater {
    /// Applies `changes` (block number → new ref, sorted by block) and `newSize`.
    /// Returns the new root and how the count of non-zero blocks changed.
    static func apply(_ store: Store, to image: ImageRoot, newSize: UInt64,
                      changes: [(block: UInt64, ref: ChunkRef)]) throws -> (ImageRoot, allocatedDelta: Int64) {
        let newBlocks = ImageRoot.blockCount(newSize, image.blockSize)
        let newDepth = TreeNode.depth(forBlocks: max(newBlocks, image.blockCount))
        var root = image.root
        var depth = image.depth
        // Grow: the old root becomes the first entry of a new top node.
        while depth < newDepth {
            if !root.isZero { root = try store.storeNode(TreeNode(level: depth, refs: [root])) }
            depth += 1
        }
        let clearFrom = newSize < image.size ? newBlocks : UInt64.max
        var delta: Int64 = 0
        let relevant = changes.filter { $0.block < newBlocks }
        if !relevant.isEmpty || clearFrom != UInt64.max {
            root = try update(store, root, level: Int(depth) - 1, first: 0, changes: relevant[...], clearFrom: clearFrom, delta: &delta)
        }
        // Shrink: drop top levels the smaller size does not need.
        let finalDepth = TreeNode.depth(forBlocks: newBlocks)
        while depth > finalDepth {
            if !root.isZero { root = try store.readNode(root)[0] }
            depth -= 1
        }
        return (ImageRoot(size: newSize, blockSize: image.blockSize, depth: depth, root: root), delta)
    }

    private static func update(_ store: Store, _ ref: ChunkRef, level: Int, first: UInt64,
                               changes: ArraySlice<(block: UInt64, ref: ChunkRef)>, clearFrom: UInt64,
                               delta: inout Int64) throws -> ChunkRef {
        let span = TreeNode.span(ofLevel: level)
        let end = first + span * UInt64(TreeNode.fanOut)
        if changes.isEmpty && clearFrom >= end { return ref }
        if ref.isZero && changes.isEmpty { return ref }
        var refs = ref.isZero ? [] : try store.readNode(ref).refs
        if refs.count < TreeNode.fanOut { refs += repeatElement(ChunkRef.zero, count: TreeNode.fanOut - refs.count) }
        if level == 0 {
            for c in changes {
                let i = Int(c.block - first)
                delta += (c.ref.isZero ? 0 : 1) - (refs[i].isZero ? 0 : 1)
                refs[i] = c.ref
            }
            if clearFrom < end {
                for i in Int(max(clearFrom, first) - first)..<TreeNode.fanOut where !refs[i].isZero { delta -= 1; refs[i] = .zero }
            }
        } else {
            var lo = changes.startIndex
            for i in 0..<TreeNode.fanOut {
                let childFirst = first + UInt64(i) * span
                let childEnd = childFirst + span
                var hi = lo
                while hi < changes.endIndex && changes[hi].block < childEnd { hi += 1 }
                if hi > lo || (clearFrom < childEnd && !refs[i].isZero) {
                    if hi == lo && clearFrom <= childFirst {
                        // The whole child is cut off: count what it held.
                        delta -= try countAllocated(store, refs[i], level: level - 1)
                        refs[i] = .zero
                    } else {
                        refs[i] = try update(store, refs[i], level: level - 1, first: childFirst, changes: changes[lo..<hi],
                                             clearFrom: clearFrom, delta: &delta)
                    }
                }
                lo = hi
            }
        }
        var n = refs.count
        while n > 0 && refs[n - 1].isZero { n -= 1 }
        if n == 0 { return .zero }
        return try store.storeNode(TreeNode(level: UInt8(level), refs: Array(refs[0..<n])))
    }

    /// Non-zero blocks below `ref`.
    static func countAllocated(_ store: Store, _ ref: ChunkRef, level: Int) throws -> Int64 {
        if ref.isZero { return 0 }
        let node = try store.readNode(ref)
        if level == 0 { return Int64(node.refs.reduce(0) { $0 + ($1.isZero ? 0 : 1) }) }
        var n: Int64 = 0
        for r in node.refs { n += try countAllocated(store, r, level: level - 1) }
        return n
    }
}
