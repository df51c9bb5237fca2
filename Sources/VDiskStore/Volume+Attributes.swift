import CSupport
import Foundation
import Glibc
import SystemPackage

/// Extended attributes, statfs, forget.
extension Volume {
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
        let s = try store.backend.space()
        let files = stateLock.withLock { UInt64(byPath.count) }
        return VolumeSpace(totalBytes: s.totalBytes, freeBytes: s.freeBytes, availableBytes: s.availableBytes, files: files)
    }

    /// The kernel no longer knows `node`: an unlinked node's data can go.
    public func forget(_ id: NodeID) {
        stateLock.withLock {
            guard let n = nodes[id], n.path == nil else { return }
            nodes[id] = nil
            // A snapshot's node is made again by the next lookup of its name.
            if let snap = n.snapshot, snapshotNodes[snap + "\0" + n.snapshotPath] == id {
                snapshotNodes[snap + "\0" + n.snapshotPath] = nil
            }
        }
    }
}
