import CSupport
import Foundation
import Glibc
import SystemPackage

/// The live, writable view of a store that a mount serves: images as files in directories,
/// read and written by byte range. No FUSE here: the driver maps its requests onto this.
///
/// Writes go to a write-back journal on local disk and are acknowledged once appended;
/// ``synchronize(_:dataOnly:)`` makes them durable. A background flusher moves dirty blocks
/// into the store (hash, compress, pack, tree, commit). Metadata changes (create, mkdir,
/// rename, unlink, chmod, truncate) are committed to the store before they return.
/// After a crash, the next `Volume` on the store replays the journal.
///
/// Thread-safe: every method may be called from any FUSE worker thread.
///
/// Lock order (take left before right, never the reverse):
/// `flushLock` → `Node.writeLock` → `appendLock` → `journalGrowth` → `stateLock`;
/// `appendsInFlight` is taken alone.
/// - `flushLock` serialises commits: flushes and metadata changes.
/// - `Node.writeLock` serialises writes to one image (read-modify-write of partial blocks).
/// - `appendLock` is shared by appends and taken alone to switch journal segments.
/// - `stateLock` guards the node table and every node's fields; held briefly, no I/O but
///   segment creation.
public final class Volume: @unchecked Sendable {
    /// The top directory's node.
    public static let rootNode: NodeID = 1
    /// `.snapshots`: one read-only directory per snapshot. Hidden from the top directory's
    /// listing (unless ``VolumeOptions/showSnapshotDirectory``) but always reachable by name.
    public static let snapshotsNode: NodeID = 2
    public static let snapshotsName = ".snapshots"

    public let store: Store
    public let options: VolumeOptions

    /// Where a block's newest content is, when it is not (yet) in the image's tree: a journal
    /// record, or nothing (a zero block). 16 bytes, so that the dirty maps of a full journal
    /// (up to ``maxDirtyBlocks`` entries each) stay small: a shared chunk's ref (48 bytes) is
    /// not kept here but read back from its journal record when needed (``journalRefs(_:)``).
    struct Dirty {
        /// The segment holding the record; nil for a zero block.
        let segment: WriteJournal.Segment?
        /// The record's payload offset in `segment`; `refBit` set when the payload is a
        /// ChunkRef (copy_file_range) rather than the block's bytes.
        private let word: Int64
        private static let refBit: Int64 = 1 << 62

        private init(_ segment: WriteJournal.Segment?, _ word: Int64) { self.segment = segment; self.word = word }

        /// All zeros.
        static let zero = Dirty(nil, 0)
        /// The block's bytes, at `offset` in `segment`.
        static func data(_ segment: WriteJournal.Segment, _ offset: Int64) -> Dirty { Dirty(segment, offset) }
        /// A chunk already in the store, whose encoded ChunkRef is at `offset` in `segment`.
        static func ref(_ segment: WriteJournal.Segment, _ offset: Int64) -> Dirty { Dirty(segment, offset | refBit) }

        enum Kind {
            case data(WriteJournal.Segment, Int64)
            case zero
            case ref(WriteJournal.Segment, Int64)
        }

        var kind: Kind {
            guard let segment else { return .zero }
            return word & Self.refBit != 0 ? .ref(segment, word & ~Self.refBit) : .data(segment, word)
        }

        var isZero: Bool { segment == nil }
    }

    final class Node: @unchecked Sendable {
        let id: NodeID
        var path: String?
        var isDirectory: Bool
        var mode: UInt32, uid: UInt32, gid: UInt32
        var mtime: Int64, ctime: Int64
        /// The committed tree (images); only replaced after a successful commit.
        var root: ImageRoot
        /// Size including acknowledged writes not yet flushed.
        var liveSize: UInt64
        /// Non-zero blocks in `root`, counted on first use.
        var allocatedBlocks: Int64?
        /// Dirty blocks of the current segment, and of the segments being flushed.
        var dirty: [UInt64: Dirty] = [:]
        var frozen: [UInt64: Dirty] = [:]
        /// Entries of `dirty` and `frozen` that are not zero blocks (for st_blocks), kept as
        /// blocks are written so getattr never walks the maps.
        var dirtyData = 0
        var frozenData = 0
        /// The size to commit with the frozen blocks; meaningful while `frozenPending`.
        var frozenSize: UInt64 = 0
        /// Frozen blocks (or a size change) wait for the flusher.
        var frozenPending = false
        /// Set for nodes inside a snapshot: its name, and the node's path within it ("" for
        /// the snapshot's own directory). Such nodes are read-only.
        var snapshot: String?
        var snapshotPath = ""
        let writeLock = NSLock()

