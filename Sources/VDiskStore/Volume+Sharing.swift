import Foundation
import Glibc

/// A volume on a store shared with other hosts (RADOS). Each image has one writer across
/// the hosts, the holder of its lease:
///
/// - the lease is taken when an image is opened for writing, created, truncated, renamed,
///   removed or written, before anything changes; taking it first brings the image up to
///   the newest version another host committed;
/// - it is kept while the image has write handles or dirty blocks, and given back by the
///   flusher once the image is idle and committed;
/// - a commit re-applies this host's changes on top of other hosts' (``Store/commit``), and
///   afterwards, and every flush interval, the node table takes what other hosts committed
///   to the images this host does not hold: new images appear, removed ones go, changed
///   ones show their new content (the kernel's cache of them is dropped).
///
/// On a directory store all of this is a no-op: the store lock makes this the only writer.
extension Volume {
    var isShared: Bool { store.backend.isShared }

    /// Called by the driver when a handle with write access is opened on `id`.
    public func openedForWriting(_ id: NodeID) throws {
        guard isShared else { return }
        let n = try node(id)
        guard n.snapshot == nil, !n.isDirectory else { return }
        flushLock.lock(); defer { flushLock.unlock() }
        guard let path = stateLock.withLock({ n.path }) else { return }
        try requireLeaseLocked(path)
        stateLock.withLock { writeHandles[id, default: 0] += 1 }
    }

    /// Called by the driver when a handle opened with write access is released.
    public func closedForWriting(_ id: NodeID) {
        guard isShared else { return }
        stateLock.withLock {
            if let c = writeHandles[id], c > 1 { writeHandles[id] = c - 1 } else { writeHandles[id] = nil }
        }
    }

    /// Makes sure this host holds the lease of `n`'s image before it is changed.
    func ensureLease(_ n: Node) throws {
        guard isShared else { return }
        let (path, held) = stateLock.withLock { (n.path, n.path.flatMap { leases[$0] }?.isHeld) }
        guard let path, held != true else { return }
        flushLock.lock(); defer { flushLock.unlock() }
        try requireLeaseLocked(path)
    }

    /// Takes the lease of image `path` unless held; then brings the node table up to date so
    /// that the image is changed from its newest committed version. Call with `flushLock` held.
    func requireLeaseLocked(_ path: String) throws {
        guard isShared else { return }
        if let l = stateLock.withLock({ leases[path] }) {
            if l.isHeld { return }
            throw StoreError.leaseHeld(image: path, holder: "another host (this host's lease lapsed; its unflushed writes stay in the journal)")
        }
        let lease = try store.backend.acquireLease(image: path, purpose: "mount")
        do { try refreshLocked() } catch {
            lease.release()
            throw error
        }
        stateLock.withLock { leases[path] = lease }
    }

    /// Before a commit: every lease this volume holds is renewed now. A lease found lost (it
    /// lapsed, say while this process was stopped, or an operator broke it) means another
    /// host may have written the image since: its version wins. The image's unflushed
    /// writes here are dropped (logged), its node goes back to its committed version, and
    /// the next reconcile shows the other host's. Call with `flushLock` held.
    func confirmLeasesLocked() throws {
        guard isShared else { return }
        for (path, lease) in stateLock.withLock({ leases }) {
            if lease.isHeld, try lease.confirm() { continue }
            let dropped: Int = stateLock.withLock {
                leases[path] = nil
                guard let id = byPath[path], let n = nodes[id] else { return 0 }
                let count = n.dirty.count + n.frozen.count
                currentDirtyBlocks -= min(currentDirtyBlocks, n.dirty.count)
                n.dirty = [:]; n.frozen = [:]
                n.dirtyData = 0; n.frozenData = 0
                n.frozenPending = false
                n.liveSize = n.root.size
                return count
            }
            lease.release()
            log("vdiskfs: lost the lease of \(path) (it expired or was broken): another host may have written it; \(dropped) unflushed block(s) of it here are dropped")
            // Its node shows the store's version from now on, before anything is committed.
            try? store.reloadRoot()
            reconcileWithStore()
        }
    }

    /// Takes what other hosts committed, if anything. Call with `flushLock` held.
    func refreshLocked() throws {
        guard isShared else { return }
        try store.reloadRoot()
        reconcileWithStore()
    }

    /// Makes the node table show the store's committed namespace for every name this host
    /// does not hold the lease of. Call with `flushLock` held, after a commit or reload.
    func reconcileWithStore() {
        guard isShared else { return }
        let ns = store.namespace
        var changed: [NodeID] = []
        stateLock.withLock {
            for (path, entry) in ns.entries where leases[path]?.isHeld != true {
                if let id = byPath[path], let n = nodes[id] {
                    guard n.entry() != entry, !n.hasDirtyBlocks else { continue }
                    if n.isDirectory != (entry.kind == .directory) {
                        byPath[path] = nil
                        n.path = nil
                    } else {
                        n.mode = entry.mode; n.uid = entry.uid; n.gid = entry.gid
                        n.mtime = entry.mtime; n.ctime = entry.ctime
                        if let r = entry.image, r != n.root {
                            n.root = r
                            n.liveSize = r.size
                            n.allocatedBlocks = nil
                            changed.append(id)
                        }
                        continue
                    }
                }
                let n = Node(id: nextNode, path: path, entry: entry)
                nextNode += 1
                nodes[n.id] = n
                byPath[path] = n.id
            }
            for (path, id) in byPath where ns.entries[path] == nil && leases[path]?.isHeld != true {
                guard let n = nodes[id], !n.hasDirtyBlocks else { continue }
                byPath[path] = nil
                n.path = nil
                changed.append(id)
            }
        }
        let invalidate = stateLock.withLock { invalidateNode }
        for id in changed { invalidate(id) }
        // Snapshots other hosts took or deleted.
        if let list = try? store.snapshots() {
            stateLock.withLock {
                guard list != snapshotList else { return }
                let names = Set(list.map(\.name))
                for gone in snapshotList where !names.contains(gone.name) {
                    snapshotNamespaces[gone.name] = nil
                    for key in snapshotNodes.keys where key.hasPrefix(gone.name + "\0") {
                        if let id = snapshotNodes[key] { nodes[id] = nil }
                        snapshotNodes[key] = nil
                    }
                }
                snapshotList = list
            }
        }
    }

    /// Gives back the leases of images that are committed and have no write handles. Call
    /// with `flushLock` held (after a flush).
    func releaseIdleLeasesLocked() {
        guard isShared else { return }
        let idle: [(String, ImageLease)] = stateLock.withLock {
            leases.filter { path, _ in
                guard let id = byPath[path], let n = nodes[id] else { return true }
                return writeHandles[id] == nil && !n.hasDirtyBlocks && n.liveSize == n.root.size
            }.map { ($0.key, $0.value) }
        }
        for (path, lease) in idle {
            stateLock.withLock { leases[path] = nil }
            lease.release()
        }
    }

    /// Lets go of every lease (the volume closes, everything committed).
    func releaseAllLeases() {
        let all = stateLock.withLock { () -> [ImageLease] in
            defer { leases.removeAll() }
            return Array(leases.values)
        }
        for l in all { l.release() }
    }
}
