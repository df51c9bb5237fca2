// fuzz-records: the store's metadata records, as read back from a pack after their crc32c
// and SHA-256 checked out (so a damaged record only reaches these decoders if it was written
// damaged, by a bug or by another implementation; a shared store's other hosts count too).
// The first byte of the input picks the decoder, the rest is the record:
//   0 Namespace.decode      ("VDNS" ...: every image and directory of a commit)
//   1 TreeNode.decode       (level, count, count × ChunkRef)
//   2 Snapshot.decodeTable  ("VDSS" ...)
// Contract: a bad record throws StoreError.corruptStore; never a crash or a huge allocation.
// What decodes must encode back to the same bytes (the formats have one encoding).
import FuzzSupport
@testable import VDiskStore

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    setUpFuzzTarget(seeds: seeds)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let record = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 3 {
    case 0:
        guard let ns = try? Namespace.decode(record) else { return 0 }
        if fuzzVerbose { print("namespace: generation \(ns.generation), \(ns.entries.count) entries") }
        // What a mount derives from each entry (kept in `sink`, or the optimizer drops it).
        for (path, e) in ns.entries {
            sink &+= Namespace.parents(of: path).count
            if let img = e.image {
                sink &+= Int(truncatingIfNeeded: img.blockCount) &+ Int(TreeNode.depth(forBlocks: img.blockCount))
                sink &+= Int(truncatingIfNeeded: TreeNode.span(ofLevel: Int(img.depth) - 1))
            }
        }
        // Paths are unique, so entries sorted by path re-encode to the input exactly when
        // the input was sorted; at least the re-encoding must decode to the same namespace.
        let again = try! Namespace.decode(ns.encode())
        precondition(again == ns, "namespace does not survive encode/decode")
    case 1:
        guard let node = try? TreeNode.decode(record, what: "tree node") else { return 0 }
        if fuzzVerbose { print("tree node: level \(node.level), \(node.refs.count) refs") }
        for i in [0, node.refs.count, TreeNode.fanOut - 1] { _ = node[i] }
        var canonical = record
        for i in 1..<4 { canonical[i] = 0 }  // the 3 reserved bytes are not read
        precondition(node.encode() == canonical, "tree node does not re-encode to its bytes")
    default:
        guard let table = try? Snapshot.decodeTable(record) else { return 0 }
        if fuzzVerbose { print("snapshot table: \(table.map(\.name))") }
        let again = try! Snapshot.decodeTable(Snapshot.encodeTable(table))
        precondition(again == table, "snapshot table does not survive encode/decode")
    }
    return 0
}

nonisolated(unsafe) var sink = 0

func ref(_ n: UInt64) -> ChunkRef {
    ChunkRef(hash: seedHash(n), location: ChunkLocation(pack: n + 1, offset: UInt32(64 + 100 * n), storedLength: UInt32(100 + n)))
}

func seeds() -> [(String, [UInt8])] {
    var ns = Namespace(generation: 7)
    try! ns.addImage("vm/disk.img", root: ImageRoot(size: 10 << 30, blockSize: 4096, depth: 3, root: ref(1)), now: 1_700_000_000_000_000_000)
    try! ns.addImage("vm/empty.img", root: .empty(size: 1 << 20, blockSize: 65536), mode: 0o100600, uid: 1000, gid: 1000, now: 5)
    try! ns.addImage("top.raw", root: ImageRoot(size: 4096, blockSize: 4096, depth: 1, root: ref(2)), now: 6)
    let leaf = TreeNode(level: 0, refs: [ref(3), .zero, ref(4)])
    let inner = TreeNode(level: 1, refs: (0..<16).map { ref($0) })
    let table = Snapshot.encodeTable([
        Snapshot(name: "2024-01-01T00:00:00Z", created: 1_704_067_200_000_000_000, namespace: ref(5)),
        Snapshot(name: "before-upgrade", created: 1_704_067_300_000_000_000, namespace: ref(6)),
    ])
    return [
        ("namespace", [0] + ns.encode()),
        ("namespace-empty", [0] + Namespace().encode()),
        ("tree-leaf", [1] + leaf.encode()),
        ("tree-inner", [1] + inner.encode()),
        ("snapshots", [2] + table),
        ("snapshots-empty", [2] + Snapshot.encodeTable([])),
    ]
}