        init(id: NodeID, path: String, entry: Namespace.Entry) {
            self.id = id
            self.path = path
            isDirectory = entry.kind == .directory
            mode = entry.mode; uid = entry.uid; gid = entry.gid
            mtime = entry.mtime; ctime = entry.ctime
            root = entry.image ?? .empty(size: 0, blockSize: 4096)
            liveSize = root.size
        }

        var hasDirtyBlocks: Bool { !dirty.isEmpty || !frozen.isEmpty }

        func entry() -> Namespace.Entry {
            Namespace.Entry(kind: isDirectory ? .directory : .image, mode: mode, uid: uid, gid: gid, mtime: mtime, ctime: ctime,
                            image: isDirectory ? nil : root)
        }
    }

    let stateLock = NSLock()
    let flushLock = NSLock()
    let appendLock = ReadWriteLock()
    var nodes: [NodeID: Node] = [:]
    var byPath: [String: NodeID] = [:]
    var nextNode: NodeID = 3
    /// Nodes handed out for snapshot contents, by "snapshot\0path".
    var snapshotNodes: [String: NodeID] = [:]
    /// Decoded snapshot namespaces, by snapshot name.
    var snapshotNamespaces: [String: Namespace] = [:]
    /// The store's snapshots; read by FUSE threads, replaced under `flushLock` when this
    /// volume takes or deletes one (the Store's own fields belong to the committing thread).
    var snapshotList: [Snapshot] = []
    let rootAttributes: (mtime: Int64, uid: UInt32, gid: UInt32)
    let journal: WriteJournal
    var segment: WriteJournal.Segment!
    var frozenSegments: [WriteJournal.Segment] = []
    let cache: ChunkCache
    var flusher: Thread?
    let flusherWake = NSCondition()
    /// A flush was asked for since the flusher last started one (guarded by `flusherWake`,
    /// so that a wake-up sent while it is busy is not lost).
    var flushRequested = false
    var stopping = false
    var closed = false
    /// Writers waiting for journal space wait on this.
    let spaceFreed = NSCondition()
    /// Serialises allocating journal space ahead (``reserveJournal(_:)``); taken inside
    /// `appendLock`'s shared hold, never with `stateLock` held.
    let journalGrowth = NSLock()
    /// Appends that have taken a ticket and not yet finished writing (guarded by itself):
    /// fsync waits for those that started before it (``synchronize(_:dataOnly:)``).
    let appendsInFlight = NSCondition()
    var appendTickets: Set<UInt64> = []
    var nextAppendTicket: UInt64 = 0
    /// Tests only: called by each append after it has its place in the journal, before it
    /// writes there.
    var beforeJournalWriteForTesting: (() -> Void)?
    /// Entries in the current dirty maps: bounded like the journal's bytes, since a ref or
    /// zero record takes little journal but as much memory as a data block's entry.
    var currentDirtyBlocks = 0
    /// Entries in the frozen maps and bytes of the frozen segments, counted against the same
    /// limits as the current ones: the journal's disk and the dirty maps' memory are bounded
    /// as a whole, not once for each flush in progress.
    var frozenBlocks = 0
    var frozenJournalBytes: Int64 = 0
    /// The last flush failure, reported to writers while the journal is full.
    var lastFlushError: StoreError?
    /// Shared stores: the leases this volume holds, by image path, and the write handles
    /// open per node (see Volume+Sharing.swift).
    var leases: [String: ImageLease] = [:]
    var writeHandles: [NodeID: Int] = [:]
    /// Drops the kernel's cache of a node whose content another host changed (set by the
    /// driver through ``setInvalidation(_:)``; guarded by `stateLock`).
    var invalidateNode: @Sendable (NodeID) -> Void = { _ in }

    /// Drops the kernel's cached attributes of a node whose mode a write changed (set through
    /// ``setAttributeInvalidation(_:)``; guarded by `stateLock`).
    var invalidateAttributes: @Sendable (NodeID) -> Void = { _ in }

    /// Tells the volume how to drop the kernel's cache of a node (the driver, once mounted).
    public func setInvalidation(_ invalidate: @escaping @Sendable (NodeID) -> Void) {
        stateLock.withLock { invalidateNode = invalidate }
    }

    /// Tells the volume how to drop the kernel's cached attributes of a node (not its pages):
    /// safe to call while the node is being written.
    public func setAttributeInvalidation(_ invalidate: @escaping @Sendable (NodeID) -> Void) {
        stateLock.withLock { invalidateAttributes = invalidate }
    }

