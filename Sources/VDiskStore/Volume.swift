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
/// `flushLock` → `Node.writeLock` → `appendLock` → `stateLock`.
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

    /// Where a block's newest content is, when it is not (yet) in the image's tree.
    enum Dirty {
        /// Written to a journal segment; the block's bytes are at this offset.
        case data(WriteJournal.Segment, Int64)
        /// All zeros.
        case zero
        /// A chunk already in the store (copy_file_range).
        case ref(ChunkRef)
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

    fileprivate let stateLock = NSLock()
    private let flushLock = NSLock()
    private let appendLock = ReadWriteLock()
    private var nodes: [NodeID: Node] = [:]
    private var byPath: [String: NodeID] = [:]
    private var nextNode: NodeID = 3
    /// Nodes handed out for snapshot contents, by "snapshot\0path".
    private var snapshotNodes: [String: NodeID] = [:]
    /// Decoded snapshot namespaces, by snapshot name.
    private var snapshotNamespaces: [String: Namespace] = [:]
    /// The store's snapshots; read by FUSE threads, replaced under `flushLock` when this
    /// volume takes or deletes one (the Store's own fields belong to the committing thread).
    private var snapshotList: [Snapshot] = []
    private let rootAttributes: (mtime: Int64, uid: UInt32, gid: UInt32)
    private let journal: WriteJournal
    private var segment: WriteJournal.Segment!
    private var frozenSegments: [WriteJournal.Segment] = []
    private let cache: ChunkCache
    fileprivate var flusher: Thread?
    fileprivate let flusherWake = NSCondition()
    fileprivate var stopping = false
    fileprivate var closed = false
    /// Writers waiting for journal space wait on this.
    private let spaceFreed = NSCondition()
    /// Entries in the current dirty maps: bounded like the journal's bytes, since a ref or
    /// zero record takes little journal but as much memory as a data block's entry.
    private var currentDirtyBlocks = 0
    /// The last flush failure, reported to writers while the journal is full.
    private var lastFlushError: StoreError?

    /// Opens the volume over a store opened read-write, replaying a journal left by a crash.
    public init(store: Store, options: VolumeOptions = VolumeOptions()) throws {
        guard store.access == .readWrite else { throw StoreError.readOnly(name: store.path) }
        self.store = store
        self.options = options
        // The cache budget covers decoded tree nodes (1/8) and decompressed chunks (the rest).
        store.nodeCache.resize(max(options.cacheBytes / 8, 1 << 20))
        cache = ChunkCache(capacityBytes: options.cacheBytes - options.cacheBytes / 8)
        // A mount runs many FUSE threads; one malloc arena per thread would hold freed memory
        // apart and let RSS climb past the configured caches.
        vdisk_limit_malloc_arenas(2)
        journal = try WriteJournal(directory: options.journalDirectory ?? store.path + "/journal")
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
            var offset: Int64 = 0
            try WriteJournal.replay(path: path) { rec in
                let pathBytes = Int64(rec.path.utf8.count)
                defer { offset += Int64(WriteJournal.headerSize) + pathBytes + Int64(rec.payload.count) }
                guard let id = byPath[rec.path], let n = nodes[id], !n.isDirectory else { skipped += 1; return }
                replayed += 1
                switch rec.kind {
                case .data: n.frozen[rec.block] = .data(seg, offset + Int64(WriteJournal.headerSize) + pathBytes)
                case .zero: n.frozen[rec.block] = .zero
                case .ref:
                    guard rec.payload.count == ChunkRef.encodedSize else { skipped += 1; return }
                    n.frozen[rec.block] = .ref(rec.payload.withUnsafeBytes { ChunkRef(loading: $0.baseAddress!) })
                case .size: break
                }
                n.liveSize = max(n.liveSize, rec.sizeAfter)
                n.frozenSize = n.liveSize
                n.frozenPending = true
            }
        }
        segment = try journal.createSegment((old.last ?? 0) + 1)
        snapshotList = try store.snapshots()
        if !old.isEmpty {
            log("vdiskfs: replaying the journal: \(replayed) block writes from \(old.count) segment(s)\(skipped > 0 ? ", \(skipped) for removed images skipped" : "")")
            flushLock.lock(); defer { flushLock.unlock() }
            try flushFrozen()
        }
        let t = Thread { [weak self] in self?.flusherLoop() }
        t.name = "vdiskfs-flusher"
        flusher = t
        t.start()
    }

    // MARK: nodes and attributes

    private func node(_ id: NodeID) throws -> Node {
        guard let n = stateLock.withLock({ nodes[id] }) else { throw StoreError.io(errno: ENOENT, context: "no such node") }
        return n
    }

    private func directoryPath(_ id: NodeID) throws -> String {
        if id == Self.rootNode { return "" }
        if id == Self.snapshotsNode { throw StoreError.readOnly(name: Self.snapshotsName) }
        let n = try node(id)
        if n.snapshot != nil { throw StoreError.readOnly(name: Self.snapshotsName + "/" + n.snapshot!) }
        guard n.isDirectory else { throw StoreError.io(errno: ENOTDIR, context: "not a directory") }
        guard let p = stateLock.withLock({ n.path }) else { throw StoreError.io(errno: ENOENT, context: "directory was removed") }
        return p
    }

    private func childPath(_ parent: NodeID, _ name: String) throws -> String {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw StoreError.invalidName(name: name, reason: "not a file name")
        }
        let dir = try directoryPath(parent)
        return try Namespace.validate(dir.isEmpty ? name : dir + "/" + name)
    }

    /// 2 + subdirectories, as POSIX file systems count a directory's links.
    private func directoryLinksLocked(_ path: String) -> UInt32 {
        let prefix = path.isEmpty ? "" : path + "/"
        var n: UInt32 = 2
        for (p, id) in byPath where p.hasPrefix(prefix) && p.count > prefix.count && !p.dropFirst(prefix.count).contains("/") {
            if nodes[id]?.isDirectory == true { n += 1 }
        }
        return n
    }

    private func attributesLocked(_ n: Node) -> NodeAttributes {
        // Dirty non-zero blocks count as allocated (an upper bound until the flusher runs).
        let allocated = (n.allocatedBlocks ?? 0) + Int64(n.dirtyData + n.frozenData)
        return NodeAttributes(node: n.id, isDirectory: n.isDirectory, mode: n.mode, uid: n.uid, gid: n.gid,
                              size: n.isDirectory ? 4096 : n.liveSize,
                              allocatedBytes: n.isDirectory ? 4096 : UInt64(max(0, allocated)) * UInt64(n.root.blockSize),
                              blockSize: n.isDirectory ? 4096 : n.root.blockSize, mtime: n.mtime, ctime: n.ctime,
                              linkCount: n.isDirectory ? (n.path.map(directoryLinksLocked) ?? 2) : (n.path == nil && n.snapshot == nil ? 0 : 1),
                              readOnly: n.snapshot != nil)
    }

    private func ensureAllocatedCount(_ n: Node) {
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

    private func listLive(_ directory: NodeID) throws -> [(name: String, attributes: NodeAttributes)] {
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
    private func commitNamespace(roots: [NodeID: ImageRoot] = [:], _ change: (inout [String: Namespace.Entry]) throws -> Void = { _ in }) throws {
        var entries: [String: Namespace.Entry] = stateLock.withLock {
            var e: [String: Namespace.Entry] = [:]
            e.reserveCapacity(byPath.count)
            for (path, id) in byPath {
                guard let n = nodes[id] else { continue }
                var entry = n.entry()
                if let r = roots[id] { entry.image = r }
                e[path] = entry
            }
            return e
        }
        try change(&entries)
        do { try store.commit(Namespace(entries: entries)) } catch {
            try? store.rollback()
            throw error
        }
    }

    private func now() -> Int64 { PackWriter.nowNanoseconds() }

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

    private func createNode(parent: NodeID, name: String, directory: Bool, mode: UInt32, uid: UInt32, gid: UInt32) throws -> NodeAttributes {
        flushLock.lock(); defer { flushLock.unlock() }
        let path = try childPath(parent, name)
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

    private func touchParentLocked(_ path: String, _ t: Int64) {
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

    /// Changes mode, owner, size (truncate/extend) or times; returns the new attributes.
    public func setAttributes(_ id: NodeID, _ c: AttributeChanges) throws -> NodeAttributes {
        if id == Self.rootNode { return try attributes(id) }
        if id == Self.snapshotsNode { throw StoreError.readOnly(name: Self.snapshotsName) }
        flushLock.lock(); defer { flushLock.unlock() }
        let n = try node(id)
        if let snap = n.snapshot { throw StoreError.readOnly(name: Self.snapshotsName + "/" + snap) }
        n.writeLock.lock(); defer { n.writeLock.unlock() }
        var newRoot: ImageRoot?
        var delta: Int64 = 0
        if let size = c.size {
            guard !n.isDirectory else { throw StoreError.io(errno: EISDIR, context: "truncate") }
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

    // MARK: reading

    /// Where each block of a range comes from, snapshotted under `stateLock`.
    private enum Source { case dirty(Dirty), tree }

    /// Reads up to `buffer.count` bytes at `offset`; fewer at end of file.
    public func read(_ id: NodeID, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try node(id)
        guard !n.isDirectory else { throw StoreError.io(errno: EISDIR, context: "read") }
        let (size, root, sources): (UInt64, ImageRoot, [Source]) = stateLock.withLock {
            let size = n.liveSize
            guard offset < size, buffer.count > 0 else { return (size, n.root, []) }
            let end = min(size, offset + UInt64(buffer.count))
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
        let end = min(size, offset + UInt64(buffer.count))
        let total = Int(end - offset)
        let firstBlock = offset / UInt64(bs)
        // Tree refs for the blocks not dirty, one walk per leaf.
        var refs = sources.contains(where: { if case .tree = $0 { return true } else { return false } })
            ? try store.blockRefs(root, from: firstBlock, count: sources.count) : [ChunkRef](repeating: .zero, count: sources.count)
        for (i, s) in sources.enumerated() {
            switch s {
            case .tree: break
            case .dirty(.ref(let r)): refs[i] = r
            case .dirty: refs[i] = .zero
            }
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
                if case .tree = sources[i], !refs[i].isZero { treeIdx.append(i) } else if case .dirty(.ref) = sources[i], !refs[i].isZero { treeIdx.append(i) }
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
            let hi = Int(min(end, blockStart + UInt64(bs)) - blockStart)
            let outStart = Int(blockStart + UInt64(lo) - offset)
            let out = UnsafeMutableRawBufferPointer(rebasing: buffer[outStart..<(outStart + hi - lo)])
            if case .dirty(.data(let seg, let off)) = sources[i] {
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

    /// The current bytes of one block (dirty or committed), for read-modify-write.
    private func readWholeBlock(_ n: Node, _ b: UInt64, into out: UnsafeMutableRawBufferPointer) throws {
        let (d, root): (Dirty?, ImageRoot) = stateLock.withLock { (n.dirty[b] ?? n.frozen[b], n.root) }
        switch d {
        case .data(let seg, let off)?:
            guard try seg.fd.readFully(into: out, at: off) == out.count else { throw StoreError.io(errno: EIO, context: "journal segment is short") }
        case .zero?: out.initializeMemory(as: UInt8.self, repeating: 0)
        case .ref(let r)?: _ = try store.readBlock(r, into: out)
        case nil:
            let r = try store.blockRef(root, b)
            if r.isZero { out.initializeMemory(as: UInt8.self, repeating: 0) }
            else {
                let chunk = try cache.get(r, length: out.count) { dst in _ = try store.readBlock(r, into: dst) }
                out.copyMemory(from: UnsafeRawBufferPointer(chunk.bytes))
            }
        }
    }

    // MARK: writing

    static func isZero(_ d: Dirty) -> Bool { if case .zero = d { return true } else { return false } }

    /// One block's worth of a journal append.
    private enum BlockWrite { case bytes(UnsafeRawBufferPointer), zero, ref(ChunkRef), size }

    /// Appends block writes for `n` to the journal and records them as dirty.
    /// Call with `n.writeLock` held.
    private func append(_ n: Node, _ writes: [(UInt64, BlockWrite)], sizeAfter: UInt64) throws {
        try waitForJournalSpace()
        let path = Array((stateLock.withLock { n.path } ?? "").utf8)
        var total = 0
        for (_, w) in writes {
            switch w {
            case .bytes(let b): total += WriteJournal.recordSize(pathBytes: path.count, payload: b.count)
            case .ref: total += WriteJournal.recordSize(pathBytes: path.count, payload: ChunkRef.encodedSize)
            case .zero, .size: total += WriteJournal.recordSize(pathBytes: path.count, payload: 0)
            }
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 4096)
        defer { buffer.deallocate() }
        var payloadOffsets: [Int] = []
        var at = 0
        for (b, w) in writes {
            let p = buffer.baseAddress! + at
            switch w {
            case .bytes(let data):
                payloadOffsets.append(at + WriteJournal.encode(to: p, kind: .data, path: path, block: b, sizeAfter: sizeAfter, payload: data))
                at += WriteJournal.recordSize(pathBytes: path.count, payload: data.count)
            case .ref(let r):
                var bytes = [UInt8](repeating: 0, count: ChunkRef.encodedSize)
                bytes.withUnsafeMutableBytes { r.store(to: $0.baseAddress!) }
                _ = bytes.withUnsafeBytes { WriteJournal.encode(to: p, kind: .ref, path: path, block: b, sizeAfter: sizeAfter, payload: $0) }
                payloadOffsets.append(0)
                at += WriteJournal.recordSize(pathBytes: path.count, payload: ChunkRef.encodedSize)
            case .zero, .size:
                let kind: WriteJournal.Kind = { if case .zero = w { return .zero } else { return .size } }()
                _ = WriteJournal.encode(to: p, kind: kind, path: path, block: b, sizeAfter: sizeAfter, payload: UnsafeRawBufferPointer(start: nil, count: 0))
                payloadOffsets.append(0)
                at += WriteJournal.recordSize(pathBytes: path.count, payload: 0)
            }
        }
        try appendLock.withReadLock {
            let (seg, base): (WriteJournal.Segment, Int64) = stateLock.withLock {
                let s: WriteJournal.Segment = segment
                let o = s.size
                s.size += Int64(total)
                return (s, o)
            }
            do { try seg.fd.writeFully(UnsafeRawBufferPointer(buffer), at: base) }
            catch {
                // Leave a hole of zeros that replay stops at; nothing was acknowledged.
                throw StoreError.system(error, "write journal", path: journal.directory)
            }
            stateLock.withLock {
                for (i, (b, w)) in writes.enumerated() {
                    let new: Dirty
                    switch w {
                    case .bytes: new = .data(seg, base + Int64(payloadOffsets[i]))
                    case .zero: new = .zero
                    case .ref(let r): new = .ref(r)
                    case .size: continue
                    }
                    if let old = n.dirty.updateValue(new, forKey: b) {
                        if !Self.isZero(old) { n.dirtyData -= 1 }
                    } else {
                        currentDirtyBlocks += 1
                    }
                    if !Self.isZero(new) { n.dirtyData += 1 }
                }
                n.liveSize = max(n.liveSize, sizeAfter)
                let t = now()
                n.mtime = t
                n.ctime = t
            }
        }
        if stateLock.withLock({ segment.size > options.flushThreshold || currentDirtyBlocks > maxDirtyBlocks / 4 }) { wakeFlusher() }
    }

    /// Dirty blocks writers may have before they wait: as many as the journal limit holds.
    private var maxDirtyBlocks: Int { Int(options.journalLimit / 4096) }

    private func journalFull() -> Bool {
        stateLock.withLock { segment.size > options.journalLimit || currentDirtyBlocks > maxDirtyBlocks }
    }

    private func waitForJournalSpace() throws {
        guard journalFull() else { return }
        wakeFlusher()
        spaceFreed.lock()
        defer { spaceFreed.unlock() }
        while journalFull() {
            if closed { throw StoreError.io(errno: EIO, context: "volume closed") }
            _ = spaceFreed.wait(until: Date().addingTimeInterval(1))
            if let e = stateLock.withLock({ lastFlushError }), e.errno == ENOSPC { throw e }
        }
    }

    private func writableImage(_ id: NodeID) throws -> Node {
        let n = try image(id)
        if let snap = n.snapshot { throw StoreError.readOnly(name: Self.snapshotsName + "/" + snap) }
        return n
    }

    /// An image node, live or in a snapshot.
    private func image(_ id: NodeID) throws -> Node {
        let n = try node(id)
        guard !n.isDirectory else { throw StoreError.io(errno: EISDIR, context: "not a file") }
        return n
    }

    /// Writes `data` at `offset`, extending the file if needed; returns the bytes written.
    public func write(_ id: NodeID, offset: UInt64, data: UnsafeRawBufferPointer) throws -> Int {
        let n = try writableImage(id)
        guard data.count > 0 else { return 0 }
        guard offset + UInt64(data.count) <= Self.maxSize else { throw StoreError.io(errno: EFBIG, context: "write") }
        n.writeLock.lock(); defer { n.writeLock.unlock() }
        let bs = Int(stateLock.withLock { n.root.blockSize })
        let end = offset + UInt64(data.count)
        let first = offset / UInt64(bs), last = (end - 1) / UInt64(bs)
        // Partial blocks at the edges are merged with their current bytes.
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * bs, alignment: 4096)
        defer { scratch.deallocate() }
        var writes: [(UInt64, BlockWrite)] = []
        writes.reserveCapacity(Int(last - first + 1))
        for b in first...last {
            let start = b * UInt64(bs)
            let lo = Int(max(offset, start) - start)
            let hi = Int(min(end, start + UInt64(bs)) - start)
            let src = UnsafeRawBufferPointer(rebasing: data[Int(start + UInt64(lo) - offset)..<Int(start + UInt64(hi) - offset)])
            var block: UnsafeRawBufferPointer
            if lo == 0 && hi == bs {
                block = src
            } else {
                let slot = UnsafeMutableRawBufferPointer(rebasing: scratch[(b == first ? 0 : bs)..<(b == first ? bs : 2 * bs)])
                try readWholeBlock(n, b, into: slot)
                (slot.baseAddress! + lo).copyMemory(from: src.baseAddress!, byteCount: hi - lo)
                block = UnsafeRawBufferPointer(slot)
            }
            writes.append((b, isAllZero(block) ? .zero : .bytes(block)))
        }
        try append(n, writes, sizeAfter: max(stateLock.withLock { n.liveSize }, end))
        return data.count
    }

    /// Largest image size (tree depth 8 would allow more; this keeps offsets sane).
    public static let maxSize: UInt64 = 1 << 50

    /// Makes every acknowledged write (of `node`, or all when nil) durable before returning.
    public func synchronize(_ id: NodeID?, dataOnly: Bool) throws {
        let segs: [WriteJournal.Segment] = stateLock.withLock { frozenSegments + [segment!] }
        for s in segs {
            do { try s.fd.synchronizeData() } catch { throw StoreError.system(error, "fsync journal", path: journal.directory) }
        }
    }

    /// Turns a byte range into zeros (whole blocks become zero blocks and free their chunks);
    /// the size does not change. FALLOC_FL_PUNCH_HOLE.
    public func punchHole(_ id: NodeID, offset: UInt64, length: UInt64) throws {
        let n = try writableImage(id)
        let size = stateLock.withLock { n.liveSize }
        guard offset < size, length > 0 else { return }
        try zero(n, from: offset, to: min(size, offset + length), sizeAfter: size)
    }

    /// Zeros a range, extending the size unless `keepSize`. FALLOC_FL_ZERO_RANGE.
    public func zeroRange(_ id: NodeID, offset: UInt64, length: UInt64, keepSize: Bool) throws {
        let n = try writableImage(id)
        let size = stateLock.withLock { n.liveSize }
        let end = offset + length
        if offset < size { try zero(n, from: offset, to: min(size, end), sizeAfter: keepSize ? size : max(size, end)) }
        if !keepSize && end > size { try extend(n, to: end) }
    }

    /// posix_fallocate: extends the size to cover the range unless `keepSize` (no space is reserved).
    public func allocate(_ id: NodeID, offset: UInt64, length: UInt64, keepSize: Bool) throws {
        let n = try writableImage(id)
        let end = offset + length
        guard end <= Self.maxSize else { throw StoreError.io(errno: EFBIG, context: "fallocate") }
        if !keepSize && end > stateLock.withLock({ n.liveSize }) { try extend(n, to: end) }
    }

    private func extend(_ n: Node, to size: UInt64) throws {
        n.writeLock.lock(); defer { n.writeLock.unlock() }
        if size > stateLock.withLock({ n.liveSize }) { try append(n, [(0, .size)], sizeAfter: size) }
    }

    private func zero(_ n: Node, from: UInt64, to: UInt64, sizeAfter: UInt64) throws {
        guard from < to else { return }
        n.writeLock.lock()
        let bs = UInt64(stateLock.withLock { n.root.blockSize })
        let firstFull = (from + bs - 1) / bs, endFull = to / bs
        var writes: [(UInt64, BlockWrite)] = []
        if firstFull < endFull { for b in firstFull..<endFull { writes.append((b, .zero)) } }
        do {
            if !writes.isEmpty {
                // Journal zero records in batches (each is a header only).
                for chunk in stride(from: 0, to: writes.count, by: 65536) {
                    try append(n, Array(writes[chunk..<min(chunk + 65536, writes.count)]), sizeAfter: max(stateLock.withLock { n.liveSize }, sizeAfter))
                }
            }
        } catch { n.writeLock.unlock(); throw error }
        n.writeLock.unlock()
        // Partial blocks at the edges: write zeros.
        func zeros(_ a: UInt64, _ b: UInt64) throws {
            guard a < b else { return }
            let z = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(b - a), alignment: 16)
            defer { z.deallocate() }
            z.initializeMemory(as: UInt8.self, repeating: 0)
            _ = try write(n.id, offset: a, data: UnsafeRawBufferPointer(z))
        }
        if firstFull >= endFull {
            try zeros(from, to)
        } else {
            try zeros(from, firstFull * bs)
            try zeros(endFull * bs, to)
        }
    }

    /// SEEK_DATA (`data` true) or SEEK_HOLE from `offset`; throws ENXIO past the end.
    public func seek(_ id: NodeID, offset: UInt64, data wantData: Bool) throws -> UInt64 {
        let n = try image(id)
        let (size, root, dirty): (UInt64, ImageRoot, [UInt64: Bool]) = stateLock.withLock {
            var d: [UInt64: Bool] = [:]
            for (b, v) in n.frozen { if case .zero = v { d[b] = false } else { d[b] = true } }
            for (b, v) in n.dirty { if case .zero = v { d[b] = false } else { d[b] = true } }
            return (n.liveSize, n.root, d)
        }
        guard offset < size else { throw StoreError.io(errno: ENXIO, context: "seek past the end") }
        let bs = UInt64(root.blockSize)
        let blocks = (size + bs - 1) / bs
        var b = offset / bs
        while b < blocks {
            let isData: Bool
            if let d = dirty[b] { isData = d }
            else if b >= root.blockCount { isData = false }
            else {
                // Skip a whole zero leaf at once.
                let leafFirst = b / UInt64(TreeNode.fanOut) * UInt64(TreeNode.fanOut)
                if root.depth >= 2, try leafIsZero(root, leafFirst), !dirty.keys.contains(where: { $0 >= b && $0 < leafFirst + UInt64(TreeNode.fanOut) }) {
                    if !wantData { return max(offset, b * bs) }
                    b = leafFirst + UInt64(TreeNode.fanOut)
                    continue
                }
                isData = !(try store.blockRef(root, b)).isZero
            }
            if isData == wantData { return max(offset, b * bs) }
            b += 1
        }
        if wantData { throw StoreError.io(errno: ENXIO, context: "no data after offset") }
        return size
    }

    private func leafIsZero(_ root: ImageRoot, _ leafFirst: UInt64) throws -> Bool {
        var ref = root.root
        var level = Int(root.depth) - 1
        while level >= 1 {
            if ref.isZero { return true }
            let node = try store.readNode(ref)
            ref = node[Int((leafFirst / TreeNode.span(ofLevel: level)) % UInt64(TreeNode.fanOut))]
            level -= 1
        }
        return ref.isZero
    }

    /// copy_file_range: block-aligned parts share chunks instead of copying bytes.
    public func copyRange(from sourceID: NodeID, offset sourceOffset: UInt64, to targetID: NodeID, offset targetOffset: UInt64, length: UInt64) throws -> UInt64 {
        let src = try image(sourceID)
        let dst = try writableImage(targetID)
        let (srcSize, srcBS, dstBS) = stateLock.withLock { (src.liveSize, src.root.blockSize, dst.root.blockSize) }
        guard sourceOffset < srcSize else { return 0 }
        let len = min(length, srcSize - sourceOffset)
        let bs = UInt64(srcBS)
        var done: UInt64 = 0
        if srcBS == dstBS && sourceOffset % bs == 0 && targetOffset % bs == 0 && sourceID != targetID {
            // Share whole blocks: no bytes move, the target's tree will name the same chunks.
            let whole = len / bs
            var b: UInt64 = 0
            while b < whole {
                let count = min(whole - b, 4096)
                var writes: [(UInt64, BlockWrite)] = []
                var held: [UnsafeMutableRawBufferPointer] = []
                defer { held.forEach { $0.deallocate() } }
                for i in 0..<count {
                    let sb = sourceOffset / bs + b + i
                    let (d, root): (Dirty?, ImageRoot) = stateLock.withLock { (src.dirty[sb] ?? src.frozen[sb], src.root) }
                    let w: BlockWrite
                    switch d {
                    case .zero?: w = .zero
                    case .ref(let r)?: w = .ref(r)
                    case .data?:
                        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(bs), alignment: 4096)
                        held.append(buf)
                        try readWholeBlock(src, sb, into: buf)
                        w = .bytes(UnsafeRawBufferPointer(buf))
                    case nil:
                        let r = try store.blockRef(root, sb)
                        w = r.isZero ? .zero : .ref(r)
                    }
                    writes.append((targetOffset / bs + b + i, w))
                }
                dst.writeLock.lock()
                do {
                    try append(dst, writes, sizeAfter: max(stateLock.withLock { dst.liveSize }, targetOffset + (b + count) * bs))
                } catch { dst.writeLock.unlock(); throw error }
                dst.writeLock.unlock()
                b += count
            }
            done = whole * bs
        }
        // The rest byte by byte.
        let chunk = 1 << 20
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buf.deallocate() }
        while done < len {
            let want = Int(min(UInt64(chunk), len - done))
            let got = try read(sourceID, offset: sourceOffset + done, into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<want]))
            if got == 0 { break }
            _ = try write(targetID, offset: targetOffset + done, data: UnsafeRawBufferPointer(rebasing: buf[0..<got]))
            done += UInt64(got)
        }
        return done
    }

    // MARK: extended attributes and space

    static let attributeNames = ["user.vdiskfs.root", "user.vdiskfs.block_size", "user.vdiskfs.dirty_bytes", "user.vdiskfs.allocated_bytes"]

    /// Names of the read-only informational extended attributes (`user.vdiskfs.*`).
    public func extendedAttributeNames(_ id: NodeID) throws -> [String] {
        if id == Self.rootNode { return [] }
        return try node(id).isDirectory ? [] : Self.attributeNames
    }

    /// The value of an informational extended attribute, nil when it has none of that name.
    public func extendedAttribute(_ id: NodeID, name: String) throws -> [UInt8]? {
        guard id != Self.rootNode else { return nil }
        let n = try node(id)
        guard !n.isDirectory else { return nil }
        let a = try attributes(id)
        let value: String? = stateLock.withLock {
            switch name {
            case "user.vdiskfs.root": return n.root.root.hash.hex
            case "user.vdiskfs.block_size": return String(n.root.blockSize)
            case "user.vdiskfs.dirty_bytes": return String(UInt64(n.dirty.count + n.frozen.count) * UInt64(n.root.blockSize))
            case "user.vdiskfs.allocated_bytes": return String(a.allocatedBytes)
            default: return nil
            }
        }
        return value.map { Array($0.utf8) }
    }

    /// statfs figures.
    public func space() throws -> VolumeSpace {
        var s = statvfs()
        guard statvfs(store.path, &s) == 0 else { throw StoreError.io(errno: errno, context: "statfs") }
        let files = stateLock.withLock { UInt64(byPath.count) }
        return VolumeSpace(totalBytes: UInt64(s.f_blocks) * UInt64(s.f_frsize), freeBytes: UInt64(s.f_bfree) * UInt64(s.f_frsize),
                           availableBytes: UInt64(s.f_bavail) * UInt64(s.f_frsize), files: files)
    }

    /// The kernel no longer knows `node`: an unlinked node's data can go.
    public func forget(_ id: NodeID) {
        stateLock.withLock {
            if let n = nodes[id], n.path == nil { nodes[id] = nil }
        }
    }

    // MARK: snapshots

    /// The store's snapshots, oldest first.
    public func snapshots() -> [Snapshot] { stateLock.withLock { snapshotList } }

    private func snapshotNamespace(_ name: String) throws -> Namespace {
        if let ns = stateLock.withLock({ snapshotNamespaces[name] }) { return ns }
        guard let snap = stateLock.withLock({ snapshotList.first { $0.name == name } }) else {
            throw StoreError.io(errno: ENOENT, context: "no snapshot \(name)")
        }
        let ns = try Namespace.decode(try store.readRecord(snap.namespace, kind: .namespace))
        stateLock.withLock { snapshotNamespaces[name] = ns }
        return ns
    }

    /// The node of `name` inside `.snapshots` or inside a snapshot directory; nil when
    /// `parent` is neither. Throws ENOENT when the name is not there.
    private func snapshotChild(parent: NodeID, name: String) throws -> NodeID? {
        let snap: String, path: String
        if parent == Self.snapshotsNode {
            guard stateLock.withLock({ snapshotList.contains { $0.name == name } }) else { throw StoreError.io(errno: ENOENT, context: "no snapshot \(name)") }
            (snap, path) = (name, "")
        } else if let p = stateLock.withLock({ nodes[parent] }), let s = p.snapshot {
            guard p.isDirectory else { throw StoreError.io(errno: ENOTDIR, context: "lookup") }
            (snap, path) = (s, p.snapshotPath.isEmpty ? name : p.snapshotPath + "/" + name)
        } else {
            return nil
        }
        let key = snap + "\0" + path
        if let id = stateLock.withLock({ snapshotNodes[key] }) { return id }
        let ns = try snapshotNamespace(snap)
        let entry: Namespace.Entry
        if path.isEmpty {
            entry = Namespace.Entry(kind: .directory, mode: 0o040555, uid: rootAttributes.uid, gid: rootAttributes.gid,
                                    mtime: stateLock.withLock { snapshotList.first { $0.name == snap }?.created } ?? 0, ctime: 0)
        } else {
            guard let e = ns.entries[path] else { throw StoreError.io(errno: ENOENT, context: "lookup \(path) in snapshot \(snap)") }
            entry = e
        }
        return stateLock.withLock {
            if let id = snapshotNodes[key] { return id }
            let n = Node(id: nextNode, path: path, entry: entry)
            n.path = nil
            n.snapshot = snap
            n.snapshotPath = path
            nextNode += 1
            nodes[n.id] = n
            snapshotNodes[key] = n.id
            return n.id
        }
    }

    /// Flushes every dirty block, then keeps the namespace as a snapshot (default name: the
    /// UTC time). The snapshot is consistent across images: writes are held off meanwhile.
    @discardableResult
    public func takeSnapshot(label: String?) throws -> Snapshot {
        flushLock.lock(); defer { flushLock.unlock() }
        try flushLocked()
        let snap = try store.createSnapshot(label: label)
        let list = try store.snapshots()
        stateLock.withLock {
            snapshotNamespaces[snap.name] = nil
            snapshotList = list
        }
        return snap
    }

    // MARK: flushing

    /// Moves every dirty block into the store and commits.
    public func flush() throws {
        flushLock.lock(); defer { flushLock.unlock() }
        try flushLocked()
    }

    /// Freezes the current segment and flushes what is frozen. Call with `flushLock` held.
    private func flushLocked() throws {
        let froze: Bool = try appendLock.withWriteLock {
            try stateLock.withLock {
                let changed = nodes.values.filter { !$0.isDirectory && (!$0.dirty.isEmpty || $0.liveSize != $0.root.size) }
                guard !changed.isEmpty else { return false }
                for n in changed {
                    if n.frozen.isEmpty {
                        n.frozen = n.dirty
                        n.frozenData = n.dirtyData
                    } else {
                        n.frozen.merge(n.dirty) { _, new in new }
                        n.frozenData = n.frozen.values.reduce(0) { $0 + (Self.isZero($1) ? 0 : 1) }
                    }
                    n.dirty = [:]
                    n.dirtyData = 0
                    n.frozenSize = n.liveSize
                    n.frozenPending = true
                }
                frozenSegments.append(segment)
                segment = try journal.createSegment(segment.sequence + 1)
                currentDirtyBlocks = 0
                return true
            }
        }
        spaceFreed.lock(); spaceFreed.broadcast(); spaceFreed.unlock()
        // A failed earlier flush leaves frozen work behind: retry it even with nothing new.
        if froze || stateLock.withLock({ nodes.values.contains { $0.frozenPending } }) { try flushFrozen() }
    }

    /// Stores every frozen block, updates the trees, commits, deletes the frozen segments.
    /// Call with `flushLock` held. On failure nothing is lost: the frozen blocks stay in the
    /// journal and the next flush tries again.
    private func flushFrozen() throws {
        let work: [(Node, [UInt64: Dirty], UInt64, ImageRoot)] = stateLock.withLock {
            nodes.values.filter { !$0.isDirectory && $0.frozenPending }
                .map { ($0, $0.frozen, $0.frozenSize, $0.root) }
        }
        var roots: [NodeID: (ImageRoot, Int64)] = [:]
        do {
            for (n, frozen, size, root) in work {
                let bs = Int(root.blockSize)
                let blocks = frozen.keys.sorted()
                var changes: [(block: UInt64, ref: ChunkRef)] = []
                changes.reserveCapacity(blocks.count)
                let batch = max(1, (8 << 20) / bs)
                let encoder = BlockEncoder(blockSize: bs, capacity: batch)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: batch * bs, alignment: 4096)
                defer { buffer.deallocate() }
                var pending: [UInt64] = []
                var tally = BlockEncoder.Tally()
                func drain() throws {
                    guard !pending.isEmpty else { return }
                    let refs = try encoder.store(UnsafeRawBufferPointer(buffer), count: pending.count, into: store, tally: &tally)
                    for (b, r) in zip(pending, refs) { changes.append((b, r)) }
                    pending.removeAll(keepingCapacity: true)
                }
                for b in blocks where b * UInt64(bs) < size {
                    switch frozen[b]! {
                    case .zero: changes.append((b, .zero))
                    case .ref(let r): changes.append((b, r))
                    case .data(let seg, let off):
                        let slot = UnsafeMutableRawBufferPointer(rebasing: buffer[(pending.count * bs)..<((pending.count + 1) * bs)])
                        guard try seg.fd.readFully(into: slot, at: off) == bs else {
                            throw StoreError.io(errno: EIO, context: "journal segment \(seg.path) is short")
                        }
                        pending.append(b)
                        if pending.count == batch { try drain() }
                    }
                }
                try drain()
                changes.sort { $0.block < $1.block }
                // Writes only grow an image (frozenSize >= root.size); shrinking is
                // setAttributes', which flushes first.
                roots[n.id] = try TreeUpdater.apply(store, to: root, newSize: size, changes: changes)
            }
            try commitNamespace(roots: roots.mapValues { $0.0 })
        } catch {
            let e = StoreError.system(error, "flush", path: store.path)
            stateLock.withLock { lastFlushError = e }
            try? store.rollback()
            log("vdiskfs: flush failed, dirty data stays in the journal: \(e.description)")
            throw e
        }
        let done: [WriteJournal.Segment] = stateLock.withLock {
            for (n, _, _, _) in work {
                guard let (r, delta) = roots[n.id] else { continue }
                n.root = r
                if let a = n.allocatedBlocks { n.allocatedBlocks = a + delta }
                n.frozen = [:]
                n.frozenData = 0
                n.frozenPending = false
            }
            lastFlushError = nil
            let segs = frozenSegments
            frozenSegments = []
            return segs
        }
        for s in done { journal.delete(s) }
        vdisk_release_free_memory()
    }

    private func wakeFlusher() {
        flusherWake.lock(); flusherWake.signal(); flusherWake.unlock()
    }

    private func flusherLoop() {
        while true {
            flusherWake.lock()
            if !stopping { _ = flusherWake.wait(until: Date().addingTimeInterval(options.flushInterval)) }
            let stop = stopping
            flusherWake.unlock()
            if stop { return }
            do { try flush() } catch {
                // Logged by flushFrozen; try again at the next tick.
            }
        }
    }

    /// Flushes and stops the flusher; the volume is unusable afterwards.
    public func close() throws {
        flusherWake.lock(); stopping = true; flusherWake.signal(); flusherWake.unlock()
        while let t = flusher, !t.isFinished { usleep(1000) }
        try flush()
        stateLock.withLock { closed = true }
        spaceFreed.lock(); spaceFreed.broadcast(); spaceFreed.unlock()
        // Everything is committed: the current (empty) segment can go.
        if stateLock.withLock({ !nodes.values.contains { $0.hasDirtyBlocks } && frozenSegments.isEmpty }) {
            journal.delete(segment)
        }
        store.close()
    }
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
