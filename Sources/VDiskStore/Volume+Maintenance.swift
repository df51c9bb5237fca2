import Foundation
import Glibc

/// What the FUSE side of a mount tells the volume about the kernel's view of its files, for
/// the maintenance commands that change an image's content behind the kernel's back
/// (rollback, trim).
public struct MountHooks: Sendable {
    /// The mountpoint, for messages.
    public var mountpoint: String
    /// Whether any open file handle of the node has write access.
    public var isOpenForWriting: @Sendable (NodeID) -> Bool
    /// Drops the kernel's cached pages and attributes of the node.
    public var invalidate: @Sendable (NodeID) -> Void

    public init(mountpoint: String, isOpenForWriting: @escaping @Sendable (NodeID) -> Bool,
                invalidate: @escaping @Sendable (NodeID) -> Void) {
        self.mountpoint = mountpoint
        self.isOpenForWriting = isOpenForWriting
        self.invalidate = invalidate
    }

    /// No kernel to ask or tell (a volume without a mount: tests).
    public static let none = MountHooks(mountpoint: "the mount", isOpenForWriting: { _ in false }, invalidate: { _ in })
}

/// Rollback and trim of one image on the mounted store: refused while the image is open for
/// writing; otherwise done under the commit lock, with the image's writes held off, and the
/// kernel's cache of the image dropped afterwards so that readers see the new content.
extension Volume {
    /// Restores `image` from `snapshot` (the image is created again if it was removed).
    public func rollback(_ image: String, to snapshot: String, hooks: MountHooks) throws {
        let path = try Namespace.validate(image)
        let id: NodeID = try changingImage(path, hooks: hooks, mayBeMissing: true, check: {
            guard let old = try store.namespace(ofSnapshot: snapshot).entries[path], old.kind == .image, let root = old.image else {
                throw StoreError.noSuchImage(name: "@\(snapshot)/\(path)")
            }
            return (old, root)
        }) { n, found in
            let (old, root) = found
            let t = now()
            try commitNamespace { entries in
                if var e = entries[path] {
                    guard e.kind == .image else { throw StoreError.nameExists(name: path) }
                    e.image = root
                    e.mtime = t; e.ctime = t
                    entries[path] = e
                } else {
                    var ns = Namespace(entries: entries)
                    try ns.addImage(path, root: root, mode: old.mode, uid: old.uid, gid: old.gid, now: t)
                    entries = ns.entries
                }
            }
            return stateLock.withLock {
                if let n {
                    n.root = root
                    n.liveSize = root.size
                    n.allocatedBlocks = nil
                    n.mtime = t; n.ctime = t
                    return n.id
                }
                // Removed since the snapshot: nodes for the image and any directory made again.
                for (p, e) in store.namespace.entries where byPath[p] == nil {
                    let node = Node(id: nextNode, path: p, entry: e)
                    nextNode += 1
                    nodes[node.id] = node
                    byPath[p] = node.id
                }
                touchParentLocked(path, t)
                return byPath[path]!
            }
        }
        hooks.invalidate(id)
    }

    /// File-system-aware reclaim of `image` (see ``Store/trim(_:)``).
    public func trim(_ image: String, hooks: MountHooks) throws -> TrimReport {
        let path = try Namespace.validate(image)
        var report: TrimReport?
        let id: NodeID = try changingImage(path, hooks: hooks, mayBeMissing: false, check: {}) { n, _ in
            let n = n!
            // The mount holds the image's lease (taken below in changingImage).
            do { report = try store.trimLeased(path) } catch {
                try? store.rollback()
                throw error
            }
            guard let e = store.namespace.entries[path], let root = e.image else { return n.id }
            stateLock.withLock {
                if n.root != root { n.allocatedBlocks = nil }
                n.root = root
                n.liveSize = root.size
                n.mtime = e.mtime; n.ctime = e.ctime
            }
            return n.id
        }
        if report!.freedBlocks > 0 { hooks.invalidate(id) }
        return report!
    }

    /// Runs `check`, then `change` on the live image `path` (nil: there is no image there and
    /// `mayBeMissing`), with commits and the image's writes held off and every dirty block
    /// flushed first; throws `busy` while the image is open for writing.
    private func changingImage<T>(_ path: String, hooks: MountHooks, mayBeMissing: Bool, check: () throws -> T,
                                  _ change: (Node?, T) throws -> NodeID) throws -> NodeID {
        // The kernel sends a handle's release after close() has returned: give a writer that
        // has just closed the image (QEMU that just exited) a moment to be gone.
        if let id = stateLock.withLock({ byPath[path] }) {
            let deadline = Date().addingTimeInterval(1)
            while hooks.isOpenForWriting(id) && Date() < deadline { usleep(10_000) }
        }
        flushLock.lock(); defer { flushLock.unlock() }
        // A shared store: this mount must hold the image's lease to change it.
        try requireLeaseLocked(path)
        let checked = try check()
        let n: Node? = stateLock.withLock { byPath[path].flatMap { nodes[$0] }.flatMap { $0.isDirectory ? nil : $0 } }
        guard let n else {
            guard mayBeMissing else { throw StoreError.noSuchImage(name: path) }
            try flushLocked()
            return try change(nil, checked)
        }
        let busy = StoreError.busy(name: "\(path) (open for writing on \(hooks.mountpoint))")
        // Checked before taking the image's write lock, so that a writer holding it while it
        // waits for journal space (which needs a flush, which needs flushLock) is refused
        // rather than waited for; and again once no write can start.
        if hooks.isOpenForWriting(n.id) { throw busy }
        n.writeLock.lock(); defer { n.writeLock.unlock() }
        if hooks.isOpenForWriting(n.id) { throw busy }
        try flushLocked()
        return try change(n, checked)
    }
}
