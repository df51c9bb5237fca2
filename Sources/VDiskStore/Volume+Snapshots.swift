import CSupport
import Foundation
import Glibc
import SystemPackage

/// The .snapshots directory and taking snapshots on a mounted volume.
extension Volume {
    /// The store's snapshots, oldest first.
    public func snapshots() -> [Snapshot] { stateLock.withLock { snapshotList } }

    func snapshotNamespace(_ name: String) throws -> Namespace {
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
    func snapshotChild(parent: NodeID, name: String) throws -> NodeID? {
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
}
