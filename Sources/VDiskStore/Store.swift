import Foundation
import Glibc
import SystemPackage

/// A vdiskfs store: a directory of packs, an index and a root.
///
/// Layout (see vdiskfs-format(5)):
///
///     STORE/vdiskfs.json   format version and store id (written once at init)
///     STORE/lock           flock: exclusive for writers, shared for readers
///     STORE/packs/         append-only pack files of records
///     STORE/index/chunks   hash → location table (derived; rebuildable from packs)
///     STORE/roots/current  the committed namespace's ref (replaced atomically)
///
/// Commit order: packs are written and fsynced, then the index, then the root file
/// (temp + fsync + rename + directory fsync). A crash at any point leaves the previous
/// root in place, and everything it references is durable.
///
/// Thread safety: reads (`readBlock`, `readNode`) are safe from any thread. The write
/// side (`storeChunk`, `storeNode`, `commit`, `rollback`) must be serialised by the
/// caller; it takes `writeLock` itself so concurrent misuse is caught, not corrupting.
public final class Store: @unchecked Sendable {
    /// How a store is opened.
    public enum Access: Sendable { case readOnly, readWrite }

    public let path: String
    public let access: Access
    public let storeID: [UInt8]
    let packs: PackReader
    let index: ChunkIndex
    private var lockFD: FileDescriptor?
    private var writer: PackWriter?
    private let writeLock = NSLock()
    /// Decoded tree nodes (16 MiB unless a Volume sizes it from its cache budget).
    let nodeCache = NodeCache(capacityBytes: 16 << 20)

    /// The committed namespace.
    public private(set) var namespace: Namespace
    /// The ref of the committed namespace record.
    public private(set) var namespaceRef: ChunkRef
    /// The ref of the committed snapshot table (zero: no snapshots). Kept by every commit.
    public internal(set) var snapshotTableRef: ChunkRef = .zero
    /// Per pack: its length at the last commit (0 for packs created since).
    private var uncommitted: [UInt64: Int64] = [:]

    public static let configName = "vdiskfs.json"
    public static let formatVersion = 1
    /// Packs are sealed when they pass this size.
    public static let packTargetSize = 32 << 20

    // MARK: create and open

    /// Creates an empty store at `path` (the directory may exist but must be empty).
    public static func create(at path: String) throws {
        if let kind = FileIO.kind(path) {
            guard kind == S_IFDIR else { throw StoreError.nameExists(name: path) }
            let existing = try FileIO.list(path)
            if existing.contains(configName) { throw StoreError.nameExists(name: path) }
            guard existing.isEmpty else {
                throw StoreError.invalidArgument("\(path) is not empty; a store must be created in a new or empty directory")
            }
        } else {
            try FileIO.makeDirectory(path)
        }
        for d in ["packs", "index", "roots"] { try FileIO.makeDirectory(path + "/" + d) }
        try ChunkIndex.create(path: path + "/index/chunks")
        var id = [UInt8](repeating: 0, count: 16)
        for i in 0..<16 { id[i] = UInt8.random(in: 0...255) }
        // The root first, then the config that makes the directory a store.
        let store = Store(path: path, access: .readWrite, storeID: id, lockFD: try openLock(path, exclusive: true, purpose: "init"),
                          index: try ChunkIndex.open(path: path + "/index/chunks").0, namespace: Namespace(), namespaceRef: .zero)
        try store.commit(Namespace())
        let config = "{\"format\": \"vdiskfs\", \"version\": \(formatVersion), \"id\": \"\(id.map { String(format: "%02x", $0) }.joined())\", \"pack_target_size\": \(packTargetSize)}\n"
        try FileIO.writeAtomically(path + "/" + configName, Array(config.utf8))
        try FileIO.syncDirectory(containing: path)
    }

    private init(path: String, access: Access, storeID: [UInt8], lockFD: FileDescriptor, index: ChunkIndex,
                 namespace: Namespace, namespaceRef: ChunkRef) {
        self.path = path
        self.access = access
        self.storeID = storeID
        self.lockFD = lockFD
        self.index = index
        self.packs = PackReader(directory: path + "/packs")
        self.namespace = namespace
        self.namespaceRef = namespaceRef
    }

