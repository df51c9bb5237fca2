import Foundation
import Glibc
import SystemPackage

/// A vdiskfs store: packs of records, an index, and a root, kept by a ``StoreBackend``
/// (a local directory, or a RADOS pool shared by many hosts).
///
/// Commit order: packs are written and made durable, then the index, then the root is
/// replaced atomically (compare-and-set on a shared backend). A crash at any point leaves
/// the previous root in place, and everything it references is durable.
///
/// Thread safety: reads (`readBlock`, `readNode`) are safe from any thread. The write
/// side (`storeChunk`, `storeNode`, `commit`, `rollback`) must be serialised by the
/// caller; it takes `writeLock` itself so concurrent misuse is caught, not corrupting.
public final class Store: @unchecked Sendable {
    /// How a store is opened.
    public enum Access: Sendable { case readOnly, readWrite }

    public let backend: StoreBackend
    /// The store's name in messages: its directory, or its `rados://` location.
    public var path: String { backend.name }
    /// This host's directory for derived state (index, a mount's journal and control socket).
    public var localDirectory: String { backend.localDirectory }
    public let access: Access
    public let storeID: [UInt8]
    let packs: PackReader
    let index: ChunkIndex
    private var storeLock: StoreLock?
    private var writer: PackWriter?
    private let writeLock = NSLock()
    /// Decoded tree nodes (16 MiB unless a Volume sizes it from its cache budget).
    let nodeCache = NodeCache(capacityBytes: 16 << 20)
    /// Scratch buffers for runs of records read from packs (``readBlocks``): a run is at
    /// most 1 MiB plus a record; two per core are kept (4.1 MiB on two cores).
    static let runBuffers = ScratchPool(size: (1 << 20) + (64 << 10), keep: 2 * max(1, ProcessInfo.processInfo.activeProcessorCount))

    /// The committed namespace.
    public private(set) var namespace: Namespace
    /// The ref of the committed namespace record.
    public private(set) var namespaceRef: ChunkRef
    /// The ref of the committed snapshot table (zero: no snapshots). Kept by every commit.
    public internal(set) var snapshotTableRef: ChunkRef = .zero
    /// The backend's version of the root this process last read or wrote.
    private var rootVersion: UInt64?
    /// Per pack: its length at the last commit (0 for packs created since).
    private var uncommitted: [UInt64: Int64] = [:]

    public static let configName = "vdiskfs.json"
    /// The format `init` writes: 2 (grouped data records allowed). Version 1 stores (no
    /// grouped records) are read and written as they are, and stay readable by older vdiskfs.
    public static let formatVersion = 2
    /// Every store format this vdiskfs reads.
    public static let readableFormatVersions = 1...2
    /// This store's format version (from its configuration).
    public private(set) var formatVersion = Store.formatVersion
    /// Whether import may write grouped data records here: format 2, and a directory store
    /// (a shared store's readers fetch whole records from afar, and the disk cache keeps
    /// one-chunk records only, so there every chunk keeps a record of its own).
    var writesGroups: Bool { formatVersion >= 2 && !backend.isShared }
    /// Packs are sealed when they pass this size.
    public static let packTargetSize = 32 << 20

    static func indexPath(_ backend: StoreBackend) -> String { backend.localDirectory + "/index/chunks" }

    // MARK: create and open

    /// Creates an empty store at `location` (a directory that is new or empty, or a
    /// `rados://` location whose pool holds no store yet).
    public static func create(at location: String, localDirectory: String? = nil) throws {
        let backend = try StoreBackends.backend(for: location, localDirectory: localDirectory)
        try backend.prepareCreate()
        try FileIO.makeDirectory(backend.localDirectory + "/index")
        try ChunkIndex.create(path: indexPath(backend))
        var id = [UInt8](repeating: 0, count: 16)
        for i in 0..<16 { id[i] = UInt8.random(in: 0...255) }
        // The root first, then the config that makes the location a store.
        let store = Store(backend: backend, access: .readWrite, storeID: id, lock: try backend.lock(.exclusive, purpose: "init"),
                          index: try ChunkIndex.open(path: indexPath(backend)).0)
        try store.commit(Namespace())
        let config = "{\"format\": \"vdiskfs\", \"version\": \(Store.formatVersion), \"id\": \"\(id.map { String(format: "%02x", $0) }.joined())\", \"pack_target_size\": \(packTargetSize)}\n"
        try backend.writeConfig(Array(config.utf8))
        store.close()
    }

