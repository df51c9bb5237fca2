// fuzz-store: opening a store whose pack holds damaged metadata, and reading it. The input is
// a pack file (pack 1 of a directory store in the scratch tmpfs); the root is made to point at the
// pack's first namespace and snapshot-table records, as the last commit would have left it
// (StoreFixture), and the index is rebuilt from the pack by Store.open (the ChunkIndex open
// path for a missing index: reset, scan, flush). Then, as `ls`, `export`, `history` and a
// mount would: every image's block count and tree (Store.blockRefs, forEachLeaf,
// readBlocks, TreeUpdater.countAllocated when small), the snapshots and their namespaces.
//
// Record and pack-header checksums are recomputed first (fixPackChecksums), and records
// are found by hash through the index when their location is stale, so a mutated namespace
// or tree node is decoded and followed. What is fuzzed is the store's trust in its own
// metadata: namespace entries (sizes, block sizes, depths), tree levels and refs.
// Contract: damaged metadata gives StoreError; never a crash, a hang or a huge allocation.
import FuzzSupport
@testable import VDiskStore

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    setUpFuzzTarget(seeds: seeds)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var b = bytesOf(data, size)
    fixPackChecksums(&b)
    if skipKnownBugs, let bug = knownPackBug(b) { if fuzzVerbose { print("skipped: \(bug)") }; return -1 }
    let path = scratchDirectory + "/store"
    StoreFixture.make(at: path, pack: b)
    guard let store = try? Store.open(at: path, access: .readWrite, purpose: "fuzz") else { return 0 }
    defer { store.close() }
    if skipKnownBugs, let bug = knownBug(store.namespace) { if fuzzVerbose { print("skipped: \(bug)") }; return -1 }
    if fuzzVerbose { print("namespace: \(store.namespace.entries.keys.sorted())") }
    walk(store, store.namespace)
    if let snapshots = try? store.snapshots() {
        for s in snapshots.prefix(4) {
            guard let ns = try? store.namespace(ofSnapshot: s.name) else { continue }
            if skipKnownBugs, knownBug(ns) != nil { return -1 }
            walk(store, ns)
        }
        if let first = store.namespace.images(under: "").first, let img = store.namespace.entries[first]?.image,
           img.blockCount <= 1 << 20 {
            _ = try? store.history(of: first)
        }
    }
    return 0
}

func walk(_ store: Store, _ ns: Namespace) {
    for name in ns.images(under: "").prefix(8) {
        guard let img = ns.entries[name]?.image else { continue }
        let blocks = img.blockCount
        let bs = Int(img.blockSize)
        // 16 blocks from `first`: refs, a batched read (runs of records, whole groups decoded
        // in place) and the first two blocks one by one (a group decoded up to its member).
        func window(_ first: UInt64) {
            guard let refs = try? store.blockRefs(img, from: first, count: 16) else { return }
            var out = [UInt8](repeating: 0, count: refs.count * bs)
            _ = try? out.withUnsafeMutableBytes { try store.readBlocks(refs, blockSize: bs, into: $0) }
            for (i, r) in refs.enumerated() where i < 2 {
                _ = try? store.blockRef(img, first + UInt64(i))
                _ = try? out.withUnsafeMutableBytes { try store.readBlock(r, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<bs])) }
            }
        }
        // At most 64 leaves: a tree of zero subtrees is walked in time proportional to its
        // nodes, but a valid tree over a huge image has that many leaves to visit. The first
        // blocks of the first few leaves that are not zero are read too.
        var leaves = 0
        var starts: [UInt64] = []
        try? store.forEachLeaf(img) { first, refs in
            leaves += 1
            if refs != nil, starts.count < 4 { starts.append(first) }
            return leaves < 64
        }
        // The first blocks, the last ones, and those of the leaves.
        var seen = Set<UInt64>()
        for first in [UInt64(0), blocks > 16 ? blocks - 16 : 0] + starts where seen.insert(first).inserted { window(first) }
        if blocks <= 1 << 20 { _ = try? TreeUpdater.countAllocated(store, img.root, level: Int(img.depth) - 1) }
    }
}

// MARK: known bugs (VDISKFS_FUZZ_SKIP_KNOWN=1; see fuzz/regressions/fuzz-store/)

func knownBug(_ ns: Namespace) -> String? {
    nil
}

func seeds() -> [(String, [UInt8])] {
    [("store", storeSeedPack()), ("store-raw-metadata", storeSeedPack(compressMetadata: false))]
}