    deinit { try? lockFD?.close() }

    /// Lets go of the store's lock. Commits are explicit, so nothing is written here;
    /// the store must not be used afterwards.
    public func close() {
        writeLock.lock(); defer { writeLock.unlock() }
        try? writer?.sealCurrent()
        writer = nil
        try? lockFD?.close()
        lockFD = nil
    }

    /// Opens an existing store. `purpose` is recorded in the lock file so that a second
    /// writer is told who holds it.
    public static func open(at path: String, access: Access, purpose: String = "vdiskfs") throws -> Store {
        guard let kind = FileIO.kind(path) else { throw StoreError.storeMissing(path: path) }
        guard kind == S_IFDIR, FileIO.kind(path + "/" + configName) != nil else { throw StoreError.notAStore(path: path) }
        let storeID = try readConfig(path)
        let lock = try openLock(path, exclusive: access == .readWrite, purpose: purpose)
        let (index, torn): (ChunkIndex, Bool)
        do { (index, torn) = try ChunkIndex.open(path: path + "/index/chunks") } catch {
            if access == .readOnly { try? lock.close(); throw error }
            // A missing or unreadable index is rebuilt from the packs.
            try ChunkIndex.reset(path: path + "/index/chunks")
            (index, torn) = (try ChunkIndex.open(path: path + "/index/chunks").0, false)
        }
        let store = Store(path: path, access: access, storeID: storeID, lockFD: lock, index: index,
                          namespace: Namespace(), namespaceRef: .zero)
        if access == .readWrite { try store.catchUpIndex(rebuild: torn) }
        try store.loadRoot()
        return store
    }