    private init(backend: StoreBackend, access: Access, storeID: [UInt8], lock: StoreLock, index: ChunkIndex) {
        self.backend = backend
        self.access = access
        self.storeID = storeID
        self.storeLock = lock
        self.index = index
        self.packs = PackReader(backend: backend)
        self.namespace = Namespace()
        self.namespaceRef = .zero
    }

    deinit {
        // Seal the open pack (on a shared store its summary lets other hosts dedup against it).
        try? writer?.sealCurrent()
        storeLock?.release()
    }

    /// Lets go of the store's lock. Commits are explicit, so nothing is written here;
    /// the store must not be used afterwards.
    public func close() {
        writeLock.lock(); defer { writeLock.unlock() }
        try? writer?.sealCurrent()
        writer = nil
        storeLock?.release()
        storeLock = nil
    }

    /// Opens an existing store: a directory, or a location of a registered backend
    /// (`rados://…`). `purpose` is recorded with the lock so that a second writer is told
    /// who holds it. `localDirectory` overrides where a shared store's host state lives.
    public static func open(at location: String, access: Access, purpose: String = "vdiskfs",
                            localDirectory: String? = nil) throws -> Store {
        try open(backend: try StoreBackends.backend(for: location, localDirectory: localDirectory),
                 access: access, lockMode: access == .readWrite ? .write : .read, purpose: purpose)
    }

    /// Opens the store kept by `backend`, taking its lock in `lockMode`.
    public static func open(backend: StoreBackend, access: Access, lockMode: StoreLockMode, purpose: String) throws -> Store {
        let (storeID, version) = try parseConfig(try backend.readConfig())
        let lock = try backend.lock(lockMode, purpose: purpose)
        let indexPath = indexPath(backend)
        let (index, torn): (ChunkIndex, Bool)
        do { (index, torn) = try ChunkIndex.open(path: indexPath) } catch {
            if access == .readOnly && !backend.isShared { lock.release(); throw error }
            if access == .readOnly {
                // A reader on a host that never wrote this shared store: reads follow tree
                // locations; an empty private index stands in for the host's.
                let dir = try FileIO.makeTemporaryDirectory(prefix: "vdiskfs-index")
                try ChunkIndex.create(path: dir + "/chunks")
                (index, torn) = (try ChunkIndex.open(path: dir + "/chunks").0, false)
            } else {
                // A missing or unreadable index is rebuilt from the packs (a shared store's
                // host state starts empty on a new host).
                try FileIO.makeDirectory(backend.localDirectory + "/index")
                try ChunkIndex.reset(path: indexPath)
                (index, torn) = (try ChunkIndex.open(path: indexPath).0, false)
            }
        }
        let store = Store(backend: backend, access: access, storeID: storeID, lock: lock, index: index)
        store.formatVersion = version
        if access == .readWrite { try store.catchUpIndex(rebuild: torn) }
        try store.loadRoot()
        return store
    }