    /// Opens the volume over a store opened read-write, replaying a journal left by a crash.
    public init(store: Store, options: VolumeOptions = VolumeOptions()) throws {
        guard store.access == .readWrite else { throw StoreError.readOnly(name: store.path) }
        self.store = store
        self.options = options
        // The cache budget covers decoded tree nodes (1/8), the dirty maps (their most, see
        // dirtyMapBytes), the buffers of I/O in flight (the volume's and the caller's) and
        // decompressed chunks (the rest, and at least half of it).
        let nodeBytes = max(options.cacheBytes / 8, 1 << 20)
        store.nodeCache.resize(nodeBytes)
        // The flusher's new index entries wait on the heap until a flush: keep them few
        // (32768 entries, about 3 MiB) so a mount's memory stays within its caches.
        store.index.pendingLimit = 32_768
        store.index.readsBuckets = true
        let rest = max(options.cacheBytes - nodeBytes, 1 << 20)
        let others = Self.dirtyMapBytes(options) + Self.ioBufferBytes + options.requestBufferBytes
        cache = ChunkCache(capacityBytes: max(rest - others, rest / 2))
        // A mount runs many FUSE threads; one malloc arena per thread would hold freed memory
        // apart and let RSS climb past the configured caches.
        vdisk_limit_malloc_arenas(2)
        journal = try WriteJournal(directory: options.journalDirectory ?? store.localDirectory + "/journal")
        if let dir = options.diskCacheDirectory {
            store.packs.diskCache = try DiskCache(directory: dir, capacityBytes: options.diskCacheBytes)
        }
        rootAttributes = (PackWriter.nowNanoseconds(), getuid(), getgid())
        for (path, entry) in store.namespace.entries.sorted(by: { $0.key < $1.key }) {
            let n = Node(id: nextNode, path: path, entry: entry)
            nodes[n.id] = n
            byPath[path] = n.id
            nextNode += 1
        }
        // Replay what a crash left in the journal, then start a new segment.
        let old = try journal.segmentsOnDisk()
        var replayed = 0, skipped = 0
        for seq in old {
            let path = journal.directory + "/" + WriteJournal.fileName(seq)
            let fd = try FileIO.open(path, .readOnly, context: "open journal")
            let seg = WriteJournal.Segment(sequence: seq, path: path, fd: fd, size: 0)
            frozenSegments.append(seg)
            do {
                try WriteJournal.replay(path: path) { rec in
                    guard let id = byPath[rec.path], let n = nodes[id], !n.isDirectory else { skipped += 1; return }
                    // A block past any size the image can have (its byte offset overflows) is
                    // damage: this segment's replay stops there, as at a torn tail.
                    guard !rec.block.multipliedReportingOverflow(by: UInt64(n.root.blockSize)).overflow else {
                        throw JournalDamage(why: "the record at offset \(rec.payloadOffset - Int64(WriteJournal.headerSize + rec.path.utf8.count)) names block \(rec.block) of \(rec.path), past any size it can have")
                    }
                    replayed += 1
                    switch rec.kind {
                    case .data:
                        // The flush reads a block's worth at the payload: a payload of another
                        // length is not a block of this image.
                        guard rec.payload.count == Int(n.root.blockSize) else { skipped += 1; return }
                        n.frozen[rec.block] = .data(seg, rec.payloadOffset)
                    case .zero: n.frozen[rec.block] = .zero
                    case .ref:
                        guard rec.payload.count == ChunkRef.encodedSize else { skipped += 1; return }
                        n.frozen[rec.block] = .ref(seg, rec.payloadOffset)
                    case .size: break
                    }
                    n.liveSize = max(n.liveSize, rec.sizeAfter)
                    n.frozenSize = n.liveSize
                    n.frozenPending = true
                }
            } catch let damage as JournalDamage {
                log("vdiskfs: journal \(path): \(damage.why); the records after it are not replayed")
            }
        }
        // A shared store's gc must wait for this journal while it may hold acknowledged writes.
        if store.backend.isShared { try store.backend.noteJournal(journalID, pending: true) }
        segment = try journal.createSegment((old.last ?? 0) + 1)
        snapshotList = try store.snapshots()
        if !old.isEmpty {
            log("vdiskfs: replaying the journal: \(replayed) block writes from \(old.count) segment(s)\(skipped > 0 ? ", \(skipped) for removed images skipped" : "")")
            flushLock.lock(); defer { flushLock.unlock() }
            // A shared store: the replayed images are this host's to commit again.
            for n in nodes.values where n.frozenPending { if let p = n.path { try requireLeaseLocked(p) } }
            do {
                try flushFrozen()
            } catch let e as StoreError where e.errno == ENOSPC {
                // A full disk: the replayed blocks stay in the journal, readable as dirty
                // data, and the flusher tries again every tick; writers get ENOSPC until
                // space is freed. Refusing the mount would leave them unreadable.
                stateLock.withLock { countFrozenLocked() }
                log("vdiskfs: mounting anyway: the replayed writes stay in the journal, readable, until space is freed")
            }
        }
        let t = Thread { [weak self] in self?.flusherLoop() }
        t.name = "vdiskfs-flusher"
        flusher = t
        t.start()
    }