    private static func readConfig(_ path: String) throws -> [UInt8] {
        let bytes = try FileIO.readAll(path + "/" + configName)
        guard let obj = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
              obj["format"] as? String == "vdiskfs" else {
            throw StoreError.corruptStore(detail: "\(configName) is not a vdiskfs configuration")
        }
        guard let v = obj["version"] as? Int, v == formatVersion else {
            throw StoreError.corruptStore(detail: "store format version \(obj["version"] ?? "?") is not supported (this vdiskfs reads \(formatVersion))")
        }
        guard let hex = obj["id"] as? String, hex.count == 32 else { throw StoreError.corruptStore(detail: "\(configName) has no store id") }
        var id: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            guard let b = UInt8(hex[i..<j], radix: 16) else { throw StoreError.corruptStore(detail: "\(configName) has a bad store id") }
            id.append(b)
            i = j
        }
        return id
    }

    private static func openLock(_ path: String, exclusive: Bool, purpose: String) throws -> FileDescriptor {
        let lockPath = path + "/lock"
        let fd = try FileIO.open(lockPath, exclusive ? .readWrite : .readOnly, options: exclusive ? [.create] : [],
                                 permissions: [.ownerReadWrite, .groupRead, .otherRead], context: "open lock")
        let got: Bool
        do { got = try fd.tryLock(exclusive: exclusive) } catch { try? fd.close(); throw StoreError.system(error, "lock", path: lockPath) }
        guard got else {
            let holder = (try? FileIO.readAll(lockPath)).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
            try? fd.close()
            throw StoreError.storeLocked(path: path, holder: holder.isEmpty ? "another process" : holder)
        }
        if exclusive {
            let note = "pid \(getpid()) (vdiskfs \(purpose)) since \(ISO8601DateFormatter().string(from: Date()))\n"
            try? fd.truncate(to: 0)
            _ = try? Array(note.utf8).withUnsafeBytes { (b) throws in try fd.writeFully(b, at: 0) }
        }
        return fd
    }

    /// The roots file: `"VDISKRT1" | version u32 | generation u64 | time i64 | namespace ChunkRef |
    /// snapshot table ChunkRef (zero: none) | crc32c`. Both refs change in one atomic replace.
    static let rootMagic: [UInt8] = Array("VDISKRT1".utf8)

    private func loadRoot() throws {
        let bytes: [UInt8]
        do { bytes = try FileIO.readAll(path + "/roots/current") } catch {
            throw StoreError.corruptStore(detail: "the root file roots/current is missing")
        }
        guard bytes.count == 8 + 4 + 8 + 8 + 48 + 48 + 4, Array(bytes[0..<8]) == Self.rootMagic else {
            throw StoreError.corruptStore(detail: "the root file roots/current is damaged")
        }
        let crc = bytes.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<(bytes.count - 4)])) }
        var r = ByteReader(bytes, what: "root file")
        r.offset = bytes.count - 4
        guard try r.u32() == crc else { throw StoreError.corruptStore(detail: "the root file roots/current fails its checksum") }
        let ref = bytes.withUnsafeBytes { ChunkRef(loading: $0.baseAddress! + 28) }
        snapshotTableRef = bytes.withUnsafeBytes { ChunkRef(loading: $0.baseAddress! + 76) }
        let nsBytes = try readRecord(ref, kind: .namespace)
        namespace = try Namespace.decode(nsBytes)
        namespaceRef = ref
    }

    /// Brings the index up to date with the packs: rebuild it from scratch when it was torn,
    /// else scan in the packs written after the last index flush.
    private func catchUpIndex(rebuild: Bool) throws {
        if rebuild {
            try ChunkIndex.reset(path: path + "/index/chunks")
            try rebuildIndex(progress: nil)
            return
        }
        let numbers = try packNumbers()
        let after = numbers.filter { $0 > index.indexedThrough }
        for pack in after {
            try PackScanner.scan(path: packPath(pack), withPayloads: true) { (rec) throws in
                if rec.checksumOK && index.lookup(rec.ref.hash) == nil { index.insert(rec.ref.hash, rec.ref.location) }
            }
            if index.pendingCount > ChunkIndex.pendingLimit { try index.flush() }
        }
        if let last = numbers.last { try index.flush(indexedThrough: last) }
    }

    /// Rebuilds the index from the packs alone (`vdiskfs verify --rebuild-index`).
    public func rebuildIndex(progress: ((Int64, Int64) -> Void)?) throws {
        precondition(access == .readWrite)
        let numbers = try packNumbers()
        var total: Int64 = 0
        for p in numbers { total += Int64(FileIO.size(packPath(p))) }
        var done: Int64 = 0
        try index.remove { _ in true }
        for pack in numbers {
            let (end, _) = try PackScanner.scan(path: packPath(pack), withPayloads: true) { (rec) throws in
                if rec.checksumOK { index.insert(rec.ref.hash, rec.ref.location) }
            }
            if index.pendingCount > ChunkIndex.pendingLimit { try index.flush() }
            done += end
            progress?(done, total)
        }
        try index.flush(indexedThrough: numbers.last ?? 0)
        packs.closeAll()
    }

    func packPath(_ pack: UInt64) -> String { path + "/packs/" + PackFormat.fileName(pack) }

    /// Numbers of every pack in the store, ascending.
    func packNumbers() throws -> [UInt64] {
        try FileIO.list(path + "/packs").compactMap(PackFormat.packNumber(fileName:)).sorted()
    }

    // MARK: reading

    /// Reads a record, following the index when the location is stale (packs rewritten).
    func readRecord(_ ref: ChunkRef, kind: RecordKind) throws -> [UInt8] {
        do { return try packs.readBytes(ref, kind: kind) } catch let error as PackReader.Failure {
            switch error {
            case .notThere:
                if let loc = index.lookup(ref.hash), loc != ref.location {
                    return try readRecord(ChunkRef(hash: ref.hash, location: loc), kind: kind)
                }
                throw StoreError.damagedChunk(detail: "\(kind == .namespace ? "namespace" : kind == .tree ? "tree node" : "chunk") \(ref.hash.short) is missing from pack \(PackFormat.fileName(ref.location.pack))")
            case .damaged(let what):
                log("vdiskfs: " + what)
                throw StoreError.damagedChunk(detail: what)
            case .system(let e): throw e
            }
        }
    }

    /// Reads the block `ref` into `output`, verified (crc32c and hash identity); zero refs
    /// are filled with zeros without touching disk. Returns the bytes produced.
    public func readBlock(_ ref: ChunkRef, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        if ref.isZero {
            output.initializeMemory(as: UInt8.self, repeating: 0)
            return output.count
        }
        do { return try packs.read(ref, kind: .data, into: output) } catch let error as PackReader.Failure {
            switch error {
            case .notThere:
                if let loc = index.lookup(ref.hash), loc != ref.location {
                    return try readBlock(ChunkRef(hash: ref.hash, location: loc), into: output)
                }
                let what = "chunk \(ref.hash.short) is missing from pack \(PackFormat.fileName(ref.location.pack))"
                log("vdiskfs: " + what)
                throw StoreError.damagedChunk(detail: what)
            case .damaged(let what):
                log("vdiskfs: " + what)
                throw StoreError.damagedChunk(detail: what)
            case .system(let e): throw e
            }
        }
    }

    /// Reads (through the node cache) the tree node `ref`.
    func readNode(_ ref: ChunkRef) throws -> TreeNode {
        if let n = nodeCache.get(ref.hash) { return n }
        let node = try TreeNode.decode(try readRecord(ref, kind: .tree), what: "tree node \(ref.hash.short)")
        nodeCache.put(ref.hash, node)
        return node
    }

    /// The ref of block `block` of `image` (zero past the end or in zero subtrees).
    public func blockRef(_ image: ImageRoot, _ block: UInt64) throws -> ChunkRef {
        guard block < image.blockCount else { return .zero }
        var ref = image.root
        var level = Int(image.depth) - 1
        while level >= 0 {
            if ref.isZero { return .zero }
            let node = try readNode(ref)
            let span = TreeNode.span(ofLevel: level)
            ref = node[Int((block / span) % UInt64(TreeNode.fanOut))]
            level -= 1
        }
        return ref
    }

    /// Calls `body` with each level-0 node's first block number and refs, in order;
    /// zero subtrees are passed as nil (all zeros). Stops when `body` returns false.
    public func forEachLeaf(_ image: ImageRoot, _ body: (UInt64, [ChunkRef]?) throws -> Bool) throws {
        func walk(_ ref: ChunkRef, level: Int, first: UInt64) throws -> Bool {
            if first >= image.blockCount { return true }
            if ref.isZero { return try body(first, nil) }
            let node = try TreeNode.decode(try readRecord(ref, kind: .tree), what: "tree node \(ref.hash.short)")
            if level == 0 { return try body(first, node.refs) }
            let span = TreeNode.span(ofLevel: level)
            for i in 0..<TreeNode.fanOut {
                let f = first + UInt64(i) * span
                if f >= image.blockCount { break }
                if try !walk(node[i], level: level - 1, first: f) { return false }
            }
            return true
        }
        _ = try walk(image.root, level: Int(image.depth) - 1, first: 0)
    }

    /// Calls `body` with every tree node ref of `image` (pre-order), for verify and accounting.
    func forEachNode(_ image: ImageRoot, _ body: (ChunkRef, TreeNode) throws -> Void) throws {
        func walk(_ ref: ChunkRef) throws {
            if ref.isZero { return }
            let node = try TreeNode.decode(try readRecord(ref, kind: .tree), what: "tree node \(ref.hash.short)")
            try body(ref, node)
            if node.level > 0 { for r in node.refs { try walk(r) } }
        }
        try walk(image.root)
    }

    /// The image at `name` in the committed namespace.
    public func image(_ name: String) throws -> ImageRoot {
        guard let e = namespace.entries[name], e.kind == .image, let img = e.image else { throw StoreError.noSuchImage(name: name) }
        return img
    }

    // MARK: writing

    private func requireWriter() throws -> PackWriter {
        guard access == .readWrite else { throw StoreError.readOnly(name: path) }
        if let writer { return writer }
        let next = (try packNumbers().last ?? 0) + 1
        let w = PackWriter(directory: path + "/packs", storeID: storeID, firstPack: next, targetSize: Self.packTargetSize)
        writer = w
        return w
    }

    private func noteAppend(_ w: PackWriter, _ loc: ChunkLocation) {
        if uncommitted[loc.pack] == nil {
            // A pack first touched since the last commit: new (0) unless it was open then.
            uncommitted[loc.pack] = loc.offset == UInt32(PackFormat.headerSize) ? 0 : Int64(loc.offset)
        }
    }

    /// Stores a block whose hash is known, unless the store has it. `payload` is its
    /// encoding (already compressed by the caller, possibly on another thread).
    func storeEncoded(hash: ChunkHash, kind: RecordKind, codec: Codec, rawLength: Int,
                      payload: UnsafeRawBufferPointer) throws -> ChunkRef {
        writeLock.lock(); defer { writeLock.unlock() }
        if let loc = index.lookup(hash) { return ChunkRef(hash: hash, location: loc) }
        let w = try requireWriter()
        let loc = try w.append(kind: kind, hash: hash, codec: codec, rawLength: rawLength, payload: payload)
        noteAppend(w, loc)
        index.insert(hash, loc)
        return ChunkRef(hash: hash, location: loc)
    }

    /// Runs `body` with the pack writer, under the write lock; appends are noted for rollback.
    func withWriter<T>(_ body: (PackWriter) throws -> T) throws -> T {
        writeLock.lock(); defer { writeLock.unlock() }
        let w = try requireWriter()
        let result = try body(w)
        if let loc = result as? ChunkLocation { noteAppend(w, loc) }
        return result
    }

    /// Looks a chunk up by hash (dedup on write).
    public func existing(_ hash: ChunkHash) -> ChunkRef? {
        index.lookup(hash).map { ChunkRef(hash: hash, location: $0) }
    }

    /// Stores one raw block (hash, dedup, compress, append). Zero blocks give the zero ref.
    public func storeBlock(_ raw: UnsafeRawBufferPointer) throws -> ChunkRef {
        if isAllZero(raw) { return .zero }
        return try storeRecord(raw, kind: .data)
    }

    func storeRecord(_ raw: UnsafeRawBufferPointer, kind: RecordKind) throws -> ChunkRef {
        let hash = ChunkHash.of(raw)
        if let ref = existing(hash) { return ref }
        return try withUnsafeTemporaryAllocation(byteCount: Compression.bound(raw.count), alignment: 16) { (out) throws -> ChunkRef in
            let (codec, n) = Compression.compress(raw, into: out)
            return try storeEncoded(hash: hash, kind: kind, codec: codec, rawLength: raw.count,
                                    payload: UnsafeRawBufferPointer(rebasing: out[0..<n]))
        }
    }

    /// Stores a tree node (deduplicated like blocks).
    func storeNode(_ node: TreeNode) throws -> ChunkRef {
        let bytes = node.encode()
        let ref = try bytes.withUnsafeBytes { (b) throws -> ChunkRef in try storeRecord(b, kind: .tree) }
        nodeCache.put(ref.hash, node)
        return ref
    }

    /// Keeps the index's pending entries bounded during long writes: make packs durable,
    /// then flush the index (data before index).
    func flushIndexIfLarge() throws {
        guard index.pendingCount > ChunkIndex.pendingLimit else { return }
        writeLock.lock(); defer { writeLock.unlock() }
        try writer?.synchronize()
        try index.flush()
    }

    /// Makes `namespace` the store's committed state: packs fsynced, index flushed, namespace
    /// record written and fsynced, root file replaced atomically.
    public func commit(_ newNamespace: Namespace, snapshots newSnapshots: [Snapshot]? = nil) throws {
        var ns = newNamespace
        ns.generation = namespace.generation + 1
        let bytes = ns.encode()
        let ref = try bytes.withUnsafeBytes { (b) throws -> ChunkRef in try storeRecord(b, kind: .namespace) }
        var tableRef = snapshotTableRef
        if var list = newSnapshots {
            // A snapshot taken in this commit keeps the namespace being committed.
            for i in list.indices where list[i].namespace.isZero { list[i].namespace = ref }
            tableRef = list.isEmpty ? .zero : try Snapshot.encodeTable(list).withUnsafeBytes { try storeRecord($0, kind: .snapshotTable) }
        }
        writeLock.lock(); defer { writeLock.unlock() }
        let w = try requireWriter()
        try w.synchronize()
        let through = (w.openPack ?? w.nextPack) - 1
        try index.flush(indexedThrough: through)
        var root = ByteWriter(capacity: 80)
        root.raw(Self.rootMagic)
        root.u32(1)
        root.u64(ns.generation)
        root.i64(PackWriter.nowNanoseconds())
        var refBytes = [UInt8](repeating: 0, count: ChunkRef.encodedSize)
        refBytes.withUnsafeMutableBytes { ref.store(to: $0.baseAddress!) }
        root.raw(refBytes)
        refBytes.withUnsafeMutableBytes { tableRef.store(to: $0.baseAddress!) }
        root.raw(refBytes)
        let crc = root.bytes.withUnsafeBytes { crc32c($0) }
        root.u32(crc)
        try FileIO.writeAtomically(path + "/roots/current", root.bytes)
        namespace = ns
        namespaceRef = ref
        snapshotTableRef = tableRef
        uncommitted.removeAll()
    }

    /// Undoes every write since the last commit: index entries pointing at uncommitted
    /// records are removed (index before data), then those records are cut off or their
    /// packs deleted. The store is left exactly as the last commit had it.
    public func rollback() throws {
        writeLock.lock(); defer { writeLock.unlock() }
        guard !uncommitted.isEmpty else { return }
        writer?.abandon()
        writer = nil
        let cut = uncommitted
        try index.remove { loc in
            guard let keep = cut[loc.pack] else { return false }
            return Int64(loc.offset) >= keep
        }
        for (pack, keep) in cut {
            let p = packPath(pack)
            if keep == 0 { unlink(p) } else { Glibc.truncate(p, off_t(keep)) }
        }
        try FileIO.syncDirectory(containing: packPath(0))
        packs.closeAll()
        nodeCache.removeAll()
        uncommitted.removeAll()
    }

    /// Bytes of every file of the store (packs, index, metadata).
    public func diskBytes() throws -> (packs: Int64, index: Int64, other: Int64) {
        var p: Int64 = 0
        for n in try packNumbers() { p += Int64(FileIO.size(packPath(n))) }
        let i = Int64(FileIO.size(path + "/index/chunks"))
        let o = Int64(FileIO.size(path + "/roots/current") + FileIO.size(path + "/" + Self.configName) + FileIO.size(path + "/lock"))
        return (p, i, o)
    }
}