    private static func parseConfig(_ bytes: [UInt8]) throws -> (id: [UInt8], version: Int) {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
              obj["format"] as? String == "vdiskfs" else {
            throw StoreError.corruptStore(detail: "\(configName) is not a vdiskfs configuration")
        }
        guard let v = obj["version"] as? Int, readableFormatVersions.contains(v) else {
            throw StoreError.corruptStore(detail: "store format version \(obj["version"] ?? "?") is not supported (this vdiskfs reads \(readableFormatVersions.lowerBound) to \(readableFormatVersions.upperBound))")
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
        return (id, v)
    }

    /// The root: `"VDISKRT1" | version u32 | generation u64 | time i64 | namespace ChunkRef |
    /// snapshot table ChunkRef (zero: none) | crc32c`. Both refs change in one atomic replace.
    static let rootMagic: [UInt8] = Array("VDISKRT1".utf8)
    static let rootSize = 8 + 4 + 8 + 8 + 48 + 48 + 4

    /// The committed root as the backend has it now: namespace ref, snapshot table ref, version.
    func readRootObject() throws -> (namespace: ChunkRef, snapshots: ChunkRef, version: UInt64) {
        guard let (bytes, version) = try backend.readRoot() else {
            throw StoreError.corruptStore(detail: "the root (roots/current) is missing")
        }
        guard bytes.count == Self.rootSize, Array(bytes[0..<8]) == Self.rootMagic else {
            throw StoreError.corruptStore(detail: "the root (roots/current) is damaged")
        }
        let crc = bytes.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<(bytes.count - 4)])) }
        var r = ByteReader(bytes, what: "root")
        r.offset = bytes.count - 4
        guard try r.u32() == crc else { throw StoreError.corruptStore(detail: "the root (roots/current) fails its checksum") }
        let ref = bytes.withUnsafeBytes { ChunkRef(loading: $0.baseAddress! + 28) }
        let table = bytes.withUnsafeBytes { ChunkRef(loading: $0.baseAddress! + 76) }
        return (ref, table, version)
    }

    private func loadRoot() throws {
        let root = try readRootObject()
        namespace = try Namespace.decode(try readRecord(root.namespace, kind: .namespace))
        namespaceRef = root.namespace
        snapshotTableRef = root.snapshots
        rootVersion = root.version
    }

    /// Takes into the index the chunks of `pack`: from its summary when the backend keeps
    /// one, else by scanning it (directory stores). A shared store's pack without a summary
    /// is another host's open pack: skipped (its chunks are stored again rather than shared).
    private func indexPack(_ pack: UInt64) throws -> Int64 {
        if let bytes = try backend.readPackSummary(pack) {
            let summary = try PackSummary.decode(bytes, pack: pack)
            for e in summary.entries where index.lookup(e.hash) == nil { index.insert(e.hash, e.location) }
            return Int64(bytes.count)
        }
        if backend.isShared { return 0 }
        let (end, _) = try PackScanner.scan(backend, pack: pack, withPayloads: true) { (rec) throws in
            guard rec.checksumOK else { return }
            for m in rec.members where index.lookup(m.hash) == nil { index.insert(m.hash, m.location) }
        }
        return end
    }

    /// Brings the index up to date with the packs: rebuild it from scratch when it was torn,
    /// else take in the packs written after the last index flush.
    private func catchUpIndex(rebuild: Bool) throws {
        if rebuild {
            try ChunkIndex.reset(path: Self.indexPath(backend))
            try rebuildIndex(progress: nil)
            return
        }
        if backend.isShared { try forgetCollectedPacks() }
        let numbers = try indexablePackNumbers()
        for pack in numbers where pack > index.indexedThrough {
            _ = try indexPack(pack)
            if index.pendingCount > index.pendingLimit { try index.flush() }
        }
        if let last = numbers.last, last > index.indexedThrough || index.pendingCount > 0 { try index.flush(indexedThrough: last) }
    }

    /// Shared stores: drops the index entries of packs another host's gc deleted since this
    /// host last looked (else a write here could dedup against a chunk that is gone).
    private func forgetCollectedPacks() throws {
        let collected = try backend.collectedPacks()
        let marker = backend.localDirectory + "/index/collected"
        let applied = (try? FileIO.readAll(marker)).flatMap { Int(String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        guard collected.count > applied else { return }
        let gone = Set(collected[min(applied, collected.count)...])
        try index.remove { gone.contains($0.pack) }
        try index.flush()
        try FileIO.writeAtomically(marker, Array("\(collected.count)\n".utf8))
    }

    /// Rebuilds the index from the packs alone (`vdiskfs verify --rebuild-index`).
    public func rebuildIndex(progress: ((Int64, Int64) -> Void)?) throws {
        let numbers = try indexablePackNumbers()
        var total: Int64 = 0
        for p in numbers { total += try backend.packSize(p) ?? 0 }
        var done: Int64 = 0
        try index.remove { _ in true }
        for pack in numbers {
            _ = try indexPack(pack)
            if index.pendingCount > index.pendingLimit { try index.flush() }
            done += try backend.packSize(pack) ?? 0
            progress?(done, total)
        }
        try index.flush(indexedThrough: numbers.last ?? 0)
        packs.closeAll()
    }

    /// Numbers of every pack in the store, ascending.
    func packNumbers() throws -> [UInt64] { try backend.packNumbers() }

    /// ``packNumbers()`` for the index, which holds pack numbers up to 2^32 − 1 (writers
    /// number packs from 1, one by one): a pack numbered past that is not one of this store's.
    private func indexablePackNumbers() throws -> [UInt64] {
        let numbers = try packNumbers()
        if let last = numbers.last, last > UInt64(UInt32.max) {
            throw StoreError.corruptStore(detail: "pack \(PackFormat.fileName(last)) has a number past what the index holds (2^32 - 1)")
        }
        return numbers
    }

    // MARK: reading

    /// Reads a record, following the index when the location is stale (packs rewritten).
    func readRecord(_ ref: ChunkRef, kind: RecordKind) throws -> [UInt8] {
        do { return try packs.readBytes(ref, kind: kind) } catch let error as PackReader.Failure {
            switch error {
            case .notThere:
                if let again = try retryLocation(for: ref) { return try readRecord(again, kind: kind) }
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
                if let again = try retryLocation(for: ref) { return try readBlock(again, into: output) }
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

    /// Where to read `ref` again when its pack did not hold it there: the same place once
    /// the pack writer has handed over the records it still buffered (a flush in windows
    /// reads back the tree nodes the previous window stored, once the node cache has let
    /// them go), or where the index says the chunk now lives (packs rewritten). Nil: neither.
    private func retryLocation(for ref: ChunkRef) throws -> ChunkRef? {
        let drained = try writeLock.withLock { () throws -> Bool in
            guard let w = writer, w.isBuffered(ref.location) else { return false }
            try w.drain()
            return true
        }
        if drained { return ref }
        if let loc = index.lookup(ref.hash), loc != ref.location { return ChunkRef(hash: ref.hash, location: loc) }
        return nil
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
        let w = PackWriter(backend: backend, storeID: storeID, firstPack: next, targetSize: Self.packTargetSize)
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
        // Callers looked the hash up already; another thread may have stored it since.
        if let loc = index.lookupPending(hash) { return ChunkRef(hash: hash, location: loc) }
        let w = try requireWriter()
        let loc = try w.append(kind: kind, hash: hash, codec: codec, rawLength: rawLength, payload: payload)
        noteAppend(w, loc)
        index.insert(hash, loc)
        return ChunkRef(hash: hash, location: loc)
    }

    /// Stores chunks of equal length as one grouped record whose payload (hash table, then
    /// the encoded members) the caller built; returns each member's ref. A member the index
    /// already has (another writer stored it meanwhile) keeps its existing record.
    func storeGroup(hashes: [ChunkHash], codec: Codec, rawLength: Int, payload: UnsafeRawBufferPointer) throws -> [ChunkRef] {
        precondition(hashes.count >= 2)
        writeLock.lock(); defer { writeLock.unlock() }
        let w = try requireWriter()
        let loc = try w.append(kind: .data, hash: hashes[0], codec: codec, rawLength: rawLength, payload: payload, members: hashes.count)
        noteAppend(w, loc)
        return hashes.enumerated().map { m, h in
            if let existing = index.lookupPending(h) { return ChunkRef(hash: h, location: existing) }
            index.insert(h, loc.withMember(m))
            return ChunkRef(hash: h, location: loc.withMember(m))
        }
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
        guard index.pendingCount > index.pendingLimit else { return }
        writeLock.lock(); defer { writeLock.unlock() }
        try writer?.synchronize()
        try index.flush()
    }

    /// Makes `namespace` the store's committed state: packs made durable, index flushed,
    /// namespace record written, root replaced atomically. On a shared store another host
    /// may have committed since this one last read the root: its root is then taken, this
    /// commit's changes (the names and snapshots it added, changed or removed) re-applied on
    /// it, and the replace tried again.
    public func commit(_ newNamespace: Namespace, snapshots newSnapshots: [Snapshot]? = nil) throws {
        let base = namespace
        let baseSnapshots = newSnapshots == nil ? nil : try snapshots()
        var ours = newNamespace
        var ourSnapshots = newSnapshots
        while try !commitOnce(ours, snapshots: ourSnapshots) {
            guard backend.isShared else {
                throw StoreError.corruptStore(detail: "the root changed under this process although it holds the store lock")
            }
            let theirs = try readRootObject()
            let theirNamespace = try Namespace.decode(try readRecord(theirs.namespace, kind: .namespace))
            ours = Namespace.merging(base: base, ours: ours, theirs: theirNamespace)
            if let mine = ourSnapshots, let baseList = baseSnapshots {
                let theirList = theirs.snapshots.isZero ? [] : try Snapshot.decodeTable(try readRecord(theirs.snapshots, kind: .snapshotTable))
                ourSnapshots = Snapshot.merging(base: baseList, ours: mine, theirs: theirList)
            }
            writeLock.lock()
            namespace = theirNamespace
            namespaceRef = theirs.namespace
            snapshotTableRef = theirs.snapshots
            rootVersion = theirs.version
            writeLock.unlock()
        }
    }

    /// One try at replacing the root; false when another host replaced it first.
    private func commitOnce(_ newNamespace: Namespace, snapshots newSnapshots: [Snapshot]?) throws -> Bool {
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
        var root = ByteWriter(capacity: Self.rootSize)
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
        guard let version = try backend.replaceRoot(root.bytes, ifVersion: rootVersion) else { return false }
        rootVersion = version
        namespace = ns
        namespaceRef = ref
        snapshotTableRef = tableRef
        uncommitted.removeAll()
        return true
    }

    /// Whether another host has committed since this process last read or wrote the root
    /// (always false on a directory store). Cheap: one small read.
    public func rootChanged() throws -> Bool {
        guard backend.isShared else { return false }
        let now = try readRootObject()
        return writeLock.withLock { now.version != rootVersion }
    }

    /// Takes the root other hosts committed as this process's committed state (nothing of
    /// this process may be uncommitted). Returns false when it had not changed.
    @discardableResult
    public func reloadRoot() throws -> Bool {
        guard backend.isShared else { return false }
        let now = try readRootObject()
        guard writeLock.withLock({ now.version != rootVersion }) else { return false }
        let ns = try Namespace.decode(try readRecord(now.namespace, kind: .namespace))
        writeLock.withLock {
            namespace = ns
            namespaceRef = now.namespace
            snapshotTableRef = now.snapshots
            rootVersion = now.version
        }
        return true
    }

    /// Undoes every write since the last commit: index entries pointing at uncommitted
    /// records are removed (index before data), then those records are cut off or their
    /// packs deleted. The store is left exactly as the last commit had it. On a shared
    /// store the records stay (garbage for gc): another host may already know them.
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
        if !backend.isShared {
            for (pack, keep) in cut { try backend.truncatePack(pack, to: keep) }
        }
        packs.closeAll()
        nodeCache.removeAll()
        uncommitted.removeAll()
    }

    /// Bytes of the store (packs, index, metadata).
    public func diskBytes() throws -> (packs: Int64, index: Int64, other: Int64) {
        var p: Int64 = 0
        for n in try packNumbers() { p += try backend.packSize(n) ?? 0 }
        let i = Int64(FileIO.size(Self.indexPath(backend)))
        let o = Int64(Self.rootSize + 256)
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