    /// This mount's journal as other hosts see it: host and journal directory.
    var journalID: String {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        return String(cString: host) + ":" + journal.directory
    }

    // MARK: nodes and attributes

    func node(_ id: NodeID) throws -> Node {
        guard let n = stateLock.withLock({ nodes[id] }) else { throw StoreError.io(errno: ENOENT, context: "no such node") }
        return n
    }

    func directoryPath(_ id: NodeID) throws -> String {
        if id == Self.rootNode { return "" }
        if id == Self.snapshotsNode { throw StoreError.readOnly(name: Self.snapshotsName) }
        let n = try node(id)
        if n.snapshot != nil { throw StoreError.readOnly(name: Self.snapshotsName + "/" + n.snapshot!) }
        guard n.isDirectory else { throw StoreError.io(errno: ENOTDIR, context: "not a directory") }
        guard let p = stateLock.withLock({ n.path }) else { throw StoreError.io(errno: ENOENT, context: "directory was removed") }
        return p
    }

    func childPath(_ parent: NodeID, _ name: String) throws -> String {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw StoreError.invalidName(name: name, reason: "not a file name")
        }
        let dir = try directoryPath(parent)
        return try Namespace.validate(dir.isEmpty ? name : dir + "/" + name)
    }

    /// 2 + subdirectories, as POSIX file systems count a directory's links.
    func directoryLinksLocked(_ path: String) -> UInt32 {
        let prefix = path.isEmpty ? "" : path + "/"
        var n: UInt32 = 2
        for (p, id) in byPath where p.hasPrefix(prefix) && p.count > prefix.count && !p.dropFirst(prefix.count).contains("/") {
            if nodes[id]?.isDirectory == true { n += 1 }
        }
        return n
    }

    func attributesLocked(_ n: Node) -> NodeAttributes {
        // Dirty non-zero blocks count as allocated (an upper bound until the flusher runs).
        let allocated = (n.allocatedBlocks ?? 0) + Int64(n.dirtyData + n.frozenData)
        return NodeAttributes(node: n.id, isDirectory: n.isDirectory, mode: n.mode, uid: n.uid, gid: n.gid,
                              size: n.isDirectory ? 4096 : n.liveSize,
                              allocatedBytes: n.isDirectory ? 4096 : UInt64(max(0, allocated)) * UInt64(n.root.blockSize),
                              blockSize: n.isDirectory ? 4096 : n.root.blockSize, mtime: n.mtime, ctime: n.ctime,
                              linkCount: n.isDirectory ? (n.path.map(directoryLinksLocked) ?? 2) : (n.path == nil && n.snapshot == nil ? 0 : 1),
                              readOnly: n.snapshot != nil)
    }

    func ensureAllocatedCount(_ n: Node) {
        guard !n.isDirectory, stateLock.withLock({ n.allocatedBlocks == nil }) else { return }
        let root = stateLock.withLock { n.root }
        let count = (try? TreeUpdater.countAllocated(store, root.root, level: Int(root.depth) - 1)) ?? 0
        stateLock.withLock { if n.root == root { n.allocatedBlocks = count } }
    }

    /// Finds `name` in directory `parent`.
    public func lookup(parent: NodeID, name: String) throws -> NodeAttributes {
        if parent == Self.rootNode && name == Self.snapshotsName { return try attributes(Self.snapshotsNode) }
        if let id = try snapshotChild(parent: parent, name: name) { return try attributes(id) }
        let path = try childPath(parent, name)
        guard let id = stateLock.withLock({ byPath[path] }) else { throw StoreError.io(errno: ENOENT, context: "lookup \(path)") }
        return try attributes(id)
    }

    /// The attributes of `node`.
    public func attributes(_ id: NodeID) throws -> NodeAttributes {
        if id == Self.snapshotsNode {
            return NodeAttributes(node: id, isDirectory: true, mode: 0o040555, uid: rootAttributes.uid, gid: rootAttributes.gid,
                                  size: 4096, allocatedBytes: 4096, blockSize: 4096, mtime: rootAttributes.mtime,
                                  ctime: rootAttributes.mtime, linkCount: 2, readOnly: true)
        }
        if id == Self.rootNode {
            return NodeAttributes(node: id, isDirectory: true, mode: 0o040755, uid: rootAttributes.uid, gid: rootAttributes.gid,
                                  size: 4096, allocatedBytes: 4096, blockSize: 4096, mtime: rootAttributes.mtime,
                                  ctime: rootAttributes.mtime, linkCount: stateLock.withLock { directoryLinksLocked("") }, readOnly: false)
        }
        let n = try node(id)
        ensureAllocatedCount(n)
        return stateLock.withLock { attributesLocked(n) }
    }

    /// The entries of a directory (without . and ..), sorted by name.
    public func list(_ directory: NodeID) throws -> [(name: String, attributes: NodeAttributes)] {
        if directory == Self.snapshotsNode {
            return try stateLock.withLock({ snapshotList }).map { snap in (snap.name, try attributes(try snapshotChild(parent: Self.snapshotsNode, name: snap.name)!)) }
        }
        if let n = stateLock.withLock({ nodes[directory] }), let snap = n.snapshot {
            guard n.isDirectory else { throw StoreError.io(errno: ENOTDIR, context: "readdir") }
            let ns = try snapshotNamespace(snap)
            return try ns.children(of: n.snapshotPath).map { child in
                let name = String(child.split(separator: "/").last!)
                return (name, try attributes(try snapshotChild(parent: directory, name: name)!))
            }
        }
        if directory == Self.rootNode && options.showSnapshotDirectory {
            return try [(Self.snapshotsName, attributes(Self.snapshotsNode))] + listLive(directory)
        }
        return try listLive(directory)
    }

    func listLive(_ directory: NodeID) throws -> [(name: String, attributes: NodeAttributes)] {
        let dir = try directoryPath(directory)
        let prefix = dir.isEmpty ? "" : dir + "/"
        let children: [Node] = stateLock.withLock {
            byPath.filter { $0.key.hasPrefix(prefix) && $0.key.count > prefix.count && !$0.key.dropFirst(prefix.count).contains("/") }
                .compactMap { nodes[$0.value] }
        }
        return children.map { n in
            let a = stateLock.withLock { attributesLocked(n) }
            return (String(n.path!.dropFirst(prefix.count)), a)
        }.sorted { $0.name < $1.name }
    }

    // MARK: metadata changes (committed before they return)

    /// Builds the namespace from the node table, with `roots` replacing some nodes' trees
    /// and `change` applied. Call with `flushLock` held.
    func commitNamespace(roots: [NodeID: ImageRoot] = [:], _ change: (inout [String: Namespace.Entry]) throws -> Void = { _ in }) throws {
        // A shared store: images whose lease was lost keep their committed version.
        try confirmLeasesLocked()
        let lost: Set<NodeID> = isShared ? stateLock.withLock {
            Set(roots.keys.filter { id in nodes[id]?.path.map { leases[$0] == nil } ?? false })
        } : []
        var entries: [String: Namespace.Entry] = stateLock.withLock {
            var e: [String: Namespace.Entry] = [:]
            e.reserveCapacity(byPath.count)
            for (path, id) in byPath {
                guard let n = nodes[id] else { continue }
                var entry = n.entry()
                if let r = roots[id], !lost.contains(id) { entry.image = r }
                e[path] = entry
            }
            return e
        }
        try change(&entries)
        do { try store.commit(Namespace(entries: entries)) } catch {
            try? store.rollback()
            throw error
        }
        reconcileWithStore()
    }

    func now() -> Int64 { PackWriter.nowNanoseconds() }

    /// Creates a directory.
    public func makeDirectory(parent: NodeID, name: String, mode: UInt32, uid: UInt32, gid: UInt32) throws -> NodeAttributes {
        if parent == Self.snapshotsNode {
            // mkdir .snapshots/NAME takes a snapshot, dirty data included.
            _ = try takeSnapshot(label: name)
            return try lookup(parent: Self.snapshotsNode, name: name)
        }
        return try createNode(parent: parent, name: name, directory: true, mode: (mode & 0o7777) | 0o040000, uid: uid, gid: gid)
    }

    /// Creates an empty image (size 0).
    public func createImage(parent: NodeID, name: String, mode: UInt32, uid: UInt32, gid: UInt32) throws -> NodeAttributes {
        try createNode(parent: parent, name: name, directory: false, mode: (mode & 0o7777) | 0o100000, uid: uid, gid: gid)
    }

    func createNode(parent: NodeID, name: String, directory: Bool, mode: UInt32, uid: UInt32, gid: UInt32) throws -> NodeAttributes {
        flushLock.lock(); defer { flushLock.unlock() }
        let path = try childPath(parent, name)
        if !directory { try requireLeaseLocked(path) }
        guard stateLock.withLock({ byPath[path] }) == nil else { throw StoreError.nameExists(name: path) }
        let t = now()
        let entry = Namespace.Entry(kind: directory ? .directory : .image, mode: mode, uid: uid, gid: gid, mtime: t, ctime: t,
                                    image: directory ? nil : .empty(size: 0, blockSize: options.newImageBlockSize))
        try commitNamespace { $0[path] = entry }
        return stateLock.withLock {
            let n = Node(id: nextNode, path: path, entry: entry)
            n.allocatedBlocks = 0
            nextNode += 1
            nodes[n.id] = n
            byPath[path] = n.id
            touchParentLocked(path, t)
            return attributesLocked(n)
        }
    }

    func touchParentLocked(_ path: String, _ t: Int64) {
        let parent = FileIO.parentDirectory("/" + path).dropFirst()
        if let id = byPath[String(parent)], let p = nodes[id] { p.mtime = t; p.ctime = t }
    }

    /// Removes an empty directory (ENOTEMPTY otherwise).
    public func removeDirectory(parent: NodeID, name: String) throws {
        if parent == Self.snapshotsNode {
            // rmdir .snapshots/NAME deletes the snapshot.
            flushLock.lock(); defer { flushLock.unlock() }
            try store.deleteSnapshot(name)
            let list = try store.snapshots()
            stateLock.withLock {
                snapshotList = list
                snapshotNamespaces[name] = nil
                for key in snapshotNodes.keys where key.hasPrefix(name + "\0") {
                    if let id = snapshotNodes[key] { nodes[id] = nil }
                    snapshotNodes[key] = nil
                }
            }
            return
        }
        flushLock.lock(); defer { flushLock.unlock() }
        let path = try childPath(parent, name)
        guard let id = stateLock.withLock({ byPath[path] }), let n = stateLock.withLock({ nodes[id] }) else {
            throw StoreError.io(errno: ENOENT, context: "rmdir \(path)")
        }
        guard n.isDirectory else { throw StoreError.io(errno: ENOTDIR, context: "rmdir \(path)") }
        let empty = stateLock.withLock { !byPath.keys.contains { $0.hasPrefix(path + "/") } }
        guard empty else { throw StoreError.io(errno: ENOTEMPTY, context: "rmdir \(path)") }
        try commitNamespace { $0[path] = nil }
        stateLock.withLock {
            byPath[path] = nil
            n.path = nil
            touchParentLocked(path, now())
        }
    }

    /// Removes an image. Its node stays readable and writable until ``forget(_:)``.
    public func unlink(parent: NodeID, name: String) throws {
        flushLock.lock(); defer { flushLock.unlock() }
        let path = try childPath(parent, name)
        guard let id = stateLock.withLock({ byPath[path] }), let n = stateLock.withLock({ nodes[id] }) else {
            throw StoreError.io(errno: ENOENT, context: "unlink \(path)")
        }
        guard !n.isDirectory else { throw StoreError.io(errno: EISDIR, context: "unlink \(path)") }
        try requireLeaseLocked(path)
        // No journal record may name a path that is gone (a new image could take the name).
        if stateLock.withLock({ n.hasDirtyBlocks }) { try flushLocked() }
        try commitNamespace { $0[path] = nil }
        stateLock.withLock {
            byPath[path] = nil
            n.path = nil
            n.ctime = now()
            touchParentLocked(path, n.ctime)
        }
    }

    /// Renames; `noReplace` fails with EEXIST when the target exists, `exchange` swaps the two.
    public func rename(parent: NodeID, name: String, newParent: NodeID, newName: String, noReplace: Bool, exchange: Bool) throws {
        flushLock.lock(); defer { flushLock.unlock() }
        let from = try childPath(parent, name)
        let to = try childPath(newParent, newName)
        let (src, dst): (Node?, Node?) = stateLock.withLock { (byPath[from].flatMap { nodes[$0] }, byPath[to].flatMap { nodes[$0] }) }
        guard let src else { throw StoreError.io(errno: ENOENT, context: "rename \(from)") }
        if from == to { return }
        if src.isDirectory && to.hasPrefix(from + "/") { throw StoreError.io(errno: EINVAL, context: "rename \(from) into itself") }
        if exchange {
            guard let dst else { throw StoreError.io(errno: ENOENT, context: "rename \(to)") }
            if dst.isDirectory && from.hasPrefix(to + "/") { throw StoreError.io(errno: EINVAL, context: "rename \(to) into itself") }
        } else if let dst {
            if noReplace { throw StoreError.nameExists(name: to) }
            if src.isDirectory && !dst.isDirectory { throw StoreError.io(errno: ENOTDIR, context: "rename \(from)") }
            if !src.isDirectory && dst.isDirectory { throw StoreError.io(errno: EISDIR, context: "rename \(from)") }
            if dst.isDirectory && stateLock.withLock({ byPath.keys.contains { $0.hasPrefix(to + "/") } }) {
                throw StoreError.io(errno: ENOTEMPTY, context: "rename \(from)")
            }
        }
        // Journal records name paths: flush so none names a path that moves or goes.
        if stateLock.withLock({ nodes.values.contains { $0.hasDirtyBlocks } }) { try flushLocked() }
        // The new path of every moved name.
        func moves(_ a: String, _ b: String) -> [(String, String)] {
            stateLock.withLock {
                byPath.keys.filter { $0 == a || $0.hasPrefix(a + "/") }.map { ($0, b + $0.dropFirst(a.count)) }
            }
        }
        var plan = moves(from, to)
        if exchange { plan += moves(to, from) }
        // Every image that moves, and one replaced, changes: this host must hold them.
        for (a, b) in plan where stateLock.withLock({ byPath[a].flatMap { nodes[$0] }?.isDirectory == false }) {
            try requireLeaseLocked(a)
            try requireLeaseLocked(b)
        }
        if let dst, !dst.isDirectory { try requireLeaseLocked(to) }
        let removed: [String] = (!exchange && dst != nil) ? [to] : []
        try commitNamespace { e in
            var moved: [String: Namespace.Entry] = [:]
            for (a, b) in plan { moved[b] = e[a]; e[a] = nil }
            for r in removed where moved[r] == nil { e[r] = nil }
            for (k, v) in moved { e[k] = v }
        }
        stateLock.withLock {
            let t = now()
            var ids: [(NodeID, String)] = []
            for (a, b) in plan { if let id = byPath[a] { ids.append((id, b)) }; byPath[a] = nil }
            if let dst, !exchange { dst.path = nil; byPath[to] = nil }
            for (id, b) in ids { byPath[b] = id; nodes[id]?.path = b }
            src.ctime = t
            touchParentLocked(from, t)
            touchParentLocked(to, t)
        }
    }

    /// The most memory the dirty maps take (the current one and the one being flushed):
    /// each sized for every dirty block the journal may hold, in 24-byte slots at most 3/4
    /// full, rounded up to a power of two as Swift's Dictionary does. 12 MiB for a 768 MiB
    /// journal; the chunk cache gives it up so that the cache budget covers it.
    static func dirtyMapBytes(_ options: VolumeOptions) -> Int {
        let blocks = maxDirtyBlocks(options)
        var slots = 1
        while slots / 4 * 3 < blocks { slots <<= 1 }
        return 2 * slots * 24
    }

    /// The most memory the volume's own I/O buffers take: the pack writer's, the pools of
    /// read buffers, and the flusher's batch (1 MiB of blocks, about four times that with
    /// its compressed output and gathered groups). 10.3 MiB on two cores.
    static var ioBufferBytes: Int {
        PackWriter.bufferSize + Store.runBuffers.keptBytesLimit + PackReader.scratch.keptBytesLimit + (4 << 20)
    }

    /// `mode` without set-user-ID, and without set-group-ID when the group may execute (a
    /// set-group-ID bit without group execute marks mandatory locking and stays): what Linux
    /// does on a write or truncate by a process without CAP_FSETID, and on any chown.
    public static func modeClearingSetID(_ mode: UInt32) -> UInt32 {
        var m = mode & ~UInt32(S_ISUID)
        if mode & UInt32(S_IXGRP) != 0 { m &= ~UInt32(S_ISGID) }
        return m
    }

    /// Changes mode, owner, size (truncate/extend) or times; returns the new attributes.
    public func setAttributes(_ id: NodeID, _ c: AttributeChanges) throws -> NodeAttributes {
        if id == Self.rootNode { return try attributes(id) }
        if id == Self.snapshotsNode { throw StoreError.readOnly(name: Self.snapshotsName) }
        flushLock.lock(); defer { flushLock.unlock() }
        let n = try node(id)
        if let snap = n.snapshot { throw StoreError.readOnly(name: Self.snapshotsName + "/" + snap) }
        if !n.isDirectory, let path = stateLock.withLock({ n.path }) { try requireLeaseLocked(path) }
        n.writeLock.lock(); defer { n.writeLock.unlock() }
        var newRoot: ImageRoot?
        var delta: Int64 = 0
        if let size = c.size {
            guard !n.isDirectory else { throw StoreError.io(errno: EISDIR, context: "truncate") }
            guard size <= Self.maxSize else { throw StoreError.io(errno: EFBIG, context: "truncate") }
            if size != stateLock.withLock({ n.liveSize }) || stateLock.withLock({ n.root.size }) != size {
                if stateLock.withLock({ n.hasDirtyBlocks || n.liveSize != n.root.size }) { try flushLocked() }
                let root = stateLock.withLock { n.root }
                var changes: [(block: UInt64, ref: ChunkRef)] = []
                let bs = UInt64(root.blockSize)
                if size < root.size && size % bs != 0 {
                    // The new last block keeps only the bytes below the new size.
                    let last = size / bs
                    let ref = try store.blockRef(root, last)
                    if !ref.isZero {
                        var block = [UInt8](repeating: 0, count: Int(bs))
                        _ = try block.withUnsafeMutableBytes { try store.readBlock(ref, into: $0) }
                        for i in Int(size % bs)..<Int(bs) { block[i] = 0 }
                        changes.append((last, try block.withUnsafeBytes { try store.storeBlock($0) }))
                    }
                }
                let (r, d) = try TreeUpdater.apply(store, to: root, newSize: size, changes: changes)
                newRoot = r
                delta = d
            }
        }
        let t = now()
        let changed: Namespace.Entry = stateLock.withLock {
            var e = n.entry()
            if let m = c.mode { e.mode = (e.mode & ~0o7777) | (m & 0o7777) }
            // Linux: chown of a file clears its set-ID bits, whoever calls it (the kernel
            // leaves this to the file system: FUSE_HANDLE_KILLPRIV_V2); so does a truncate
            // by someone without CAP_FSETID. An explicit mode in the same call wins.
            if c.mode == nil && !n.isDirectory && (c.clearingSetID || c.uid != nil || c.gid != nil) {
                e.mode = Self.modeClearingSetID(e.mode)
            }
            if let u = c.uid { e.uid = u }
            if let g = c.gid { e.gid = g }
            if let r = newRoot { e.image = r; e.mtime = t }
            if let m = c.mtime { e.mtime = m }
            e.ctime = c.ctime ?? t
            return e
        }
        if let path = stateLock.withLock({ n.path }) {
            try commitNamespace { $0[path] = changed }
        }
        return stateLock.withLock {
            n.mode = changed.mode; n.uid = changed.uid; n.gid = changed.gid
            n.mtime = changed.mtime; n.ctime = changed.ctime
            if let r = newRoot {
                n.root = r
                n.liveSize = r.size
                if let a = n.allocatedBlocks { n.allocatedBlocks = a + delta }
            }
            return attributesLocked(n)
        }
    }

    /// Where each block of a range comes from, snapshotted under `stateLock`.
    enum Source { case dirty(Dirty), tree }

    /// One block's worth of a journal append.
    enum BlockWrite { case bytes(UnsafeRawBufferPointer), zero, ref(ChunkRef), size }
}

extension Volume {
    /// Stops the flusher without flushing and lets go of the journal, as a kill -9 would
    /// (tests only: the journal is left for the next Volume to replay).
    func abandonForTesting() {
        flusherWake.lock(); stopping = true; flusherWake.signal(); flusherWake.unlock()
        while let t = flusher, !t.isFinished { usleep(1000) }
        stateLock.withLock { closed = true }
        store.close()
    }
}

extension NSLock {
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock(); defer { unlock() }
        return try body()
    }
}

/// A journal record that checks out but cannot be right: replay stops at it (Volume.init).
struct JournalDamage: Error { var why: String }