/// Where the store's diagnostic lines go (damaged chunks, flush failures): standard error
/// by default, the daemon's log when mounted. The command line silences it for one-shot
/// verbs, whose errors are reported once, as their exit message.
nonisolated(unsafe) public var logHandler: ((String) -> Void)? = { line in
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Writes a diagnostic line through ``logHandler``.
public func log(_ line: String) { logHandler?(line) }

extension FileIO {
    static func size(_ path: String) -> Int {
        var st = Glibc.stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }
}

/// A bounded cache of decoded tree nodes, keyed by hash, sized in bytes. Thread-safe.
final class NodeCache: @unchecked Sendable {
    private let nodes = Locked<(map: [ChunkHash: TreeNode], bytes: Int)>(([:], 0))
    private(set) var capacityBytes: Int

    init(capacityBytes: Int) { self.capacityBytes = capacityBytes }

    func get(_ h: ChunkHash) -> TreeNode? { nodes.withLock { $0.map[h] } }

    static func cost(_ n: TreeNode) -> Int { 64 + n.refs.count * MemoryLayout<ChunkRef>.stride }

    func put(_ h: ChunkHash, _ n: TreeNode) {
        nodes.withLock { c in
            if c.map[h] != nil { return }
            while c.bytes + Self.cost(n) > capacityBytes, let victim = c.map.first {
                c.map[victim.key] = nil
                c.bytes -= Self.cost(victim.value)
            }
            c.map[h] = n
            c.bytes += Self.cost(n)
        }
    }

    func resize(_ bytes: Int) {
        nodes.withLock { c in
            capacityBytes = bytes
            while c.bytes > capacityBytes, let victim = c.map.first {
                c.map[victim.key] = nil
                c.bytes -= Self.cost(victim.value)
            }
        }
    }

    func removeAll() { nodes.withLock { $0 = ([:], 0) } }
}
